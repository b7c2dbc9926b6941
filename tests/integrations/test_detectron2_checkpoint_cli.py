"""The checkpoint converter's command line in the form docs/detectron2.md shows.

Its parser lives in the integration package, which imports detectron2: skipped where detectron2 is
not installed.
"""

import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402

from msadkit.config import load_config  # noqa: E402
from msadkit.integrations.detectron2 import add_msadkit_config, msadkit_config_from_cfg  # noqa: E402
from msadkit.integrations.detectron2.checkpoint_convert import msadkit_to_detectron2, parse_args  # noqa: E402
from msadkit.integrations.detectron2.config import resolve_detectron2_config  # noqa: E402
from msadkit.modeling.registry import build_model  # noqa: E402
from msadkit.utils.checkpoint import load_checkpoint_file, save_atomic  # noqa: E402

DEMO_CONFIG = "Synthetic-FCOS-Demo"


PAIR = ["SOLVER.BASE_LR", "-1"]  # a value that looks like an option


@pytest.mark.parametrize(
    "argv, opts",
    [
        (["to-msadkit", "src.pth", "dst.pth", "--config-file", "CFG"], []),
        (["to-msadkit", "--config-file", "CFG", "src.pth", "dst.pth"], []),
        (["to-msadkit", "src.pth", "dst.pth", "--config-file", "CFG", *PAIR], PAIR),
        (["to-msadkit", "src.pth", "dst.pth", *PAIR, "--config-file", "CFG"], PAIR),
    ],
)
def test_config_file_is_read_wherever_it_stands(argv, opts):
    args = parse_args(argv)
    assert (args.direction, args.src, args.dst, args.config_file) == ("to-msadkit", "src.pth", "dst.pth", "CFG")
    assert args.opts == opts


@pytest.mark.parametrize(
    "argv, message",
    [
        (["to-msadkit", "a", "b", "--config-file", "CFG", "MODEL.DEVICE"], "odd number"),
        (["to-msadkit", "a", "b", "MODEL.DEVICE", "cpu"], "apply to a --config-file"),
    ],
)
def test_pairs_that_cannot_apply_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def _convert(*argv, cwd):
    return subprocess.run(
        [sys.executable, "-m", "msadkit.integrations.detectron2.checkpoint_convert", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_documented_to_msadkit_form_runs(tmp_path):
    """`to-msadkit SRC DST --config-file CFG [KEY VALUE ...]` on a checkpoint without its config,
    as detectron2's DetectionCheckpointer writes it."""
    cfg = add_msadkit_config(get_cfg())
    cfg.merge_from_file(str(resolve_detectron2_config(DEMO_CONFIG)))
    config = msadkit_config_from_cfg(cfg)
    assert config["model"] == load_config("fcos_demo")["model"]
    torch.manual_seed(0)
    state = build_model(config).state_dict()
    save_atomic({"model": msadkit_to_detectron2(state), "iteration": 19}, tmp_path / "d2.pth")

    done = _convert("to-msadkit", "d2.pth", "model_final.pth", "--config-file", DEMO_CONFIG, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = load_checkpoint_file(tmp_path / "model_final.pth")
    assert written["config"]["model"] == config["model"]
    assert set(written["model"]) == set(state) and all(torch.equal(written["model"][k], state[k]) for k in state)

    # Pairs after --config-file reach the config: a narrower FPN no longer fits these weights.
    done = _convert(
        "to-msadkit", "d2.pth", "narrow.pth", "--config-file", DEMO_CONFIG,
        "MSADKIT.OVERRIDES", "['model.fpn.out_channels=32']", cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "fpn" in done.stderr and "shape" in done.stderr.lower()
    assert not (tmp_path / "narrow.pth").exists()
