"""Matplotlib figures of the notebooks: training curves, AP comparisons, general instances and AP
against capacity (feature maps, alignment errors and C-FF weights: :mod:`.alignment_plots`).

Every function returns a ``matplotlib.figure.Figure`` and never calls ``plt.show``; the notebook
decides whether to display it, save it or both. Figures are built with the object-oriented API on
a ``Figure`` that pyplot does not track unless asked, so a batch run that makes many of them does
not accumulate open windows. Sizes and fonts: :mod:`.figure_style`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from msadkit.analysis.ap_plots import plot_ap_by_size, plot_ap_comparison, plot_ap_vs_capacity
from msadkit.analysis.figure_style import FONT, new_figure
from msadkit.analysis.text_layout import spread_labels
from msadkit.analysis.training_curves import CurveLayout, plot_training_curves
from msadkit.utils.run_folder import AP_METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "new_figure",
    "plot_loss_curves",
    "plot_training_curves",
    "plot_ap_comparison",
    "plot_ap_by_size",
    "plot_general_instances",
    "plot_general_instances_grid",
    "plot_ap_vs_capacity",
]

AP_KEYS = AP_METRICS  # re-exported for the notebooks
_FEATURE_CMAP = "viridis"
_ERROR_CMAP = "magma"
_GT_COLOUR = "#2ca02c"
_TEACHER_COLOUR = "#d62728"
_STUDENT_COLOUR = "#1f77b4"


def plot_loss_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    title: str = "training losses",
    layout: CurveLayout | None = None,
    tracked: bool = False,
) -> "Figure":
    """The training figure of runs given by their ``metrics.jsonl`` records
    (:func:`msadkit.analysis.training_curves.plot_training_curves`)."""
    return plot_training_curves(histories, layout=layout, title=title, tracked=tracked)


def _draw_box(
    ax: Any,
    box: Sequence[float],
    *,
    colour: str,
    style: str = "-",
    label: str | None = None,
    width: float = 1.6,
    bounds: tuple[float, float] | None = None,
) -> Any:
    """A box outline, with its label at the top-left corner moved inside ``bounds`` ``(h, w)``;
    returns the label's text (or None)."""
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linestyle=style, linewidth=width))
    if not label:
        return None
    x, y = x1, y1
    if bounds is not None:
        height, width_px = bounds
        x = min(max(x, 0.0), width_px * 0.8)
        y = min(max(y, height * 0.07), height)
    return ax.text(x, y, label, fontsize=FONT["annotation"] - 1, color="white", va="bottom", clip_on=True,
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
        figure = new_figure(figsize=(3.6, 3.9), tracked=tracked)
        ax = figure.subplots()
    height, width = valid_size if valid_size is not None else image.shape[:2]
    ax.imshow(image)
    for box in gt_boxes:
        _draw_box(ax, box, colour=_GT_COLOUR, style="--", width=1.2)
    labels = []
    for rank, inst in enumerate(instances, start=1):
        colour = _TEACHER_COLOUR if inst["from_teacher"] else _STUDENT_COLOUR
        labels.append(_draw_box(ax, inst["box"], colour=colour, label=f"{rank}: {_score_text(float(inst['score']))}",
                                bounds=(height, width)))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=FONT["axes_title"])
    handles = [
        Line2D([], [], color=_TEACHER_COLOUR, lw=2, label="GI box from teacher"),
        Line2D([], [], color=_STUDENT_COLOUR, lw=2, label="GI box from student"),
        Line2D([], [], color=_GT_COLOUR, lw=1.2, ls="--", label="ground truth"),
    ]
    ax.legend(handles=handles, fontsize=FONT["legend"], loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=2,
              frameon=False)
    # Boxes of one object start at nearly one corner; their labels go down the box, one per line.
    spread_labels([label for label in labels if label is not None], direction=-1)
    return ax.figure if figure is None else figure


def plot_general_instances_grid(
    images: Sequence[np.ndarray],
    instances: Sequence[Sequence[Mapping[str, Any]]],
    *,
    gt_boxes: Sequence[Sequence[Sequence[float]]],
    valid_sizes: Sequence[tuple[int, int]],
    titles: Sequence[str],
    tracked: bool = False,
) -> "Figure":
    """:func:`plot_general_instances` of several images side by side (one row)."""
    figure = new_figure(figsize=(3.4 * len(images), 3.9), tracked=tracked)
    axes = np.atleast_1d(figure.subplots(1, len(images)))
    for ax, image, selected, boxes, size, title in zip(axes, images, instances, gt_boxes, valid_sizes, titles):
        plot_general_instances(image, selected, gt_boxes=boxes, valid_size=size, title=title, ax=ax)
    return figure
