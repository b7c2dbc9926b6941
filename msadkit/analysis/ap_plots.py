"""AP figures: models side by side, AP per object size, AP against capacity.

A model may come with several runs (seeds of one recipe): its bar or point is then the mean, with
a line from the lowest to the highest run, and the legend says how many runs (``n=3``); with one
run each, the figure says "1 seed", so a reader knows no spread is hidden.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from msadkit.analysis.figure_style import FONT, finish_axes, finite, new_figure
from msadkit.analysis.text_layout import renderer_of, spread_labels
from msadkit.utils.run_folder import AP_METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["METRIC_LABELS", "aggregate", "plot_ap_comparison", "plot_ap_by_size", "plot_ap_vs_capacity", "seed_note"]

# Tick labels as the paper sets them: "APl" in a sans-serif font reads as "API".
METRIC_LABELS = {"AP": "AP", "AP50": "AP$_{50}$", "AP75": "AP$_{75}$", "APs": "AP$_S$", "APm": "AP$_M$",
                 "APl": "AP$_L$"}
SIZE_METRICS = ("APs", "APm", "APl")
_SIZE_NAMES = {"APs": "small", "APm": "medium", "APl": "large"}
_LOW_HATCH = "///"


def aggregate(values: Sequence[Any]) -> tuple[float, float, float, int]:
    """``(mean, lowest, highest, n)`` of the finite values (NaN and 0 runs when none)."""
    numbers = [float(v) for v in values if finite(v)]
    if not numbers:
        return math.nan, math.nan, math.nan, 0
    return float(np.mean(numbers)), min(numbers), max(numbers), len(numbers)


def _as_runs(evaluation: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [evaluation] if isinstance(evaluation, Mapping) else list(evaluation)


def seed_note(counts: Sequence[int]) -> str:
    """What the figure says about its runs: "1 seed", or "3 seeds per model" and how the spread is
    drawn (on two lines, a legend title)."""
    counts = [c for c in counts if c > 0]
    if not counts or max(counts) <= 1:
        return "1 seed"
    low, high = min(counts), max(counts)
    n = f"{low}" if low == high else f"{low}-{high}"
    return f"{n} seeds per model\nmean; line: lowest to highest"


def _bars(
    ax: Any,
    evaluations: Mapping[str, Any],
    metrics: Sequence[str],
    *,
    resolutions: Mapping[str, str] | None = None,
) -> tuple[list[int], list[Any]]:
    """Grouped bars of ``metrics`` (groups) by model (bars); returns each model's number of runs
    and the value labels (to spread once the figure is complete)."""
    labels = list(evaluations)
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(metrics))
    counts, texts = [], []
    for index, label in enumerate(labels):
        runs = _as_runs(evaluations[label])
        stats = [aggregate([run.get(metric) for run in runs]) for metric in metrics]
        n = max((s[3] for s in stats), default=0)
        counts.append(n)
        means = np.array([s[0] for s in stats])
        positions = x + (index - (len(labels) - 1) / 2) * width
        resolution = (resolutions or {}).get(label)
        legend = label + (f" ({resolution} res.)" if resolution else "") + (f", n={n}" if n > 1 else "")
        bars = ax.bar(positions, np.nan_to_num(means, nan=0.0), width * 0.92, label=legend, color=f"C{index % 10}",
                      hatch=_LOW_HATCH if resolution == "low" else None, edgecolor="white", linewidth=0.5)
        tops = []
        for bar, (mean, low, high, count) in zip(bars, stats):
            top = 0.0 if math.isnan(mean) else mean
            if count > 1:
                ax.plot([bar.get_x() + bar.get_width() / 2] * 2, [low, high], color="black", lw=1.0)
                top = high
            tops.append(top)
            text = "-" if math.isnan(mean) else f"{mean:.1f}"
            texts.append(ax.annotate(text, (bar.get_x() + bar.get_width() / 2, top), ha="center", va="bottom",
                                     fontsize=FONT["annotation"] - (1 if len(labels) > 3 else 0),
                                     xytext=(0, 2), textcoords="offset points"))
    ax.set_xticks(x, [METRIC_LABELS.get(m, m) for m in metrics])
    highest = max([0.0] + [t.xy[1] for t in texts])
    ax.set_ylim(0, max(5.0, highest * 1.15))
    return counts, texts


def plot_ap_comparison(
    evaluations: Mapping[str, Mapping[str, Any] | Sequence[Mapping[str, Any]]],
    *,
    title: str = "COCO AP on the validation split",
    resolutions: Mapping[str, str] | None = None,
    tracked: bool = False,
) -> "Figure":
    """Grouped bars of AP, AP50, AP75, APs, APm, APl, one colour per model, values written on top.

    Args:
        evaluations: model label -> ``eval.json`` metrics of one run, or a list of them (seeds): the
            bar is then their mean with a line from the lowest to the highest. AP in percent; a NaN or
            missing value gives no bar and a "-".
        resolutions: model label -> input resolution (``"low"`` bars are hatched, the legend says it).
    """
    figure = new_figure(figsize=(7.0, 3.4), tracked=tracked)
    ax = figure.subplots()
    counts, texts = _bars(ax, evaluations, AP_METRICS, resolutions=resolutions)
    finish_axes(ax, title=title, ylabel="AP (%)", grid="y")
    figure.legend(fontsize=FONT["legend"], loc="outside right upper", title=seed_note(counts),
                  title_fontsize=FONT["legend"])
    spread_labels(texts)
    return figure


def plot_ap_by_size(
    evaluations: Mapping[str, Mapping[str, Any] | Sequence[Mapping[str, Any]]],
    *,
    resolutions: Mapping[str, str] | None = None,
    title: str = "AP by object size",
    tracked: bool = False,
) -> "Figure":
    """APs, APm and APl (COCO's small < 32², medium, large > 96² pixels) of each model, its input
    resolution marked: a low-resolution model's bars are hatched and labelled "low res.", which is
    where small objects suffer first.

    Args:
        evaluations: model label -> ``eval.json`` metrics, or a list of them (seeds).
        resolutions: model label -> ``"high"``, ``"low"`` or ``"high+low"`` (an MSAD teacher).
    """
    figure = new_figure(figsize=(5.6, 3.4), tracked=tracked)
    ax = figure.subplots()
    counts, texts = _bars(ax, evaluations, SIZE_METRICS, resolutions=resolutions)
    ax.set_xticks(range(len(SIZE_METRICS)), [f"{METRIC_LABELS[m]}\n({_SIZE_NAMES[m]})" for m in SIZE_METRICS])
    finish_axes(ax, title=title, ylabel="AP (%)", grid="y")
    figure.legend(fontsize=FONT["legend"], loc="outside right upper", title=seed_note(counts),
                  title_fontsize=FONT["legend"])
    spread_labels(texts)
    return figure


def _series_key(row: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (str(row.get("method")), str(row.get("role") or ""), str(row.get("resolution") or ""),
            str(row.get("schedule") or ""))


def _recipe_key(row: Mapping[str, Any]) -> tuple:
    return tuple(str(row.get(k)) for k in ("method", "backbone", "capacity", "schedule", "width", "role", "resolution"))


def plot_ap_vs_capacity(
    rows: Sequence[Mapping[str, Any]],
    *,
    metric: str = "AP",
    title: str | None = None,
    tracked: bool = False,
) -> "Figure":
    """AP against capacity: one line per method, role, resolution and schedule (a low-resolution
    student and the high-resolution baseline are two curves, never one width curve), points sorted by
    capacity and labelled with their width. Runs of one recipe (seeds) are one point: their mean,
    with a line from the lowest to the highest. Points of different curves that coincide are set
    side by side so none hides another. Rows without a capacity or a finite AP are left out and
    listed under the plot.
    """
    from matplotlib.lines import Line2D
    from matplotlib.transforms import offset_copy

    figure = new_figure(figsize=(6.0, 4.6), tracked=tracked)
    ax = figure.subplots()
    recipes: dict[tuple, list[Mapping[str, Any]]] = {}
    skipped = []
    for row in rows:
        if row.get("capacity") is None or not finite(row.get(metric)):
            skipped.append(str(row.get("run") or row.get("method")))
            continue
        recipes.setdefault(_recipe_key(row), []).append(row)
    series: dict[tuple, list[tuple[float, tuple, Mapping[str, Any]]]] = {}
    for recipe_rows in recipes.values():
        first = recipe_rows[0]
        stats = aggregate([r.get(metric) for r in recipe_rows])
        series.setdefault(_series_key(first), []).append((float(first["capacity"]), stats, first))
    seen: dict[tuple[float, float], int] = {}
    counts, labels, handles = [], [], []
    for index, (key, points) in enumerate(sorted(series.items())):
        points.sort(key=lambda p: p[0])
        method, role, resolution, schedule = key
        details = [role] + ([f"{resolution} res."] if resolution else []) + ([schedule] if schedule else [])
        name = f"{method} ({', '.join(d for d in details if d)})"
        colour, marker = f"C{index % 10}", "os^Dv<>"[index % 7]
        xs = [p[0] for p in points]
        ys = [p[1][0] for p in points]
        offsets = []
        for x, y in zip(xs, ys):
            spot = (round(x, 4), round(y, 2))
            offsets.append(seen.get(spot, 0))
            seen[spot] = seen.get(spot, 0) + 1
        line_style = "-" if resolution != "low" else "--"
        ax.plot(xs, ys, color=colour, linestyle=line_style, lw=1.2, label=name)
        handles.append(Line2D([], [], color=colour, linestyle=line_style, lw=1.2, marker=marker, ms=5, label=name))
        for (x, (mean, low, high, n), row), shift in zip(points, offsets):
            moved = offset_copy(ax.transData, fig=figure, x=5.0 * shift, y=0.0, units="points")
            ax.plot([x], [mean], marker=marker, color=colour, ms=6, transform=moved, linestyle="none",
                    markeredgecolor="white", markeredgewidth=0.6)
            if n > 1:
                ax.plot([x, x], [low, high], color=colour, lw=1.0, transform=moved)
            counts.append(n)
            width = row.get("width")
            tag = f"w{float(width):.2f}" if width is not None else ""
            labels.append(ax.annotate(tag, (x, mean), fontsize=FONT["annotation"], color=colour,
                                      xytext=(4 + 5.0 * shift, 4), textcoords="offset points"))
    ax.margins(x=0.12)
    bottom, top = ax.get_ylim()
    ax.set_ylim(0, max(5.0, top * 1.15))
    xlabel = "capacity (backbone FLOPs relative to width 1.0 at 800x1333)"
    if skipped:
        xlabel += "\nnot plotted (no capacity or AP): " + ", ".join(skipped)
    finish_axes(ax, xlabel=xlabel, ylabel=f"{metric} (%)", title=title or f"{metric} against capacity")
    if series:
        figure.legend(handles=handles, fontsize=FONT["legend"], loc="outside lower center", ncol=2,
                      title=seed_note(counts), title_fontsize=FONT["legend"], frameon=False)
    _keep_inside(ax, [t for t in labels if t.get_text()])
    return figure


def _keep_inside(ax: Any, texts: Sequence[Any]) -> None:
    """Point labels that would cross the frame go to the other side of their point, then apart."""
    figure = ax.figure
    renderer = renderer_of(figure)
    frame = ax.get_window_extent(renderer)
    for text in texts:
        box = text.get_window_extent(renderer)
        dx, dy = text.xyann
        if box.x1 > frame.x1:
            dx = -dx - box.width * 72.0 / figure.dpi
        if box.y1 > frame.y1:
            dy = -dy - box.height * 72.0 / figure.dpi
        text.xyann = (dx, dy)
    spread_labels(texts)
