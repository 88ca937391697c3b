import csv
import json

import pytest

from semivit.bench import apply_budget, cell_configs, load_suite, run_suite
from semivit.bench_report import summarise, write_reports
from semivit.cli import main
from semivit.config import Config, apply_overrides
from semivit.engine.trainer import train
from semivit.errors import SemivitError
from tests.conftest import REPO, tiny_config

SUITE = """
name: tiny
seeds: [0, 1]
budget: {steps: 6}
set: {model.depth: 1, model.embed_dim: 32, model.num_heads: 2, train.batch_size: 8, train.eval_every: 3,
      train.log_every: 3}
data:
  digits: {source: digits, labels: [2-per-class, 4-per-class]}
  elsewhere: {source: /nowhere, labels: [10], requires: /nowhere/at/all}
methods:
  supervised: {method: supervised}
  two-stage:
    recipe: RECIPE
"""
RECIPE = """
stages:
  - method: mae
    train: {steps: 100}
  - method: supervised
    train: {steps: 200}
"""


@pytest.fixture
def suite_file(tmp_path):
    (tmp_path / "two.yaml").write_text(RECIPE)
    path = tmp_path / "tiny.yaml"
    path.write_text(SUITE.replace("RECIPE", str(tmp_path / "two.yaml")))
    return path


def test_budget_keeps_stage_proportions_and_sums_to_the_budget():
    given = [apply_overrides(Config(), {"train.steps": s}) for s in (300, 500, 2000)]
    configs = apply_budget(given, {"steps": 600})
    assert [c.train.steps for c in configs] == [64, 107, 429] and sum(c.train.steps for c in configs) == 600
    assert [c.train.steps for c in given] == [300, 500, 2000]  # new configs: the given ones are not written
    configs = apply_budget([apply_overrides(Config(), {"train.steps": s}) for s in (100, 300)], {"seconds": 40})
    assert [c.train.time_limit for c in configs] == [10, 30]


def test_cells_apply_settings_in_order_and_skip_missing_data(suite_file):
    suite = load_suite(suite_file)
    assert suite.skipped == {"elsewhere": "/nowhere/at/all is missing"}
    cells = suite.cells()
    assert len(cells) == 2 * 2 * 2 and {c.data for c in cells} == {"digits"}
    two = next(c for c in cells if c.method == "two-stage")
    mae, sup = cell_configs(suite, two)
    assert (mae.train.steps, sup.train.steps) == (2, 4)  # 6 steps split 1:2
    assert mae.model.embed_dim == 32 and sup.data.labels == two.labels and sup.train.seed == two.seed


