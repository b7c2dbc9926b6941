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
from msadkit.errors import ConfigError
from msadkit.notebook.live import LiveLossCurves, TrainingStopped, read_history
from msadkit.notebook.paths import notebook_run_folder, notebook_search_folders
from msadkit.notebook.training import notebook_config, run_state, train_or_reuse
from msadkit.utils.run_folder import last_checkpoint

TINY = [
    "data.synthetic.num_train=4",
    "data.synthetic.num_val=2",
    "data.synthetic.image_size=64",
    "data.train_short_sides=[64]",
    "data.train_max_size=64",
    "data.test_short_side=64",
    "data.test_max_size=64",
    "data.num_workers=0",
    "solver.batch_size=2",
    "model.fpn.out_channels=32",
    "model.fcos.num_convs=1",
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


def test_validation_rows_add_an_ap_panel_with_their_values():
    history = [{"iter": 10, "loss": 2.0, "cls": 1.0}, {"iter": 10, "val/AP": 0.0, "val/AP50": 1.5},
               {"iter": 20, "loss": 1.0, "cls": 0.5}, {"iter": 20, "val/AP": 4.0, "val/AP50": 9.0}]
    figure = plot_loss_curves({"run": history})
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == ["total loss", "loss terms", "validation AP"]
    lines = {line.get_label(): line for line in axes[2].get_lines()}
    assert list(lines["AP"].get_xdata()) == [10, 20] and list(lines["AP"].get_ydata()) == [0.0, 4.0]
    assert list(lines["AP50"].get_ydata()) == [1.5, 9.0]
    # The validation rows are not loss terms, and the total-loss line skips them.
    assert [line.get_label() for line in axes[1].get_lines()] == ["cls"]
    assert list(axes[0].get_lines()[0].get_xdata()) == [10, 20]
    assert len(plot_loss_curves({"run": history[::2]}).get_axes()) == 2


def test_an_ap_of_zero_is_drawn_as_zero_and_a_missing_one_as_a_dash():
    figure = plot_ap_comparison({"run": {"AP": 0.0, "AP50": 12.5, "AP75": None}})
    texts = [text.get_text() for text in figure.get_axes()[0].texts]
    # AP, AP50, AP75, APs, APm, APl in order.
    assert texts == ["0.0", "12.5", "-", "-", "-", "-"]


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
