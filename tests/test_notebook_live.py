"""What notebooks show while they train and where they look for runs: the live callback's clean
stop and resume, the curve and AP charts, and run folders named by notebook parameters."""

from __future__ import annotations

import json
import logging
import os
import signal

import lightning as L
import pytest

from msadkit.analysis.plots import plot_ap_comparison, plot_loss_curves
from msadkit.analysis.training_curves import CurveLayout, DistillTerm, progress_line
from msadkit.errors import ConfigError
from msadkit.notebook.live import LiveLossCurves, TrainingStopped, read_history
from msadkit.notebook.paths import MissingRunError, notebook_run_folder, notebook_search_folders, runs_hint
from msadkit.notebook.training import notebook_config, run_state, train_or_reuse
from msadkit.utils.run_folder import last_checkpoint
from tests.tiny_runs import tiny_notebook_overrides

TINY = tiny_notebook_overrides(num_train=4, num_val=2) + [
    "data.num_workers=0",
    "trainer.log_period=1",
    "trainer.checkpoint_period=1000",
]


class _AtStep(L.Callback):
    """Calls ``action`` once, at the end of iteration ``step``."""

    def __init__(self, step: int, action) -> None:
        self.step, self.action = step, action

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.action()


def test_a_stop_request_checkpoints_and_the_rerun_resumes_with_the_whole_history(tmp_path, capsys):
    config = notebook_config("fcos_demo", TINY, output_dir=tmp_path / "run", iterations=4)
    live = LiveLossCurves(period=1, interactive=False)
    # No periodic checkpoint before the stop (checkpoint_period 1000): the stop writes the only one.
    with pytest.raises(TrainingStopped) as stopped:
        train_or_reuse(config, callbacks=[_AtStep(2, lambda: setattr(live, "stop_requested", True)), live])
    message = str(stopped.value)
    assert "iteration 2 of 4" in message and "to resume" in message and str(last_checkpoint(tmp_path / "run")) in message
    # IPython shows this one line instead of a traceback.
    assert stopped.value._render_traceback_() == [message]
    assert run_state(tmp_path / "run") == "interrupted"
    assert [r["iter"] for r in read_history(tmp_path / "run")] == [1, 2]

    resumed = LiveLossCurves(period=1, interactive=False)
    train_or_reuse(config, callbacks=[resumed])
    assert run_state(tmp_path / "run") == "finished"
    # The resumed run's curve starts with the points trained before the stop.
    assert [r["iter"] for r in resumed.history] == [1, 2, 3, 4]
    assert [r["iter"] for r in read_history(tmp_path / "run")] == [1, 2, 3, 4]
    printed = capsys.readouterr().out
    assert "iter 4/4  loss" in printed and "resuming" in printed


def test_an_interrupt_while_attended_stops_after_the_iteration_and_restores_handlers(tmp_path):
    config = notebook_config("fcos_demo", TINY, output_dir=tmp_path / "run", iterations=4)
    live = LiveLossCurves(period=1, interactive=False)
    handler_before = signal.getsignal(signal.SIGINT)
    level_before = logging.getLogger("lightning.pytorch").level
    interrupt = _AtStep(3, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingStopped, match="iteration 3 of 4"):
        with live.attended():
            train_or_reuse(config, callbacks=[interrupt, live])
    assert signal.getsignal(signal.SIGINT) is handler_before
    assert logging.getLogger("lightning.pytorch").level == level_before
    assert last_checkpoint(tmp_path / "run").is_file()
    # Outside a training loop an interrupt is an ordinary KeyboardInterrupt.
    with pytest.raises(KeyboardInterrupt):
        live._on_interrupt(signal.SIGINT, None)


