"""Launching a distributed run (:mod:`recbole_kd.distributed` has the helpers its processes use).

The launching process builds what every rank shares first (:func:`prepare_shared`: a distilled model's
teacher, a transfer model's source model), then spawns ``nproc`` workers that each run the training
function the caller hands in (``run_fn``, :func:`recbole_kd.quick_start.run`) with their ``local_rank``.
"""
from __future__ import annotations

import sys

import torch.distributed as dist
import torch.multiprocessing as mp

from recbole_kd import errors
from recbole_kd.errors import USER_ERRORS, ConfigError, TrainingError
from recbole_kd.registry import get_entry, load_plugin_files, loaded_plugin_files


def prepare_shared(config, build: bool = True) -> None:
    """Build, once and in the launching process, what every rank of this run shares (a teacher,
    a source model). ``build=False``: only check that it exists (machines with offset > 0)."""
    trainer = get_entry(config["model"]).trainer
    hook = getattr(trainer, "prepare_shared", None)
    if hook is not None:
        hook(config, build=build)


def _worker(rank, run_fn, model, dataset, config_files, overrides, saved, result_file, plugins, queue, verbose=False):
    try:
        if plugins:
            load_plugin_files(plugins)
        result = run_fn(model, dataset, config_files, {**overrides, "local_rank": rank}, saved, result_file, verbose)
        if result is not None:
            queue.put(("ok", result))
    except (USER_ERRORS + (TrainingError,)) as exc:
        queue.put(("error", type(exc).__name__, str(exc)))
        raise SystemExit(2) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(run_fn, config, model, dataset, config_files, overrides, saved, result_file, verbose=False):
    """Run ``model`` on ``nproc`` local processes of a (possibly multi-machine) process group, each calling
    ``run_fn`` (a module-level function, so that it can be sent to spawned processes) with the same
    arguments plus its ``local_rank``; returns rank 0's result on the machine that holds rank 0, else None."""
    nproc = int(config["nproc"] or 1)
    world = int(config["world_size"] if config["world_size"] not in (None, -1) else nproc)
    offset = int(config["offset"] or 0)
    if world < nproc + offset:
        raise ConfigError(f"world_size={world} is smaller than nproc={nproc} + offset={offset}; "
                          "world_size counts the processes of all machines")
    prepare_shared(config, build=offset == 0)
    settings = dict(overrides or {})
    settings.update(nproc=nproc, world_size=world, offset=offset, ip=str(config["ip"] or "localhost"),
                    port=str(config["port"] or 5678))
    if world > nproc:  # the process group forms only when every machine has joined: say so, or it looks hung
        print(f"recbole-kd: this machine runs ranks {offset}-{offset + nproc - 1} of world_size={world}; waiting at "
              f"{settings['ip']}:{settings['port']} until the other machines' {world - nproc} processes join "
              "(same command there, with their --offset)", file=sys.stderr, flush=True)
    queue = mp.get_context("spawn").SimpleQueue()
    error = None
    try:
        mp.spawn(_worker, args=(run_fn, model, dataset, list(config_files), settings, saved, result_file,
                                loaded_plugin_files(), queue, verbose), nprocs=nproc, join=True)
    except Exception as exc:  # a worker failed: report its own error if it sent one
        error = exc
    result = None
    while not queue.empty():
        item = queue.get()
        if item[0] == "error":
            raise _rebuild_error(item[1], item[2])
        result = item[1]
    if error is not None:
        raise error
    return result


def _rebuild_error(name: str, message: str) -> Exception:
    for cls in errors.USER_ERRORS + (errors.TrainingError,):
        if cls.__name__ == name:
            return cls(message)
    return RuntimeError(message)

