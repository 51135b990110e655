"""Config layering on top of RecBole's ``Config``.

Order (later wins):
  RecBole defaults (overall.yaml, its model/dataset yaml)
  < recbole-kd defaults (``configs/defaults.yaml``)
  < the model's yaml (next to the model code; base classes first)
  < the dataset's yaml (``configs/datasets/<dataset>.yaml``)
  < ``--config_files``
  < ``--key=value`` on the command line / ``overrides``.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

from recbole_kd import compat

compat.apply()

from recbole.config import Config  # noqa: E402

from recbole_kd.datasets.validate import validate_dataset  # noqa: E402
from recbole_kd.errors import ConfigError, UnknownDatasetError  # noqa: E402
from recbole_kd.registry import get_entry  # noqa: E402
from recbole_kd.settings_check import check_unknown_keys, check_values  # noqa: E402

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULTS_YAML = os.path.join(PACKAGE_DIR, "configs", "defaults.yaml")
STOCK_CE_YAML = os.path.join(PACKAGE_DIR, "configs", "stock_ce.yaml")
DATASET_YAML_DIR = os.path.join(PACKAGE_DIR, "configs", "datasets")


@contextlib.contextmanager
def _argv_isolated():
    """RecBole's Config parses sys.argv itself; we pass everything explicitly instead."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "recbole_kd"]
    try:
        yield
    finally:
        sys.argv = saved


def dataset_yaml(dataset: str) -> str | None:
    path = os.path.join(DATASET_YAML_DIR, f"{dataset}.yaml")
    return path if os.path.isfile(path) else None


def _stock_uses_ce(name: str) -> bool:
    import recbole
    import yaml

    path = os.path.join(os.path.dirname(recbole.__file__), "properties", "model", f"{name}.yaml")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return (yaml.safe_load(f) or {}).get("loss_type") == "CE"


def config_file_list(model: str, dataset: str, config_files=()) -> list[str]:
    entry = get_entry(model)
    files = [DEFAULTS_YAML]
    if entry.stock and _stock_uses_ce(entry.name):
        files.append(STOCK_CE_YAML)
    files += list(entry.config_files)
    ds = dataset_yaml(dataset)
    if ds:
        files.append(ds)
    for f in config_files or ():
        if not os.path.isfile(f):
            raise ConfigError(f"config file {f} does not exist; check --config_files")
        read_config_file(f)  # before RecBole's Config parses it: one line, not a yaml traceback
        files.append(f)
    return files


