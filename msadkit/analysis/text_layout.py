"""Where a figure's texts land once drawn: overlaps, texts outside the figure, labels moved apart.

The extents come from matplotlib's renderer (``figure.canvas.get_renderer()``,
``artist.get_window_extent``), in display pixels, so they say what a reader sees: a tick label
under a colour-bar title, a legend past the right edge. The figure functions use
:func:`spread_labels` to keep value labels apart; the tests check every figure with
:func:`overlapping_texts` and :func:`texts_outside`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.text import Text

__all__ = ["renderer_of", "visible_texts", "overlapping_texts", "texts_outside", "spread_labels", "text_extent"]

# Pixels two texts may share (anti-aliasing, glyph overhang) before they count as overlapping.
_TOLERANCE_PX = 1.0


def renderer_of(figure: "Figure") -> Any:
    """The figure drawn once (its final layout) and its renderer; a plain ``Figure`` gets an Agg
    canvas, the one a saved PNG is drawn on."""
    if not hasattr(figure.canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(figure)
    figure.canvas.draw()
    return figure.canvas.get_renderer()


def _tick_labels(figure: "Figure") -> tuple[list["Text"], set[int]]:
    """The tick labels drawn (ticks inside the view) and the ids of every tick label."""
    drawn, every = [], set()
    for ax in figure.get_axes():
        for axis in ax._axis_map.values():  # x, y (and z): the axes' own axis objects
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                every.update((id(tick.label1), id(tick.label2)))
            if not axis.get_visible():  # a twin axes hides its shared axis
                continue
            for tick in axis._update_ticks():  # the ticks the next draw shows
                drawn += [label for label in (tick.label1, tick.label2) if label.get_visible()]
    return drawn, every


def visible_texts(figure: "Figure") -> list["Text"]:
    """Every non-empty, visible text the figure draws: titles, labels, drawn tick labels, legend
    entries, annotations."""
    from matplotlib.text import Text

    renderer_of(figure)
    drawn, tick_ids = _tick_labels(figure)
    texts = [t for t in figure.findobj(Text) if id(t) not in tick_ids] + drawn
    seen: set[int] = set()
    result = []
    for text in texts:
        if id(text) in seen or not text.get_visible() or not text.get_text().strip():
            continue
        seen.add(id(text))
        if _ancestors_visible(text):
            result.append(text)
    return result


def _ancestors_visible(text: "Text") -> bool:
    parent = getattr(text, "axes", None)
    return parent is None or parent.get_visible()


def text_extent(text: "Text", renderer: Any) -> Any:
    """The pixel box a text covers, cut to its clip box when it is clipped (None when nothing of
    it shows)."""
    from matplotlib.transforms import Bbox

    box = text.get_window_extent(renderer)
    clip = text.get_clip_box() if text.get_clip_on() else None
    if clip is not None:
        box = Bbox.intersection(box, clip)
    return box


def overlapping_texts(figure: "Figure") -> list[tuple[str, str]]:
    """Pairs of visible texts whose pixel boxes overlap (by more than a pixel each way)."""
    renderer = renderer_of(figure)
    boxes = [(t.get_text(), text_extent(t, renderer)) for t in visible_texts(figure)]
    boxes = [(label, box) for label, box in boxes if box is not None and box.width > 0 and box.height > 0]
    pairs = []
    for i, (first, a) in enumerate(boxes):
        for second, b in boxes[i + 1:]:
            overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
            if overlap_x > _TOLERANCE_PX and overlap_y > _TOLERANCE_PX:
                pairs.append((first, second))
    return pairs


def texts_outside(figure: "Figure") -> list[str]:
    """Visible texts that reach past the figure's edge (by more than a pixel)."""
    renderer = renderer_of(figure)
    frame = figure.bbox
    outside = []
    for text in visible_texts(figure):
        box = text_extent(text, renderer)
        if box is None:
            continue
        if (box.x0 < frame.x0 - _TOLERANCE_PX or box.y0 < frame.y0 - _TOLERANCE_PX
                or box.x1 > frame.x1 + _TOLERANCE_PX or box.y1 > frame.y1 + _TOLERANCE_PX):
            outside.append(text.get_text())
    return outside


def spread_labels(texts: Sequence["Text"], *, direction: int = 1, step_px: float = 2.0, max_moves: int = 40) -> None:
    """Move labels up (``direction`` 1) or down (-1), in display pixels, until none overlaps an
    earlier one.

    Labels placed with ``textcoords="offset points"`` (annotations) move by their offset; other
    texts by their position in display coordinates. The first label of a pile keeps its place.
    """
    if not texts:
        return
    figure = texts[0].figure
    renderer = renderer_of(figure)
    placed: list[Any] = []
    for text in texts:
        for _ in range(max_moves):
            box = text.get_window_extent(renderer)
            clash = next((other for other in placed
                          if min(box.x1, other.x1) - max(box.x0, other.x0) > 0
                          and min(box.y1, other.y1) - max(box.y0, other.y0) > 0), None)
            if clash is None:
                break
            move = clash.y1 - box.y0 + step_px if direction > 0 else -(box.y1 - clash.y0 + step_px)
            _shift_up(text, move, figure)
        placed.append(text.get_window_extent(renderer))


def _shift_up(text: "Text", pixels: float, figure: "Figure") -> None:
    points = pixels * 72.0 / figure.dpi
    if hasattr(text, "xyann") and getattr(text, "anncoords", None) == "offset points":
        x, y = text.xyann
        text.xyann = (x, y + points)
        return
    x, y = text.get_transform().transform(text.get_position())
    text.set_position(text.get_transform().inverted().transform((x, y + pixels)))
