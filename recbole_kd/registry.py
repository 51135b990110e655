"""Model registry: plugin models first, RecBole's own models as the fall-back.

A model registers with a decorator, next to its default yaml::

    @register_model("SASRec-S", kind="student", config="sasrec_s.yaml",
                    description="small SASRec trained on windows")
    class SASRecS(FastSASRec):
        ...

``get_model("SASRec")`` still returns RecBole's stock class, so baselines and
plugin models run through one entry point. Resolvers let families of names be
derived on demand (``KD-<student>`` for every registered student).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

from recbole_kd.errors import UnknownModelError  # noqa: F401  (also importable from here)
from recbole_kd.trainer import KDTrainerMixin

KINDS = ("baseline", "teacher", "student", "distilled", "transfer")


@dataclass
class ModelEntry:
    name: str
    cls: type
    kind: str
    description: str
    config_files: list = field(default_factory=list)
    trainer: type | None = None
    stock: bool = False


_REGISTRY: dict[str, ModelEntry] = {}
_RESOLVERS: list[tuple[Callable[[str], "ModelEntry | None"], Callable[[], list] | None]] = []
_STOCK_CACHE: dict[str, ModelEntry] = {}


def _resolve_yaml(cls: type, config: str | None) -> list[str]:
    if config is None:
        return []
    if os.path.isabs(config):
        return [config]
    return [os.path.join(os.path.dirname(inspect.getfile(cls)), config)]


def register_model(name: str, kind: str, description: str, config: str | None = None, trainer: type | None = None):
    """Class decorator: register ``cls`` under ``name`` (hyphens allowed).

    ``config`` is a yaml file next to the class's module with its defaults.
    The yaml of registered base classes is layered underneath (base first).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name].cls}")
        inherited = []
        for base in reversed(cls.__mro__[1:]):
            inherited += getattr(base, "_rkd_own_yaml", [])
        own = _resolve_yaml(cls, config)
        cls._rkd_own_yaml = own
        cls.__name__ = name  # RecBole takes config["model"] from the class name
        _REGISTRY[name] = ModelEntry(
            name=name,
            cls=cls,
            kind=kind,
            description=description,
            config_files=_dedup(inherited + own),
            trainer=trainer,
        )
        return cls

    return deco


def _dedup(paths):
    seen, out = set(), []
    for p in paths:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def add_entry(entry: ModelEntry) -> ModelEntry:
    """Register an entry built programmatically (used by resolvers)."""
    _REGISTRY[entry.name] = entry
    return entry


def register_resolver(fn: Callable[[str], "ModelEntry | None"], lister: Callable[[], list] | None = None):
    """Register a function that derives an entry for a name it recognises (or returns None);
    ``lister`` returns the names it can derive (for ``--list``)."""
    _RESOLVERS.append((fn, lister))
    return fn


def register_student_family(prefix: str, kind: str, aliases: dict, config: str, trainer: type, doc: str,
                            description: str, attrs: Callable[[str], dict] | None = None) -> Callable:
    """Derive ``<prefix><student>`` for every registered student, on demand: the student's own class (same
    architecture and checkpoint layout) with its yaml, then ``config``, then an alias's extra yaml files,
    trained by ``trainer``. ``aliases`` maps short names to ``(student, [extra yaml])``; they are registered
    at once. ``doc`` and ``description`` may name ``{student}``; ``attrs(student)`` adds class attributes.
    Returns the entry factory ``make(name, student, extra_yaml=())`` (None for an unknown student)."""
    def make(name: str, student: str, extra_yaml=()) -> ModelEntry | None:
        students = registered("student")
        if student not in students:
            return None
        base = students[student]
        cls = type(name, (base.cls,), {"__doc__": doc.format(student=student), "__module__": base.cls.__module__,
                                       **(attrs(student) if attrs else {})})
        return ModelEntry(name=name, cls=cls, kind=kind, description=description.format(student=student),
                          config_files=list(base.config_files) + [config] + list(extra_yaml), trainer=trainer)

    def resolve(name: str) -> ModelEntry | None:
        if name in aliases:
            student, extra = aliases[name]
            return make(name, student, extra)
        return make(name, name[len(prefix):]) if name.startswith(prefix) else None

    register_resolver(resolve, lambda: list(aliases) + [prefix + s for s in sorted(registered("student"))])
    for alias in aliases:
        add_entry(resolve(alias))
    return make


def derived_entries() -> dict[str, ModelEntry]:
    """Every entry a resolver can derive (built on demand)."""
    _load_plugins()
    out = {}
    for fn, lister in _RESOLVERS:
        for name in (lister() if lister else []):
            if name not in _REGISTRY:
                out[name] = fn(name)
    return {n: e for n, e in out.items() if e is not None}


