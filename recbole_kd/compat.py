"""The one place where RecBole 1.2.1 is made to work on today's stack, and safe.

(Over 400 lines on purpose: every RecBole trap is handled here and nowhere else, so a reader finds them all
in one file, each next to its explanation.)

Each shim below is idempotent, applied by :func:`apply` (called when
``recbole_kd`` is imported), and has a test that fails without it: (a)-(e) and (i)-(k) in
``tests/test_compat.py``, the safety shims (f)-(h) in ``tests/test_hardening.py``.

==========================  ======================================================
trap                        how it is handled
==========================  ======================================================
(a) numpy >= 2              shim: ``Config.compatibility_settings`` reads
                            ``np.float_``/``np.complex_``/``np.unicode_`` (removed
                            in numpy 2). We replace it with a version that sets the
                            same legacy aliases RecBole's own code relies on
                            (``np.float``, ``np.bool`` ...) from names that exist
                            on every numpy. No pin: numpy 2 is what torch wheels
                            are built against.
(b) torch >= 2.6            not a global patch: RecBole's trainers call
                            ``torch.load`` without ``weights_only``. We never let
                            them: our trainers save checkpoints that hold only
                            tensors and plain Python values (no pickled Config)
                            and load them with ``weights_only=True`` through
                            :mod:`recbole_kd.checkpoint`. Unknown pickles stay
                            refused, as torch intends.
(c) pandas >= 3             shim: ``Dataset._fill_nan`` used
                            ``feat[field].fillna(..., inplace=True)``, a silent
                            no-op under copy-on-write; replaced by assignment.
(c2) pandas >= 3            shim: ``Series.agg(len)`` is now one scalar, not
                            per-element lengths, so RecBole's re-splitting of
                            token_seq columns (``_remap`` ...) fails on any
                            dataset with e.g. a title column; inside those
                            methods only, ``agg(len)`` is per element again.
(c3) pandas >= 3            shim: ``Dataset._load_feat`` fills an empty
                            token_seq / float_seq field with ``df[field].fillna(
                            "", inplace=True)``, a no-op under copy-on-write: the
                            NaN reaches ``str.split`` and any atomic file with an
                            empty sequence field (an item without a genre) fails
                            to load. RecBole's dataset module reads files through
                            a pandas whose ``read_csv`` fills those fields itself.
(d) ``ray`` at import       shim: ``recbole.quick_start`` does ``from ray import
                            tune`` at import time, and ray (only needed for
                            hyper-parameter tuning) is often missing or broken
                            (ray 2.6 imports ``pkg_resources``, gone from new
                            setuptools). If ray cannot be imported we register a
                            stand-in module that raises a clear error only when
                            tuning is actually used. With the ``tune`` extra
                            (ray 2.6.3, the newest RecBole allows, plus
                            ``setuptools<81``) ray imports; its pkg_resources
                            deprecation warning is silenced here, and ray's
                            ``np.bool8`` (gone in numpy 2) is one of the
                            aliases of (a); Ray's worker processes apply them
                            through :func:`ray_worker_setup`.
(e) distributed on CPU      shim: ``Config._init_device`` always starts an
                            NCCL process group on ``cuda:<local_rank>``; on a
                            machine without CUDA we start gloo on the CPU (and
                            never start a group twice when a run builds
                            several configs). DDP's ``device_ids`` is handled
                            in our trainer (CPU modules need ``None``).
(f) pickled data files      shim: ``create_dataset`` ``pickle.load``s
                            ``<checkpoint_dir>/<dataset>-<Class>.pth`` (or
                            ``dataset_save_path``) and ``data_preparation``
                            ``<checkpoint_dir>/<dataset>-for-<model>-dataloader.pth``
                            (or ``dataloaders_save_path``) whenever they exist:
                            a file left in a checkpoint folder runs code. The
                            dataset is always built from its atomic files; such a
                            file is ignored with a warning. ``build_config``
                            refuses the four settings that save or load them.
(g) settings are evaluated  shim: ``Config._convert_config_dict`` ``eval()``s every
                            string value of a config_dict / command line (so a
                            value runs code, and ``--checkpoint_dir=2024`` is an
                            int). Values are parsed with ``ast.literal_eval``
                            (numbers, strings, lists, dicts, tuples, True/False/
                            None; ``true``/``false`` as before) and anything else
                            stays the plain string. Path settings
                            (:data:`PATH_KEYS`, and keys ending in ``_dir``,
                            ``_path``, ``_file``) stay strings (``None``: unset),
                            except a list of strings (``--teacher_checkpoint=
                            ['a.pth', 'b.pth']``: an ensemble teacher).
(h) ml-100k's data_path     shim: ``Config._set_default_parameters`` points
                            ml-100k at the copy inside the recbole wheel even when
                            ``data_path`` is given, so ``--data_path=DIR`` was
                            silently ignored. A ``data_path`` the user set (config
                            file, config_dict, command line) is honoured: ml-100k
                            is read from ``DIR/ml-100k/``; without one the
                            embedded copy stays the default.
(i) torch.cuda.amp           shim: RecBole's trainers build ``torch.cuda.amp.
                            GradScaler(enabled=...)`` every epoch (and NCL's
                            ``amp.autocast``), deprecated since torch 2.4 with a
                            FutureWarning on every run. Its trainer module sees
                            ``torch.amp.GradScaler("cuda", ...)`` / ``torch.amp.
                            autocast("cuda", ...)``, the same objects torch's
                            deprecated names build; nothing else changes.
(j) read-only columns       shim: under pandas' copy-on-write a column's
                            ``.values`` is a read-only view, and RecBole's
                            ``Dataset._dataframe_to_interaction`` hands it to
                            ``torch.LongTensor`` (torch: "The given NumPy array
                            is not writable", and the tensor would share pandas'
                            protected buffer). It now gets a writable copy of each
                            read-only column (one column at a time; the frame is
                            dropped afterwards, so memory ends where it did).
(k) general-model eval      shim: ``FullSortEvalDataLoader`` puts
    batches                 ``eval_batch_size // item_num`` users in a batch for
                            general models (MF, BPR ...), so any catalogue larger
                            than eval_batch_size is evaluated one user per batch
                            (amazon-beauty-5core: 22k batches a pass, 8.5x slower
                            than 86 users a batch). ``eval_batch_size`` now counts
                            users for every model type, as RecBole does for
                            sequential models. Rankings and metrics are unchanged.
==========================  ======================================================
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
import threading
import types

import numpy as np
import yaml

from recbole_kd.report import user_warning

_APPLIED = False


# (a) numpy --------------------------------------------------------------------------------------
_NUMPY_ALIASES = {
    "bool": np.bool_,
    "int": np.int_,
    "float": np.float64,
    "complex": np.complex128,
    "object": np.object_,
    "str": np.str_,
    "long": np.int_,
    "unicode": np.str_,
    "bool8": np.bool_,  # ray 2.6.3's tune loggers (removed in numpy 2)
}


def _compatibility_settings(self=None):
    """Drop-in for ``Config.compatibility_settings`` that works on numpy 1 and 2."""
    for name, value in _NUMPY_ALIASES.items():
        # numpy 2 raises AttributeError for removed aliases only through module __getattr__;
        # setting them as attributes is what RecBole 1.2.1 itself does on numpy 1.
        if name not in np.__dict__:
            setattr(np, name, value)


def patch_numpy_aliases() -> None:
    from recbole.config.configurator import Config

    Config.compatibility_settings = _compatibility_settings
    _compatibility_settings()


# (c) pandas -------------------------------------------------------------------------------------
def _fill_nan(self):
    """Copy-on-write safe version of ``recbole.data.dataset.Dataset._fill_nan``."""
    from recbole.utils import FeatureType, set_color

    self.logger.debug(set_color("Filling nan", "green"))
    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(
                    lambda x, dtype=dtype: np.array([], dtype=dtype) if isinstance(x, float) else x
                )


def patch_fill_nan() -> None:
    from recbole.data.dataset.dataset import Dataset

    Dataset._fill_nan = _fill_nan


# (c2) pandas >= 3: ``Series.agg(len)`` became the length of the whole Series (a scalar) instead of
# the length of each element. RecBole uses it to re-split token_seq columns (``_remap``,
# ``_normalize``, ``_discretization``, KG ``_reset_ent_remapID``): every dataset with a token_seq
# feature (e.g. a title column in ``.item``) fails to load. Inside those methods only, ``agg(len)``
# is the per-element length again; pandas itself is not changed for anything else.
_AGG_LOCAL = threading.local()
_ORIGINAL_AGG = None


def _series_agg(self, func=None, axis=0, *args, **kwargs):
    if func is len and getattr(_AGG_LOCAL, "depth", 0):
        return self.map(len)
    return _ORIGINAL_AGG(self, func, axis, *args, **kwargs)


def _elementwise_len_agg(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        _AGG_LOCAL.depth = getattr(_AGG_LOCAL, "depth", 0) + 1
        try:
            return method(*args, **kwargs)
        finally:
            _AGG_LOCAL.depth -= 1

    wrapper._rkd_compat = True
    return wrapper


def patch_token_seq_agg() -> None:
    global _ORIGINAL_AGG
    import pandas as pd
    from recbole.data.dataset.dataset import Dataset
    from recbole.data.dataset.kg_dataset import KnowledgeBasedDataset

    if int(pd.__version__.split(".")[0]) < 3:
        return
    if _ORIGINAL_AGG is None:
        _ORIGINAL_AGG = pd.Series.agg
        pd.Series.agg = _series_agg
        pd.Series.aggregate = _series_agg
    for cls, name in ((Dataset, "_remap"), (Dataset, "_normalize"), (Dataset, "_discretization"),
                      (KnowledgeBasedDataset, "_reset_ent_remapID")):
        method = cls.__dict__[name]
        if not getattr(method, "_rkd_compat", False):
            setattr(cls, name, _elementwise_len_agg(method))


# (c3) pandas >= 3: empty sequence fields in atomic files -------------------------------------------
class _SeqFillingPandas:
    """pandas as seen by ``recbole.data.dataset.dataset``: ``read_csv`` returns empty token_seq /
    float_seq fields (header ``name:token_seq``) as "" instead of NaN, which RecBole's own
    ``fillna(..., inplace=True)`` no longer does under copy-on-write. Everything else is pandas."""

    def __init__(self, pandas_module):
        self._pd = pandas_module

    def __getattr__(self, name):
        return getattr(self._pd, name)

    def read_csv(self, *args, **kwargs):
        df = self._pd.read_csv(*args, **kwargs)
        for col in df.columns:
            if str(col).rpartition(":")[2] in ("token_seq", "float_seq") and df[col].isna().any():
                df[col] = df[col].fillna("")
        return df


def patch_seq_fillna() -> None:
    import pandas as pd

    module = importlib.import_module("recbole.data.dataset.dataset")
    if int(pd.__version__.split(".")[0]) < 3 or isinstance(module.pd, _SeqFillingPandas):
        return
    module.pd = _SeqFillingPandas(module.pd)


# (d) ray ----------------------------------------------------------------------------------------
class _MissingRay(types.ModuleType):
    """Stand-in for ``ray`` / ``ray.tune`` when the real package cannot be imported."""

    def __init__(self, name: str, reason: str):
        super().__init__(name)
        self.__dict__["_reason"] = reason
        self.__dict__["__path__"] = []  # behave as a package so `from ray import tune` works

    def __getattr__(self, item):
        if item.startswith("__"):
            raise AttributeError(item)
        raise ImportError(
            f"ray is needed for hyper-parameter tuning but cannot be imported ({self._reason}); "
            "install it with: pip install 'recbole-kd[tune]'"
        )


def patch_ray_import() -> None:
    if "ray" in sys.modules and not isinstance(sys.modules["ray"], _MissingRay):
        return
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pkg_resources.*")
            importlib.import_module("ray.tune")
        return
    except Exception as exc:  # ImportError, or ray's own import-time failures
        reason = f"{type(exc).__name__}: {exc}"
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        del sys.modules[name]
    ray = _MissingRay("ray", reason)
    tune = _MissingRay("ray.tune", reason)
    ray.__dict__["tune"] = tune
    sys.modules["ray"] = ray
    sys.modules["ray.tune"] = tune


def ray_worker_setup() -> None:
    """Ray's ``worker_process_setup_hook``: a Ray worker process imports ray.tune (and our
    trainable) before any of our code runs, so it needs the numpy aliases first."""
    _compatibility_settings()
    apply()


# (e) distributed on CPU -------------------------------------------------------------------------
_ORIGINAL_INIT_DEVICE = None


def _init_device(self):
    d = self.final_config_dict
    if "local_rank" not in d:
        return _ORIGINAL_INIT_DEVICE(self)
    import os

    import torch
    import torch.distributed as dist

    gpu_id = d["gpu_id"]
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, (tuple, list)) else str(gpu_id)
    d["gpu_id"] = gpu_id
    use_cuda = bool(gpu_id) and d.get("use_gpu", True) is not False and torch.cuda.is_available()
    if use_cuda:
        if len(gpu_id.split(",")) < int(d.get("nproc") or 1):
            raise ValueError(f"nproc={d.get('nproc')} processes need one GPU each in gpu_id (got {gpu_id!r}); "
                             "e.g. --gpu_id=0,1")
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    local_rank = int(d["local_rank"])
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            rank=local_rank + int(d.get("offset") or 0),
            world_size=int(d["world_size"]),
            init_method=f"tcp://{d.get('ip') or 'localhost'}:{d.get('port') or 5678}",
        )
    if use_cuda:
        d["device"] = torch.device("cuda", local_rank)
        torch.cuda.set_device(local_rank)
    else:
        d["device"] = torch.device("cpu")
    d["single_spec"] = False
    if local_rank + int(d.get("offset") or 0) != 0:
        d["state"] = "error"
        d["show_progress"] = False
        d["verbose"] = False


def patch_init_device() -> None:
    global _ORIGINAL_INIT_DEVICE
    from recbole.config.configurator import Config

    if _ORIGINAL_INIT_DEVICE is None:
        _ORIGINAL_INIT_DEVICE = Config._init_device
        Config._init_device = _init_device


def _ensure_dir(dir_path):
    """RecBole's ensure_dir checks, then creates: processes starting together (a distributed
    run's workers, each calling init_logger) race and one dies with FileExistsError."""
    os.makedirs(dir_path, exist_ok=True)


