"""Registry: plugin first, RecBole fall-back; every registered model runs 1 epoch."""
import pytest

from recbole_kd.registry import KINDS, UnknownModelError, get_model, get_trainer, registered
from recbole_kd.trainer import KDTrainerMixin


def test_stock_fallback_and_plugins():
    from recbole.model.sequential_recommender import SASRec

    assert get_model("SASRec") is SASRec
    assert get_model("SASRec-S").__name__ == "SASRec-S"


def test_unknown_model_lists_close_matches():
    with pytest.raises(UnknownModelError, match="BPR"):
        get_model("BRP")


def test_a_broken_plugin_file_is_one_error_naming_file_and_line(tmp_path):
    import sys

    from recbole_kd.registry import load_plugin_files

    syntax = tmp_path / "syntax_plugin.py"
    syntax.write_text("import torch\nx = (\n")
    with pytest.raises(UnknownModelError, match=r"syntax_plugin.py failed to import: SyntaxError: .* \(line 2\)"):
        load_plugin_files([str(syntax)])
    raising = tmp_path / "raising_plugin.py"
    raising.write_text("a = 1\n\nraise ImportError('no module named mylib')\n")
    with pytest.raises(UnknownModelError, match=r"raising_plugin.py failed to import: ImportError: no module named mylib "
                                               r"\(line 3\)"):
        load_plugin_files([str(raising)])
    # not left half-imported: fixing the file and loading again works
    assert "recbole_kd_plugin_raising_plugin" not in sys.modules
    raising.write_text("a = 1\n")
    load_plugin_files([str(raising)])
    assert sys.modules["recbole_kd_plugin_raising_plugin"].a == 1


def test_trainers_have_safe_checkpoint_hooks():
    from recbole.utils import ModelType

    for name, mtype in [("SASRec", ModelType.SEQUENTIAL), ("BPR", ModelType.GENERAL), ("SASRec-S", ModelType.SEQUENTIAL)]:
        assert issubclass(get_trainer(mtype, name), KDTrainerMixin)


def test_every_entry_has_kind_and_description():
    for name, entry in registered().items():
        assert entry.kind in KINDS and entry.description, name


@pytest.mark.parametrize("name", sorted(registered()))
def test_registered_model_runs_one_epoch(name, tiny_data, workdir):
    """Parametrised over the registry: a new model file is picked up automatically."""
    from conftest import write_tiny_dataset
    from recbole_kd.quick_start import run

    overrides = {"data_path": tiny_data, "epochs": 1, "show_progress": False, "state": "WARNING"}
    if registered()[name].kind == "transfer":  # a second dataset to transfer from
        write_tiny_dataset(tiny_data, name="tinysrc", seed=1)
        overrides["source"] = {"dataset": "tinysrc", "epochs": 1}
    res = run(name, "tiny", overrides=overrides)
    assert res["model"] == name
    assert 0.0 <= res["test_result"]["ndcg@10"] <= 1.0
    assert res["num_params"] > 0


def test_ml1m_dataset_yaml_gives_its_settings_to_student_and_teacher():
    """`--dataset=ml-1m` alone: max length 200, dropout 0.2, patience 10 for the model and the teacher a
    KD run trains (the dataset yaml applies to both); other datasets keep the package defaults."""
    from recbole_kd.config import build_config
    from recbole_kd.kd.teacher_spec import teacher_overrides

    student = build_config("KD-SASRec", "ml-1m", check_data=False)
    teacher = build_config("SASRec-L", "ml-1m", overrides=teacher_overrides(student), check_data=False)
    for config in (student, teacher):
        assert config["MAX_ITEM_LIST_LENGTH"] == 200 and config["stopping_step"] == 10
        assert config["hidden_dropout_prob"] == 0.2 and config["attn_dropout_prob"] == 0.2
    assert teacher["hidden_size"] == 128  # the teacher preset of kd.yaml still applies
    assert build_config("SASRec-S", "ml-100k", check_data=False)["MAX_ITEM_LIST_LENGTH"] == 50
    assert build_config("SASRec-S", "ml-1m", overrides={"MAX_ITEM_LIST_LENGTH": 100},
                        check_data=False)["MAX_ITEM_LIST_LENGTH"] == 100
