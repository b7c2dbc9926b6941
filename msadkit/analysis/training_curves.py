"""The training figure: total loss, detection terms, distillation terms with their ramp, validation AP.

One layout per run kind, fixed before the first point arrives (the live figure keeps its panels and
its fonts while it fills): total loss | detection terms | distillation terms (distilled runs) |
validation AP. Detection terms are grouped by branch (line style) and term (colour); distillation
terms show the weighted value the total sums (solid) beside the term's own value before weight and
ramp (dotted, ``<key>_raw`` in ``metrics.jsonl``) and, on a right-hand axis, the factor
``weight x ramp`` over the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from msadkit.analysis.figure_style import FONT, finish_axes, finite, new_figure, sensible_limits

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DistillTerm", "CurveLayout", "plot_training_curves", "progress_line", "split_loss_key"]

RAW_SUFFIX = "_raw"
VALIDATION_PREFIX = "val/"
_NOT_LOSSES = ("iter", "time", "lr", "loss")
BRANCHES = ("high", "low", "fused")
_BRANCH_STYLES = {"": "-", "high": "-", "low": "--", "fused": ":"}
_RUN_STYLES = ("-", "--", "-.", ":")
_RUN_MARKERS = ("o", "s", "^", "D")
# The final AP of each run (several runs share the AP panel: colour is the metric, shape the run).
_FINAL_MARKERS = ("*", "D", "P", "X")
# AP and AP50 in colours of their own (never the colours of two runs).
METRIC_COLOURS = {"AP": "#1f77b4", "AP50": "#ff7f0e"}
_FACTOR_COLOUR = "0.45"
# Legends sit under their panel (below the iteration label, in units of the legend's font size), so
# no legend covers a curve however the curves grow.
_BELOW = {"loc": "upper center", "bbox_to_anchor": (0.5, 0.0), "borderaxespad": 4.2, "frameon": False,
          "fontsize": FONT["legend"]}
_DETECTOR_TOKENS = ("fcos_", "retina_", "retinanet_")


@dataclass(frozen=True)
class DistillTerm:
    """A distillation loss of a run: its key prefix, weight and linear ramp (0: none)."""

    name: str
    weight: float = 1.0
    ramp_iters: int = 0

    def factor(self, iteration: float) -> float:
        """``weight x min(1, iteration / ramp_iters)``: what the term's value is multiplied by."""
        ramp = 1.0 if self.ramp_iters <= 0 else min(1.0, iteration / self.ramp_iters)
        return self.weight * ramp

    def owns(self, key: str) -> bool:
        return key == self.name or key.startswith(f"{self.name}_")


@dataclass(frozen=True)
class CurveLayout:
    """What a training figure shows, known before training: the run length (the x-axis), the
    distillation terms (a panel of their own) and whether an AP panel is kept."""

    max_iter: int | None = None
    terms: tuple[DistillTerm, ...] = ()
    validation: bool = True
    eval_period: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, validation: bool = True) -> "CurveLayout":
        """The layout of a run of ``config``: its ``distill.losses`` (names, weights, ramps, the
        term's registered default where an entry leaves an option out) when it has a teacher."""
        from msadkit.config.sections import LIST_ITEM_OPTIONS

        registered = LIST_ITEM_OPTIONS.get("distill.losses", {})
        terms = []
        if config.get("distill", {}).get("teacher"):
            for entry in config["distill"].get("losses") or []:
                defaults = registered.get(str(entry.get("type")), {})
                options = {**defaults, **entry}
                terms.append(DistillTerm(
                    name=str(options.get("name") or f"loss_{entry.get('type')}"),
                    weight=float(options.get("weight", 1.0)),
                    ramp_iters=int(options.get("ramp_iters", 0) or 0),
                ))
        return cls(max_iter=int(config["solver"]["max_iter"]), terms=tuple(terms), validation=validation,
                   eval_period=int(config["trainer"]["eval_period"]))

    def is_distillation(self, key: str) -> bool:
        return any(term.owns(key) for term in self.terms) or key.endswith(RAW_SUFFIX)


def split_loss_key(key: str) -> tuple[str, str]:
    """``(branch, term)`` of a detection loss key: ``high_loss_fcos_cls`` -> ``("high", "cls")``,
    ``loss_box_reg`` -> ``("", "box_reg")``."""
    branch = next((b for b in BRANCHES if key.startswith(f"{b}_")), "")
    term = key[len(branch) + 1:] if branch else key
    term = term[len("loss_"):] if term.startswith("loss_") else term
    for token in _DETECTOR_TOKENS:
        if term.startswith(token):
            term = term[len(token):]
    return branch, term


def _loss_keys(history: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for record in history:
        keys += [k for k in record if k not in _NOT_LOSSES and not k.startswith(VALIDATION_PREFIX) and k not in keys]
    return keys


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(float(r["iter"]), float(r[key])) for r in history if finite(r.get(key))]
    return ([p[0] for p in points], [p[1] for p in points]) if points else ([], [])