# every RecBole module that imported ensure_dir by name
_ENSURE_DIR_MODULES = ("recbole.utils.utils", "recbole.utils", "recbole.utils.logger", "recbole.trainer.trainer",
                       "recbole.data.dataset.dataset", "recbole.data.utils")


_ORIGINAL_ENSURE_DIR = None


def patch_ensure_dir() -> None:
    global _ORIGINAL_ENSURE_DIR
    utils = importlib.import_module("recbole.utils.utils")
    if _ORIGINAL_ENSURE_DIR is None and utils.ensure_dir is not _ensure_dir:
        _ORIGINAL_ENSURE_DIR = utils.ensure_dir
    for name in _ENSURE_DIR_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "ensure_dir"):
            module.ensure_dir = _ensure_dir


# (f) pickled datasets / dataloaders -------------------------------------------------------------------
def _pickle_ignored(path: str, what: str) -> None:
    if path and os.path.exists(path):
        from logging import getLogger

        user_warning(f"ignoring {path}: recbole-kd never loads a pickled {what} (unpickling runs code); "
                     "it is built from the atomic files", getLogger())


def create_dataset(config):
    """``recbole.data.create_dataset`` without the pickle: the dataset class RecBole would pick, always
    built from the atomic files (a saved ``.pth`` file is ignored, with a warning)."""
    from recbole.utils import ModelType

    dataset_module = importlib.import_module("recbole.data.dataset")
    if hasattr(dataset_module, config["model"] + "Dataset"):
        dataset_class = getattr(dataset_module, config["model"] + "Dataset")
    else:
        type2class = {
            ModelType.GENERAL: "Dataset",
            ModelType.SEQUENTIAL: "SequentialDataset",
            ModelType.CONTEXT: "Dataset",
            ModelType.KNOWLEDGE: "KnowledgeBasedDataset",
            ModelType.TRADITIONAL: "Dataset",
            ModelType.DECISIONTREE: "Dataset",
        }
        dataset_class = getattr(dataset_module, type2class[config["MODEL_TYPE"]])
    saved = config["dataset_save_path"] or os.path.join(
        str(config["checkpoint_dir"]), f'{config["dataset"]}-{dataset_class.__name__}.pth')
    _pickle_ignored(saved, "dataset")
    return dataset_class(config)


