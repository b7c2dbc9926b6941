"""A researcher's JupyterLab session in headless Chromium: 03's widgets redraw the feature grid,
01 shows a progress bar and a live figure while it trains (validation points included), 02's live
figure draws the KD ramp, an interrupt stops training cleanly and leaves the figure complete, and Run
All resumes it with its whole history. Screenshots of every notebook go to the test's folder."""

from __future__ import annotations

import base64
import io
import json
import re
import time
import uuid
from pathlib import Path

import nbformat
import pytest

from msadkit.notebook.runner import resolve_notebook
from tests.tiny_runs import tiny_notebook_overrides

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

OUTPUTS = ".jp-OutputArea-output"
# Fast enough that a notebook trains in seconds: 64 px synthetic images, small heads.
TINY_64 = tiny_notebook_overrides(num_train=8, num_val=4) + ["data.num_workers=0", "trainer.eval_batch_size=4"]
# MSAD runs for 03: the teacher's 0.5x branch needs 128 px images.
TINY_MSAD = [o.replace("=64", "=128").replace("[64]", "[128]") for o in TINY_64 if "num_convs" not in o]


def png_statistics(data_url: str) -> tuple[float, float]:
    """Mean and standard deviation of the grey levels of a ``data:image/png;base64,`` image."""
    import numpy as np
    from PIL import Image

    payload = base64.b64decode(data_url.split(",", 1)[1])
    pixels = np.asarray(Image.open(io.BytesIO(payload)).convert("L"), dtype=np.float64)
    return float(pixels.mean()), float(pixels.std())


