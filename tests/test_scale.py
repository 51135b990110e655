"""Scale-out: RecBole's distributed mode on CPU (gloo) and hyper-parameter search on Ray Tune."""
import glob
import json
import os
import subprocess
import sys
import textwrap
import time
import types

import pytest
import torch

from conftest import FAST, run_cli

from recbole_kd.distributed import free_port, shard
from recbole_kd.models.windows import WINDOW_FIELD, WindowDataLoader, build_windows

TEACHER = "--teacher_config={'epochs': 1, 'hidden_size': 64}"


def _fast_args():
    return [f"--{k}={v}" for k, v in FAST.items()]


def _result(path):
    with open(path) as f:
        return json.load(f)


def test_window_shards_cover_every_window_once_per_epoch():
    """Each rank takes its slice of every global batch: together the ranks see each window exactly
    once, take the same number of steps, and the epoch order is the same on every rank."""
    rng = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 30, (int(n),), generator=rng).numpy() for n in torch.randint(3, 40, (37,), generator=rng)]
    table = build_windows(list(range(1, 38)), seqs, span=11, stride=10)
    dataset = types.SimpleNamespace(uid_field="user_id")
    n = table[WINDOW_FIELD].shape[0]
    for group in (0, 2):
        seen, steps = [], []
        for rank in range(2):
            config = {"single_spec": False, "world_size": 2, "local_rank": rank, "offset": 0, "seed": 7}
            loader = WindowDataLoader(config, dataset, table, batch_size=8, group_by_length=group)
            loader.sampler.set_epoch(3)
            batches = [b["window_id"] for b in loader]
            steps.append(len(batches))
            seen += torch.cat(batches).tolist()
        assert steps[0] == steps[1] == -(-n // 8)
        assert sorted(seen) == list(range(n))


def test_shard_pads_a_batch_smaller_than_the_world():
    index = torch.tensor([5])
    assert shard(index, 2, 0).tolist() == [5] and shard(index, 2, 1).tolist() == [5]
    assert shard(torch.arange(5), 2, 0).tolist() == [0, 1, 2] and shard(torch.arange(5), 2, 1).tolist() == [3, 4]


CACHE_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist, torch.multiprocessing as mp

    def work(rank, data, port):
        import recbole_kd
        from recbole_kd.config import build_config
        from recbole_kd.quick_start import prepare
        from recbole_kd.kd.outputs import TeacherOutputs
        from recbole_kd.models.sasrec import SASRecL

        config = build_config("SASRec-S", "tiny", overrides={"data_path": data, "state": "WARNING"})
        _, train, _, _ = prepare(config)
        torch.manual_seed(0)
        t_config = build_config("SASRec-L", "tiny", overrides={"data_path": data, "state": "WARNING", "hidden_size": 32,
                                                               "inner_size": 32})
        teacher = SASRecL(t_config, train.dataset).eval()
        single = TeacherOutputs(teacher, train, 5, True, cached=True, device=torch.device("cpu"), batch_size=7)
        dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")
        shared = TeacherOutputs(teacher, train, 5, True, cached=True, device=torch.device("cpu"), batch_size=7)
        assert torch.equal(single.ids, shared.ids) and torch.equal(single.scores, shared.scores)
        assert torch.equal(single.log_norm, shared.log_norm)
        assert torch.equal(single.hidden, shared.hidden)
        dist.destroy_process_group()
        print("rank", rank, "cache equal", tuple(shared.ids.shape), flush=True)

    if __name__ == "__main__":
        mp.spawn(work, args=(sys.argv[1], int(sys.argv[2])), nprocs=2, join=True)
    """
)


@pytest.mark.slow
def test_teacher_cache_built_across_ranks_equals_single_process(tiny_data, workdir):
    """Each rank computes one block of the teacher cache and broadcasts it: every rank ends with
    exactly the cache one process would build."""
    script = workdir / "cache_check.py"
    script.write_text(CACHE_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(tiny_data), str(free_port())], capture_output=True,
                          text=True, timeout=300, cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("cache equal") == 2


@pytest.mark.slow
def test_kd_sasrec_two_processes_follow_the_single_process_protocol(tiny_data, workdir):
    """KD-SASRec, 1 epoch, 2 processes on CPU (gloo) vs one process: the teacher is trained once (by
    the launcher), ranks stay in sync, rank 0 evaluates the same test users, metrics are within
    tolerance, and the distributed checkpoint evaluated by a single process gives exactly the
    distributed run's test metrics."""
    common = ["--model=KD-SASRec", "--dataset=tiny", f"--data_path={tiny_data}", TEACHER,
              "--kd_losses={'rrd': 1.0, 'hint': 1.0}", *_fast_args()]
    dist_dir, single_dir = workdir / "dist", workdir / "single"
    proc = run_cli(*common, "--nproc=2", f"--port={free_port()}", f"--checkpoint_dir={dist_dir}",
                   f"--result_file={workdir / 'dist.json'}", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli(*common, f"--checkpoint_dir={single_dir}", f"--result_file={workdir / 'single.json'}", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d, s = _result(workdir / "dist.json"), _result(workdir / "single.json")

    assert d["distributed"] == {"world_size": 2, "nproc": 2, "ranks_in_sync": True}
    assert d["teacher_source"] == "zoo" and s["teacher_source"] == "trained"  # ranks found the launcher's teacher
    assert len(glob.glob(str(dist_dir / "teachers" / "*.pth"))) == 2  # the teacher and its last-epoch state, once
    assert d["test_users"] == s["test_users"] == 40  # every user of the tiny dataset
    assert d["teacher_test_result"] == s["teacher_test_result"]  # the same teacher
    assert set(d["test_result"]) == set(s["test_result"])
    for key in ("ndcg@10", "recall@10"):
        assert abs(d["test_result"][key] - s["test_result"][key]) <= 0.15, (key, d["test_result"], s["test_result"])

    # the distributed run's checkpoint, evaluated by one process (--resume of a finished run only evaluates)
    proc = run_cli(*common, f"--checkpoint_dir={dist_dir}", "--resume", f"--result_file={workdir / 'again.json'}",
                   cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _result(workdir / "again.json")["test_result"] == d["test_result"]


@pytest.mark.slow
def test_distributed_worker_error_is_one_line_exit_2(tiny_data, workdir):
    """An error inside the workers (a garbage teacher checkpoint) reaches the user as the same one-line
    error and exit status as a single-process run."""
    bad = workdir / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    proc = run_cli("--model=KD-SASRec", "--dataset=tiny", f"--data_path={tiny_data}", f"--teacher_checkpoint={bad}",
                   "--nproc=2", f"--port={free_port()}", *_fast_args(), cwd=workdir)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("recbole-kd: error:") and "garbage.pth" in last


def test_other_machine_without_the_teacher_is_refused_before_starting(tiny_data, workdir):
    """A machine with offset > 0 never trains the teacher: without it in the zoo it stops at once
    (instead of waiting for the process group)."""
    proc = run_cli("--model=KD-SASRec", "--dataset=tiny", f"--data_path={tiny_data}", "--nproc=1", "--world_size=2",
                   "--offset=1", f"--port={free_port()}", f"--checkpoint_dir={workdir / 'ck'}", *_fast_args(),
                   cwd=workdir, timeout=120)
    assert proc.returncode == 2
    assert "only the machine with offset=0 trains it" in proc.stderr


def test_a_machine_waiting_for_the_others_says_so(tiny_data, workdir):
    """world_size > nproc: the group forms only when the other machines join; the wait is announced."""
    proc = subprocess.Popen([sys.executable, "-m", "recbole_kd", "--model=SASRec-S", "--dataset=tiny",
                             f"--data_path={tiny_data}", "--nproc=1", "--world_size=2", f"--port={free_port()}",
                             *_fast_args()], cwd=workdir, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    import queue
    import threading

    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
    try:
        seen, deadline = [], time.monotonic() + 120  # the process itself waits for rank 1 for ever
        while not any("waiting at" in x for x in seen) and time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=5))
            except queue.Empty:
                pass
        said = [x for x in seen if "waiting at" in x]
        assert said, seen[-5:]
        assert "this machine runs ranks 0-0 of world_size=2; waiting at localhost:" in said[0]
        assert "the other machines' 1 processes join" in said[0]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("setting,message", [
    ("--nproc=0", "invalid setting nproc=0: must be an integer >= 1"),
    ("--nproc=abc", "invalid setting nproc='abc'"),
    ("--world_size=0", "invalid setting world_size=0"),
    ("--offset=-1", "invalid setting offset=-1"),
    ("--port=99999", "invalid setting port=99999: must be a TCP port number"),
])
def test_bad_distributed_settings_are_one_line_exit_2(workdir, setting, message):
    nproc = [] if setting.startswith("--nproc") else ["--nproc=2"]
    proc = run_cli("--model=SASRec-S", "--dataset=ml-100k", *nproc, setting, cwd=workdir, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"recbole-kd: error: {proc.stderr.strip().split('error: ', 1)[1]}"]
    assert message in proc.stderr


SPACE = """
# two trials (grid over one choice)
learning_rate choice [0.001, 0.01]
"""


@pytest.mark.slow
def test_tuning_two_trials_through_ray_writes_results(tiny_data, workdir):
    """A Ray Tune search (2 trials, grid) over KD-SASRec on tiny data: one teacher for all trials,
    one JSON per trial, results.json/csv and a report ranked by the validation metric."""
    space = workdir / "space.txt"
    space.write_text(SPACE)
    out = workdir / "tune"
    env_args = ["--model=KD-SASRec", "--dataset=tiny", f"--data_path={tiny_data}", TEACHER, f"--space={space}",
                f"--out={out}", *_fast_args()]
    proc = subprocess.run([sys.executable, "-m", "recbole_kd", "tune", *env_args], capture_output=True, text=True,
                          timeout=600, cwd=workdir, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = _result(out / "results.json")
    trials = summary["trials"]
    assert len(trials) == 2 and summary["failed"] == 0
    assert sorted(t["params"]["learning_rate"] for t in trials) == [0.001, 0.01]
    assert trials[0]["best_valid_score"] >= trials[1]["best_valid_score"]  # ranked on validation
    assert summary["best"]["trial_id"] == trials[0]["trial_id"]
    assert all(t["teacher_source"] == "zoo" for t in trials)  # trained once, before the trials
    assert len(glob.glob(str(out / "trials" / "*.json"))) == 2
    assert (out / "results.csv").read_text().count("\n") == 3
    assert "| 1 |" in (out / "README.md").read_text()


def test_bad_search_space_is_one_line_exit_2(workdir):
    space = workdir / "space.txt"
    space.write_text("learning_rate loguniform 0\nhidden_size choice [32,64]\n")
    proc = subprocess.run([sys.executable, "-m", "recbole_kd", "tune", "--model=SASRec-S", "--dataset=ml-100k",
                           f"--space={space}"], capture_output=True, text=True, timeout=300, cwd=workdir)
    assert proc.returncode == 2
    assert "space.txt, line 1" in proc.stderr and proc.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("line,message", [
    ("learning_rate loguniform -8 0", "loguniform needs 'low,high' (e.g. loguniform -8,0)"),
    ("dropout_prob uniform 0.1,x", "uniform needs 'low,high'"),
    ("hidden_size quniform 16,128", "quniform needs 'low,high,q'"),
    ("learning_rate loguniform 0,-8", "low must be below high"),
    ("hidden_size choice []", "choice needs a non-empty list"),
])
def test_search_space_errors_say_what_the_line_needs(tmp_path, line, message):
    from recbole_kd.tune import SpaceError, parse_space

    space = tmp_path / "space.txt"
    space.write_text(f"{line}\n")
    with pytest.raises(SpaceError) as info:
        parse_space(str(space))
    assert "space.txt, line 1: " + message in str(info.value), str(info.value)
    space.write_text("learning_rate loguniform -8, 0\nhidden_size quniform 16,128,16\n")
    assert parse_space(str(space)) == {"learning_rate": ("loguniform", [-8.0, 0.0]),
                                       "hidden_size": ("quniform", [16.0, 128.0, 16.0])}


@pytest.mark.parametrize("model,extra", [
    ("KD-MF", [TEACHER]),
    ("Transfer-SASRec", ["--source=tiny2", "--transfer_mechanisms=['encoder', 'cross_kd']", "--transfer_freeze_epochs=1",
                         "--epochs=2"]),
])
@pytest.mark.slow
def test_other_trainers_run_distributed(model, extra, tmp_path, workdir):
    """The MF student (RecBole's loader, sharded by its DistributedSampler; user-level teacher cache)
    and the transfer trainer (source model built once by the launcher; encoder frozen for one
    epoch, then unfrozen; cross-domain mapping averaged by DDP) under 2 CPU processes."""
    from conftest import write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "data")
    write_tiny_dataset(tmp_path / "data", name="tiny2", seed=3)
    fast = [a for a in _fast_args() if not any(a.split("=")[0] == e.split("=")[0] for e in extra)]
    proc = run_cli(f"--model={model}", "--dataset=tiny", f"--data_path={data}", *fast, *extra, "--nproc=2",
                   f"--port={free_port()}", f"--checkpoint_dir={workdir / 'ck'}", f"--result_file={workdir / 'r.json'}",
                   cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = _result(workdir / "r.json")
    assert r["distributed"]["ranks_in_sync"] is True and r["test_users"] == 40
    if model == "KD-MF":
        assert r["teacher_source"] == "zoo"
    else:
        assert r["source_phase"] == "cached" and r["epochs_run"] == 2