def _plot(ax: Any, xs: list[float], ys: list[float], **style: Any) -> None:
    """A line, with markers when the points are few (a single point is a marker, not nothing)."""
    marker = style.pop("marker", "o")
    if xs:
        ax.plot(xs, ys, marker=marker if len(xs) < 15 else None, ms=3.5, **style)


def plot_training_curves(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    layout: CurveLayout | None = None,
    final_evals: Mapping[str, Mapping[str, Any]] | None = None,
    title: str = "training",
    tracked: bool = False,
) -> "Figure":
    """The training figure of one or more runs (their ``metrics.jsonl`` records).

    Args:
        runs: run label -> records (loss rows and ``val/`` rows).
        layout: panels and x-range (:meth:`CurveLayout.from_config`); None: from the records.
        final_evals: run label -> ``eval.json`` metrics, drawn as the final AP points.
        title: figure title.
        tracked: register the figure with pyplot.
    """
    final_evals = dict(final_evals or {})
    if layout is None:
        # Without a config: the distillation terms are those with a raw value beside them.
        raw_keys = dict.fromkeys(k for h in runs.values() for k in _loss_keys(h) if k.endswith(RAW_SUFFIX))
        layout = CurveLayout(terms=tuple(DistillTerm(k[: -len(RAW_SUFFIX)]) for k in raw_keys), validation=any(
            finite(r.get("val/AP")) for h in runs.values() for r in h) or bool(final_evals))
    names = ["total", "detection"] + (["distillation"] if layout.terms else []) + (["AP"] if layout.validation else [])
    figure = new_figure(figsize=(3.0 * len(names) + 0.4, 3.9), tracked=tracked)
    axes = dict(zip(names, figure.subplots(1, len(names), squeeze=False)[0]))
    several = len(runs) > 1
    distilled = sum(any(layout.is_distillation(k) for k in _loss_keys(h)) for h in runs.values())
    terms: list[str] = []
    branches: list[str] = []
    for index, (label, history) in enumerate(runs.items()):
        colour = f"C{index % 10}"
        _plot(axes["total"], *_series(history, "loss"), color=colour, label=label)
        keys = [k for k in _loss_keys(history) if not layout.is_distillation(k)]
        terms = list(dict.fromkeys(terms + [split_loss_key(k)[1] for k in keys]))
        branches = list(dict.fromkeys(branches + [split_loss_key(k)[0] for k in keys]))
        _draw_detection(axes["detection"], history, keys, terms, colour if several else None)
        if layout.terms:
            _draw_distillation(axes["distillation"], history, layout, label if distilled > 1 else None)
        if layout.validation:
            _draw_validation(axes["AP"], history, final_evals.get(label), layout, index, label if several else None)
    factor_axis = _draw_factor(axes["distillation"], layout) if layout.terms else None
    _finish(axes, layout, list(runs), terms, branches, factor_axis)
    figure.suptitle(title, fontsize=FONT["title"])
    return figure


def _draw_detection(ax: Any, history: Sequence[Mapping[str, Any]], keys: Sequence[str], terms: Sequence[str],
                    run_colour: str | None) -> None:
    """Detection terms: colour by term and style by branch for one run; colour by run and style by
    term when several runs share the panel."""
    for key in keys:
        branch, term = split_loss_key(key)
        if run_colour is None:
            colour, style = f"C{terms.index(term) % 10}", _BRANCH_STYLES.get(branch, "-")
        else:
            colour, style = run_colour, _RUN_STYLES[terms.index(term) % 4]
        _plot(ax, *_series(history, key), color=colour, linestyle=style, lw=1.2)


def _draw_distillation(ax: Any, history: Sequence[Mapping[str, Any]], layout: CurveLayout, run: str | None) -> None:
    """Each distillation loss as the total sums it (solid) and before weight and ramp (dotted)."""
    keys = [k for k in _loss_keys(history) if layout.is_distillation(k) and not k.endswith(RAW_SUFFIX)]
    suffix = f" ({run})" if run else ""
    for index, key in enumerate(keys):
        short = key[len("loss_"):] if key.startswith("loss_") else key
        _plot(ax, *_series(history, key), color=f"C{index % 10}", lw=1.4, label=f"{short}{suffix}")
        _plot(ax, *_series(history, key + RAW_SUFFIX), color=f"C{index % 10}", lw=1.2, linestyle=":",
              marker="s", label=f"{short}, raw{suffix}")


def _draw_factor(ax: Any, layout: CurveLayout) -> Any:
    """``weight x ramp`` of each term over the whole run, on a right-hand axis from 0."""
    end = layout.max_iter or max((t.ramp_iters for t in layout.terms), default=1) or 1
    right = ax.twinx()
    top = 1.0
    for term in layout.terms:
        xs = sorted({0.0, float(min(term.ramp_iters, end)), float(end)}) if term.ramp_iters > 0 else [0.0, float(end)]
        ys = [term.factor(x) for x in xs]
        top = max(top, *ys)
        short = term.name[len("loss_"):] if term.name.startswith("loss_") else term.name
        ramp = f" (ramp {term.ramp_iters} it)" if term.ramp_iters > 0 else ""
        name = f" of {short}" if len(layout.terms) > 1 else ""
        right.plot(xs, ys, color=_FACTOR_COLOUR, lw=1.0, linestyle="--", label=f"weight x ramp{name}{ramp}")
    right.set_ylim(0, top * 1.1)
    right.set_ylabel("factor (weight x ramp)", fontsize=FONT["label"], color=_FACTOR_COLOUR)
    right.tick_params(labelsize=FONT["tick"], colors=_FACTOR_COLOUR)
    return right


