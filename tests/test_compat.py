"""Each RecBole 1.2.1 trap on today's stack, handled in recbole_kd/compat.py or checkpoint.py."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import recbole_kd  # noqa: F401  (applies the shims)
from conftest import FAST

from recbole_kd import compat
from recbole_kd.checkpoint import CheckpointError, atomic_save, load_checkpoint


def test_numpy_aliases_config_builds(workdir):
    """(a) RecBole's Config.compatibility_settings reads np.float_ (gone in numpy 2)."""
    from recbole.config import Config

    assert Config.compatibility_settings is compat._compatibility_settings
    cfg = Config(model="BPR", dataset="ml-100k", config_dict={"state": "WARNING"})
    assert cfg["model"] == "BPR"
    # RecBole code relies on these legacy aliases (e.g. np.bool in GAUC, np.float in _fill_nan)
    assert np.float is np.float64 or np.float is float or np.float.__name__ == "float64"


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) < "2.0.0", reason="trap only exists on numpy >= 2")
def test_numpy_trap_is_real_without_shim():
    code = "import numpy as np; np.float_"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "AttributeError" in proc.stderr


def test_pandas_fill_nan_fills_float_and_token(workdir):
    """(c) Dataset._fill_nan must really fill NaN (pandas >= 3 made RecBole's inplace fillna a no-op)."""
    from recbole.data.dataset.dataset import Dataset
    from recbole.utils import FeatureType

    class Stub:
        logger = __import__("logging").getLogger("stub")

    stub = Stub()
    stub.feat_name_list = ["inter_feat"]
    stub.inter_feat = pd.DataFrame({"price": [1.0, np.nan, 3.0], "cat": [1.0, np.nan, 2.0]})
    stub.field2type = {"price": FeatureType.FLOAT, "cat": FeatureType.TOKEN}
    Dataset._fill_nan(stub)
    assert not stub.inter_feat.isna().any().any()
    assert stub.inter_feat["price"].tolist() == [1.0, 2.0, 3.0]
    assert stub.inter_feat["cat"].tolist() == [1.0, 0.0, 2.0]


@pytest.mark.skipif(int(pd.__version__.split(".")[0]) < 3, reason="trap only exists on pandas >= 3")
def test_pandas_trap_is_real_without_shim():
    df = pd.DataFrame({"x": [1.0, np.nan]})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df["x"].fillna(value=0.0, inplace=True)  # what RecBole 1.2.1 does
    assert df["x"].isna().any()


def test_nan_feature_filled_through_recbole_loader(workdir, tmp_path):
    """End to end: a float feature with a missing value is mean-filled by create_dataset."""
    from recbole.config import Config
    from recbole.data import create_dataset

    folder = tmp_path / "ds" / "nanfeat"
    folder.mkdir(parents=True)
    rows = ["user_id:token\titem_id:token\ttimestamp:float\tprice:float"]
    for u in range(1, 6):
        for t in range(5):
            price = "" if (u, t) == (2, 3) else str(float(t + 1))
            rows.append(f"{u}\t{t + 1}\t{t}\t{price}")
    (folder / "nanfeat.inter").write_text("\n".join(rows) + "\n")
    cfg = Config(
        model="BPR",
        dataset="nanfeat",
        config_dict={"data_path": str(tmp_path / "ds"), "state": "WARNING", "normalize_all": False,
                     "load_col": {"inter": ["user_id", "item_id", "timestamp", "price"]}},
    )
    ds = create_dataset(cfg)
    price = ds.inter_feat["price"]
    assert not price.isna().any() and price.iloc[0] == 1.0


def test_pandas_token_seq_trap_is_real_without_shim():
    from recbole_kd import compat

    s = pd.Series([np.array([1, 2]), np.array([3])])
    if int(pd.__version__.split(".")[0]) < 3:
        pytest.skip("pandas < 3: Series.agg(len) is per element, no shim needed")
    assert compat._ORIGINAL_AGG(s, len) == 2  # pandas 3: the Series' own length, not [2, 1]
    assert s.agg(len) == 2  # outside RecBole's methods pandas behaves as pandas
    wrapped = compat._elementwise_len_agg(lambda series: series.agg(len))
    assert list(wrapped(s)) == [2, 1]  # inside them: per element, as RecBole expects
    assert s.agg(np.concatenate).tolist() == [1, 2, 3]


