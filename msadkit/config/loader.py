"""Load a YAML config, apply ``key=value`` overrides and check every key against the defaults."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from msadkit.config.checks import check_counts
from msadkit.config.defaults import DEFAULTS, FREE_FORM_KEYS, default_config
from msadkit.config.run_length import schedule_label
from msadkit.config.sections import check_list_item, nullable_type, parse_number
from msadkit.errors import ConfigError

__all__ = [
    "PACKAGED_CONFIG_DIR",
    "list_packaged_configs",
    "resolve_config_path",
    "load_config",
    "parse_override",
    "dump_config",
    "merge_into_config",
    "merge_override_strings",
    "complete_config",
    "parse_number",
]

PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
BASE_KEY = "_base_"


def list_packaged_configs() -> list[str]:
    """Names of the configs shipped with the package (without ``.yaml``)."""
    return sorted(p.relative_to(PACKAGED_CONFIG_DIR).with_suffix("").as_posix() for p in PACKAGED_CONFIG_DIR.rglob("*.yaml"))


def resolve_config_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A config file path from a path, a path relative to another config, or a packaged name."""
    candidates = [Path(name)]
    if relative_to is not None:
        candidates.append(relative_to.parent / name)
    stem = str(name)[:-5] if str(name).endswith(".yaml") else str(name)
    candidates.append(PACKAGED_CONFIG_DIR / f"{stem}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"config {name} not found: it is neither a file nor a packaged config "
        f"(packaged: {', '.join(list_packaged_configs()) or 'none'})"
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping naming one key twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"config {self.name}: key {key!r} appears twice in one mapping, at lines {seen[key]} and {line} "
                    "(YAML would keep only the second)"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as stream:
            data = yaml.load(stream, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numeric_list_kind(default: Any) -> type | None:
    """``float`` or ``int`` for a non-empty default list of that one number type, else None."""
    if not isinstance(default, (list, tuple)) or not default:
        return None
    if all(isinstance(item, float) for item in default):
        return float
    if all(_is_int(item) for item in default):
        return int
    return None


def _coerce(default: Any, value: Any) -> Any:
    """``value`` as a float where ``default`` is a float and ``value`` spells a number.

    PyYAML follows YAML 1.1, which reads ``1e-3``, ``1E4`` and ``5e-3`` as strings (it wants a dot
    and a signed exponent), so the conversion happens here, where the key's type is known: a
    string key keeps ``"1e4"`` as written, an int key still refuses a float.
    """
    if isinstance(default, float):
        if isinstance(value, str):
            number = parse_number(value)
            return value if number is None else float(number)
        return float(value) if _is_int(value) else value
    if _numeric_list_kind(default) is float and isinstance(value, (list, tuple)):
        return [_coerce(0.0, item) for item in value]
    return value


def _type_ok(default: Any, value: Any, dotted: str = "") -> bool:
    if value is None:
        # "Not set" is a value only where the default is "not set" too.
        return default is None
    if default is None:
        declared = nullable_type(dotted)
        if declared is None:
            return True
        if declared is bool or declared == (bool,):
            return isinstance(value, bool)
        return isinstance(value, declared) and not (isinstance(value, bool) and declared in (int, float))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if _is_int(default):
        return _is_int(value)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return False
        kind = _numeric_list_kind(default)
        if kind is None:
            return True
        return all(_type_ok(kind(), item) for item in value)
    return isinstance(value, type(default))


def _type_name(default: Any, dotted: str = "") -> str:
    if default is None and nullable_type(dotted) is not None:
        declared = nullable_type(dotted)
        names = " or ".join(k.__name__ for k in (declared if isinstance(declared, tuple) else (declared,)))
        return f"{names} (or null)"
    kind = _numeric_list_kind(default)
    return f"list of {kind.__name__}" if kind is not None else type(default).__name__


def _merge(base: dict, update: dict, defaults: dict | None, source: str, prefix: str = "") -> None:
    """Merge ``update`` into ``base`` in place, rejecting keys and types the defaults don't know."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if dotted in FREE_FORM_KEYS:
            if defaults is not None and isinstance(value, list):
                for index, item in enumerate(value):
                    check_list_item(dotted, item, f"{dotted}[{index}] in {source}")
            base[key] = copy.deepcopy(value)
            continue
        if defaults is None:
            # Unchecked merge: nested mappings still merge key by key.
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                _merge(base[key], value, None, source, dotted + ".")
            else:
                base[key] = copy.deepcopy(value)
            continue
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise ConfigError(f"unknown config key '{dotted}' in {source} (known keys at this level: {known})")
        default = defaults[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' in {source} must be a mapping, got {value!r}")
            _merge(base[key], value, default, source, dotted + ".")
            continue
        coerced = _coerce(default, value)
        if not _type_ok(default, coerced, dotted):
            raise ConfigError(
                f"config key '{dotted}' in {source} must be of type {_type_name(default, dotted)}, got {value!r}"
            )
        base[key] = copy.deepcopy(coerced)


def _load_file_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The config and its ``_base_`` ancestors, base first."""
    if path.resolve() in seen:
        raise ConfigError(f"config {path} includes itself through {BASE_KEY}")
    data = _read_yaml(path)
    base_name = data.pop(BASE_KEY, None)
    chain: list[tuple[Path, dict]] = []
    if base_name is not None:
        chain = _load_file_chain(resolve_config_path(base_name, relative_to=path), seen + (path.resolve(),))
    return chain + [(path, data)]


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into the key path and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must have the form key=value (for example solver.max_iter=300)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}' has a value that is not valid YAML: {exc}") from None
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict:
    nested: Any = value
    for part in reversed(path):
        nested = {part: nested}
    return nested


def load_config(name: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults, then the config file chain, then ``key=value`` overrides.

    Args:
        name: a YAML path or a packaged config name (see :func:`list_packaged_configs`); None
            gives the defaults.
        overrides: strings ``dotted.key=value``; values are parsed as YAML (``[1, 2]``, ``0.5``).
            When they change ``solver.max_iter`` and leave ``schedule`` alone, the schedule label
            gets the run length as a suffix (``demo`` -> ``demo-30it``).

    Raises:
        ConfigError: a missing file, invalid YAML, an unknown key or a value of the wrong type.
    """
    config = default_config()
    if name is not None:
        for path, data in _load_file_chain(resolve_config_path(name)):
            _merge(config, data, DEFAULTS, str(path))
    file_max_iter = config["solver"]["max_iter"]
    overrides = list(overrides)
    merge_override_strings(config, overrides)
    labelled = any(parse_override(text)[0] == ["schedule"] for text in overrides)
    # A run shortened (or lengthened) on the command line is not the file's schedule; an explicit
    # schedule=... override still wins.
    if config["solver"]["max_iter"] != file_max_iter and not labelled:
        config["schedule"] = schedule_label(config["schedule"], config["solver"]["max_iter"])
    check_counts(config, str(name) if name is not None and not overrides else "the config and its overrides")
    return config


def merge_into_config(config: dict[str, Any], update: dict[str, Any], source: str) -> dict[str, Any]:
    """Merge a nested mapping of overrides into ``config`` in place, checking keys and types.

    Only the keys present in ``update`` change (``{"model": {"msad": {"eval_branch": "high"}}}``
    leaves the other ``model.msad`` keys alone).
    """
    _merge(config, update, DEFAULTS, source)
    return config


def merge_override_strings(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` strings to a resolved ``config`` in place, each checked like a
    :func:`load_config` override (the error names the override)."""
    for text in overrides:
        path, value = parse_override(text)
        _merge(config, _nest(path, value), DEFAULTS, f"override '{text}'")
    return config


def complete_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a run's saved ``config`` on top of today's defaults, so a run written before a
    key existed still builds (no key or type checks: the run was checked when it started)."""
    completed = default_config()
    _merge(completed, config, None, "saved config")
    return completed


def dump_config(config: dict[str, Any]) -> str:
    """The config as YAML text (keys in definition order)."""
    return yaml.safe_dump(config, sort_keys=False)
