"""Small helpers with no dependency on the rest of the package: atomic file writes, what machine and
commit a result came from, mean and spread over seeds, parameter counts, the low-resource rule. Every module
and benchmark script uses these."""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import tempfile


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder: a reader (or a crash) sees
    the old file or the new one, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def device_info(device=None) -> dict:
    """``{"device": "cpu"|"cuda"[, "gpu": name]}`` for ``device`` (the one a run used, config["device"]), else
    for the one torch would pick."""
    import torch

    used = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    info = {"device": used}
    if used == "cuda":
        try:
            info["gpu"] = torch.cuda.get_device_name(torch.device(device) if device is not None else None)
        except Exception:  # the name is for reports only
            pass
    return info


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def machine_info(device=None) -> dict:
    """This machine, for result files and reports; ``device``: the one the run used, else the one torch
    would pick."""
    import recbole
    import torch

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "recbole": recbole.__version__,
            "torch_threads": torch.get_num_threads(), **device_info(device)}


def git_commit() -> str:
    """The checkout's short commit; where there is no git repository (a copy of the tree on another
    machine), ``RECBOLE_KD_GIT_COMMIT`` if set (``benchmarks/accelerator/run.sh`` sets it), else unknown."""
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except Exception:
        return os.environ.get("RECBOLE_KD_GIT_COMMIT") or "unknown"


def cli_value(value) -> str:
    """A setting as a ``--key=value`` command-line value: strings as they are, anything else as its Python
    literal (the CLI reads it back with ``ast.literal_eval``)."""
    return value if isinstance(value, str) else repr(value)


def mean_std(values) -> tuple:
    """(mean, standard deviation) of the values that are not None; one value has no measured spread
    (std None), no values give (None, None)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def count_parameters(model) -> int:
    """Trainable parameters of a torch module."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def keep_recent(n: int, fraction) -> int:
    """How many of a user's ``n`` training interactions the low-resource setting (``train_fraction``) keeps:
    the most recent ``ceil(fraction * n)``, at least one."""
    return n if fraction is None or fraction >= 1 else max(1, math.ceil(fraction * n))
