"""Figures of MSAD's feature alignment: student vs. teacher maps, per-level errors, C-FF weights."""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from msadkit.analysis.figure_style import FONT, finish_axes, finite, new_figure
from msadkit.analysis.plots import _ERROR_CMAP, _FEATURE_CMAP
from msadkit.analysis.text_layout import spread_labels

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_feature_grid", "plot_level_errors", "plot_fusion_weights"]


def _upsample(map_2d: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest upsampling of a level map to the image size (features are piecewise constant)."""
    rows = np.minimum((np.arange(height) * map_2d.shape[0] / height).astype(int), map_2d.shape[0] - 1)
    cols = np.minimum((np.arange(width) * map_2d.shape[1] / width).astype(int), map_2d.shape[1] - 1)
    return map_2d[rows][:, cols]


def plot_feature_grid(
    image: np.ndarray,
    feature_maps: Mapping[str, Sequence[np.ndarray]],
    error_maps: Sequence[np.ndarray] | None,
    level_names: Sequence[str],
    *,
    valid_size: tuple[int, int] | None = None,
    error_label: str = "|student - teacher|",
    title: str = "",
    alpha: float = 0.6,
    tracked: bool = False,
) -> "Figure":
    """Channel-mean feature maps on the image, one row per pyramid level.

    Columns: the image, then one column per entry of ``feature_maps`` (e.g. teacher high-res,
    low-res, fused, students), then the absolute alignment error. In a row all feature maps share
    one colour scale (so teacher and students are comparable), shown by the colour bar after them;
    the error has its own colour map and bar. Colour bars are labelled along their side, so no
    label meets a column title.

    Args:
        image: ``(H, W, 3)`` float image in ``[0, 1]`` (the whole padded batch area).
        feature_maps: column title -> per level ``(Hi, Wi)`` channel-mean maps of the padded area.
        error_maps: per level ``(Hi, Wi)`` error maps, or None to omit the column.
        level_names: row titles (e.g. ``"P3 (stride 8)"``).
        valid_size: ``(h, w)`` of the real image inside the padding; image and maps are cropped to
            it (a map keeps the cells that overlap it).
        error_label: title of the error column (wrapped to the column's width).
        alpha: opacity of the maps over the greyscale image.
    """
    columns = list(feature_maps)
    has_error = error_maps is not None
    num_rows, num_cols = len(level_names), 1 + len(columns) + int(has_error)
    figure = new_figure(figsize=(1.45 * num_cols + 1.3, 1.45 * num_rows + 0.9), tracked=tracked)
    axes = np.asarray(figure.subplots(num_rows, num_cols, squeeze=False))
    full_h, full_w = image.shape[:2]
    height, width = valid_size if valid_size is not None else (full_h, full_w)
    picture = image[:height, :width]
    grey = picture.mean(axis=2)

    def crop(level_map: np.ndarray) -> np.ndarray:
        level_map = np.asarray(level_map, dtype=np.float64)
        rows = max(1, math.ceil(height * level_map.shape[0] / full_h))
        cols = max(1, math.ceil(width * level_map.shape[1] / full_w))
        # The kept cells may reach past the valid edge; stretch them over exactly that region.
        return _upsample(level_map[:rows, :cols], round(rows * full_h / level_map.shape[0]),
                         round(cols * full_w / level_map.shape[1]))[:height, :width]

    def colour_bar(mappable: Any, ax: Any, label: str) -> None:
        bar = figure.colorbar(mappable, ax=ax, fraction=0.08, pad=0.03, aspect=12)
        bar.ax.tick_params(labelsize=FONT["tick"] - 1)
        bar.set_label(label, fontsize=FONT["tick"] - 1)

    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for row, level in enumerate(level_names):
        maps = [crop(feature_maps[c][row]) for c in columns]
        low = min(float(m.min()) for m in maps) if maps else 0.0
        high = max(float(m.max()) for m in maps) if maps else 1.0
        high = high if high > low else low + 1e-6
        axes[row, 0].imshow(picture)
        axes[row, 0].set_ylabel(level, fontsize=FONT["label"])
        mappable = None
        for col, level_map in enumerate(maps, start=1):
            axes[row, col].imshow(grey, cmap="gray", vmin=0, vmax=1)
            mappable = axes[row, col].imshow(level_map, cmap=_FEATURE_CMAP, vmin=low, vmax=high, alpha=alpha)
        if mappable is not None:
            colour_bar(mappable, list(axes[row, 1:1 + len(columns)]), "channel mean")
        if has_error:
            ax = axes[row, -1]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            error = crop(error_maps[row])
            mappable = ax.imshow(error, cmap=_ERROR_CMAP, vmin=0, vmax=max(float(error.max()), 1e-6), alpha=alpha)
            colour_bar(mappable, ax, "error")
    titles = ["image"] + columns + ([error_label] if has_error else [])
    for ax, name in zip(axes[0], titles):
        ax.set_title(textwrap.fill(name, 18), fontsize=FONT["label"])
    if title:
        figure.suptitle(title, fontsize=FONT["title"])
    return figure


def plot_level_errors(
    errors: Mapping[str, Sequence[float]],
    level_names: Sequence[str],
    *,
    title: str = "feature alignment error per level",
    ylabel: str = "mean |student - teacher target|",
    tracked: bool = False,
) -> "Figure":
    """Grouped bars of the per-level alignment error, one colour per model (e.g. before / after
    distillation); values written on the bars.

    Args:
        errors: label -> one value per level (NaN -> no bar).
    """
    figure = new_figure(figsize=(6.0, 3.4), tracked=tracked)
    ax = figure.subplots()
    labels = list(errors)
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(level_names))
    texts = []
    for index, label in enumerate(labels):
        values = np.asarray(errors[label], dtype=np.float64)
        bars = ax.bar(x + (index - (len(labels) - 1) / 2) * width, np.nan_to_num(values, nan=0.0), width * 0.92,
                      label=label, color=f"C{index % 10}")
        for bar, value in zip(bars, values):
            text = "-" if math.isnan(value) else f"{value:.3g}"
            texts.append(ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                                     va="bottom", fontsize=FONT["annotation"] - 1, xytext=(0, 2),
                                     textcoords="offset points"))
    ax.set_xticks(x, level_names)
    finish_axes(ax, title=title, ylabel=ylabel, grid="y",
                xlabel="pyramid level (the teacher's names; strides in input pixels)")
    highest = max((float(v) for values in errors.values() for v in values if finite(v)), default=0.0)
    ax.set_ylim(0, max(1e-6, highest * 1.2))
    figure.legend(fontsize=FONT["legend"], loc="outside right upper")
    spread_labels(texts)
    return figure


def plot_fusion_weights(
    weights: np.ndarray,
    level_names: Sequence[str],
    *,
    image_labels: Sequence[str] | None = None,
    title: str = "C-FF fusion weights",
    tracked: bool = False,
) -> "Figure":
    """C-FF weights of the MSAD teacher across images and levels.

    Left: the high-resolution weight ``a_H`` per image (rows) and level (columns) as a heat map on a
    fixed 0..1 scale, values written in the cells (``a_L = 1 - a_H``). Right: per level, the mean
    ``a_H`` and ``a_L`` over the images as stacked bars.

    Args:
        weights: ``(N, L, 2)`` softmax weights, ``[..., 0]`` high-res, ``[..., 1]`` low-res.
    """
    weights = np.asarray(weights, dtype=np.float64)
    num_images, num_levels = weights.shape[:2]
    image_labels = list(image_labels or [f"image {i}" for i in range(num_images)])
    figure = new_figure(figsize=(7.5, 1.4 + 0.32 * max(num_images, 4)), tracked=tracked)
    heat_ax, bar_ax = figure.subplots(1, 2, width_ratios=[1.3, 1])
    heat = heat_ax.imshow(weights[..., 0], cmap="coolwarm", vmin=0, vmax=1, aspect="auto")
    for i in range(num_images):
        for j in range(num_levels):
            value = weights[i, j, 0]
            heat_ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=FONT["annotation"],
                         color="white" if abs(value - 0.5) > 0.3 else "black")
    heat_ax.set_xticks(range(num_levels), level_names)
    heat_ax.set_yticks(range(num_images), image_labels)
    finish_axes(heat_ax, title="high-res weight a_H (a_L = 1 - a_H)", xlabel="level", grid="")
    bar = figure.colorbar(heat, ax=heat_ax, fraction=0.05, pad=0.02)
    bar.set_label("a_H (1 = only high-res)", fontsize=FONT["tick"])
    bar.ax.tick_params(labelsize=FONT["tick"])
    mean = weights.mean(axis=0)
    x = np.arange(num_levels)
    bar_ax.bar(x, mean[:, 0], color="#b40426", label="a_H (high-res)")
    bar_ax.bar(x, mean[:, 1], bottom=mean[:, 0], color="#3b4cc0", label="a_L (low-res)")
    for j in range(num_levels):
        bar_ax.text(j, mean[j, 0] / 2, f"{mean[j, 0]:.2f}", ha="center", va="center", color="white",
                    fontsize=FONT["annotation"])
    bar_ax.axhline(0.5, color="black", lw=0.8, ls="--")
    bar_ax.set_xticks(x, level_names)
    bar_ax.set_ylim(0, 1)
    finish_axes(bar_ax, title=f"mean over {num_images} images", xlabel="level", ylabel="weight", grid="y")
    bar_ax.legend(fontsize=FONT["legend"], loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                  frameon=False)
    figure.suptitle(title, fontsize=FONT["title"])
    return figure
