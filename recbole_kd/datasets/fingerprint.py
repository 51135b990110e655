"""Which atomic files a run reads, and their sha256: what a pretrained teacher's card and every run result
record, so that a number is never reported for data other than the data it was measured on."""
from __future__ import annotations

import os

from recbole_kd.serving.artefact import file_sha256  # torch and the standard library only

ATOMIC_SUFFIXES = ("inter", "user", "item", "kg", "link", "net")


def data_files(folder: str, dataset: str, load_col, benchmark_filename=None) -> list[str]:
    """The atomic files a run reads: those ``load_col`` names (every one present when it is None), the
    benchmark parts instead of ``.inter`` when ``benchmark_filename`` is set."""
    if isinstance(load_col, dict):
        suffixes = list(load_col)
    else:
        suffixes = [s for s in ATOMIC_SUFFIXES if os.path.isfile(os.path.join(folder, f"{dataset}.{s}"))]
    names = []
    for suffix in suffixes:
        if suffix == "inter" and benchmark_filename:
            names += [f"{dataset}.{part}.inter" for part in benchmark_filename]
        else:
            names.append(f"{dataset}.{suffix}")
    return sorted(n for n in names if os.path.isfile(os.path.join(folder, n)))


def data_fingerprint(folder: str, dataset: str, load_col, benchmark_filename=None) -> dict:
    """{file name: sha256} of the atomic files a run of ``dataset`` in ``folder`` reads."""
    return {n: file_sha256(os.path.join(folder, n))
            for n in data_files(folder, dataset, load_col, benchmark_filename)}


def dataset_folder_fingerprint(folder: str, dataset: str, benchmark_filename=None) -> dict:
    """{file name: sha256} of every atomic file of ``dataset`` in ``folder`` (whatever ``load_col`` reads:
    item text, for one, is read from the ``.item`` file directly)."""
    return data_fingerprint(folder, dataset, None, benchmark_filename)