def test_bad_suites_are_clear(tmp_path, suite_file):
    with pytest.raises(SemivitError, match="suite 'nope' not found"):
        load_suite("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text(suite_file.read_text().replace("budget: {steps: 6}", "budjet: {steps: 6}"))
    with pytest.raises(SemivitError, match="unknown keys.*budjet"):
        load_suite(bad)
    bad.write_text(suite_file.read_text().replace("budget: {steps: 6}", "budget: {epochs: 6}"))
    with pytest.raises(SemivitError, match="budget"):
        load_suite(bad)
    assert main(["bench", str(tmp_path / "missing.yaml")]) == 2


def test_suite_runs_every_cell_writes_reports_and_resumes(tmp_path, suite_file, caplog):
    root = run_suite(suite_file, out=str(tmp_path / "out"), only="2-per-class")
    rows = list(csv.DictReader(open(root / "results.csv")))
    assert len(rows) == 4 and {r["method"] for r in rows} == {"supervised", "two-stage"}
    assert all(int(r["steps"]) == 6 for r in rows)
    for r in rows:  # each row's number is its cell's last stage's own test pass
        last = sorted((root / r["data"] / r["labels"] / r["method"] / f"seed{r['seed']}").glob("stage*"))[-1]
        assert float(r["test_top1_last"]) == json.loads((last / "results.json").read_text())["test_top1"]
    table = (root / "table.md").read_text()
    assert "## digits, 2-per-class labels" in table and "Skipped: elsewhere" in table
    assert "±" in table and (root / "label-efficiency-digits.png").stat().st_size > 1000
    # every row states the labels it consumed: 2 per class train, data.val 'auto' validates on 13 more per class
    assert {(r["labeled"], r["val_labeled"], r["labels_total"], r["val_from"]) for r in rows} == \
        {("20", "130", "150", "extra")}
    assert "| supervised | 150 (20 + 130) |" in table and "| two-stage | 150 (20 + 130) |" in table
    summary = list(csv.DictReader(open(root / "summary.csv")))
    assert {(s["labeled"], s["val_labeled"], s["labels_total"]) for s in summary} == {("20", "130", "150")}
    assert "<svg" in (root / "label-efficiency-digits.svg").read_text()
    page = (root / "report.html").read_text()  # the same tables and the plot, self-contained
    assert "<h2>digits, 2-per-class labels</h2>" in page and page.count("<tr>") == 3
    assert "<td>150 (20 + 130)</td>" in page and "data:image/png;base64," in page and "http" not in page
    # a second call trains nothing: every cell is done
    before = {p: p.stat().st_mtime for p in root.rglob("cell.json")}
    caplog.set_level("INFO", logger="semivit")
    caplog.clear()  # only the second call's lines
    run_suite(suite_file, out=str(tmp_path / "out"), only="2-per-class")
    assert "bench 1/" not in caplog.text
    assert before == {p: p.stat().st_mtime for p in root.rglob("cell.json")}
    # an interrupted cell (no cell.json, stage 2 unfinished) continues where it stopped
    cell = root / "digits" / "2-per-class" / "two-stage" / "seed0"
    (cell / "cell.json").unlink()
    (cell / "stage2-supervised" / "results.json").unlink()
    run_suite(suite_file, out=str(tmp_path / "out"), only="2-per-class/two-stage/seed0")
    assert "stage 1 (mae) already finished" in caplog.text
    assert json.loads((cell / "cell.json").read_text())["steps"] == 6


def test_summary_mean_and_std_over_seeds():
    rows = [{"data": "d", "labels": "4", "method": "m", "seed": s, "labels_per_class": 4.0, "steps": 5,
             "test_top1_last": v, "test_top1_best": v, "images_per_sec": 10.0, "wall_seconds": 1.0}
            for s, v in enumerate((0.5, 0.7))]
    (s,) = summarise(rows)
    assert s["score_last_mean"] == pytest.approx(0.6) and s["score_last_std"] == pytest.approx(0.1414, abs=1e-4)
    assert s["metric"] == "top1"  # a row from before the field: top-1


def _row(method, seed, **extra):
    return {"data": "d", "labels": "10-per-class", "method": method, "seed": seed, "labels_per_class": 10.0,
            "steps": 5, "test_top1_last": 0.5, "test_top1_best": 0.5, "images_per_sec": 10.0, "wall_seconds": 1.0,
            **extra}


def test_tables_state_the_labels_each_row_consumed(tmp_path, suite_file):
    suite = load_suite(suite_file)
    suite.methods = {"held-out": {}, "extra": {}, "old": {}}
    rows = [_row("held-out", s, labeled=16, val_labeled=4, labels_total=20, val_from="labels") for s in (0, 1)]
    rows += [_row("extra", s, labeled=20, val_labeled=100, labels_total=120, val_from="extra") for s in (0, 1)]
    rows.append(_row("old", 0, labeled=20))  # a cell finished before the counts were recorded
    write_reports(suite, rows, tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "| held-out | 20 (16 + 4) |" in table and "| extra | 120 (20 + 100) |" in table
    assert "| old | ? (20 + ?) |" in table and "labels (train + val)" in table
    by_method = {r["method"]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert (by_method["extra"]["labels_total"], by_method["extra"]["val_from"]) == ("120", "extra")
    assert by_method["old"]["labels_total"] == ""
    # results.csv has a column for every key, whichever row comes first
    write_reports(suite, rows[::-1], tmp_path)
    assert {r["method"]: r["labels_total"] for r in csv.DictReader(open(tmp_path / "results.csv"))} == \
        {"held-out": "20", "extra": "120", "old": ""}


def test_time_limit_stops_training_early_and_still_evaluates(tmp_path):
    result = train(tiny_config(tmp_path, **{"train.steps": 10_000, "train.time_limit": 0.5}))
    assert 0 < result.metrics["steps"] < 10_000 and "test_top1" in result.metrics


@pytest.mark.parametrize("suite", ["cpu-small", "gpu", "gpu-short"])
def test_shipped_suites_are_valid(suite):
    from semivit.methods import method_params

    s = load_suite(REPO / "benchmarks" / "suites" / f"{suite}.yaml")
    for cell in s.cells()[:: max(1, len(s.cells()) // 20)] + [c for c in s.cells() if c.seed == 0][-8:]:
        for cfg in cell_configs(s, cell):
            method_params(cfg.train.method, cfg.method)


def test_reports_cover_cells_run_by_earlier_commands(tmp_path, suite_file):
    out = str(tmp_path / "out")
    run_suite(suite_file, out=out, only="2-per-class/supervised/seed0")
    root = run_suite(suite_file, out=out, only="4-per-class/supervised/seed0,4-per-class/supervised/seed1")
    rows = list(csv.DictReader(open(root / "results.csv")))
    assert sorted(r["labels"] for r in rows) == ["2-per-class", "4-per-class", "4-per-class"]


def test_cell_results_are_never_written_in_place(tmp_path, suite_file, monkeypatch):
    # with --jobs the parent reads every cell.json while workers write theirs: a reader must never see half a file
    from pathlib import Path
    write_text = Path.write_text

    def guarded(self, *args, **kwargs):
        assert self.name != "cell.json", "cell.json written in place"
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", guarded)
    root = run_suite(suite_file, out=str(tmp_path / "out"), only="2-per-class/supervised/seed0")
    cell = root / "digits" / "2-per-class" / "supervised" / "seed0"
    assert json.loads((cell / "cell.json").read_text())["method"] == "supervised"
    assert [p.name for p in cell.iterdir() if p.name.endswith(".tmp")] == []


def test_a_cut_short_cell_file_is_a_clear_error(tmp_path, suite_file):
    root = run_suite(suite_file, out=str(tmp_path / "out"), only="2-per-class/supervised/seed0")
    (root / "digits" / "2-per-class" / "supervised" / "seed0" / "cell.json").write_text("")
    with pytest.raises(SemivitError, match=r"cell\.json' is not a finished cell's results .* delete it"):
        run_suite(suite_file, out=str(tmp_path / "out"), only="2-per-class/supervised/seed0")


def test_jobs_run_cells_in_worker_processes_and_report_failures(tmp_path, suite_file):
    text = suite_file.read_text().replace(
        "  two-stage:", "  broken: {method: supervised, data: [digits], set: {optim.lr: -1.0}}\n  two-stage:")
    suite_file.write_text(text)
    assert [c.method for c in load_suite(suite_file).cells()].count("broken") == 4
    out = str(tmp_path / "out")
    with pytest.raises(SemivitError, match=r"1 cell\(s\) failed \(digits/2-per-class/broken/seed0\)"):
        run_suite(suite_file, out=out, only="2-per-class/supervised/seed,2-per-class/broken/seed0", jobs=2)
    rows = list(csv.DictReader(open(tmp_path / "out" / "tiny" / "results.csv")))
    assert sorted((r["method"], r["seed"]) for r in rows) == [("supervised", "0"), ("supervised", "1")]
    for r in rows:
        last = sorted((tmp_path / "out" / "tiny" / r["data"] / r["labels"] / r["method"] / f"seed{r['seed']}")
                      .glob("stage*"))[-1]
        assert float(r["test_top1_last"]) == json.loads((last / "results.json").read_text())["test_top1"]


def test_a_method_limited_to_unknown_data_sets_is_a_clear_error(suite_file):
    suite_file.write_text(suite_file.read_text().replace("{method: supervised}",
                                                         "{method: supervised, data: [digitz]}"))
    with pytest.raises(SemivitError, match=r"methods.supervised.data names \['digitz'\]"):
        load_suite(suite_file)


def test_last_pseudo_accuracy_reads_the_last_stage_that_logs_it(tmp_path):
    from semivit.bench import last_pseudo_accuracy

    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "metrics.csv").write_text("step,train/loss\n10,1.0\n")
    (tmp_path / "s2").mkdir()
    rows = "".join(f"{10 * k},0.5,{a}\n" for k, a in enumerate([0.1, 0.2, 0.6, 0.6, 0.7, 0.8, 0.8], 1))
    (tmp_path / "s2" / "metrics.csv").write_text("step,train/loss,train/pseudo_acc\n" + rows + "80,,\n")
    assert last_pseudo_accuracy([tmp_path / "s1", tmp_path / "s2"]) == pytest.approx(0.7)  # mean of the last 5
    assert last_pseudo_accuracy([tmp_path / "s1"]) is None


def test_skewed_rows_show_balanced_accuracy_and_macro_f1_beside_top1(tmp_path, suite_file):
    suite = load_suite(suite_file)
    suite.methods = {"skewed": {}, "plain": {}}
    rows = [_row("skewed", s, test_balanced_accuracy=b, test_macro_f1=f) for s, b, f in ((0, 0.6, 0.5), (1, 0.8, 0.7))]
    write_reports(suite, rows, tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "| balanced acc (last) | macro-F1 (last) |" in table
    assert "| 0.7000 ± 0.1414 | 0.6000 ± 0.1414 |" in table
    write_reports(suite, [_row("plain", 0)], tmp_path)  # balanced classes: top-1 alone, as before
    assert "balanced acc" not in (tmp_path / "table.md").read_text()
    rows.append(_row("plain", 0))  # one table with both: the row without the scores shows a dash
    write_reports(suite, rows, tmp_path)
    assert "| plain | ? (? + ?) | 0.5000 | 0.5000 | — | — |" in (tmp_path / "table.md").read_text()