def load_plugin_files(paths) -> None:
    """Import user model files (``--plugins=a.py,b.py``) so their ``@register_model`` runs."""
    import importlib.util
    import sys

    for path in paths:
        path = os.path.abspath(path)
        if not os.path.isfile(path):
            raise UnknownModelError(f"plugin file {path} does not exist; check --plugins")
        name = "recbole_kd_plugin_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: name it and the line, in one line
            del sys.modules[name]
            raise UnknownModelError(f"plugin file {path} failed to import: {_where(exc, path)}; fix it and retry") from exc
        _PLUGIN_FILES.append(path)


def _where(exc: Exception, path: str) -> str:
    """``Type: message (line N)``, N the last line of ``path`` in the traceback (or a syntax error's line)."""
    import traceback

    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) == path]
    where = f" (line {lines[-1]})" if lines else ""
    return f"{type(exc).__name__}: {exc}{where}"


_PLUGIN_FILES: list[str] = []


def loaded_plugin_files() -> list[str]:
    """The plugin files loaded so far (a distributed run's worker processes load them again)."""
    return list(_PLUGIN_FILES)


def registered(kind: str | None = None) -> dict[str, ModelEntry]:
    _load_plugins()
    return {n: e for n, e in _REGISTRY.items() if kind is None or e.kind == kind}


# our model modules, in order: the students and teachers, then the entries derived from them (distilled,
# transfer), whose trainers import the students' modules
PLUGIN_MODULES = ("recbole_kd.models", "recbole_kd.models.distill", "recbole_kd.models.transfer")


def _load_plugins():
    for name in PLUGIN_MODULES:
        importlib.import_module(name)


# ---- RecBole's stock models ---------------------------------------------------------------------
_STOCK_SUBMODULES = [
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
]  # exlib_recommender (LightGBM, XGBoost) needs packages RecBole does not install


def stock_model_names() -> dict[str, str]:
    """Names of RecBole's built-in models -> their family (without importing them)."""
    import recbole

    root = os.path.dirname(recbole.__file__)
    yaml_names = {
        f[:-5] for f in os.listdir(os.path.join(root, "properties", "model")) if f.endswith(".yaml")
    }
    modules = {}
    for sub in _STOCK_SUBMODULES:
        path = os.path.join(root, "model", sub)
        for info in pkgutil.iter_modules([path]):
            modules[info.name] = sub
    out = {}
    for name in sorted(yaml_names):
        sub = modules.get(name.lower())
        if sub is not None:
            out[name] = sub.replace("_recommender", "").replace("_", "-")
    return out


def _stock_entry(name: str) -> ModelEntry | None:
    if name in _STOCK_CACHE:
        return _STOCK_CACHE[name]
    family = stock_model_names().get(name)
    if family is None:
        return None
    from recbole.utils import get_model as recbole_get_model

    cls = recbole_get_model(name)
    entry = ModelEntry(name, cls, "baseline", f"RecBole {family} baseline", stock=True)
    _STOCK_CACHE[name] = entry
    return entry


# ---- lookup --------------------------------------------------------------------------------------
def get_entry(name: str) -> ModelEntry:
    _load_plugins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    for resolver, _ in _RESOLVERS:
        entry = resolver(name)
        if entry is not None:
            return add_entry(entry)
    entry = _stock_entry(name)
    if entry is not None:
        return entry
    candidates = list(_REGISTRY) + list(stock_model_names())
    for _, lister in _RESOLVERS:
        candidates += lister() if lister else []
    candidates = list(dict.fromkeys(candidates))  # a registered name may also be listed by a resolver
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in candidates}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (see `python -m recbole_kd --list`)")


def get_model(name: str) -> type:
    """Model class for ``name``: our registry first, then RecBole's models."""
    return get_entry(name).cls


_WRAPPED_TRAINERS: dict[type, type] = {}


def get_trainer(model_type, model_name: str) -> type:
    """Trainer class for a model: the registered one, else RecBole's choice; always with our
    safe-checkpoint and timing hooks mixed in."""
    from recbole.utils import get_trainer as recbole_get_trainer

    entry = get_entry(model_name)
    base = entry.trainer or recbole_get_trainer(model_type, model_name)
    if issubclass(base, KDTrainerMixin):
        return base
    if base not in _WRAPPED_TRAINERS:
        _WRAPPED_TRAINERS[base] = type(base.__name__, (KDTrainerMixin, base), {})
    return _WRAPPED_TRAINERS[base]
