"""Matplotlib figures of the notebooks: loss curves, AP comparisons, feature maps, alignment
errors, C-FF weights, general instances and AP against capacity.

Every function returns a ``matplotlib.figure.Figure`` and never calls ``plt.show``; the notebook
decides whether to display it, save it or both. Figures are built with the object-oriented API on
a ``Figure`` that pyplot does not track unless asked, so a batch run that makes many of them does
not accumulate open windows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from msadkit.utils.run_folder import AP_METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "new_figure",
    "plot_loss_curves",
    "plot_ap_comparison",
    "plot_general_instances",
    "plot_ap_vs_capacity",
]

AP_KEYS = AP_METRICS  # re-exported for the notebooks
_FEATURE_CMAP = "viridis"
_ERROR_CMAP = "magma"
_GT_COLOUR = "#2ca02c"
_TEACHER_COLOUR = "#d62728"
_STUDENT_COLOUR = "#1f77b4"
# Rows of metrics.jsonl written by the periodic validation: {"iter": i, "val/AP": ..., "val/AP50": ...}.
_VALIDATION_PREFIX = "val/"
VALIDATION_KEYS = ("val/AP", "val/AP50")


def new_figure(*, figsize: tuple[float, float], tracked: bool = True) -> "Figure":
    """A figure; ``tracked`` registers it with pyplot so that the inline backend shows it."""
    if tracked:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize)
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _loss_keys(history: Sequence[Mapping[str, float]]) -> list[str]:
    keys: list[str] = []
    for record in history:
        for key in record:
            if key not in ("iter", "time", "lr", "loss") and not key.startswith(_VALIDATION_PREFIX) and key not in keys:
                keys.append(key)
    return keys


def _has_validation(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> bool:
    return any(_finite(record.get(key)) for history in histories.values() for record in history
               for key in VALIDATION_KEYS)


def plot_loss_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    *,
    title: str = "training losses",
    tracked: bool = False,
) -> "Figure":
    """Total loss (left), each loss term (middle) and, when the records hold periodic validation
    rows, the validation AP (right) against the iteration.

    Args:
        histories: run label -> records ``{"iter": ..., "loss": ..., "<term>": ...}`` (the lines of
            ``metrics.jsonl``); records ``{"iter": ..., "val/AP": ..., "val/AP50": ...}`` among them
            add the AP panel. Each run has one colour; on the right each term has its own
            colour and each run its own line style.
        title: figure title.
        tracked: register the figure with pyplot.
    """
    with_validation = _has_validation(histories)
    figure = new_figure(figsize=(18.5 if with_validation else 13.5, 4.2), tracked=tracked)
    axes = figure.subplots(1, 3 if with_validation else 2)
    total_ax, terms_ax = axes[0], axes[1]
    styles = ["-", "--", ":", "-."]
    colours = [f"C{i}" for i in range(10)]
    for run_index, (label, history) in enumerate(histories.items()):
        iters = [r["iter"] for r in history if _finite(r.get("loss"))]
        losses = [r["loss"] for r in history if _finite(r.get("loss"))]
        total_ax.plot(iters, losses, marker="o" if len(iters) < 15 else None, ms=3,
                      color=colours[run_index % 10], label=label)
        for term_index, key in enumerate(_loss_keys(history)):
            points = [(r["iter"], r[key]) for r in history if _finite(r.get(key))]
            if not points:
                continue
            xs, ys = zip(*points)
            terms_ax.plot(xs, ys, linestyle=styles[run_index % len(styles)], color=colours[term_index % 10],
                          label=f"{key} ({label})" if len(histories) > 1 else key)
        if with_validation:
            for key_index, key in enumerate(VALIDATION_KEYS):
                points = [(r["iter"], float(r[key])) for r in history if _finite(r.get(key))]
                if points:
                    xs, ys = zip(*points)
                    axes[2].plot(xs, ys, marker="o", ms=4, linestyle=styles[key_index % len(styles)],
                                 color=colours[run_index % 10],
                                 label=f"{key[len(_VALIDATION_PREFIX):]} ({label})" if len(histories) > 1
                                 else key[len(_VALIDATION_PREFIX):])
    if with_validation:
        axes[2].set(title="validation AP", xlabel="iteration", ylabel="AP (%)")
        axes[2].set_ylim(bottom=0.0)
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize=8, loc="upper left")
    total_ax.set(title="total loss", xlabel="iteration", ylabel="loss")
    terms_ax.set(title="loss terms", xlabel="iteration", ylabel="loss")
    for ax in (total_ax, terms_ax):
        ax.grid(alpha=0.3)
    if total_ax.lines:
        total_ax.legend(fontsize=8, loc="upper right")
    if terms_ax.lines:
        # Detectors log many terms; beside the panel the legend hides no curve.
        terms_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ap_value(value: Any) -> float:
    return float(value) if _finite(value) else math.nan


def plot_ap_comparison(
    evaluations: Mapping[str, Mapping[str, float]],
    *,
    title: str = "COCO AP on the validation split",
    tracked: bool = False,
) -> "Figure":
    """Grouped bars of AP, AP50, AP75, APs, APm, APl, one bar colour per run, values written on top.

    Args:
        evaluations: run label -> ``eval.json`` metrics (AP in percent; NaN or missing -> no bar).
    """
    figure = new_figure(figsize=(10, 4.2), tracked=tracked)
    ax = figure.subplots()
    labels = list(evaluations)
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(AP_KEYS))
    for index, label in enumerate(labels):
        # 0.0 is a measured AP (drawn as 0.0); only a missing or null value is the "-" mark.
        values = [_ap_value(evaluations[label].get(key)) for key in AP_KEYS]
        bars = ax.bar(x + (index - (len(labels) - 1) / 2) * width, np.nan_to_num(values, nan=0.0), width, label=label)
        for bar, value in zip(bars, values):
            text = "-" if math.isnan(value) else f"{value:.1f}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, AP_KEYS)
    ax.set(ylabel="AP (%)", title=title)
    ax.set_ylim(0, max(5.0, ax.get_ylim()[1] * 1.12))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _draw_box(
    ax: Any,
    box: Sequence[float],
    *,
    colour: str,
    style: str = "-",
    label: str | None = None,
    width: float = 1.6,
    bounds: tuple[float, float] | None = None,
) -> None:
    """A box outline, with its label at the top-left corner moved inside ``bounds`` ``(h, w)``."""
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linestyle=style, linewidth=width))
    if label:
        x, y = x1, y1
        if bounds is not None:
            height, width_px = bounds
            x = min(max(x, 0.0), width_px * 0.85)
            y = min(max(y, height * 0.05), height)
        ax.text(x, y, label, fontsize=7, color="white", va="bottom", clip_on=True,
                bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "edgecolor": "none"})


def _score_text(score: float) -> str:
    return f"{score:.2f}" if score >= 0.01 else f"{score:.1e}"


def plot_general_instances(
    image: np.ndarray,
    instances: Sequence[Mapping[str, Any]],
    *,
    gt_boxes: Sequence[Sequence[float]] = (),
    valid_size: tuple[int, int] | None = None,
    title: str = "general instances",
    ax: Any = None,
    tracked: bool = False,
) -> "Figure":
    """GID's general instances on the image: red boxes came from the teacher, blue from the student,
    each labelled with its rank and GI score; ground-truth boxes are dashed green.

    Args:
        image: ``(H, W, 3)`` float image in ``[0, 1]``.
        instances: ``{"box": (x1, y1, x2, y2), "score": float, "from_teacher": bool}`` best first.
        gt_boxes: ground-truth boxes in the same pixels.
        valid_size: ``(h, w)`` of the real image inside the padding; the view is cropped to it.
        ax: draw into this axes instead of a new figure.
    """
    from matplotlib.lines import Line2D

    figure = None
    if ax is None:
        figure = new_figure(figsize=(5.5, 5.5), tracked=tracked)
        ax = figure.subplots()
    height, width = valid_size if valid_size is not None else image.shape[:2]
    ax.imshow(image)
    for box in gt_boxes:
        _draw_box(ax, box, colour=_GT_COLOUR, style="--", width=1.2)
    for rank, inst in enumerate(instances, start=1):
        colour = _TEACHER_COLOUR if inst["from_teacher"] else _STUDENT_COLOUR
        _draw_box(ax, inst["box"], colour=colour, label=f"{rank}: {_score_text(float(inst['score']))}",
                  bounds=(height, width))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    handles = [
        Line2D([], [], color=_TEACHER_COLOUR, lw=2, label="GI box from teacher"),
        Line2D([], [], color=_STUDENT_COLOUR, lw=2, label="GI box from student"),
        Line2D([], [], color=_GT_COLOUR, lw=1.2, ls="--", label="ground truth"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=3, frameon=False)
    if figure is None:
        return ax.figure
    figure.tight_layout()
    return figure


def plot_ap_vs_capacity(
    rows: Sequence[Mapping[str, Any]],
    *,
    metric: str = "AP",
    title: str | None = None,
    tracked: bool = False,
) -> "Figure":
    """AP against capacity, one line per method (points sorted by capacity, labelled with width
    and resolution). Rows without a capacity or a finite AP are left out and listed under the
    plot.

    Args:
        rows: AP-table rows (:func:`msadkit.analysis.ap_table.collect_runs`).
        metric: the AP column to plot.
    """
    figure = new_figure(figsize=(7.5, 5), tracked=tracked)
    ax = figure.subplots()
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    skipped = []
    for row in rows:
        value, capacity = row.get(metric), row.get("capacity")
        if capacity is None or not _finite(value):
            skipped.append(str(row.get("run") or row.get("method")))
            continue
        by_method.setdefault(str(row.get("method")), []).append(row)
    for index, (method, points) in enumerate(sorted(by_method.items())):
        points = sorted(points, key=lambda r: float(r["capacity"]))
        xs = [float(r["capacity"]) for r in points]
        ys = [float(r[metric]) for r in points]
        ax.plot(xs, ys, marker="o", color=f"C{index % 10}", label=method)
        for row, x, y in zip(points, xs, ys):
            width = row.get("width")
            tag = f"w{float(width):.2f}" if width is not None else ""
            tag += f" {row.get('resolution')}" if row.get("resolution") else ""
            ax.annotate(tag.strip(), (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.margins(x=0.15, y=0.1)  # room for the point labels
    ax.set(xlabel="capacity (backbone FLOPs relative to width 1.0 at 800x1333)", ylabel=f"{metric} (%)",
           title=title or f"{metric} against capacity")
    ax.grid(alpha=0.3)
    if by_method:
        ax.legend(title="method", fontsize=8)
    if skipped:
        figure.text(0.01, 0.01, "not plotted (no capacity or AP): " + ", ".join(skipped), fontsize=7)
    figure.tight_layout(rect=(0, 0.04 if skipped else 0, 1, 1))
    return figure
