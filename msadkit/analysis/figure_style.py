"""One look for every figure of the kit: paper-size fonts, axes that say something for one point.

Figures are sized like a paper's figures (a column is about 3.4 in, a page 7 in) with 7-9 pt text,
so a saved PNG (at :data:`SAVE_DPI`) drops into a paper or a slide at its size and its text stays
readable; notebooks show them at the same physical size.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["FONT", "SAVE_DPI", "SCREEN_DPI", "new_figure", "finite", "finish_axes", "sensible_limits"]

# Point sizes: a paper's caption and axis text.
FONT = {"title": 10, "axes_title": 9, "label": 8, "tick": 7, "legend": 7, "annotation": 7}
# Saved figures: print quality.
SAVE_DPI = 150
# Pixels per inch a notebook shows a figure at (its size on screen does not depend on SAVE_DPI).
SCREEN_DPI = 100


def new_figure(*, figsize: tuple[float, float], tracked: bool = True) -> Any:
    """A figure laid out by matplotlib's constrained layout (titles, labels, colour bars and legends
    get their room at every draw, so a redraw with more points keeps its panels in place);
    ``tracked`` registers it with pyplot so that the inline backend shows it."""
    if tracked:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=figsize, layout="constrained")
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def finite(value: Any) -> bool:
    """A real number that is not NaN or infinite (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def finish_axes(ax: Any, *, title: str = "", xlabel: str = "", ylabel: str = "", grid: str = "both") -> None:
    """Title, labels, tick labels and grid at the kit's sizes."""
    if title:
        ax.set_title(title, fontsize=FONT["axes_title"])
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=FONT["label"])
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["tick"])
    if grid:
        ax.grid(alpha=0.3, axis=grid)


def _data_range(ax: Any, index: int) -> tuple[float, float] | None:
    values = []
    for line in ax.get_lines():
        data = line.get_xdata() if index == 0 else line.get_ydata()
        values += [float(v) for v in data if finite(v)]
    return (min(values), max(values)) if values else None


def sensible_limits(ax: Any, *, x_end: float | None = None, from_zero: bool = True) -> None:
    """Axis limits that read well for any number of points, one included.

    Matplotlib frames a single point at 20 as 19.00 to 21.00 in steps of 0.25; here the x-axis runs
    from 0 to ``x_end`` (the run length) or a little past the last point, and the y-axis from 0
    (``from_zero``, for losses and AP) to a little above the highest point. Tick locators ask for
    round numbers (integers on the iteration axis).
    """
    from matplotlib.ticker import MaxNLocator

    xs = _data_range(ax, 0)
    end = float(x_end) if x_end else (xs[1] if xs else 1.0)
    end = end if end > 0 else 1.0
    ax.set_xlim(-0.02 * end, end * 1.03)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    ys = _data_range(ax, 1)
    if ys is None:
        ax.set_ylim(0.0, 1.0)
    else:
        low, high = ys
        bottom = 0.0 if from_zero and low >= 0 else low - 0.1 * max(abs(high - low), abs(low), 1e-12)
        top = high + 0.12 * max(high - bottom, abs(high), 1e-12)
        ax.set_ylim(bottom, top)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