def test_token_seq_feature_loads_through_recbole(workdir, tmp_path):
    """A title column (token_seq) in .item: pandas 3 broke RecBole's remapping; the shim restores it."""
    from recbole.config import Config
    from recbole.data import create_dataset

    folder = tmp_path / "ds" / "seqfeat"
    folder.mkdir(parents=True)
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    rows += [f"{u}\t{t + 1}\t{t}" for u in range(1, 6) for t in range(5)]
    (folder / "seqfeat.inter").write_text("\n".join(rows) + "\n")
    items = ["item_id:token\ttitle:token_seq"] + [f"{i}\tred shoe {'x' * i}" for i in range(1, 6)]
    (folder / "seqfeat.item").write_text("\n".join(items) + "\n")
    cfg = Config(model="BPR", dataset="seqfeat", config_dict={
        "data_path": str(tmp_path / "ds"), "state": "WARNING",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title"]}})
    ds = create_dataset(cfg)
    titles = ds.item_feat["title"]
    tokens = ds.field2id_token["title"]
    row = ds.field2token_id["item_id"]["3"]
    assert [tokens[t] for t in titles[row].tolist() if t] == ["red", "shoe", "xxx"]


def _write_items_with_empty_fields(tmp_path, name="emptyseq"):
    folder = tmp_path / "ds" / name
    folder.mkdir(parents=True)
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    rows += [f"{u}\t{t + 1}\t{t}" for u in range(1, 6) for t in range(5)]
    (folder / f"{name}.inter").write_text("\n".join(rows) + "\n")
    items = ["item_id:token\ttitle:token_seq\tgenre:token_seq"]
    items += [f"{i}\t{'red shoe' if i != 2 else ''}\t{'Drama' if i != 3 else ''}" for i in range(1, 6)]
    (folder / f"{name}.item").write_text("\n".join(items) + "\n")
    return str(tmp_path / "ds")


def test_pandas_empty_seq_field_trap_is_real_without_shim(tmp_path):
    """(c3) pandas 3: RecBole's in-place fillna of an empty sequence field leaves NaN, and its
    split then fails."""
    if int(pd.__version__.split(".")[0]) < 3:
        pytest.skip("pandas < 3: the in-place fillna works, no shim needed")
    root = _write_items_with_empty_fields(tmp_path)
    df = pd.read_csv(os.path.join(root, "emptyseq", "emptyseq.item"), sep="\t", dtype=str, engine="python")
    df["title:token_seq"].fillna(value="", inplace=True)  # what RecBole's _load_feat does
    assert df["title:token_seq"].isna().sum() == 1
    with pytest.raises(AttributeError):
        [v.split(" ") for v in df["title:token_seq"].values]
    filled = compat._SeqFillingPandas(pd).read_csv(os.path.join(root, "emptyseq", "emptyseq.item"), sep="\t",
                                                   dtype=str, engine="python")
    assert filled["title:token_seq"].tolist()[1] == "" and not filled.isna().any().any()


def test_empty_seq_field_loads_through_recbole(workdir, tmp_path):
    """An item without a title or genre loads as an empty sequence."""
    from recbole.config import Config
    from recbole.data import create_dataset

    cfg = Config(model="BPR", dataset="emptyseq", config_dict={
        "data_path": _write_items_with_empty_fields(tmp_path), "state": "WARNING",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "genre"]}})
    ds = create_dataset(cfg)
    row = ds.field2token_id["item_id"]
    words = {(f, i): [ds.field2id_token[f][t] for t in ds.item_feat[f][row[i]].tolist() if t]
             for f in ("title", "genre") for i in ("1", "2", "3")}
    assert words[("title", "1")] == ["red", "shoe"] and words[("title", "2")] == []
    assert words[("genre", "1")] == ["Drama"] and words[("genre", "3")] == []


def test_quick_start_imports_without_ray():
    """(d) recbole.quick_start imports ray at module import; it must import regardless."""
    import recbole.quick_start  # noqa: F401

    import ray

    if isinstance(ray, compat._MissingRay):
        with pytest.raises(ImportError, match="recbole-kd\\[tune\\]"):
            ray.tune.run  # noqa: B018  (the attribute access is what raises)


