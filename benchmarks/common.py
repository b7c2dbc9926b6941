"""Shared helpers of the benchmark scripts: options, interleaved timing, medians, environment header.

Every comparison is taken in one process run: the contenders alternate inside each round (the
order flips from round to round), so load from other processes on a shared machine hits both
alike, and the reported figure is the median over rounds of the per-round ratio.

The scripts are modules of the ``benchmarks`` package: run them from the repository root as
``python -m benchmarks.<name>`` (the header's command line is shown in that form).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch

__all__ = [
    "add_common_arguments",
    "timed_rounds",
    "apply_threads",
    "start_benchmark",
    "environment_lines",
    "print_environment",
    "interleaved_times",
    "median_ms",
    "mean_std",
    "ratio_summary",
    "target_verdict",
    "markdown_table",
    "print_header",
    "synthetic_boxes",
    "replace_markdown_section",
    "SWEEP_LOG",
    "append_sweep_record",
    "sweep_log_lines",
]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quick``, ``--rounds``, ``--warmup`` and ``--threads``, shared by every script."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 rounds: checks that the script runs")
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed rounds per contender; None: the script's own number"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per contender before timing")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads; None: torch's own choice"
    )


def timed_rounds(args: argparse.Namespace, default: int) -> int:
    """Timed rounds per contender: ``--rounds`` when given, else 2 with ``--quick`` (a check that the
    script runs), else the script's own ``default``."""
    return args.rounds or (2 if args.quick else default)


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count if given, and flush denormals.

    Denormal floats make CPU arithmetic orders of magnitude slower; which contender meets them
    depends on its random initialisation, so they are flushed to zero for every contender alike.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment_lines() -> list[str]:
    """Machine, date, versions and command line, one fact per line (for RESULTS.md)."""
    try:
        load = "%.1f %.1f %.1f" % os.getloadavg()
    except OSError:
        load = "n/a"
    import torchvision

    return [
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: {_cpu_model()}, {os.cpu_count()} logical CPUs, load average at start {load}",
        f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"torch threads {torch.get_num_threads()}",
        "command: " + _command_line(),
    ]


def _command_line() -> str:
    """The script and its arguments, after any glibc allocator settings (they change the timings).

    A script run as a module (``python -m benchmarks.msad_effectiveness``) is shown that way: its
    ``sys.argv[0]`` is the file's absolute path, a detail of the machine, not of the command.
    """
    allocator = [f"{key}={value}" for key, value in sorted(os.environ.items()) if key.startswith("MALLOC_")]
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = ["-m", spec.name] if spec is not None and spec.name else sys.argv[:1]
    return " ".join([*allocator, "python", *program, *sys.argv[1:]])


def print_environment() -> list[str]:
    """Print and return :func:`environment_lines` (a sweep also records them in its sweep log)."""
    header = environment_lines()
    for line in header:
        print(line, flush=True)
    return header


def print_header(title: str) -> None:
    """Print the benchmark's title and :func:`environment_lines`."""
    print(f"== {title}")
    for line in environment_lines():
        print(f"   {line}")
    sys.stdout.flush()


def start_benchmark(title: str, threads: int | None) -> None:
    """Apply ``threads`` (:func:`apply_threads`), then print the title and environment
    (:func:`print_header`): in this order, so that the header's torch thread count is the one the
    timings run with."""
    apply_threads(threads)
    print_header(title)