def read_config_file(path: str) -> dict:
    """The settings in a ``--config_files`` file; ``ConfigError`` (file, line, column) if it is not a YAML
    mapping."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror}); check --config_files") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of settings (key: value lines), not a "
            f"{type(data).__name__}; e.g. 'epochs: 10'"
        )
    return data


def build_config(model: str, dataset: str, config_files=(), overrides: dict | None = None,
                 check_data: bool = True, overrides_source: str | dict = "command line") -> Config:
    """A RecBole ``Config`` for a registered or stock model, with our layering (``check_data``: also refuse
    a dataset whose atomic files are missing or malformed). ``config.setting_origin`` records where each
    setting came from (``overrides_source`` names the ``overrides``: one name, or ``{key: name}``)."""
    entry = get_entry(model)
    files = config_file_list(model, dataset, config_files)
    with _argv_isolated():
        try:
            config = Config(model=entry.cls, dataset=dataset, config_file_list=files, config_dict=dict(overrides or {}))
        except (ValueError, TypeError, NotImplementedError, KeyError) as exc:
            raise ConfigError(f"invalid configuration for {model} on {dataset}: {exc}") from None
    target = config["target"] if "target" in config else None
    if isinstance(target, dict) and target:
        # a transfer run's target phase: its nested section, under the command line
        with _argv_isolated():
            try:
                config = Config(model=entry.cls, dataset=dataset, config_file_list=files,
                                config_dict={**target, **dict(overrides or {})})
            except (ValueError, TypeError, NotImplementedError, KeyError) as exc:
                raise ConfigError(f"invalid configuration for {model} on {dataset}: {exc}") from None
    config.setting_origin = setting_origin(
        config, files, config_files, overrides, target if isinstance(target, dict) else None, overrides_source
    )
    mechanisms = config["transfer_mechanisms"] if "transfer_mechanisms" in config else None
    if mechanisms and "text" in (mechanisms if isinstance(mechanisms, list) else [mechanisms]):
        config["item_text"] = True  # the text mechanism: both phases represent items by their text
    check_user_settings(config, config_files, overrides, overrides_source)
    check_no_pickled_data(config)
    if check_data:
        check_dataset_present(config)
    return config


@dataclass
class SettingOrigin:
    """Where each setting of a run came from (the layering above).

    ``sources``: key -> ``default`` (RecBole's or recbole-kd's defaults), ``model yaml``, ``dataset yaml``,
    ``file PATH`` (``--config_files``), ``target section`` (a transfer run's target phase) or the name of
    the overrides (``command line``); ``raw``: the value as that source wrote it; ``defaults``: the value
    the defaults alone give."""

    sources: dict
    raw: dict
    defaults: dict


def _yaml_layer(path: str, loader) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.load(f.read(), Loader=loader)
    return data if isinstance(data, dict) else {}


def setting_origin(config, files, config_files=(), overrides=None, target=None,
                   overrides_source: str | dict = "command line") -> SettingOrigin:
    """Where each of ``config``'s settings came from: RecBole's defaults, then each of ``files`` (as
    ``config_file_list`` ordered them), the ``target`` section, then ``overrides`` (later wins), named by
    ``overrides_source`` (one name, or one per key)."""
    defaults = dict(getattr(config, "internal_config_dict", {}) or {})
    sources = {k: "default" for k in defaults}
    raw = dict(defaults)
    user_files = [os.path.abspath(f) for f in config_files or ()]
    ds_yaml = dataset_yaml(config["dataset"])
    for path in files:
        if path in (DEFAULTS_YAML, STOCK_CE_YAML):
            label = "default"
        elif os.path.abspath(path) in user_files:
            label = f"file {path}"
        elif ds_yaml and path == ds_yaml:
            label = "dataset yaml"
        else:
            label = "model yaml"
        for key, value in _yaml_layer(path, config.yaml_loader).items():
            sources[key], raw[key] = label, value
            if label == "default":
                defaults[key] = value
    for key, value in (target or {}).items():
        sources[key], raw[key] = "target section", value
    for key, value in (overrides or {}).items():
        label = overrides_source.get(key, "command line") if isinstance(overrides_source, dict) else overrides_source
        sources[key], raw[key] = label, compat.literal_value(key, value)  # as RecBole's Config reads it
    return SettingOrigin(sources=sources, raw=raw, defaults=defaults)


def planned_setting(model: str, dataset: str, key: str, overrides: dict | None = None):
    """The value ``key`` will have in a run of ``model`` on ``dataset`` with ``overrides``, read from the
    layers alone (no Config is built, nothing is checked): e.g. how many epochs a teacher will train."""
    import recbole

    props = os.path.join(os.path.dirname(recbole.__file__), "properties")
    entry = get_entry(model)
    files = [os.path.join(props, "overall.yaml"), os.path.join(props, "model", f"{entry.name}.yaml")]
    files += config_file_list(model, dataset)
    value = None
    for path in files:
        if os.path.isfile(path):
            layer = read_config_file(path)
            value = layer.get(key, value)
    if overrides and key in overrides:
        value = compat.literal_value(key, overrides[key])
    return value


PICKLE_KEYS = ("dataset_save_path", "dataloaders_save_path", "save_dataset", "save_dataloaders")


def check_no_pickled_data(config) -> None:
    """RecBole saves and loads datasets / dataloaders with pickle, and unpickling a file runs code:
    recbole-kd always builds them from the atomic files, so the settings that ask for it are refused."""
    for key in PICKLE_KEYS:
        if key in config and config[key]:
            raise ConfigError(
                f"{key}={config[key]!r} is not supported: recbole-kd never saves or loads pickled datasets or "
                "dataloaders (loading a pickle runs code); the data is always built from its atomic files, "
                f"remove {key}"
            )


# the nested section a nested run's settings came from (``overrides_source``), named as the outer run's
# check names it, so a key is reported once
NESTED_SECTIONS = {"teacher_config": " in teacher_config", "source section": " in source"}


def check_user_settings(config, config_files=(), overrides=None, overrides_source="command line") -> None:
    """Unknown keys the user set (warning, or error with ``strict``) and invalid values (error). In a nested
    run (a teacher's, a source model's: ``overrides_source`` names each key's origin), keys shared with the
    outer run were checked there."""
    user_keys = set(overrides or {})
    strict = bool(config["strict"])
    if isinstance(overrides_source, dict):
        user_keys = {k for k in user_keys if overrides_source.get(k, "command line") == "command line"}
        for label, where in NESTED_SECTIONS.items():
            check_unknown_keys({k for k in overrides or {} if overrides_source.get(k) == label}, strict, where=where)
    for path in config_files or ():
        user_keys |= set(read_config_file(path))
    check_unknown_keys(user_keys, strict)
    for section in ("teacher_config", "source", "target"):
        nested = config[section] if section in config else None
        if isinstance(nested, dict):
            check_unknown_keys(nested, strict, where=f" in {section}")
    check_values(config)


def check_dataset_present(config) -> None:
    """Refuse early (one line, no traceback) when the dataset's atomic files are not there."""
    folder = config["data_path"]
    dataset = config["dataset"]
    inter = os.path.join(folder, f"{dataset}.inter")
    if config["benchmark_filename"]:
        inter = os.path.join(folder, f"{dataset}.{config['benchmark_filename'][0]}.inter")
    if not os.path.isfile(inter):
        raise UnknownDatasetError(
            f"dataset {dataset!r} not found: searched {os.path.abspath(inter)}; "
            "pass --data_path=DIR where DIR/{0}/{0}.inter exists (e.g. --data_path=../shared/datasets)".format(dataset)
        )
    validate_dataset(config)  # malformed atomic files: one DataValidationError line, not a pandas traceback
