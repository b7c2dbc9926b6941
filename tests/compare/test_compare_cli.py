"""`msadkit compare` on bad input: one line naming the argument, status 2, nothing trained or written."""

from __future__ import annotations

import pytest

from msadkit.cli import main


@pytest.mark.parametrize("arguments, expected", [
    (["--methods", "gid", "fitnett"],
     "msadkit compare: error: --methods: unknown distillation term 'fitnett' in 'fitnett' (did you mean 'fitnet'?); "
     "known terms: adl, crosskd, cwd, fgd, fitnet, gid, mgd, msad_feature, pkd"),
    (["--methods", "gid+msad"], "msadkit compare: error: --methods: unknown distillation term 'msad' in 'gid+msad'"),
    (["--track", "cross-resolutoin"],
     "msadkit compare: error: --track: unknown track 'cross-resolutoin' (did you mean 'cross-resolution'?); "
     "choose from same-resolution, cross-resolution"),
    (["--seeds", "3"], "msadkit compare: error: --seeds: a paired comparison needs at least 2 seeds, got 1 (3)"),
    (["--track", "same-resolution", "--methods", "msad_feature@msad"],
     "msadkit compare: error: --methods: 'msad_feature@msad': @msad (the MSAD C-FF teacher) exists on the "
     "cross-resolution track only, not on same-resolution"),
    (["--seeds", "0", "1", "--tuning-seed", "1"], "msadkit compare: error: --tuning-seed 1 is one of the reported"),
])
def test_bad_input_is_one_line_naming_the_argument(tmp_path, capsys, arguments, expected):
    out = tmp_path / "comparison"
    assert main(["compare", "--out", str(out), *arguments]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(expected)
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert not out.exists()


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    for option in ("--track", "--methods", "--seeds", "--tuning-seed", "--tune", "--out", "--quick", "--table-only"):
        assert option in text
