"""`msadkit convert-official`: a released MSAD checkpoint (detectron2 format) as an msadkit run folder."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-official",
        help="turn a released MSAD teacher/student checkpoint into a run folder (original computation)",
        description=(
            "Map the module names of the official TFCOS (msad-teacher) or SFCOS (msad-student) checkpoint "
            "onto msadkit's model, strictly (every key used once, shapes checked, width inferred from the "
            "FPN and verified), and write OUT/config.yaml (the packaged msad/official/ config of that width) "
            "and OUT/model_final.pth. `msadkit evaluate OUT` then runs the original computation "
            "(docs/deviations.md)."
        ),
    )
    p.add_argument("role", choices=("msad-teacher", "msad-student"), help="which MSAD model the file holds")
    p.add_argument("file", help="the official model_final.pth")
    p.add_argument("--out", required=True, help="the run folder to write (must not hold a run yet)")
    p.add_argument(
        "overrides", nargs="*", help="key=value changes of the written config (e.g. data.val_json=/data/coco/val.json)"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from msadkit.errors import ConfigError
    from msadkit.modeling.official_checkpoint import convert_official_checkpoint
    from msadkit.utils.checkpoint import save_atomic
    from msadkit.utils.run_folder import CONFIG_NAME, FINAL_WEIGHTS_NAME, write_run_config
    from msadkit.utils.run_lock import check_writable_folder

    out = Path(args.out)
    if (out / FINAL_WEIGHTS_NAME).exists() or (out / CONFIG_NAME).exists():
        raise ConfigError(
            f"--out {out} already holds a run ({CONFIG_NAME} or {FINAL_WEIGHTS_NAME}); choose another folder"
        )
    check_writable_folder(out, key="--out")
    state, config = convert_official_checkpoint(args.file, args.role, overrides=args.overrides)
    config["output_dir"] = str(out)
    out.mkdir(parents=True, exist_ok=True)
    write_run_config(out, config)
    save_atomic({"model": state, "config": config}, out / FINAL_WEIGHTS_NAME)
    width = config["model"]["backbone"]["width"]
    print(f"{args.role} width {width}: {len(state)} tensors written to {out / FINAL_WEIGHTS_NAME}")
    return 0
