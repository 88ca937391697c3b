"""``semivit compare`` (issue 25): the linear probe and fine-tuning on the labels alone against the
semi-supervised paths, on the user's data at one budget, every path on the same labels (a validation split
carved out of them), and a recommendation read from validation accuracy only."""

from __future__ import annotations

import json

import pytest

import semivit
from semivit.cli import main
from semivit.comparison import compare_suite, recommend
from semivit.errors import SemivitError
from tests.conftest import random_timm_weights


def test_the_recommendation_reads_validation_and_the_seeds_spread():
    def row(val, std, test):
        return {"val": (val, std), "test": (test, 0.0)}

    helps = {"linear-probe": row(0.60, 0.01, 0.99), "fine-tuning": row(0.62, 0.01, 0.10),
             "frozen-fixmatch": row(0.66, 0.01, 0.10), "partial-semivit": row(0.64, 0.02, 0.99)}
    line = recommend(helps)
    assert line.startswith("recommendation: use frozen-fixmatch") and "+4.0 points over fine-tuning" in line
    within_spread = {**helps, "frozen-fixmatch": row(0.63, 0.03, 0.99), "partial-semivit": row(0.5, 0.0, 0.99)}
    assert recommend(within_spread).startswith("recommendation: use fine-tuning")  # +1.0 < 3.0 spread


def test_a_suite_is_built_from_the_command_line_and_bad_input_is_one_line():
    suite = compare_suite("digits", "10-per-class", model="local-dir:x", budget="10m", seeds=[3])
    assert suite.budget == {"cap": 600.0} and suite.seeds == [3]  # a limit: a fitting recipe keeps its steps
    assert suite.settings["data.val"] == "20%-of-labels" and suite.settings["model.name"] == "local-dir:x"
    assert list(suite.methods) == ["linear-probe", "fine-tuning", "frozen-fixmatch", "partial-semivit"]
    with pytest.raises(SemivitError, match="name it with --model"):
        compare_suite("digits", "10-per-class", model="auto")
    with pytest.raises(SemivitError, match="name it with --model"):  # the Python API checks the same way
        semivit.compare("digits", "10-per-class", model="auto")
    with pytest.raises(SemivitError, match="unknown compare rows"):
        compare_suite("digits", None, model="x", rows=["mystery"])
    with pytest.raises(SemivitError, match="cannot read the budget"):
        compare_suite("digits", None, model="x", budget="soon")
    assert compare_suite("digits", None, model="x", steps=100).budget == {"steps": 100}


@pytest.mark.slow
def test_compare_runs_every_path_on_the_same_labels_and_prints_one_recommendation(tmp_path, capsys):
    args = ["compare", "--data", "digits", "--labels", "10-per-class", "--model", "test_efficientnet",
            "--pretrained", random_timm_weights(tmp_path), "--steps", "16", "--seeds", "0", "1", "--resolution", "32",
            "--out", str(tmp_path / "out"), "--set", f"features.cache={tmp_path / 'cache'}",
            "--set", "features.views=1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| path")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["linear-probe", "fine-tuning", "frozen-fixmatch",
                                                    "partial-semivit"]
    assert all(" | 80 + 20 | " in r for r in rows), rows  # 100 labels: 80 train, 20 validate, in every path
    assert sum(line.startswith("recommendation: use ") for line in out.splitlines()) == 1
    assert (tmp_path / "out" / "compare" / "compare.md").is_file()
    # the frozen and the cut caches were built once, before the rows, and are reported on their own
    caches = json.loads((tmp_path / "out" / "compare" / "embedding.json").read_text())
    assert len(caches) == 2 and all(c["images"] > 0 for c in caches)
    assert "one-time feature caches" in out
    assert main(args) == 0  # finished cells are kept: the second call trains nothing and prints the same table
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:] == rows
