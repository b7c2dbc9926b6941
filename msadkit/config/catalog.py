"""The catalogue of packaged configs: names, one-line descriptions, and which are only bases."""

from __future__ import annotations

import re
from pathlib import Path

from msadkit.config.loader import PACKAGED_CONFIG_DIR, list_packaged_configs

__all__ = ["is_base_config", "config_description", "packaged_config_catalog"]

# A description longer than this is cut at a word boundary, so `msadkit configs` stays one line each.
DESCRIPTION_WIDTH = 110
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def is_base_config(name: str) -> bool:
    """Whether a packaged config only exists to be inherited (``base_*``: ``_base_: ...`` targets)."""
    return Path(name).name.startswith("base_")


def config_description(path: str | Path, width: int = DESCRIPTION_WIDTH) -> str:
    """The first sentence of the comment block that opens a config file, on one line.

    The leading ``#`` lines (up to the first line that is not a comment) are joined; the text up
    to the first sentence end is kept and cut to ``width`` characters with "...". A file that does
    not open with a comment gives an empty string.
    """
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        lines.append(stripped.lstrip("#").strip())
    text = " ".join(part for part in lines if part)
    text = _SENTENCE_END.split(text, maxsplit=1)[0]
    if len(text) > width:
        text = text[: width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return text


def packaged_config_catalog(include_bases: bool = False) -> list[tuple[str, str]]:
    """``(name, description)`` of every packaged config, sorted by name; ``base_*`` files only when
    ``include_bases``."""
    return [
        (name, config_description(PACKAGED_CONFIG_DIR / f"{name}.yaml"))
        for name in list_packaged_configs()
        if include_bases or not is_base_config(name)
    ]
