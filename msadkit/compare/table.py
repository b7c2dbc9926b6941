"""The comparison table of one track, as Markdown, LaTeX and CSV, with its notes.

One row per model (teachers, baseline, step-matched control, teacher-init ablation, methods):
length, weight, AP mean ± sample std over seeds, AP of every seed (``†`` after a run still rising at
its end, ``?`` without validation rows), the paired difference to the baseline (mean, std, 95 %
t-interval, p, Holm p), a method's paired difference to the step-matched control, APs/APm/APl, the
mean bootstrap evaluation SE and how many runs plateaued. The notes say what each number is, each
``@msad`` method's difference to the teacher-init ablation, the weights tuning chose and the budget.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from msadkit.analysis.statistics import PairedComparison
from msadkit.compare.plan import ABLATION, BASELINE, CONTROL, METHOD, TEACHER
from msadkit.compare.results import PLATEAU_GAIN, ModelSummary
from msadkit.compare.tracks import Budget, Track

__all__ = ["ComparisonTable", "model_label", "markdown", "latex", "csv_text", "runs_csv_text", "table_cells"]

SIZE_METRICS = ("APs", "APm", "APl")
HEADERS = ("model", "iterations", "weight", "AP", "AP per seed", "ΔAP", "sd(Δ)", "95 % CI", "p", "p (Holm)",
           "Δ vs control [95 % CI]", "APs", "APm", "APl", "eval SE", "plateaued")
_LATEX_HEADERS = {"ΔAP": r"$\Delta$AP", "Δ vs control [95 % CI]": r"$\Delta$ vs control [95\,\% CI]",
                  "sd(Δ)": r"sd($\Delta$)", "95 % CI": r"95\,\% CI", "p (Holm)": r"$p$ (Holm)",
                  "p": "$p$", "AP per seed": "AP per seed", "eval SE": "eval SE",
                  "APs": "AP$_S$", "APm": "AP$_M$", "APl": "AP$_L$"}
_LATEX_SPECIALS = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                   "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                   "†": r"\dag{}", "±": r"$\pm$", "Δ": r"$\Delta$", "−": "-"}


@dataclass(frozen=True)
class ComparisonTable:
    """What the table of one track is made from.

    Attributes:
        track: the track.
        seeds: the reported seeds.
        models: the models' summaries (:func:`msadkit.compare.results.summarize`).
        budget: the sizes and schedule every run shared.
        tuning: the track's ``tuning.json`` (None: not tuned).
        tuning_seed: the seed tuning runs on (never reported).
        bootstrap_samples: resamples behind the evaluation SE.
    """

    track: Track
    seeds: Sequence[int]
    models: Sequence[ModelSummary]
    budget: Budget
    tuning: dict[str, Any] | None
    tuning_seed: int | None
    bootstrap_samples: int

    def title(self) -> str:
        seeds = ", ".join(map(str, self.seeds))
        return f"{self.track.label}; n = {len(self.seeds)} seeds ({seeds}), paired by seed"


def model_label(summary: ModelSummary, track: Track) -> str:
    if summary.kind == TEACHER:
        return track.teachers[summary.model].label
    if summary.kind == BASELINE:
        return "baseline (no teacher)"
    if summary.kind == CONTROL:
        return "step-matched control"
    if summary.kind == ABLATION:
        return "teacher-init ablation (MSAD student, KD weight 0)"
    return summary.model


def _bracket(comparison: PairedComparison) -> str:
    """``[+0.40, +2.06]``: a paired difference's 95 % interval."""
    return f"[{comparison.low:+.2f}, {comparison.high:+.2f}]"


def _interval(comparison: PairedComparison | None) -> str:
    """``+1.23 [+0.40, +2.06]``: a paired difference's mean and 95 % interval."""
    if comparison is None:
        return ""
    return f"{comparison.mean:+.2f} {_bracket(comparison)}"