def interleaved_times(
    contenders: Mapping[str, Callable[[], object]], *, rounds: int, warmup: int = 1, verbose: bool = True
) -> dict[str, list[float]]:
    """Wall-clock seconds of each contender per round, run alternately.

    Args:
        contenders: name -> zero-argument callable doing one unit of work.
        rounds: timed calls per contender.
        warmup: untimed calls per contender first (allocator, oneDNN kernel selection).
        verbose: print each round's times as they come.

    Returns:
        name -> list of ``rounds`` durations in seconds, in round order.
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        # Reversing the order every other round cancels a first/second-position bias.
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
        if verbose:
            cells = ", ".join(f"{name} {1e3 * times[name][-1]:.0f} ms" for name in names)
            print(f"   round {round_index + 1}/{rounds}: {cells}")
            sys.stdout.flush()
    return times


def median_ms(values: Sequence[float]) -> float:
    return 1e3 * statistics.median(values)


def mean_std(values: Sequence[float], *, signed: bool = False) -> str:
    """``"mean ± std"`` over seeds with one decimal; a single value is shown alone (its spread is
    unknown, not 0.0); NaNs are dropped and nothing left gives ``"n/a"``. ``signed`` writes a sign
    on the mean (a gain: ``+1.2 ± 0.3``)."""
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    mean = f"{statistics.mean(values):+.1f}" if signed else f"{statistics.mean(values):.1f}"
    return mean if len(values) == 1 else f"{mean} ± {statistics.stdev(values):.1f}"


def ratio_summary(times: Mapping[str, Sequence[float]], numerator: str, denominator: str) -> tuple[float, float]:
    """``(median of per-round ratios, ratio of medians)`` of ``numerator / denominator``."""
    per_round = [a / b for a, b in zip(times[numerator], times[denominator])]
    return statistics.median(per_round), statistics.median(times[numerator]) / statistics.median(times[denominator])


def target_verdict(ratio: float, target: float) -> str:
    """``"meets the target <= 0.8"`` or ``"misses the target <= 0.8"``: every timing target bounds a
    ratio from above (the contender under test over its reference)."""
    return f"{'meets' if ratio <= target else 'misses'} the target <= {target}"


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: the header row of ``columns``, its ``|---|`` line, then one line per row,
    each cell as ``str`` gives it (format numbers before)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def synthetic_boxes(
    num_images: int, height: int, width: int, num_boxes: int, num_classes: int, *, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Per image ``num_boxes`` random boxes of 8..~60 % of the image side, with random labels.

    Returns:
        targets ``[{"boxes": (M, 4) xyxy float32, "labels": (M,) int64}]`` inside the image.
    """
    generator = torch.Generator().manual_seed(seed)
    targets = []
    side = torch.tensor([width, height], dtype=torch.float32)
    for _ in range(num_images):
        size = (0.08 + 0.5 * torch.rand(num_boxes, 2, generator=generator)) * side
        corner = torch.rand(num_boxes, 2, generator=generator) * (side - size)
        boxes = torch.cat([corner, corner + size], dim=1)
        labels = torch.randint(0, num_classes, (num_boxes,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels})
    return targets


def replace_markdown_section(path: Path | str, heading: str, body: str) -> None:
    """Put ``heading`` + ``body`` into the Markdown file ``path``, replacing the section that starts
    with the same heading line (up to the next ``## `` heading) or appending it; written atomically.

    Args:
        heading: the whole heading line, e.g. ``"## MSAD effectiveness on the synthetic dataset"``.
    """
    from msadkit.utils.atomic import write_text_atomic

    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    write_text_atomic(path, text)


SWEEP_LOG = "sweeps.jsonl"  # one record per invocation of a sweep script that trained something


def append_sweep_record(folder: Path | str, record: dict) -> None:
    """Add one invocation's record (``header``, ``settings``, ``wall_min``, ``trained``) to the
    sweep log of ``folder``."""
    import json

    with open(Path(folder) / SWEEP_LOG, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def sweep_log_lines(folder: Path | str, unit: str) -> list[str]:
    """Markdown bullets from the sweep log of ``folder``: the machine (from the first invocation),
    each invocation that trained something (date, command, wall time, how many ``unit``), the last
    settings and the total wall time; empty when no invocation trained anything."""
    import json

    log = Path(folder) / SWEEP_LOG
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    records = [r for r in records if r["trained"]]
    if not records:
        return []
    lines = [f"- {line}" for line in records[0]["header"] if not line.startswith(("date:", "command:"))]
    for k, record in enumerate(records, start=1):
        facts = dict(line.split(": ", 1) for line in record["header"] if line.startswith(("date:", "command:")))
        lines.append(
            f"- invocation {k}: {facts.get('date', '?')}, `{facts.get('command', '?')}`, wall time "
            f"{record['wall_min']:.1f} min, trained {len(record['trained'])} {unit}"
        )
    lines.append(f"- settings: {records[-1]['settings']}")
    lines.append(f"- total wall time: {sum(r['wall_min'] for r in records):.1f} min")
    return lines