def _draw_validation(ax: Any, history: Sequence[Mapping[str, Any]], final: Mapping[str, Any] | None,
                     layout: CurveLayout, index: int, run: str | None) -> None:
    for metric, colour in METRIC_COLOURS.items():
        xs, ys = _series(history, f"{VALIDATION_PREFIX}{metric}")
        suffix = f" ({run})" if run else ""
        if xs:
            ax.plot(xs, ys, color=colour, linestyle=_RUN_STYLES[index % 4], marker=_RUN_MARKERS[index % 4], ms=4,
                    label=f"{metric}{suffix}")
        if final is not None and finite(final.get(metric)):
            at = float(layout.max_iter or (xs[-1] if xs else 0.0))
            marker = _FINAL_MARKERS[index % len(_FINAL_MARKERS)]
            ax.plot([at], [float(final[metric])], color=colour, marker=marker, ms=10 if marker == "*" else 7,
                    linestyle="none", label=f"final {metric}{suffix}")


def _finish(axes: Mapping[str, Any], layout: CurveLayout, runs: Sequence[str], terms: Sequence[str],
            branches: Sequence[str], factor_axis: Any) -> None:
    from matplotlib.lines import Line2D

    titles = {"total": "total loss", "detection": "detection losses", "distillation": "distillation losses",
              "AP": "validation AP"}
    for name, ax in axes.items():
        finish_axes(ax, title=titles[name], xlabel="iteration", ylabel="AP (%)" if name == "AP" else "loss")
        sensible_limits(ax, x_end=layout.max_iter, from_zero=True)
    several = len(runs) > 1
    if several:
        axes["total"].legend(**_BELOW)
    detection = axes["detection"]
    handles = []
    if several:
        handles += [Line2D([], [], color=f"C{i % 10}", label=label) for i, label in enumerate(runs)]
        handles += [Line2D([], [], color="0.3", linestyle=_RUN_STYLES[i % 4], label=t) for i, t in enumerate(terms)]
    else:
        handles += [Line2D([], [], color=f"C{i % 10}", label=t) for i, t in enumerate(terms)]
        if len([b for b in branches if b]) > 1:
            handles += [Line2D([], [], color="0.3", linestyle=_BRANCH_STYLES[b], label=f"{b} branch")
                        for b in branches if b]
    if handles:
        detection.legend(handles=handles, ncol=2 if len(handles) > 3 else 1, **_BELOW)
    if "distillation" in axes:
        ax = axes["distillation"]
        lines = ax.get_lines() + factor_axis.get_lines()
        labelled = [line for line in lines if not line.get_label().startswith("_")]
        if labelled:
            ax.legend(handles=labelled, **_BELOW)
    if "AP" in axes:
        ax = axes["AP"]
        if any(not line.get_label().startswith("_") for line in ax.get_lines()):
            ax.legend(ncol=2, **_BELOW)
        else:
            note = ("no validation yet" if layout.eval_period > 0
                    else "no validation during training:\nthe final AP comes after it")
            ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", fontsize=FONT["label"],
                    color="0.4")
        bottom, top = ax.get_ylim()
        ax.set_ylim(0, max(5.0, top))


def progress_line(record: Mapping[str, Any], max_iter: int, layout: CurveLayout | None = None) -> str:
    """One short line for a metrics record: the total loss, the detection losses summed per branch
    (or the few terms of a plain detector) and each distillation loss with its raw value."""
    layout = layout or CurveLayout()
    loss = record.get("loss")
    parts = [f"iter {record['iter']}/{max_iter}", f"loss {float(loss):.4f}" if finite(loss) else f"loss {loss}"]
    keys = [k for k in record if k not in _NOT_LOSSES and not k.startswith(VALIDATION_PREFIX) and finite(record[k])]
    detection = [k for k in keys if not layout.is_distillation(k)]
    if any(split_loss_key(k)[0] for k in detection) or len(detection) > 4:
        groups: dict[str, float] = {}
        for key in detection:
            name = split_loss_key(key)[0] or "other"
            groups[name] = groups.get(name, 0.0) + float(record[key])
        parts += [f"{name} {value:.3f}" for name, value in groups.items()]
    else:
        parts += [f"{split_loss_key(k)[1]} {float(record[k]):.3f}" for k in detection]
    for key in keys:
        if layout.is_distillation(key) and not key.endswith(RAW_SUFFIX):
            short = key[len("loss_"):] if key.startswith("loss_") else key
            raw = record.get(key + RAW_SUFFIX)
            parts.append(f"{short} {float(record[key]):.3f}" + (f" (raw {float(raw):.3f})" if finite(raw) else ""))
    return "  ".join(parts)