def load_split_dataloaders(config):
    """``recbole.data.utils.load_split_dataloaders`` never loads: ``data_preparation`` builds the loaders."""
    saved = config["dataloaders_save_path"] or os.path.join(
        str(config["checkpoint_dir"]), f'{config["dataset"]}-for-{config["model"]}-dataloader.pth')
    _pickle_ignored(saved, "dataloader")
    return None


def patch_no_pickled_data() -> None:
    utils = importlib.import_module("recbole.data.utils")
    utils.create_dataset = create_dataset
    utils.load_split_dataloaders = load_split_dataloaders  # data_preparation looks it up here
    for name in ("recbole.data", "recbole.quick_start.quick_start", "recbole.quick_start"):
        module = sys.modules.get(name)  # recbole.quick_start imports ray: patched only if already loaded
        if module is not None and hasattr(module, "create_dataset"):
            module.create_dataset = create_dataset
        if module is not None and hasattr(module, "load_split_dataloaders"):
            module.load_split_dataloaders = load_split_dataloaders


# (g) setting values: literals, never evaluated ---------------------------------------------------------
PATH_KEYS = frozenset({
    "checkpoint_dir", "data_path", "result_file", "teacher_dir", "teacher_checkpoint", "kd_cache_dir",
    "text_cache_dir", "transfer_dir", "dataset_save_path", "dataloaders_save_path", "config_files", "plugins",
})