def copy_notebook(name: str, folder: Path, **parameters) -> Path:
    """The packaged notebook in ``folder``, its parameters cell ending with ``parameters``."""
    notebook = nbformat.read(resolve_notebook(name), as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "".join(f"\n{key} = {value!r}" for key, value in parameters.items())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.ipynb"
    nbformat.write(notebook, path)
    return path


def open_notebook(page, lab, path: Path) -> None:
    """Open a notebook of the lab's root and wait until its kernel reports idle in the status bar."""
    # A workspace of its own: JupyterLab would otherwise reopen the tabs of the previous test.
    page.goto(lab.url(f"lab/workspaces/{path.stem}-{uuid.uuid4().hex[:8]}/tree/{path.relative_to(lab.root).as_posix()}"))
    wait_for_idle_kernel(page, timeout_s=120)


def wait_for_idle_kernel(page, timeout_s: float) -> None:
    """The status bar names the active notebook's kernel and its state."""
    page.get_by_text(re.compile(r"\(ipykernel\) \| Idle$")).first.wait_for(timeout=timeout_s * 1000)


def run_all(page) -> None:
    """Run > Run All Cells; once more if no cell started within 15 s (a click while the kernel's
    connection was still settling is dropped by the front end)."""
    for _attempt in range(2):
        menu(page, "Run", "Run All Cells")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if any(re.search(r"\[(\*|\d+)\]", text) for text in page.locator(".jp-InputPrompt").all_inner_texts()):
                return
            time.sleep(0.2)
    raise AssertionError("Run All Cells started no cell")


def menu(page, top: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{top}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{item}$")).click()


def wait_for_results(folder: Path, page, timeout_s: float) -> dict:
    """The notebook's ``results.json`` once complete (fails early when a cell raised)."""
    deadline = time.monotonic() + timeout_s
    path = folder / "results.json"
    while time.monotonic() < deadline:
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                data = {}
            if data.get("complete"):
                return data
        if page.locator(".jp-Dialog").count():
            raise AssertionError("a dialog blocks the notebook: " + page.locator(".jp-Dialog").inner_text())
        errors = page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
        if errors.count():
            raise AssertionError("a cell raised:\n" + "\n".join(errors.all_inner_texts()))
        time.sleep(0.5)
    raise AssertionError(f"{path} not complete after {timeout_s} s")


def notebook_text(page) -> str:
    return "\n".join(page.locator(OUTPUTS).all_inner_texts())


@pytest.fixture(scope="module")
def finished_runs(lab):
    """Tiny finished MSAD teacher, distilled student and baseline under the lab root's
    ``runs/notebooks`` (where 03's defaults look, relative to its folder)."""
    from msadkit.engine.train.trainer import train
    from msadkit.notebook.training import baseline_settings, distillation_settings, notebook_config

    runs = lab.root / "runs" / "notebooks"
    teacher = train(notebook_config("msad/msad_teacher_demo", TINY_MSAD, output_dir=runs / "01_teacher_training",
                                    iterations=2))
    student_cfg = notebook_config("msad/msad_student_demo", TINY_MSAD, iterations=2,
                                  output_dir=runs / "02_student_distillation" / "student",
                                  extra=distillation_settings(teacher))
    train(student_cfg)
    train(notebook_config("msad/msad_student_demo", TINY_MSAD, iterations=2,
                          output_dir=runs / "02_student_distillation" / "baseline", extra=baseline_settings(student_cfg)))
    return runs


def _interact_image(page) -> str:
    image = page.locator(".widget-interact img").last
    image.wait_for(timeout=60_000)
    return image.get_attribute("src")


def _wait_for_new_image(page, previous: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        images = page.locator(".widget-interact img")
        if images.count():
            src = images.last.get_attribute("src")
            if src and src != previous:
                return src
        time.sleep(0.2)
    raise AssertionError(f"the figure was not redrawn within {timeout_s} s")


def test_alignment_widgets_redraw_the_feature_grid(page, lab, finished_runs):
    shots = page.screenshots
    notebook = copy_notebook("03_feature_alignment", lab.root, image_indices=[1, 2])
    open_notebook(page, lab, notebook)
    shots.take("03_opened")
    run_all(page)
    results = wait_for_results(finished_runs / "03_feature_alignment", page, timeout_s=180)
    assert results["image_indices"] == [1, 2]

    interact = page.locator(".widget-interact")
    level = interact.locator(".widget-dropdown:has(label:text-is('level')) select")
    student = interact.locator(".widget-dropdown:has(label:text-is('student')) select")
    image = interact.locator(".widget-inline-hbox:has(label:text-matches('^image')) input")
    # ipywidgets writes the option labels with non-breaking spaces.
    selected = "s => s.options[s.selectedIndex].text.replace(/\\u00a0/g, ' ')"
    # It starts on the distilled student, every level at once, the first saved image.
    state = (student.evaluate(selected), level.evaluate(selected), image.input_value())
    assert state == ("student after distillation", "all levels", "1"), state
    all_levels = _interact_image(page)
    interact.scroll_into_view_if_needed()
    shots.take("03_all_levels_image1")

    level.select_option(index=2)  # all levels, P3, P4
    assert level.evaluate(selected) == "P4 (stride 16)"
    one_level = _wait_for_new_image(page, all_levels)
    shots.take("03_level_P4_image1")
    # Five rows of maps against one: the figure is another size and another picture.
    assert png_statistics(one_level) != png_statistics(all_levels)

    # An image outside image_indices (image 3 was never computed) can be picked too.
    image.fill("3")
    image.press("Enter")
    other_image = _wait_for_new_image(page, one_level)
    shots.take("03_level_P4_image3")
    assert png_statistics(other_image) != png_statistics(one_level)
    assert "Error" not in notebook_text(page)


def test_ap_table_shows_its_chart_once_and_the_metric_picker_redraws_it(page, lab, finished_runs):
    shots = page.screenshots
    notebook = copy_notebook("04_ap_table", lab.root)  # runs_root's default finds the tiny runs
    open_notebook(page, lab, notebook)
    run_all(page)
    results = wait_for_results(finished_runs / "04_ap_table", page, timeout_s=120)
    assert len(results["rows"]) == 3
    chart_cell = page.locator(".jp-Cell:has(.widget-interact)")
    chart_cell.locator("img").first.wait_for(timeout=60_000)
    chart_cell.scroll_into_view_if_needed()
    shots.take("04_ap_chart")
    # The saved chart is not shown a second time above the picker's.
    assert chart_cell.locator("img").count() == 1
    before = _interact_image(page)
    chart_cell.locator("select").select_option(index=1)  # AP -> AP50
    _wait_for_new_image(page, before)
    shots.take("04_ap50_chart")
    assert chart_cell.locator("img").count() == 1


def _colour_pixels(data_url: str, rgb: tuple[int, int, int], *, columns: tuple[float, float],
                   tolerance: int = 12) -> int:
    """How many pixels of a ``data:image/png`` image, between the fractions ``columns`` of its width,
    have about the colour ``rgb``."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"), dtype=int)
    width = pixels.shape[1]
    part = pixels[:, int(columns[0] * width):int(columns[1] * width)]
    return int((np.abs(part - np.array(rgb)).max(axis=-1) <= tolerance).sum())


def _image_size(data_url: str) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).size


def _scroll_to_training(page) -> None:
    """Bring the training cell (progress bar and live figure) into the screenshot."""
    cells = page.locator(".jp-Cell:has(.widget-hprogress)")
    if cells.count():
        cells.last.locator(".jp-OutputArea").scroll_into_view_if_needed()


def _training_view(page) -> dict:
    """The training cell's progress text and live-curve image."""
    return page.evaluate(
        """() => {
            const cell = [...document.querySelectorAll('.jp-Cell')].find(c => c.querySelector('.widget-hprogress'));
            if (!cell) return {text: '', src: null};
            const label = cell.querySelector('.widget-html-content');
            const image = cell.querySelector('.jp-OutputArea-output img');
            return {text: label ? label.innerText : '', src: image ? image.getAttribute('src') : null};
        }"""
    )


def test_training_shows_progress_and_redraws_the_live_curve(page, lab):
    shots = page.screenshots
    folder = lab.root / "live"
    notebook = copy_notebook("01_teacher_training", folder, config="fcos_demo", iterations=24,
                             overrides=TINY_64 + ["trainer.log_period=4", "trainer.eval_period=12"],
                             evaluate_branches=False)
    open_notebook(page, lab, notebook)
    run_all(page)
    run_dir = folder / "runs" / "notebooks" / "01_teacher_training"  # relative to the notebook's folder
    curves, texts, deadline = set(), [], time.monotonic() + 180
    while time.monotonic() < deadline and not (texts and "done" in texts[-1]):
        view = _training_view(page)
        if view["src"]:
            curves.add(view["src"])
        if view["text"] and (not texts or texts[-1] != view["text"]):
            texts.append(view["text"])
            if len(texts) == 2:
                _scroll_to_training(page)
                shots.take("01_training")
        time.sleep(0.1)
    results = wait_for_results(run_dir, page, timeout_s=120)
    _scroll_to_training(page)
    shots.take("01_finished")
    assert len(curves) >= 2, f"the live curve was drawn {len(curves)} time(s)"
    assert re.search(r"24/24 it \(100 %\)", texts[-1]) and "done in" in texts[-1], texts[-1]
    assert any(re.search(r"\d+/24 it .* it/s .* left .* loss \d", text) for text in texts), texts
    assert [row["iter"] for row in results["loss_history"] if "loss" in row] == [4, 8, 12, 16, 20, 24]
    assert [row["iter"] for row in results["loss_history"] if "val/AP" in row] == [12, 24]
    # The last figure on screen has its validation points (AP and AP50 in their colours) in the AP panel.
    final = _training_view(page)["src"]
    assert _colour_pixels(final, (31, 119, 180), columns=(2 / 3, 1)) > 20
    assert _colour_pixels(final, (255, 127, 14), columns=(2 / 3, 1)) > 20
    output = notebook_text(page)
    for noise in ("GPU available", "Warning", "Trainer.fit", "IPython.core.display"):
        assert noise not in output, noise


def test_interrupt_stops_cleanly_and_run_all_resumes_with_the_whole_history(page, lab):
    shots = page.screenshots
    folder = lab.root / "stop"
    iterations = 100
    notebook = copy_notebook("01_teacher_training", folder, config="fcos_demo", iterations=iterations,
                             overrides=TINY_64 + ["trainer.log_period=5", "trainer.checkpoint_period=10000"],
                             evaluate_branches=False)
    run_dir = folder / "runs" / "notebooks" / "01_teacher_training"
    open_notebook(page, lab, notebook)
    run_all(page)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        match = re.search(r"(\d+)/\d+ it", _training_view(page)["text"])
        if match and int(match.group(1)) >= 15:
            break
        time.sleep(0.2)
    _scroll_to_training(page)
    shots.take("01_before_interrupt")
    menu(page, "Kernel", "Interrupt Kernel")
    page.locator(OUTPUTS, has_text="Training stopped at iteration").wait_for(timeout=60_000)
    wait_for_idle_kernel(page, timeout_s=60)
    _scroll_to_training(page)
    shots.take("01_stopped")
    # The figure left on screen was redrawn at the stop: every point trained before it is drawn.
    stopped_figure = _training_view(page)["src"]
    assert stopped_figure and _colour_pixels(stopped_figure, (31, 119, 180), columns=(0, 1 / 3)) > 20
    output = notebook_text(page)
    stopped_at = int(re.search(r"Training stopped at iteration (\d+) of 100", output).group(1))
    assert "Run this cell again (or Run All) to resume" in output
    for noise in ("SystemExit", "KeyboardInterrupt", "Traceback", "GPU available", "To exit"):
        assert noise not in output, noise
    assert not (run_dir / "results.json").exists() and not (folder / "runs/notebooks/01_teacher_training/model_final.pth").exists()
    history = [json.loads(line)["iter"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert history == list(range(5, stopped_at + 1, 5))

    run_all(page)
    page.locator(OUTPUTS, has_text="resuming from its last checkpoint").wait_for(timeout=60_000)
    shots.take("01_resumed")
    results = wait_for_results(run_dir, page, timeout_s=240)
    _scroll_to_training(page)
    shots.take("01_resumed_finished")
    assert [row["iter"] for row in results["loss_history"]] == list(range(5, iterations + 1, 5))
    assert "100 %" in _training_view(page)["text"]


def test_student_training_draws_the_kd_ramp_on_its_live_figure(page, lab, finished_runs):
    shots = page.screenshots
    folder = lab.root / "ramp"
    # The demo student's 50-iteration ramp of 300 iterations becomes 4 of 24.
    notebook = copy_notebook("02_student_distillation", folder, runs_root="../runs/notebooks", iterations=24,
                             overrides=TINY_MSAD + ["trainer.log_period=4"], train_baseline=False,
                             train_step_matched=False)
    open_notebook(page, lab, notebook)
    run_all(page)
    results = wait_for_results(folder / "runs" / "notebooks" / "02_student_distillation", page, timeout_s=300)
    assert results["student_config"]["distill"]["losses"][0]["ramp_iters"] == 4
    cell = page.locator(".jp-Cell:has(.widget-hprogress)").last
    cell.scroll_into_view_if_needed()
    shots.take("02_student_live_figure")
    live = cell.locator(".jp-OutputArea-output img").first.get_attribute("src")
    width, height = _image_size(live)
    # Four panels (total, detection, distillation, AP), not three: the distillation panel is there.
    assert width / height > 2.8, (width, height)
    # Its right-hand axis and the dashed factor line (weight x ramp) are drawn in grey.
    assert _colour_pixels(live, (115, 115, 115), columns=(0.5, 0.75), tolerance=8) > 50
    output = notebook_text(page)
    assert "loss_msad_feature" not in output or "raw" in output
    for noise in ("GPU available", "Trainer.fit", "IPython.core.display", "Traceback"):
        assert noise not in output, noise
    # Every figure the notebook saved, on screen.
    for figure in page.locator(".jp-OutputArea-output img").all()[1:]:
        figure.scroll_into_view_if_needed()
        shots.take("02_figure")
