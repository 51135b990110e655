"""The six distillation reports that the former distillation benchmark script wrote
(benchmarks/results/kd_<name>.md/.json) are now rendered by bench from suites (benchmarks/suites/kd-*.yaml)
and the cells converted by benchmarks/convert_kd_cells.py: every row's test NDCG@10 (mean over its seeds, 4
decimals) and seed count, the teacher's included, are those of the old report (its ``summary.rows`` and
``summary.teacher_ndcg10``, frozen here before it was removed)."""
import json
import os

import pytest

from conftest import REPO

# report -> {row label in the suite: (old test NDCG@10 mean, old seed count)}; the old row names in comments
OLD = {
    "kd_ml-100k": {
        "SASRec-L": (0.0555, 1),  # teacher
        "SASRec-S": (0.0538, 3),  # student
        "KD-SASRec (hard)": (0.0523, 3),  # kd:hard
        "KD-SASRec (soft)": (0.0561, 3),  # kd:soft
        "KD-SASRec (rd)": (0.0624, 3),  # kd:rd
        "KD-SASRec (rrd)": (0.0605, 3),  # kd:rrd
        "KD-SASRec (hint)": (0.0587, 3),  # kd:hint
        "KD-SASRec (rrd + hint)": (0.0597, 3),  # kd:combo
        "MF-S": (0.0497, 3),  # mf
        "KD-MF (soft)": (0.0597, 3),  # kd-mf
    },
    "kd_ml-100k-seen": {
        "SASRec-L": (0.0503, 1),
        "SASRec-S": (0.0538, 3),
        "KD-SASRec (hard)": (0.0618, 3),
        "KD-SASRec (soft)": (0.0573, 3),
        "KD-SASRec (soft_full)": (0.0574, 3),
        "KD-SASRec (rd)": (0.0612, 3),
        "KD-SASRec (rrd)": (0.058, 3),
        "KD-SASRec (hint)": (0.0555, 3),
        "KD-SASRec (rrd + hint)": (0.0596, 3),
        "MF-S": (0.0497, 3),
        "KD-MF (soft)": (0.0634, 3),
    },
    "kd_amazon-beauty-5core": {
        "SASRec-L x3": (0.0368, 1),  # teacher: the ensemble
        "SASRec-L x3 member": (0.0343, 3),  # teacher member
        "SASRec-S (d32)": (0.0346, 3),
        "KD-SASRec (hard)": (0.0338, 3),
        "KD-SASRec (soft)": (0.0347, 3),
        "KD-SASRec (rd)": (0.0371, 3),
        "KD-SASRec (rrd)": (0.0367, 3),
        "KD-SASRec (hint)": (0.0322, 3),
        "KD-SASRec (rd + rrd)": (0.037, 3),  # kd:combo
        "MF-S": (0.0136, 3),
        "KD-MF (soft)": (0.02, 3),
    },
    "kd_amazon-beauty-5core-seen": {
        "SASRec-L x3": (0.0368, 1),
        "SASRec-L x3 member": (0.0343, 3),
        "SASRec-S (d32)": (0.0346, 3),
        "KD-SASRec (rd)": (0.0374, 3),
        "KD-SASRec (soft_full)": (0.0397, 3),
        "KD-SASRec (rd + soft_full)": (0.0399, 3),  # kd:combo
        "MF-S": (0.0136, 3),
    },
    "kd_amazon-beauty-5core-cl": {
        "SASRec-L cl x3": (0.0377, 1),
        "SASRec-L cl x3 member": (0.0353, 3),
        "SASRec-S (d32)": (0.0346, 3),
        "KD-SASRec (hard)": (0.0378, 3),
        "KD-SASRec (rd)": (0.0379, 3),
    },
    "kd_amazon-beauty-5core-cl-raw": {
        "SASRec-L cl x3": (0.0377, 1),
        "SASRec-L cl x3 member": (0.0353, 3),
        "SASRec-S (d32)": (0.0346, 3),
        "KD-SASRec (rd, raw top-K)": (0.0343, 2),  # kd:rd, seed 2022 never ran
    },
}


@pytest.mark.parametrize("name", sorted(OLD))
def test_the_report_has_the_old_reports_numbers(name):
    with open(os.path.join(REPO, "benchmarks", "results", name, "results.json")) as f:
        rows = {r["label"]: r for r in json.load(f)["rows"]}
    assert set(rows) == set(OLD[name])
    got = {label: (round(r["ndcg@10"][0], 4), len(r["seeds"])) for label, r in rows.items()}
    assert got == OLD[name]
    teacher = next(r for r in rows.values() if r["group"] == "teacher" and not r.get("member_of"))
    assert (round(teacher["ndcg@10"][0], 4), len(teacher["seeds"])) == next(iter(OLD[name].values()))
    assert all(r["protocol"] == "recbole" for r in rows.values())  # measured under RecBole's protocol only


@pytest.mark.parametrize("name", sorted(OLD))
def test_the_suite_finds_every_converted_cell(name):
    """Each stored record is the cell its suite expects (same id and config hash): bench renders it and
    never runs it as new."""
    from recbole_kd.bench.records import stored_record
    from recbole_kd.bench.suite import expand, load_suite, output_dir

    suite = load_suite(os.path.join(REPO, "benchmarks", "suites", name.replace("_", "-") + ".yaml"))
    out = output_dir(suite, None)
    assert out == os.path.join(REPO, "benchmarks", "results", name)
    cells = expand(suite)
    stored = sorted(p for p in os.listdir(os.path.join(out, "cells")) if p.endswith(".json"))
    found = sorted(c.id + ".json" for c in cells if stored_record(out, c))
    assert found == stored  # every file is a cell of the suite, and no cell is stale
    missing = [c.id for c in cells if not stored_record(out, c)]
    assert missing == (["amazon-beauty-5core__KD-SASRec_rd_raw_top-K__seed2022"] if name.endswith("-raw") else [])


def test_rows_distilled_from_the_raw_top_k_say_so():
    """The old reports marked them "(raw top-K)"; their suite rows have kd_mask_seen: False."""
    with open(os.path.join(REPO, "benchmarks", "results", "kd_ml-100k", "results.json")) as f:
        raw = {r["label"] for r in json.load(f)["rows"] if r.get("raw_top_k")}
    assert raw == {"KD-SASRec (hard)", "KD-SASRec (soft)", "KD-SASRec (rd)", "KD-SASRec (rrd)",
                   "KD-SASRec (rrd + hint)"}  # hint reads no top-K; KD-MF has always masked seen items
    with open(os.path.join(REPO, "benchmarks", "results", "kd_ml-100k", "README.md")) as f:
        assert "| distilled | KD-SASRec (rd) (raw top-K) | KD-SASRec | 3/3 | 0.0624 ± 0.0019 |" in f.read()