def is_path_key(key) -> bool:
    key = str(key)
    return key in PATH_KEYS or key.endswith(("_dir", "_path", "_file"))


_NOT_A_LITERAL = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)  # what ast.literal_eval raises


def _plain(value) -> bool:
    """Only what a Python literal can spell: YAML also reads dates and timestamps, which no setting takes."""
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def literal_value(key, param):
    """A ``--key=value`` string as the value it spells (a Python literal), never evaluated."""
    import ast

    if not isinstance(param, str):
        return param
    if is_path_key(key):
        text = param.strip()
        if text.startswith("[") and text.endswith("]"):  # a list of paths (teacher_checkpoint: an ensemble)
            try:
                value = ast.literal_eval(text)
            except _NOT_A_LITERAL:
                return param
            return list(value) if isinstance(value, list) and all(isinstance(v, str) for v in value) else param
        return None if text in ("None", "~") else param
    try:
        value = ast.literal_eval(param)
    except _NOT_A_LITERAL:
        text = param.strip()
        if text[:1] in ("{", "["):  # YAML flow syntax, as the yaml files write it: {soft: 1.0}, [ndcg, recall]
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                return param
            return value if isinstance(value, (dict, list)) and _plain(value) else param
        lowered = text.lower()
        return True if lowered == "true" else False if lowered == "false" else param
    if value is not None and not isinstance(value, (str, int, float, list, tuple, dict, bool)):
        return param  # e.g. a set or bytes literal: RecBole kept those as the string too
    return value


