"""Pretrained teachers shipped in the zoo: the entries are whole, a KD run uses one exactly when its data
matches the card (and says why not otherwise), `python -m recbole_kd zoo` lists them, and the shipped
amazon-beauty-5core teacher reproduces its card's test metrics on the shared data."""
import json
import os

import pytest
import torch

from recbole_kd import zoo
from recbole_kd.serving import artefact

from conftest import REPO, SHARED_DATASETS, cli_in_process, requires_shared, run_cli, write_tiny_dataset

TEACHER_CMD = "python -m recbole_kd --model=SASRec-L --dataset=tiny --epochs=1"


def shipped_cards():
    from recbole_kd.zoo import cards

    return cards()


def test_shipped_entries_are_whole_and_packaged():
    from recbole_kd.checkpoint import load_checkpoint
    from recbole_kd.zoo import PRETRAINED_DIR, file_sha256, weights_path

    entries = shipped_cards()
    assert "SASRec-L-amazon-beauty-5core" in [c["name"] for c in entries]
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        pyproject = f.read()
    assert '"zoo/pretrained/*/card.json", "zoo/pretrained/*/weights.pth"' in pyproject  # a pip install carries them
    for card in entries:
        path = weights_path(card)
        assert os.path.dirname(os.path.dirname(path)) == PRETRAINED_DIR
        assert file_sha256(path) == card["weights"]["sha256"], f"{path} is not the file its card describes"
        assert os.path.getsize(path) == card["weights"]["bytes"] <= 25 * 10**6
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert sum(t.numel() for t in state["state_dict"].values()) == card["num_params"]
        assert set(state) == {"format", "format_version", "config", "meta", "state_dict", "digest"}  # no optimizer
        assert state["config"]["model"] == card["model"] and state["config"]["dataset"] == card["dataset"]
        assert state["meta"]["item_vocab"] == card["fingerprint"]["item_vocab"]
        assert not [k for k, v in state["config"].items() if isinstance(v, str) and v.startswith("/")], \
            "machine-local paths in the shipped settings"
        load_checkpoint(path)  # its digest holds
        made = card["made_by"]
        assert made["command"].startswith("python -m recbole_kd") and made["commit"] and card["licence"]
        for protocol in ("filter_seen", "recbole"):
            assert "ndcg@10" in card["test_result_by_protocol"][protocol]
            assert "ndcg@10" in card["best_valid_result_by_protocol"][protocol]


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """A pretrained entry made the way the shipped ones are: SASRec-L trained 1 epoch on the tiny data,
    exported with its result file; (data path, zoo folder, card)."""
    from recbole_kd.quick_start import run
    from recbole_kd.zoo.export import export_teacher

    root = tmp_path_factory.mktemp("pretrained")
    data = write_tiny_dataset(root / "data")
    here = os.getcwd()
    os.chdir(root)  # RecBole writes log/ into the working folder
    try:
        result = run("SASRec-L", "tiny", overrides={"data_path": data, "epochs": 1, "show_progress": False,
                                                     "state": "WARNING", "checkpoint_dir": str(root / "saved")})
        card = export_teacher(result["checkpoint"], result, data, out_root=str(root / "zoo"),
                              command=TEACHER_CMD, commit="test")
    finally:
        os.chdir(here)
    return data, str(root / "zoo"), card


def test_export_writes_a_card_from_the_data(tiny_zoo):
    from recbole_kd.zoo import file_sha256, weights_path

    data, zoo, card = tiny_zoo
    assert card["name"] == "SASRec-L-tiny" and os.path.isdir(os.path.join(zoo, "SASRec-L-tiny"))
    assert card["fingerprint"]["files"] == {"tiny.inter": file_sha256(os.path.join(data, "tiny", "tiny.inter"))}
    assert card["weights"]["sha256"] == file_sha256(weights_path(card))
    assert card["architecture"]["hidden_size"] == 256 and card["architecture"]["MAX_ITEM_LIST_LENGTH"] == 50
    assert card["made_by"] == {"command": TEACHER_CMD, "commit": "test", "machine": card["made_by"]["machine"],
                               "run_record": None}
    assert not [n for n in os.listdir(zoo) if n.startswith(".tmp")]


