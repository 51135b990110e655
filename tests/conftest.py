import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATASETS = os.path.join(os.path.dirname(REPO), "shared", "datasets")

# settings that keep every test run small and quiet
FAST = {"epochs": 1, "show_progress": False, "state": "WARNING"}


def write_tiny_dataset(root, name="tiny", n_users=40, n_items=60, min_len=6, max_len=25, seed=0):
    """A small time-ordered implicit-feedback dataset in RecBole atomic format."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(str(root), name)
    os.makedirs(folder, exist_ok=True)
    popularity = 1.0 / np.arange(1, n_items + 1)
    popularity /= popularity.sum()
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, n_users + 1):
        n = rng.integers(min_len, max_len + 1)
        # a walk through item space so there is sequential signal to learn
        start = rng.integers(1, n_items + 1)
        for t in range(n):
            item = (start + t + (rng.integers(0, 3) if rng.random() < 0.3 else 0)) % n_items + 1
            lines.append(f"{u}\t{item}\t{1000 * u + t}")
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(root)


@pytest.fixture
def tiny_data(tmp_path):
    return write_tiny_dataset(tmp_path / "data")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a temp folder: RecBole writes log/ and saved/ into the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(*args, cwd=None, timeout=600):
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run(
        [sys.executable, "-m", "recbole_kd", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def requires_shared(name):
    path = os.path.join(SHARED_DATASETS, name)
    return pytest.mark.skipif(not os.path.isdir(path), reason=f"shared dataset folder {path} is absent")


def cli_in_process(capsys, *args):
    """Run the CLI in this process: (exit status, last line on stderr)."""
    from recbole_kd.cli import main

    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return code, (err[-1] if err else "")


def quiet_args(data, ck, epochs):
    """CLI arguments of a small, silent run on the 'tiny' dataset in ``data`` with checkpoints in ``ck``."""
    return [f"--data_path={data}", "--dataset=tiny", f"--epochs={epochs}", "--show_progress=False",
            "--state=WARNING", f"--checkpoint_dir={ck}"]