def _convert_config_dict(self, config_dict):
    """Drop-in for ``Config._convert_config_dict``: literal parsing instead of ``eval``."""
    for key in config_dict:
        config_dict[key] = literal_value(key, config_dict[key])
    return config_dict


def patch_literal_settings() -> None:
    from recbole.config.configurator import Config

    Config._convert_config_dict = _convert_config_dict


# (h) ml-100k honours an explicit data_path ---------------------------------------------------------------
_ORIGINAL_SET_DEFAULTS = None


def _set_default_parameters(self):
    _ORIGINAL_SET_DEFAULTS(self)
    given = self.external_config_dict.get("data_path")  # user's files, config_dict, command line
    if self.dataset == "ml-100k" and given is not None:
        self.final_config_dict["data_path"] = os.path.join(str(given), self.dataset)


def patch_ml100k_data_path() -> None:
    global _ORIGINAL_SET_DEFAULTS
    from recbole.config.configurator import Config

    if _ORIGINAL_SET_DEFAULTS is None:
        _ORIGINAL_SET_DEFAULTS = Config._set_default_parameters
        Config._set_default_parameters = _set_default_parameters



# (i) torch.cuda.amp's deprecated names in RecBole's trainers ------------------------------------------
class _CudaAmp(types.ModuleType):
    """``torch.cuda.amp`` as ``recbole.trainer.trainer`` sees it: ``GradScaler`` and ``autocast`` are
    torch's non-deprecated ``torch.amp`` versions for the "cuda" device (what the deprecated names
    construct); every other name is ``torch.cuda.amp``'s."""

    def __init__(self, amp_module):
        super().__init__(amp_module.__name__)
        self.__dict__["_amp"] = amp_module

    def __getattr__(self, name):
        return getattr(self._amp, name)

    @staticmethod
    def GradScaler(*args, **kwargs):  # noqa: N802  (torch's name)
        import torch

        return torch.amp.GradScaler("cuda", *args, **kwargs)

    @staticmethod
    def autocast(*args, **kwargs):
        import torch

        return torch.amp.autocast("cuda", *args, **kwargs)