def test_history_skips_a_cut_line_and_keeps_validation_rows(tmp_path):
    rows = [{"iter": 1, "loss": 2.0}, {"iter": 2, "loss": 1.5}, {"iter": 2, "val/AP": 0.0, "val/AP50": 3.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"iter": 3, "lo')
    assert read_history(tmp_path) == rows
    assert read_history(tmp_path / "none") == []


def test_validation_rows_fill_the_ap_panel_with_their_values():
    history = [{"iter": 10, "loss": 2.0, "cls": 1.0}, {"iter": 10, "val/AP": 0.0, "val/AP50": 1.5},
               {"iter": 20, "loss": 1.0, "cls": 0.5}, {"iter": 20, "val/AP": 4.0, "val/AP50": 9.0}]
    figure = plot_loss_curves({"run": history})
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == ["total loss", "detection losses", "validation AP"]
    lines = {line.get_label(): line for line in axes[2].get_lines()}
    assert list(lines["AP"].get_xdata()) == [10, 20] and list(lines["AP"].get_ydata()) == [0.0, 4.0]
    assert list(lines["AP50"].get_ydata()) == [1.5, 9.0]
    # The validation rows are not loss terms, and the total-loss line skips them.
    assert len(axes[1].get_lines()) == 1 and list(axes[1].get_lines()[0].get_ydata()) == [1.0, 0.5]
    assert list(axes[0].get_lines()[0].get_xdata()) == [10, 20]
    # A run's figure keeps its AP panel before the first validation (the layout does not jump).
    layout = CurveLayout(max_iter=20)
    assert len(plot_loss_curves({"run": history[::2]}, layout=layout).get_axes()) == 3


def test_progress_lines_are_short_and_name_the_distillation_raw_value():
    teacher = {"iter": 5, "loss": 6.9, **{f"{b}_loss_fcos_{t}": 0.5 for b in ("high", "low", "fused")
                                          for t in ("cls", "loc", "ctr")}}
    assert progress_line(teacher, 40) == "iter 5/40  loss 6.9000  high 1.500  low 1.500  fused 1.500"
    layout = CurveLayout(max_iter=40, terms=(DistillTerm("loss_msad_feature", 1.0, 7),))
    student = {"iter": 10, "loss": 2.5, "lr": 0.01, "time": 3.0, "loss_fcos_cls": 1.0, "loss_fcos_loc": 0.5,
               "loss_fcos_ctr": 0.7, "loss_msad_feature": 0.3, "loss_msad_feature_raw": 0.6}
    assert progress_line(student, 40, layout) == (
        "iter 10/40  loss 2.5000  cls 1.000  loc 0.500  ctr 0.700  msad_feature 0.300 (raw 0.600)")


class _Shown:
    """Stands in for the notebook's display: records what each redraw drew."""

    def __init__(self, monkeypatch, live):
        self.draws = []
        original = live._figure

        def figure():
            drawn = original()
            self.draws.append([row["iter"] for row in live.history if "loss" in row])
            return drawn

        monkeypatch.setattr(live, "_figure", figure)
        monkeypatch.setattr("msadkit.notebook.live.show_png", lambda data, dpi, handle=None: "handle")
        monkeypatch.setattr("ipywidgets.IntProgress", lambda **kwargs: _Widget())
        monkeypatch.setattr("ipywidgets.HTML", lambda **kwargs: _Widget())
        monkeypatch.setattr("ipywidgets.HBox", lambda children: _Widget())
        monkeypatch.setattr("IPython.display.display", lambda *args, **kwargs: None)


class _Widget:
    value = 0
    bar_style = ""


def test_the_live_figure_is_redrawn_after_each_validation_at_the_end_and_on_a_stop(tmp_path, monkeypatch):
    config = notebook_config("fcos_demo", TINY + ["trainer.log_period=3", "trainer.eval_period=2"],
                             output_dir=tmp_path / "run", iterations=4)
    live = LiveLossCurves.for_config(config, interactive=True)
    shown = _Shown(monkeypatch, live)
    train_or_reuse(config, callbacks=[live], evaluate=False)
    validations = [row["iter"] for row in read_history(tmp_path / "run") if "val/AP" in row]
    assert validations == [2, 4]
    # start, validation 2, log 3, validation 4 (the last point), log 4 (the end of the run), the end
    assert len(shown.draws) >= 5 and shown.draws[-1] == [3, 4]
    drawn_rows = [row["iter"] for row in live.history if "val/AP" in row]
    assert drawn_rows == [2, 4]

    config = notebook_config("fcos_demo", TINY + ["trainer.log_period=1"], output_dir=tmp_path / "stop", iterations=6)
    live = LiveLossCurves.for_config(config, interactive=True)
    shown = _Shown(monkeypatch, live)
    with pytest.raises(TrainingStopped):
        train_or_reuse(config, callbacks=[_AtStep(3, lambda: setattr(live, "stop_requested", True)), live])
    # The figure left on screen holds every iteration trained before the stop.
    assert shown.draws[-1] == [1, 2, 3]


def test_an_ap_of_zero_is_drawn_as_zero_and_a_missing_one_as_a_dash():
    figure = plot_ap_comparison({"run": {"AP": 0.0, "AP50": 12.5, "AP75": None}})
    texts = [text.get_text() for text in figure.get_axes()[0].texts]
    # AP, AP50, AP75, APs, APm, APl in order.
    assert texts == ["0.0", "12.5", "-", "-", "-", "-"]
    assert figure.legends[0].get_title().get_text() == "1 seed"


def _finished_run(folder):
    folder.mkdir(parents=True)
    (folder / "model_final.pth").write_bytes(b"")
    (folder / "summary.json").write_text("{}")
    return folder


def test_run_parameters_resolve_under_runs_root_and_errors_name_parameter_and_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teacher = _finished_run(tmp_path / "demo" / "01_teacher_training")
    assert notebook_run_folder("teacher_run", None, runs_root="demo") == teacher
    assert notebook_run_folder("teacher_run", str(teacher), runs_root=None) == teacher
    # No baseline under the root: optional parameters fall back to none; False always means none.
    assert notebook_run_folder("baseline_run", None, runs_root="demo", optional=True) is None
    assert notebook_run_folder("baseline_run", False, runs_root="demo", optional=True) is None
    with pytest.raises(ConfigError) as missing:
        notebook_run_folder("student_run", None, runs_root="demo")
    text = str(missing.value)
    assert "student_run" in text and "runs_root='demo'" in text
    assert str(tmp_path / "demo" / "02_student_distillation" / "student") in text
    assert f"relative paths resolve from {tmp_path}" in text
    (tmp_path / "half").mkdir()
    with pytest.raises(ConfigError, match=r"teacher_run='half'.*not a finished run \(no model_final.pth or summary.json\)"):
        notebook_run_folder("teacher_run", "half", runs_root=None)

    assert notebook_search_folders(None, runs_root="demo") == [tmp_path / "demo"]
    with pytest.raises(ConfigError, match=rf"runs_root: 'gone' is not a folder \({tmp_path / 'gone'} does not exist\)"):
        notebook_search_folders(None, runs_root="gone")
    with pytest.raises(ConfigError, match="search_dirs"):
        notebook_search_folders(["demo", "gone"], runs_root=None)


def test_missing_runs_say_where_and_what_to_do_from_the_notebooks_folder(tmp_path, monkeypatch):
    # A copy made by `msadkit notebook copy` in a folder of the user's: run the demo there.
    copy = tmp_path / "my_notebooks"
    copy.mkdir()
    monkeypatch.chdir(copy)
    with pytest.raises(MissingRunError) as missing:
        notebook_run_folder("teacher_run", None, runs_root="../elsewhere/./runs")
    text = str(missing.value)
    # Normalised: no "..", no "." in the path tried.
    assert f"no run folder at {tmp_path / 'elsewhere' / 'runs' / '01_teacher_training'} " in text
    assert f"run `msadkit demo --out runs/demo` in {copy}" in text and "runs_root = 'runs/demo'" in text
    # One line in a notebook, no traceback.
    assert missing.value._render_traceback_() == [f"MissingRunError: {text}"]

    # The repository's notebooks/ folder: `make demo` and ../runs/demo.
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    (repo / "msadkit").mkdir()
    (repo / "Makefile").write_text("demo:\n")
    assert "run `make demo` in " + str(repo) in runs_hint("teacher_run", repo / "notebooks")
    # A finished demo next to it: point runs_root there.
    _finished_run(repo / "runs" / "demo" / "01_teacher_training")
    assert runs_hint("teacher_run", repo / "notebooks") == (
        f"a finished run is at {repo / 'runs' / 'demo' / '01_teacher_training'}: set runs_root = '../runs/demo'")