def test_export_refuses_a_record_of_another_run(tiny_zoo, tmp_path):
    from recbole_kd.checkpoint import CheckpointError
    from recbole_kd.zoo import weights_path
    from recbole_kd.zoo.export import export_teacher

    data, _, card = tiny_zoo
    record = {"model": "SASRec-L", "dataset": "tiny", "num_params": card["num_params"] + 1,
              "test_result_by_protocol": card["test_result_by_protocol"],
              "best_valid_result_by_protocol": card["best_valid_result_by_protocol"]}
    with pytest.raises(CheckpointError, match="do not belong together"):
        export_teacher(weights_path(card), record, data, out_root=str(tmp_path), command="x", commit="y")
    # the right parameter count, but metrics the weights do not give: not put in place
    record["num_params"] = card["num_params"]
    record["test_result_by_protocol"] = {p: {**t, "ndcg@10": t["ndcg@10"] + 0.01}
                                         for p, t in card["test_result_by_protocol"].items()}
    with pytest.raises(CheckpointError, match="do not reproduce"):
        export_teacher(weights_path(card), record, data, out_root=str(tmp_path), command="x", commit="y")
    assert os.listdir(tmp_path) == []


def kd_config(data, zoo, **extra):
    from recbole_kd.config import build_config

    return build_config("KD-SASRec", "tiny", overrides={"data_path": data, "teacher_pretrained_dir": zoo,
                                                        "state": "WARNING", **extra})


def test_match_rule_and_each_mismatch_reason(tiny_zoo, tmp_path, workdir):
    from recbole_kd.compat import create_dataset
    from recbole_kd.config import ConfigError
    from recbole_kd.zoo import mismatch, wants_pretrained

    data, zoo, _ = tiny_zoo
    config = kd_config(data, zoo)
    card, why = wants_pretrained(config)
    assert card is not None and why is None
    assert mismatch(card, config, create_dataset(config)) == []
    # the user's own teacher settings, an opt-out, a checkpoint, another teacher model: not considered
    assert wants_pretrained(kd_config(data, zoo, teacher_config={"epochs": 1})) == (
        None, "teacher_config is set (command line)")
    assert wants_pretrained(kd_config(data, zoo, teacher_pretrained=False)) == (None, None)
    assert wants_pretrained(kd_config(data, zoo, teacher="BERT4Rec-L")) == (None, None)
    (tmp_path / "empty").mkdir()
    assert wants_pretrained(kd_config(data, str(tmp_path / "empty"))) == (None, None)
    with pytest.raises(ConfigError, match="teacher_pretrained_dir"):
        kd_config(data, str(tmp_path / "missing"))
    # each differing part is named
    assert mismatch(card, kd_config(data, zoo, train_fraction=0.5)) == [
        "split setting train_fraction=0.5 here, None in the card"]
    assert mismatch(card, kd_config(data, zoo, MAX_ITEM_LIST_LENGTH=20)) == [
        "MAX_ITEM_LIST_LENGTH=20 here, 50 in the card"]
    other_vocab = {**card, "fingerprint": {**card["fingerprint"], "item_vocab": "0" * 16}}
    (reason,) = mismatch(other_vocab, config, create_dataset(config))
    assert reason.startswith("item vocabulary") and reason.endswith("0" * 16 + " in the card")
    changed = tiny_data_with_one_change(tmp_path)
    (reason,) = mismatch(card, kd_config(changed, zoo))
    assert reason.startswith("tiny.inter differs (sha256 ")
    with open(os.path.join(changed, "tiny", "tiny.item"), "w") as f:  # a file the run reads but the card lacks
        f.write("item_id:token\n1\n")
    files, load_col = mismatch(card, kd_config(changed, zoo, load_col={"inter": ["user_id", "item_id", "timestamp"],
                                                                       "item": ["item_id"]}))
    assert files == "data files: this run reads ['tiny.inter', 'tiny.item'], the teacher was trained on ['tiny.inter']"
    assert load_col.startswith("load_col={'inter': ['user_id', 'item_id', 'timestamp'], 'item': ['item_id']} here, ")


def tiny_data_with_one_change(tmp_path):
    """The tiny dataset again, one interaction's timestamp moved by half a second."""
    changed = write_tiny_dataset(tmp_path / "changed")
    inter = os.path.join(changed, "tiny", "tiny.inter")
    with open(inter) as f:
        lines = f.read().splitlines()
    user, item, ts = lines[5].split("\t")
    lines[5] = f"{user}\t{item}\t{float(ts) + 0.5}"
    with open(inter, "w") as f:
        f.write("\n".join(lines) + "\n")
    return changed