def test_ray_stub_installed_when_ray_broken(monkeypatch):
    """The stand-in is used exactly when importing ray fails."""
    import builtins

    real_import = builtins.__import__

    def broken(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'pkg_resources'")
        return real_import(name, *a, **k)

    saved = {k: v for k, v in sys.modules.items() if k == "ray" or k.startswith("ray.")}
    for k in saved:
        monkeypatch.delitem(sys.modules, k)
    monkeypatch.setattr(builtins, "__import__", broken)
    monkeypatch.setattr("importlib.import_module", lambda name: broken(name))
    compat.patch_ray_import()
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert isinstance(sys.modules["ray"], compat._MissingRay)
    from ray import tune

    with pytest.raises(ImportError, match="pkg_resources"):
        tune.run  # noqa: B018  (the attribute access is what raises)
    for k in [k for k in sys.modules if k == "ray" or k.startswith("ray.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def test_ray_tune_imports_with_the_tune_extra():
    """(d) with the tune extra (ray 2.6.3 + setuptools<81) the real ray.tune imports: its loggers
    read np.bool8 (gone in numpy 2), one of the aliases of (a)."""
    import ray

    assert not isinstance(ray, compat._MissingRay), "the test extra installs ray[tune]==2.6.3"
    from ray import tune

    assert callable(tune.Tuner)
    assert np.bool8 is np.bool_


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) < "2.0.0", reason="trap only exists on numpy >= 2")
def test_ray_tune_trap_is_real_without_alias():
    code = "from ray import tune"
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "bool8" in proc.stderr


def test_distributed_config_on_cpu_uses_gloo(workdir):
    """(e) RecBole's Config starts an NCCL group on cuda:<rank> whenever local_rank is set; here a
    one-process gloo group on the CPU, started once even if a run builds several configs."""
    import torch.distributed as dist
    from recbole.config import Config

    from recbole_kd.distributed import free_port

    settings = {"state": "WARNING", "local_rank": 0, "world_size": 1, "nproc": 1, "offset": 0,
                "ip": "127.0.0.1", "port": free_port()}
    try:
        cfg = Config(model="BPR", dataset="ml-100k", config_dict=dict(settings))
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert cfg["device"].type == "cpu" and cfg["single_spec"] is False
        Config(model="BPR", dataset="ml-100k", config_dict=dict(settings))  # no second init_process_group
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_checkpoints_load_safely_and_foreign_pickles_refused(tmp_path):
    """(b) our checkpoints load with weights_only=True; RecBole-style pickles stay refused."""
    ours = tmp_path / "ours.pth"
    atomic_save({"format": "recbole-kd-checkpoint", "config": {"model": "X"}, "state_dict": {"w": torch.ones(2)}}, ours)
    state = load_checkpoint(ours)
    assert torch.equal(state["state_dict"]["w"], torch.ones(2))

    class Evil:  # an arbitrary object, like RecBole's pickled Config
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    foreign = tmp_path / "foreign.pth"
    torch.save({"config": Evil(), "state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a recbole-kd checkpoint .it pickles Python objects"):
        load_checkpoint(foreign)
    # safe loading is still on for everybody else in the process
    with pytest.raises(pickle.UnpicklingError):
        torch.load(foreign)


def test_trainer_checkpoint_roundtrip_with_safe_loader(workdir, tiny_data):
    """Trainer.evaluate(load_best_model=True) works on torch >= 2.6 with our checkpoints."""
    from recbole_kd.quick_start import run

    res = run("BPR", "tiny", overrides={"data_path": tiny_data, "epochs": 1, "show_progress": False, "state": "WARNING"})
    state = torch.load(res["checkpoint"], weights_only=True)
    assert state["config"]["model"] == "BPR"
    assert res["test_result"]["ndcg@10"] >= 0.0


def test_ensure_dir_race_between_processes_is_harmless(tmp_path, monkeypatch):
    """Trap: RecBole's ensure_dir checks os.path.exists and then calls os.makedirs, so workers of a
    distributed run starting together (each calls init_logger -> ensure_dir('./log')) race and one
    dies with FileExistsError. Simulated: the folder appears between the check and the creation."""
    import importlib

    from recbole_kd import compat

    compat.apply()
    target = tmp_path / "log"
    target.mkdir()
    monkeypatch.setattr(os.path, "exists", lambda p: False)  # another process created it meanwhile
    for name in compat._ENSURE_DIR_MODULES:
        module = importlib.import_module(name)
        module.ensure_dir(str(target))  # no FileExistsError
    with pytest.raises(FileExistsError):
        compat._ORIGINAL_ENSURE_DIR(str(target))


def test_recbole_trainer_builds_the_grad_scaler_without_the_deprecation():
    """(i) RecBole builds ``torch.cuda.amp.GradScaler(enabled=...)`` every epoch: a FutureWarning on every run."""
    import warnings

    from recbole.trainer import trainer

    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("torch < 2.3: torch.cuda.amp.GradScaler is not deprecated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scaler = trainer.amp.GradScaler(enabled=False)
        trainer.amp.autocast(enabled=False)
    assert isinstance(scaler, torch.amp.GradScaler) and not scaler.is_enabled()
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message) for w in caught]
    assert trainer.amp.custom_fwd is torch.cuda.amp.custom_fwd  # every other name is torch.cuda.amp's


def test_grad_scaler_trap_is_real_without_shim():
    import warnings

    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("torch < 2.3: torch.cuda.amp.GradScaler is not deprecated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.amp.GradScaler(enabled=False)
    assert any(issubclass(w.category, FutureWarning) and "GradScaler" in str(w.message) for w in caught)


def test_dataframe_columns_reach_torch_as_writable_copies():
    """(j) pandas' copy-on-write hands out read-only ``.values``; torch warned ("not writable") and its
    tensor would have shared pandas' protected buffer."""
    from recbole.data.dataset.dataset import Dataset
    from recbole.utils import FeatureType

    class Stub:
        field2type = {"user_id": FeatureType.TOKEN, "price": FeatureType.FLOAT}
        config = {"numerical_features": []}

    frame = pd.DataFrame({"user_id": np.arange(1, 6, dtype=np.int64), "price": np.linspace(0.5, 2.5, 5)})
    inter = Dataset._dataframe_to_interaction(Stub(), frame)
    assert inter["user_id"].tolist() == [1, 2, 3, 4, 5] and inter["price"].tolist() == [0.5, 1.0, 1.5, 2.0, 2.5]
    for name in ("user_id", "price"):
        assert not np.shares_memory(inter[name].numpy(), frame[name].values), name


@pytest.mark.skipif(int(pd.__version__.split(".")[0]) < 3, reason="read-only .values come with pandas 3's copy-on-write")
def test_read_only_columns_trap_is_real_without_shim():
    frame = pd.DataFrame({"user_id": np.arange(1, 6, dtype=np.int64)})
    assert not frame["user_id"].values.flags.writeable
    code = ("import warnings, numpy as np, pandas as pd, torch\n"
            "warnings.simplefilter('always')\n"
            "torch.LongTensor(pd.DataFrame({'a': np.arange(3)})['a'].values)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "not writable" in proc.stderr


def _general_eval(tiny_data, eval_batch_size, trainer_cls=None, **settings):
    """(users per batch, valid result) of an untrained MF-S on 'tiny' (40 users, 60 items)."""
    from recbole.utils import init_seed

    from recbole_kd.config import build_config
    from recbole_kd.quick_start import prepare
    from recbole_kd.registry import get_entry, get_trainer

    config = build_config(
        "MF-S", "tiny", overrides={"data_path": tiny_data, "eval_batch_size": eval_batch_size, **FAST, **settings}
    )
    init_seed(2020, True)
    _, train_data, valid_data, _ = prepare(config)
    model = get_entry("MF-S").cls(config, train_data._dataset)
    trainer = (trainer_cls or get_trainer(config["MODEL_TYPE"], "MF-S"))(config, model)
    return valid_data.step, dict(trainer.evaluate(valid_data, load_best_model=False))


def test_general_models_evaluate_eval_batch_size_users_per_batch(workdir, tiny_data):
    """(k) RecBole's rule, eval_batch_size // item_num users, gives 8 // 61 -> 1 user per batch here;
    the shim gives 8. Metrics are the same at any batch size, and equal RecBole's trainer's under
    RecBole's protocol ('tiny' repeats items, so filtering every seen item differs there)."""
    from recbole.trainer import Trainer

    step8, ours8 = _general_eval(tiny_data, 8)
    step1, ours1 = _general_eval(tiny_data, 1)
    _, ours40 = _general_eval(tiny_data, 40, filter_seen=False)
    _, stock1 = _general_eval(tiny_data, 1, Trainer)
    assert (step8, step1) == (8, 1)
    assert ours8 == ours1 and ours8["ndcg@20"] > 0
    assert {k: ours40[k] for k in stock1} == stock1