def _number(value: float | None, digits: int = 1, *, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return _number(values[0])
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _weight(summary: ModelSummary) -> str:
    """A method's weight as a multiple of the official one, as its runs trained (planned if none ran)."""
    if summary.kind != METHOD:
        return ""
    scales = summary.trained_scales() or ([summary.scale] if summary.scale is not None else [])
    return " / ".join(f"{scale:g}x" for scale in scales)


def table_cells(table: ComparisonTable, summary: ModelSummary) -> dict[str, str]:
    """The display text of every column of one model's row."""
    per_seed = []
    for seed in table.seeds:
        run = summary.runs.get(seed)
        per_seed.append("-" if run is None else _number(run.ap) + run.plateau.mark)
    comparison = summary.comparison
    ses = [run.ap_se for run in summary.runs.values() if run.ap_se is not None and math.isfinite(run.ap_se)]
    marks = [run.plateau.plateaued for run in summary.runs.values()]
    known = [mark for mark in marks if mark is not None]
    cells = {
        "model": model_label(summary, table.track),
        "iterations": str(summary.iterations),
        "weight": _weight(summary),
        "AP": _mean_sd(summary.values("AP")),
        "AP per seed": " / ".join(per_seed),
        "ΔAP": _number(comparison.mean, 2, signed=True) if comparison else "",
        "sd(Δ)": _number(comparison.std, 2) if comparison else "",
        "95 % CI": _bracket(comparison) if comparison else "",
        "p": _p(comparison.p) if comparison else "",
        "p (Holm)": (_p(comparison.p_holm) if summary.kind == METHOD else "(reference)") if comparison else "",
        "Δ vs control [95 % CI]": _interval(summary.references.get(CONTROL)),
        "eval SE": _number(statistics.mean(ses), 2) if ses else "-",
        "plateaued": f"{sum(known)}/{len(marks)}" + (f" ({unknown} ?)" if (unknown := len(marks) - len(known)) else ""),
    }
    for metric in SIZE_METRICS:
        values = summary.values(metric)
        cells[metric] = _number(statistics.mean(values)) if values else "-"
    return cells


def _tuning_notes(table: ComparisonTable) -> list[str]:
    methods = [m for m in table.models if m.kind == METHOD]
    if not methods:
        return []
    recorded = (table.tuning or {}).get("methods", {})
    seed = (table.tuning or {}).get("tuning_seed", table.tuning_seed)
    tuned, untuned = [], []
    for summary in methods:
        entry = recorded.get(summary.model)
        if not entry or entry.get("chosen_scale") is None:
            untuned.append(summary.model)
            continue
        candidates = ", ".join(f"{c['scale']:g}x {_number(c['AP'])}" for c in entry["candidates"])
        tuned.append(f"{summary.model} {entry['chosen_scale']:g}x (AP {candidates})")
    lines = []
    if tuned:
        lines.append(f"Weights tuned on seed {seed} only (never reported), among 1x, 0.25x and 4x the official "
                     f"weight, highest final AP: " + "; ".join(tuned) + ".")
    if untuned:
        lines.append("Not tuned, official weight (1x): " + ", ".join(untuned)
                     + " (`msadkit compare --tune` tunes them on the tuning seed).")
    return lines


def _ablation_notes(table: ComparisonTable) -> list[str]:
    """Each ``@msad`` method against MSAD's teacher-init ablation: what its KD term adds."""
    lines = []
    for summary in table.models:
        comparison = summary.references.get(ABLATION)
        if comparison is not None:
            lines.append(f"{summary.model} minus the teacher-init ablation (same start, KD weight 0), paired by seed: "
                         f"{_interval(comparison)} AP, p = {_p(comparison.p)} (n = {len(comparison.seeds)}).")
    return lines


def notes(table: ComparisonTable) -> list[str]:
    """The sentences under the table."""
    budget, track = table.budget, table.track
    k = sum(1 for m in table.models if m.kind == METHOD and m.comparison is not None)
    lines = [
        f"n = {len(table.seeds)} seeds, each a trainer.seed shared by every model of that seed (same initialisation, "
        "same data order, same pretrained backbone).",
        "ΔAP: AP of the model minus AP of the baseline of the same seed; mean, sample standard deviation (n - 1), "
        "two-sided 95 % t-interval (n - 1 degrees of freedom); p: two-sided one-sample t-test of the differences "
        f"against 0; Holm: Holm-Bonferroni over the {k} method(s) of this track (the step-matched control and the "
        "teacher-init ablation are references a method must beat, outside the family). Δ vs control: the same "
        "paired difference against the step-matched control of the same seed (trained as many iterations as "
        "teacher and student together), one comparison per method.",
        f"AP, APs/APm/APl: each run's final weights on {budget.reported_val} validation images"
        + (f" (evaluated after training; its first {budget.num_val} are the validation split of the plateau mark)"
           if budget.num_report_val else "") + ". "
        f"eval SE: bootstrap standard error of a run's AP over those {budget.reported_val} images "
        f"({table.bootstrap_samples} resamples), mean over seeds; '-' where a run kept no detections.",
        f"†: validation AP ({budget.num_val} images) rose by {PLATEAU_GAIN:g} AP or more over the last quarter of "
        "the run (not at its plateau); "
        "?: no validation at 3/4 and at the end; plateaued: runs below that gain / finished runs.",
        *_tuning_notes(table),
        f"Budget: {budget.image_size} px synthetic images ({budget.num_train} train, {budget.num_val} val during "
        f"training, {budget.reported_val} for the reported AP), batch "
        f"{budget.batch_size}; students and baseline {budget.iterations} iterations, teachers "
        f"{budget.teacher_iterations}, step-matched control {budget.control_iterations} (teacher + student); "
        f"backbones from `msadkit pretrain` (width {', '.join(f'{w:g}' for w in track.widths())}).",
    ]
    lines += _ablation_notes(table)
    if track.cross_resolution:
        lines.append("Methods without @msad learn from the plain high-res FCOS teacher with distill.cross_resolution "
                     "(student level l against teacher level l+1); @msad methods from the MSAD teacher, starting "
                     "from its weights.")
    missing = [f"{m.model} seed {s}" for m in table.models for s in m.expected_seeds if s not in m.runs]
    if missing:
        lines.append("Unfinished (left out): " + ", ".join(missing) + ".")
    return lines


def markdown(table: ComparisonTable) -> str:
    lines = [f"**{table.title()}**", "", "| " + " | ".join(HEADERS) + " |",
             "|" + "|".join(":---" if h in ("model", "AP per seed") else "---:" for h in HEADERS) + "|"]
    for summary in table.models:
        cells = table_cells(table, summary)
        lines.append("| " + " | ".join(cells[h].replace("|", r"\|") for h in HEADERS) + " |")
    lines.append("")
    lines += [f"- {line}" for line in notes(table)]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(char, char) for char in text)


