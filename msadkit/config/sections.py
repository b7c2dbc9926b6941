"""Config sections that models and distillation terms bring with them (detectron2's ``add_*_config``).

The table of defaults (:data:`msadkit.config.defaults.DEFAULTS`) is open: a model registers its own
section (``model.<arch>``) and a distillation term its options (an entry of ``distill.losses``
with its ``type``), each with typed defaults, and the loader checks them like every other key:
an unknown key or a wrong type is one line naming the key.

Keys whose default is ``None`` ("not set") declare the type they take when set
(:data:`NULLABLE_TYPES` for the built-in ones, ``nullable=`` when registering), so a path key
refuses a number where it used to accept anything until a builder deep inside tripped on it.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping

from msadkit.config.defaults import DEFAULTS
from msadkit.errors import ConfigError

__all__ = [
    "parse_number",
    "NULLABLE_TYPES",
    "LIST_ITEM_OPTIONS",
    "register_section",
    "register_list_item",
    "nullable_type",
    "check_list_item",
    "type_name",
    "value_fits",
    "dotted_value",
]

# Digits with single underscores between them, as Python and YAML 1.1 write ``1_000``.
_DIGITS = r"\d(?:_?\d)*"
_INT_RE = re.compile(rf"[-+]?{_DIGITS}")
_FLOAT_RE = re.compile(rf"[-+]?(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][-+]?\d+)?")
_SPECIAL_FLOAT_RE = re.compile(r"[-+]?\.?(?:inf|infinity|nan)", re.IGNORECASE)


def parse_number(text: str) -> int | float | None:
    """The number ``text`` spells, or None when it spells none.

    Integers (``3``, ``+7``, ``1_000``) give an int; decimal and scientific spellings (``0.5``,
    ``.5``, ``1.``, ``1e-3``, ``1E4``, ``5e-3``, ``-2.5E+2``, ``1_000.0``) and ``inf``/``nan``
    (optionally signed, with or without YAML's leading dot) give a float.
    """
    text = text.strip()
    if _INT_RE.fullmatch(text):
        return int(text)
    if _FLOAT_RE.fullmatch(text):
        return float(text)
    if _SPECIAL_FLOAT_RE.fullmatch(text):
        return float(text.replace(".", ""))
    return None


# Dotted key -> the type its value has when it is not None.
NULLABLE_TYPES: dict[str, type | tuple[type, ...]] = {
    "model.backbone.weights": str,
    "model.fcos.tower_conv_bias": bool,
    "data.train_json": str,
    "data.train_images": str,
    "data.val_json": str,
    "data.val_images": str,
    "data.synthetic.root": str,
    "data.pseudo_labels_json": str,
    "data.pseudo_labels_images": str,
    "trainer.mlflow.tracking_uri": str,
    "trainer.wandb.entity": str,
    "distill.teacher": str,
}

# List key ("distill.losses") -> item kind ("adl") -> that item's options with their defaults.
LIST_ITEM_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {"distill.losses": {}}


def _section(path: str, *, create: bool) -> dict[str, Any]:
    node: Any = DEFAULTS
    for part in path.split("."):
        if not isinstance(node, dict):
            raise ValueError(f"config section {path!r}: {part!r} lies below a key that is not a section")
        if part not in node:
            if not create:
                raise KeyError(path)
            node[part] = {}
        node = node[part]
    return node


def register_section(
    path: str, defaults: Mapping[str, Any], *, nullable: Mapping[str, type | tuple[type, ...]] | None = None
) -> None:
    """Add the keys ``defaults`` under the dotted section ``path`` (``"model.my_arch"``).

    Registering the same defaults twice is harmless (modules may be imported again); a key that
    already exists with another default is a programming error.

    Args:
        path: the dotted section the keys live under; created when missing.
        defaults: key -> default value (nested mappings are sub-sections).
        nullable: key (relative to ``path``) -> type, for keys whose default is None.

    Raises:
        ValueError: a key is registered with a different default, or a None default has no type.
    """
    section = _section(path, create=True)
    for key, value in defaults.items():
        if key in section and section[key] != value:
            raise ValueError(f"config key '{path}.{key}' is registered twice with different defaults")
        section[key] = copy.deepcopy(value)
    for key, kind in (nullable or {}).items():
        NULLABLE_TYPES[f"{path}.{key}"] = kind
    untyped = [f"{path}.{key}" for key, value in defaults.items() if value is None and f"{path}.{key}" not in NULLABLE_TYPES]
    if untyped:
        raise ValueError(f"config keys {untyped} default to None: declare their type with nullable=")


def register_list_item(list_key: str, kind: str, options: Mapping[str, Any]) -> None:
    """Declare the options (and defaults) of the ``type: kind`` entries of the list ``list_key``."""
    items = LIST_ITEM_OPTIONS.setdefault(list_key, {})
    if kind in items and items[kind] != dict(options):
        raise ValueError(f"{list_key} type {kind!r} is registered twice with different options")
    items[kind] = dict(options)


def nullable_type(dotted: str) -> type | tuple[type, ...] | None:
    """The declared type of a key whose default is None (None when not declared)."""
    return NULLABLE_TYPES.get(dotted)


def type_name(value: Any) -> str:
    """How an error message names the type of ``value``."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def value_fits(default: Any, value: Any) -> bool:
    """Whether ``value`` may replace an option whose default is ``default`` (numbers are one type)."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))


def check_list_item(list_key: str, item: Any, where: str) -> None:
    """Check one entry of a registered list (``distill.losses[2]``) against its kind's options.

    Only kinds registered so far are checked (the term's builder checks again when it is built).

    Raises:
        ConfigError: the entry is not a mapping with a ``type``, or has an unknown or mistyped option.
    """
    kinds = LIST_ITEM_OPTIONS.get(list_key)
    if not kinds:
        return
    if not isinstance(item, dict) or "type" not in item:
        raise ConfigError(f"{where} entries must be mappings with a 'type' key, got {item!r}")
    options = kinds.get(item["type"])
    if options is None:
        return
    # YAML 1.1 reads keys like `on:` or `yes:` as booleans: name them as written, never crash.
    unknown = sorted(str(key) for key in set(item) - set(options) - {"type"})
    if unknown:
        raise ConfigError(
            f"{where} entry of type {item['type']!r}: unknown option(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(options))})"
        )
    for key, value in item.items():
        if key != "type" and isinstance(value, (bool, int, float, str)) and not value_fits(options[key], value):
            # YAML 1.1 reads `1e-3` as a string; the term converts it when it is built.
            if isinstance(value, str) and isinstance(options[key], (int, float)) and parse_number(value) is not None:
                continue
            raise ConfigError(
                f"{where} entry of type {item['type']!r}: option {key!r} must be {type_name(options[key])}, got {value!r}"
            )


def dotted_value(config: Mapping[str, Any], dotted: str) -> Any:
    """``config["a"]["b"]["c"]`` for ``"a.b.c"``; None where a part is missing (an older run's config)."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
