"""The exact text of ``format_ap_table``: column widths, alignment and the "-" cells, written out by hand."""

from __future__ import annotations

from msadkit.engine.evaluation.coco_evaluation import format_ap_table

NAN = float("nan")


def test_flat_metrics_are_one_right_aligned_row_under_the_header():
    # Widths: AP 4 ("40.0"), AP50 4, AP75 4, APs 5 ("100.0"), APm 3, APl 3; two spaces between columns.
    table = format_ap_table(
        {"AP": 40.04, "AP50": 5.0, "AP75": NAN, "APs": 100.0, "APm": 7.0}
    )
    assert table == (
        "  AP  AP50  AP75    APs  APm  APl\n40.0   5.0     -  100.0  7.0    -"
    )


def test_named_rows_put_left_aligned_names_before_right_aligned_numbers():
    # Widths: name 7 ("teacher"), AP 4, AP50 4, AP75 4, APs 3, APm 5 ("100.0"), APl 4 ("55.5").
    table = format_ap_table(
        {
            "teacher": {
                "AP": 42.84,
                "AP50": 61.0,
                "AP75": NAN,
                "APs": 3.0,
                "APm": 45.0,
                "APl": 55.54,
            },
            "s": {"AP": 9.96, "AP50": 48.0, "AP75": 31.0, "APm": 100.0, "APl": 5.0},
        }
    )
    assert table == (
        "name       AP  AP50  AP75  APs    APm   APl\n"
        "teacher  42.8  61.0     -  3.0   45.0  55.5\n"
        "s        10.0  48.0  31.0    -  100.0   5.0"
    )