def latex(table: ComparisonTable) -> str:
    """A ``tabular`` (booktabs) with the title as a comment and the notes as a small paragraph."""
    align = "".join("l" if h in ("model", "AP per seed", "95 % CI") else "r" for h in HEADERS)
    header = " & ".join(_LATEX_HEADERS.get(h, _latex_escape(h)) for h in HEADERS)
    lines = [f"% {table.title()}", f"\\begin{{tabular}}{{{align}}}", "\\toprule", header + r" \\", "\\midrule"]
    for summary in table.models:
        cells = table_cells(table, summary)
        lines.append(" & ".join(_latex_escape(cells[h]) for h in HEADERS) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}", "", "\\par\\smallskip{\\footnotesize"]
    lines += [_latex_escape(line.replace("`", "")) + r"\\" for line in notes(table)]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _csv_number(value: float | None) -> Any:
    return "" if value is None or not math.isfinite(value) else value


def csv_text(table: ComparisonTable) -> str:
    """One row per model, numbers unrounded (empty where undefined)."""
    columns = ["track", "model", "kind", "iterations", "weight_scale", "seeds", "n", "AP_mean", "AP_sd",
               "AP_per_seed", "delta_mean", "delta_sd", "ci_low", "ci_high", "p", "p_holm",
               "control_delta_mean", "control_ci_low", "control_ci_high", "control_p",
               "ablation_delta_mean", "ablation_ci_low", "ablation_ci_high", "ablation_p",
               "APs_mean", "APm_mean", "APl_mean", "eval_se_mean", "plateaued", "not_plateaued", "plateau_unknown"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for summary in table.models:
        aps, c = summary.values("AP"), summary.comparison
        ses = [r.ap_se for r in summary.runs.values() if r.ap_se is not None and math.isfinite(r.ap_se)]
        marks = [r.plateau.plateaued for r in summary.runs.values()]
        row = {
            "track": table.track.name, "model": summary.model, "kind": summary.kind, "iterations": summary.iterations,
            "weight_scale": _weight(summary).replace("x", ""), "seeds": " ".join(map(str, sorted(summary.runs))),
            "n": len(summary.runs), "AP_mean": _csv_number(statistics.mean(aps)) if aps else "",
            "AP_sd": _csv_number(statistics.stdev(aps)) if len(aps) > 1 else "",
            "AP_per_seed": " ".join(f"{s}:{r.ap!r}" for s, r in sorted(summary.runs.items())),
            "delta_mean": c.mean if c else "", "delta_sd": c.std if c else "", "ci_low": c.low if c else "",
            "ci_high": c.high if c else "", "p": c.p if c else "",
            "p_holm": c.p_holm if c and summary.kind == METHOD else "",
            "eval_se_mean": statistics.mean(ses) if ses else "",
            "plateaued": marks.count(True), "not_plateaued": marks.count(False), "plateau_unknown": marks.count(None),
        }
        for prefix, kind in (("control", CONTROL), ("ablation", ABLATION)):
            ref = summary.references.get(kind)
            row.update({f"{prefix}_delta_mean": ref.mean if ref else "", f"{prefix}_ci_low": ref.low if ref else "",
                        f"{prefix}_ci_high": ref.high if ref else "", f"{prefix}_p": ref.p if ref else ""})
        for metric in SIZE_METRICS:
            values = summary.values(metric)
            row[f"{metric}_mean"] = _csv_number(statistics.mean(values)) if values else ""
        writer.writerow(row)
    return buffer.getvalue()


def runs_csv_text(table: ComparisonTable) -> str:
    """One row per finished run: its seed, folder, metrics, evaluation SE and plateau gain."""
    columns = ["track", "model", "kind", "seed", "iterations", "weight_scale", "AP", "AP50", "AP75", "APs", "APm",
               "APl", "AP_se", "plateau_gain", "plateaued", "run"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for summary in table.models:
        for seed, run in sorted(summary.runs.items()):
            row = {"track": table.track.name, "model": run.model, "kind": run.kind, "seed": seed,
                   "iterations": run.iterations, "weight_scale": _csv_number(run.scale),
                   "AP_se": _csv_number(run.ap_se), "plateau_gain": _csv_number(run.plateau.gain),
                   "plateaued": "" if run.plateau.plateaued is None else run.plateau.plateaued, "run": str(run.run_dir)}
            for metric in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
                row[metric] = _csv_number(run.metrics.get(metric))
            writer.writerow(row)
    return buffer.getvalue()