def kd_cli(data, zoo, tmp_path, tag):
    out = tmp_path / f"{tag}.json"
    proc = run_cli("--model=KD-SASRec", "--dataset=tiny", f"--data_path={data}", "--epochs=1", "--show_progress=False",
                   f"--teacher_pretrained_dir={zoo}", f"--teacher_dir={tmp_path / tag / 'teachers'}",
                   f"--checkpoint_dir={tmp_path / tag / 'saved'}", f"--result_file={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stderr


@pytest.mark.slow
def test_kd_run_uses_the_pretrained_teacher_only_on_matching_data(tiny_zoo, tmp_path):
    from recbole_kd.zoo import headline, weights_path

    data, zoo, card = tiny_zoo
    result, log = kd_cli(data, zoo, tmp_path, "match")
    assert result["teacher_source"] == "pretrained SASRec-L-tiny"
    assert result["teacher_checkpoint"] == weights_path(card)
    assert result["teacher_test_result_by_protocol"] == card["test_result_by_protocol"]
    assert result["teacher_train_seconds"] == 0.0 and not os.path.exists(tmp_path / "match" / "teachers")
    assert f"pretrained teacher: using SASRec-L-tiny (shipped with recbole-kd, its card's {headline(card)})" in log
    assert "training SASRec-L" not in log

    # the same data with one interaction changed: a teacher is trained, and the log says why
    changed = tiny_data_with_one_change(tmp_path)
    result, log = kd_cli(changed, zoo, tmp_path, "changed")
    assert result["teacher_source"] == "trained"
    assert result["teacher_pretrained_skipped"].startswith("SASRec-L-tiny was trained on other data or settings: "
                                                           "tiny.inter differs")
    assert "pretrained teacher not used: SASRec-L-tiny was trained on other data or settings: tiny.inter differs" in log
    assert "training SASRec-L on tiny first" in log


def test_zoo_command_lists_and_shows_cards(tiny_zoo, capsys):
    from recbole_kd.cli import main

    _, zoo, card = tiny_zoo
    assert main(["zoo", f"--dir={zoo}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "model", "dataset", "params", "size", "test", "ndcg@10"]
    row = out[1].split()
    assert row[:4] == ["SASRec-L-tiny", "SASRec-L", "tiny", f"{card['num_params']:,}"]
    t = card["test_result_by_protocol"]
    assert f"{t['filter_seen']['ndcg@10']:.4f} (filter_seen), {t['recbole']['ndcg@10']:.4f} (recbole)" in out[1]
    assert main(["zoo", "SASRec-L-tiny", f"--dir={zoo}"]) == 0
    text = capsys.readouterr().out
    assert f"tiny.inter sha256 {card['fingerprint']['files']['tiny.inter']}" in text
    assert f"command            {TEACHER_CMD}" in text and card["weights"]["sha256"] in text
    assert main(["zoo", "SASRec-L-tiny", "--json", f"--dir={zoo}"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == card["weights"]
    code, err = cli_in_process(capsys, "zoo", "nope", f"--dir={zoo}")
    assert code == 2 and err == "recbole-kd zoo: error: no pretrained teacher 'nope' (available: SASRec-L-tiny)"


def test_zoo_command_and_list_show_the_shipped_teachers(capsys):
    from recbole_kd.cli import list_models, main

    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    names = [c["name"] for c in shipped_cards()]
    for name in names:
        assert f"\n{name} " in out
    listed = {line.split()[0]: line.split()[1] for line in list_models().splitlines()}
    assert all(listed[name] == "pretrained" for name in names)


@pytest.mark.slow
@requires_shared("amazon-beauty-5core")
def test_shipped_beauty_teacher_reproduces_its_card(tmp_path, monkeypatch):
    """Loads the shipped weights through the checked path and evaluates them on the shared data: the test
    NDCG@10 under both protocols equals the card's (about 1.5 minutes on one CPU thread)."""
    from recbole_kd.kd.teacher import evaluate_checkpoints
    from recbole_kd.zoo import mismatch, weights_path, wants_pretrained

    monkeypatch.chdir(tmp_path)
    card = next(c for c in shipped_cards() if c["name"] == "SASRec-L-amazon-beauty-5core")
    from recbole_kd.compat import create_dataset

    config = kd_config_for(card)  # a KD-SASRec run on the shared data with default settings uses it
    assert wants_pretrained(config)[0]["name"] == card["name"] and mismatch(card, config, create_dataset(config)) == []
    result = evaluate_checkpoints(card["dataset"], weights_path(card), {"data_path": SHARED_DATASETS})
    for protocol in ("filter_seen", "recbole"):
        assert round(result["test_result_by_protocol"][protocol]["ndcg@10"], 4) == \
            card["test_result_by_protocol"][protocol]["ndcg@10"], protocol
    assert result["num_params"] == card["num_params"]


def kd_config_for(card):
    from recbole_kd.config import build_config

    return build_config("KD-SASRec", card["dataset"], overrides={"data_path": SHARED_DATASETS, "state": "WARNING"})


def test_bench_cells_keep_training_their_own_teacher(tmp_path):
    """A suite's KD cell without teacher_from trains its teacher as the suite says: a pretrained teacher shipped
    later must not change what a stored cell id means, unless the suite opts in."""
    from recbole_kd.bench.runner import cell_command
    from recbole_kd.bench.suite import Cell

    def command(settings):
        cell = Cell(dataset="amazon-beauty-5core", label="KD", model="KD-SASRec", group="distilled", seed=2020,
                    settings=settings)
        return cell_command(cell, str(tmp_path), {})

    assert "--teacher_pretrained=False" in command({})
    assert "--teacher_pretrained=True" in command({"teacher_pretrained": True})


def test_bench_distils_from_the_shipped_export_of_its_teacher_cell(tmp_path):
    """The shipped beauty teacher was exported from the ecommerce suite's SASRec-L cell: a bench whose cell
    record has no checkpoint on this machine distils from those weights and does not train the teacher
    again; its own checkpoint wins when present; a record whose metrics, seed or id differ from the card
    is not matched (the teacher is trained again)."""
    from recbole_kd.bench.runner import _done_state, cell_checkpoint, cell_command, teacher_reruns
    from recbole_kd.bench.suite import Cell
    from recbole_kd.zoo import exported_from, weights_path

    card = next(c for c in shipped_cards() if c["name"] == "SASRec-L-amazon-beauty-5core")
    cell_file = os.path.join(REPO, card["made_by"]["run_record"])
    with open(cell_file) as f:
        rec = json.load(f)
    assert exported_from(rec)["name"] == card["name"]
    out = str(tmp_path / "out")
    assert cell_checkpoint(rec, out) == weights_path(card)
    hashed = []
    real = artefact.file_sha256
    with pytest.MonkeyPatch.context() as mp:  # the bench asks on every pass over its cells
        for module in (artefact, zoo):
            mp.setattr(module, "file_sha256", lambda path: hashed.append(path) or real(path))
        for _ in range(3):
            assert cell_checkpoint(rec, out) == weights_path(card)
    assert hashed == []  # the unchanged weights were hashed once in this process: by the first call above
    assert _done_state(rec, out) == f"done (weights: pretrained {card['name']})"  # as --dry-run lists it
    teacher = Cell(dataset=rec["dataset"], label="SASRec-L", model="SASRec-L", group="teacher", seed=rec["seed"],
                   settings={})
    kd = Cell(dataset=rec["dataset"], label="KD", model="KD-SASRec", group="distilled", seed=2021, settings={},
              teacher_from="SASRec-L")
    records = {(rec["dataset"], "SASRec-L", rec["seed"]): rec}
    assert teacher_reruns([teacher, kd], records, out, [kd]) == {}
    assert f"--teacher_checkpoint={weights_path(card)}" in cell_command(kd, out, records)

    own = os.path.join(out, rec["result"]["checkpoint"])
    os.makedirs(os.path.dirname(own))
    open(own, "wb").close()
    assert cell_checkpoint(rec, out) == own
    os.remove(own)

    other_metrics = json.loads(json.dumps(rec))
    other_metrics["result"]["test_result_by_protocol"]["filter_seen"]["ndcg@10"] += 0.001
    other_seed = {**rec, "seed": rec["seed"] + 1}
    other_id = {**rec, "id": rec["id"] + "x"}
    for changed in (other_metrics, other_seed, other_id):
        assert exported_from(changed) is None
        assert cell_checkpoint(changed, out) == own
    records = {(rec["dataset"], "SASRec-L", rec["seed"]): other_metrics}
    assert list(teacher_reruns([teacher, kd], records, out, [kd])) == [teacher.id]


def test_cached_file_sha256_hashes_a_file_again_once_it_changes(tmp_path):
    from recbole_kd.serving.artefact import cached_file_sha256, file_sha256

    path = tmp_path / "w.pth"
    path.write_bytes(b"a" * 10)
    first = cached_file_sha256(str(path))
    assert first == file_sha256(str(path))
    path.write_bytes(b"b" * 11)
    assert cached_file_sha256(str(path)) == file_sha256(str(path)) != first
