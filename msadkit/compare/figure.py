"""The comparison figure of one track: the forest plot, AP per seed and AP by object size.

Three panels share one row per model (teachers, baseline, step-matched control, methods):

1. each model's paired difference to the baseline, mean and 95 % t-interval, with the Holm p of
   each method; a dashed line at 0;
2. the AP of every seed's run (one colour per seed; an open marker: the run was still rising at
   its end), with the mean as a bar;
3. APs, APm and APl, mean over seeds with a line from the lowest to the highest seed.

The title says how many seeds and what the intervals are, so no spread is hidden.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from msadkit.analysis.figure_style import FONT, finish_axes, new_figure
from msadkit.compare.plan import METHOD
from msadkit.compare.table import ComparisonTable, model_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_comparison"]

_SIZE_STYLES = {"APs": ("o", "small"), "APm": ("s", "medium"), "APl": ("^", "large")}
_REFERENCE_COLOUR = "0.45"  # the control and the ablation: references, not methods
_METHOD_COLOUR = "#1f77b4"


def _forest(ax: Any, rows: Sequence[Any]) -> None:
    for y, summary in enumerate(rows):
        c = summary.comparison
        if c is None:
            continue
        colour = _METHOD_COLOUR if summary.kind == METHOD else _REFERENCE_COLOUR
        ax.errorbar([c.mean], [y], xerr=[[c.mean - c.low], [c.high - c.mean]], fmt="o", color=colour,
                    ecolor=colour, elinewidth=1.2, capsize=3, markersize=4)
    ax.axvline(0.0, color="black", linestyle="--", linewidth=0.8)
    finish_axes(ax, title="ΔAP vs baseline\nmean and 95 %\nt-interval", xlabel="AP points", grid="x")


def _row_label(summary: Any, table: ComparisonTable) -> str:
    """The model, and for a method its Holm-corrected p (a reference's plain p: it is no method)."""
    label = model_label(summary, table.track)
    c = summary.comparison
    if c is None:
        return label
    return f"{label}\n" + (f"p$_{{Holm}}$ = {c.p_holm:.3f}" if summary.kind == METHOD else f"p = {c.p:.3f}")


def _per_seed(ax: Any, table: ComparisonTable, rows: Sequence[Any]) -> list[Any]:
    handles = {}
    offsets = {seed: (k - (len(table.seeds) - 1) / 2) * 0.08 for k, seed in enumerate(table.seeds)}
    for y, summary in enumerate(rows):
        values = summary.values("AP")
        if values:
            mean = sum(values) / len(values)
            ax.plot([mean, mean], [y - 0.3, y + 0.3], color="black", linewidth=1.5)
        for k, seed in enumerate(table.seeds):
            run = summary.runs.get(seed)
            if run is None or not math.isfinite(run.ap):
                continue
            colour = f"C{k % 10}"
            rising = run.plateau.plateaued is False
            handle = ax.plot([run.ap], [y + offsets[seed]], marker="o", linestyle="none", markersize=4,
                             color=colour, markerfacecolor="white" if rising else colour)[0]
            handles.setdefault(seed, handle)
    finish_axes(ax, title="AP per seed\nbar: mean\nopen: not plateaued", xlabel="AP", grid="x")
    return [handles[seed] for seed in table.seeds if seed in handles]


def _sizes(ax: Any, rows: Sequence[Any]) -> None:
    labelled: set[str] = set()
    for y, summary in enumerate(rows):
        for k, (metric, (marker, name)) in enumerate(_SIZE_STYLES.items()):
            values = summary.values(metric)
            if not values:
                continue
            yy = y + (k - 1) * 0.22
            if len(values) > 1:
                ax.plot([min(values), max(values)], [yy, yy], color=f"C{k + 3}", linewidth=1.0)
            ax.plot([sum(values) / len(values)], [yy], marker=marker, linestyle="none", color=f"C{k + 3}",
                    markersize=4, label=None if name in labelled else name)
            labelled.add(name)
    finish_axes(ax, title="AP by object size\nmean\nline: seed range", xlabel="AP", grid="x")


def plot_comparison(table: ComparisonTable, *, tracked: bool = True) -> Figure:
    """The figure of one track's comparison (see the module docstring).

    Args:
        table: the track's models and settings.
        tracked: register the figure with pyplot (notebooks show it inline); False for a file only.
    """
    rows = list(table.models)
    height = 1.9 + 0.36 * max(3, len(rows))
    figure = new_figure(figsize=(7.0, height), tracked=tracked)
    axes = figure.subplots(1, 3, sharey=True, gridspec_kw={"width_ratios": [1.2, 1.0, 1.0]})
    _forest(axes[0], rows)
    seed_handles = _per_seed(axes[1], table, rows)
    _sizes(axes[2], rows)
    axes[0].set_yticks(range(len(rows)), [_row_label(summary, table) for summary in rows], fontsize=FONT["tick"])
    axes[0].set_ylim(len(rows) - 0.5, -0.5)
    below = {"fontsize": FONT["legend"], "loc": "upper center", "bbox_to_anchor": (0.5, -0.16), "frameon": False,
             "handletextpad": 0.2, "columnspacing": 0.8}
    if seed_handles:
        finished = {seed for summary in rows for seed in summary.runs}
        axes[1].legend(seed_handles, [f"seed {s}" for s in table.seeds if s in finished], ncol=3, **below)
    if axes[2].get_legend_handles_labels()[0]:
        axes[2].legend(ncol=3, **below)
    figure.suptitle(f"{table.track.label}\nn = {len(table.seeds)} seeds, paired by seed; intervals: 95 % "
                    "t-intervals of the per-seed differences", fontsize=FONT["title"])
    return figure