def patch_cuda_amp() -> None:
    import torch

    module = importlib.import_module("recbole.trainer.trainer")
    if isinstance(module.amp, _CudaAmp) or not hasattr(torch.amp, "GradScaler"):
        return  # torch < 2.3: torch.amp has no GradScaler, and torch.cuda.amp's is not deprecated there
    module.amp = _CudaAmp(module.amp)


# (j) read-only pandas columns handed to torch ---------------------------------------------------------
class _WritableColumn:
    def __init__(self, series):
        self._series = series

    @property
    def values(self):
        values = self._series.values
        if isinstance(values, np.ndarray) and not values.flags.writeable:
            return values.copy()
        return values


class _WritableColumns:
    """A DataFrame as ``Dataset._dataframe_to_interaction`` reads it (its column names, then
    ``data[name].values``), each read-only column's values copied into a writable array."""

    def __init__(self, frame):
        self._frame = frame

    def __iter__(self):
        return iter(self._frame)

    def __getitem__(self, name):
        return _WritableColumn(self._frame[name])


_ORIGINAL_DF_TO_INTERACTION = None


def _dataframe_to_interaction(self, data):
    return _ORIGINAL_DF_TO_INTERACTION(self, _WritableColumns(data))


def patch_writable_columns() -> None:
    global _ORIGINAL_DF_TO_INTERACTION
    from recbole.data.dataset.dataset import Dataset

    if _ORIGINAL_DF_TO_INTERACTION is None:
        _ORIGINAL_DF_TO_INTERACTION = Dataset._dataframe_to_interaction
        Dataset._dataframe_to_interaction = _dataframe_to_interaction


def apply() -> None:
    """Apply every shim once (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    patch_numpy_aliases()
    patch_fill_nan()
    patch_token_seq_agg()
    patch_seq_fillna()
    patch_ray_import()
    patch_init_device()
    patch_ensure_dir()
    patch_no_pickled_data()
    patch_literal_settings()
    patch_ml100k_data_path()
    patch_cuda_amp()
    patch_writable_columns()
    patch_eval_users_per_batch()
    _APPLIED = True


# (k) one evaluation user per batch for general models on a large catalogue-----------------------
# RecBole's FullSortEvalDataLoader counts eval_batch_size in (user, item) score entries for general
# models, so a catalogue larger than eval_batch_size (amazon-beauty-5core: 12,102 items against the
# default 4,096) puts one user in each batch: 22k batches of per-batch overhead per evaluation pass.
# Here eval_batch_size counts users (rows) for every model type, as RecBole already does for
# sequential models: the same users per batch, the same score-matrix memory, for both kinds.
# Metrics are per-user, so batching does not change them (tests/test_compat.py checks).
_ORIGINAL_FULL_SORT_STEP = None


def _full_sort_step(self):
    if self.is_sequential:
        return _ORIGINAL_FULL_SORT_STEP(self)
    users = max(1, int(self.config["eval_batch_size"]))
    self.step = users
    self.set_batch_size(users * self._dataset.item_num)


def patch_eval_users_per_batch() -> None:
    global _ORIGINAL_FULL_SORT_STEP
    from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader

    if _ORIGINAL_FULL_SORT_STEP is None:
        _ORIGINAL_FULL_SORT_STEP = FullSortEvalDataLoader._init_batch_size_and_step
        FullSortEvalDataLoader._init_batch_size_and_step = _full_sort_step
