"""``semivit bench SUITE``: every method × data set × labels × seed cell under one equal budget.

A suite is YAML (see ``benchmarks/suites/``)::

    name: cpu-small
    seeds: [0, 1]
    budget: {steps: 600}            # or {seconds: 120}; a data set or method may set its own
    set: {train.eval_every: 100}    # settings for every cell
    data:
      digits: {source: digits, labels: [2-per-class, 4-per-class]}
      cifar10: {source: ../shared/data/cifar10_jpeg.zip, labels: [25-per-class], seeds: [0],
                requires: ../shared/data/cifar10_jpeg.zip}   # skipped, with the reason, when missing
    methods:
      supervised: {method: supervised}                 # one stage
      semivit: {recipe: semivit, set: {...}}           # a shipped recipe or a YAML file
      paws: {recipe: paws, params: {paws: {multicrop: 6}}}   # params of the stages of one method
      probe: {recipe: frozen-fixmatch, stages: 1}      # a recipe's first stages only

``set`` keys apply to every stage of a cell (``method.*`` keys too: give a recipe's stage settings as
``params`` keyed by the stage's method).

Budgets (USB's rule: every method gets the same number of optimizer steps): ``steps: N`` rescales a
recipe's stages so they sum to N, keeping their proportions; ``seconds: S`` gives each stage its share of S
as ``train.time_limit`` (the run stops when it is spent: accuracy at a time budget; the schedules stay planned
over ``train.steps``, so a cut-short run ends mid-schedule); ``plan: S`` times each cell's stages and plans
their steps and schedules to fit S seconds, as ``semivit run --budget`` does (semivit/planning.py); ``cap: S`` plans
the same way but never past the recipe's own steps (S is a limit: a recipe that fits runs as tuned). Each cell runs in
``OUT/SUITE/DATA/LABELS/METHOD/seedS``; a finished cell is skipped and an interrupted one resumes at its
step, so the same command continues a stopped suite; ``--jobs N`` trains N cells side by side in worker
processes. The table (markdown + CSV: the labels each row consumed — training + validation —, test top-1 of
the last and of the best-validation weights, mean ± std over seeds, images/s, wall seconds) and a
label-efficiency plot (PNG + SVG: top-1 against training labels per class, one line per method) are rewritten
after every cell.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from semivit.bench_cache import embed_once
from semivit.bench_report import METRIC_NAMES, row_metric, write_reports
from semivit.bench_suite import Cell, Suite, _as_list
from semivit.config import Config, apply_overrides, check_keys, load_yaml, parse_set_args
from semivit.errors import SemivitError

log = logging.getLogger("semivit")
SUITE_DIRS = (Path("benchmarks") / "suites", Path("benchmarks"))
_SUITE_KEYS = ("name", "description", "out", "seeds", "budget", "set", "data", "methods")
_DATA_KEYS = ("source", "labels", "seeds", "budget", "set", "requires", "split", "test")
_METHOD_KEYS = ("method", "recipe", "stages", "params", "set", "budget", "label", "data")
_BUDGET_KEYS = {"steps", "seconds", "plan", "cap"}


def _settings(value: Any, where: str) -> dict[str, Any]:
    """``set`` as a mapping {key: value} or a list of KEY=VALUE strings."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return parse_set_args([str(v) for v in value])
    raise SemivitError(f"'set' in {where} must be a mapping of KEY: VALUE or a list of KEY=VALUE")


def _budget(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, dict) or len(value) != 1 or not set(value) <= _BUDGET_KEYS:
        raise SemivitError(f"budget in {where} must be one of {{steps: N}}, {{seconds: S}}, {{plan: S}} or "
                           f"{{cap: S}}, got {value!r}")
    (kind, amount), = value.items()
    if not isinstance(amount, (int, float)) or amount <= 0:
        raise SemivitError(f"budget {kind} in {where} must be a positive number, got {amount!r}")
    return {kind: float(amount)}


def find_suite(name: str | Path) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    for folder in SUITE_DIRS:
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for folder in SUITE_DIRS if folder.is_dir() for p in folder.glob("*.yaml")})
    raise SemivitError(f"suite '{name}' not found: pass a YAML file" +
                       (f" or one of {', '.join(known)}" if known else " (suites live in benchmarks/suites/)"))


def load_suite(name: str | Path, out: str | None = None) -> Suite:
    """Read and check a suite; data sets whose ``requires`` path is missing are marked skipped."""
    path = find_suite(name)
    return suite_from_dict(load_yaml(path), path, out)


def suite_from_dict(raw: dict[str, Any], path: Path, out: str | None = None) -> Suite:
    """Check a suite given as a mapping (the YAML's content; ``semivit compare`` builds one from its command
    line); ``path`` names it in errors."""
    check_keys(raw, _SUITE_KEYS, str(path))
    if not raw.get("data") or not raw.get("methods"):
        raise SemivitError(f"{path}: a suite needs 'data' and 'methods' mappings")
    data = {str(k): dict(v or {}) for k, v in raw["data"].items()}
    methods = {str(k): dict(v or {}) for k, v in raw["methods"].items()}
    for dname, d in data.items():
        check_keys(d, _DATA_KEYS, f"{path}: data.{dname}")
        if "labels" not in d:
            raise SemivitError(f"{path}: data.{dname} needs 'labels' (e.g. [4-per-class, 250])")
        d["set"] = _settings(d.get("set"), f"data.{dname}")
        if "budget" in d:
            d["budget"] = _budget(d["budget"], f"data.{dname}")
    for mname, m in methods.items():
        check_keys(m, _METHOD_KEYS, f"{path}: methods.{mname}")
        if ("method" in m) == ("recipe" in m):
            raise SemivitError(f"{path}: methods.{mname} needs exactly one of 'method' (one stage) or 'recipe'")
        if "stages" in m and (not isinstance(m["stages"], int) or m["stages"] < 1 or "recipe" not in m):
            raise SemivitError(f"{path}: methods.{mname}.stages (a recipe's first N stages) must be a positive "
                               f"integer beside 'recipe', got {m['stages']!r}")
        m["set"] = _settings(m.get("set"), f"methods.{mname}")
        if "budget" in m:
            m["budget"] = _budget(m["budget"], f"methods.{mname}")
        if "data" in m:
            m["data"] = [str(x) for x in _as_list(m["data"])]
            if not set(m["data"]) <= set(data):
                raise SemivitError(f"{path}: methods.{mname}.data names {sorted(set(m['data']) - set(data))}, "
                                   f"not data sets of this suite: use some of {sorted(data)}")
    suite = Suite(name=str(raw.get("name", path.stem)), out=Path(out or raw.get("out", "runs/bench")),
                  seeds=[int(s) for s in _as_list(raw.get("seeds", [0]))],
                  budget=_budget(raw.get("budget", {"steps": 1000}), str(path)),
                  settings=_settings(raw.get("set"), str(path)), data=data, methods=methods, path=path)
    for dname, d in data.items():
        for required in _as_list(d.get("requires", [])):
            if not Path(required).exists():
                suite.skipped[dname] = f"{required} is missing"
    return suite


def cell_configs(suite: Suite, cell: Cell) -> list[Config]:
    """The stage configs of one cell, budget applied: recipe < suite set < data set < method set < cell."""
    from semivit.pipeline import find_recipe, stage_configs

    d, m = suite.data[cell.data], suite.methods[cell.method]
    if "recipe" in m:
        recipe = load_yaml(find_recipe(m["recipe"]))
        recipe["stages"] = recipe.get("stages", [])[:m.get("stages")]
    else:
        recipe = {"name": cell.method, "stages": [{"method": m["method"], "params": m.get("params") or {}}]}
    overrides = {**suite.settings, **d["set"], **m["set"],
                 "data.source": d["source"], "data.labels": cell.labels, "train.seed": cell.seed,
                 "train.progress": False, "train.tensorboard": False}
    for key in ("split", "test"):
        if d.get(key):
            overrides[f"data.{key}"] = d[key]
    _, configs = stage_configs(recipe, overrides)
    if "recipe" in m:  # params per stage method: {paws: {multicrop: 6}} reaches only the paws stage
        configs = [apply_overrides(cfg, {f"method.{k}": v for k, v in
                                         ((m.get("params") or {}).get(cfg.train.method) or {}).items()})
                   for cfg in configs]
    return apply_budget(configs, _cell_budget(suite, cell))


def _cell_budget(suite: Suite, cell: Cell) -> dict[str, float]:
    return suite.methods[cell.method].get("budget") or suite.data[cell.data].get("budget") or suite.budget


def _planned(budget: dict[str, float]) -> tuple[float, bool] | None:
    """A budget the planner times and plans — ``(seconds, stretch)``: ``plan`` fills its seconds, ``cap`` never
    grows a recipe past its own steps; None for ``steps`` and ``seconds``."""
    for kind, stretch in (("plan", True), ("cap", False)):
        if kind in budget:
            return budget[kind], stretch
    return None


def apply_budget(configs: list[Config], budget: dict[str, float]) -> list[Config]:
    """The stages scaled to the budget, keeping the recipe's proportions between them (new configs)."""
    planned = [c.train.steps or 0 for c in configs] if len(configs) > 1 else [1]
    if not all(planned):
        raise SemivitError("every stage of a benchmarked recipe needs train.steps (not epochs) to be budgeted")
    total = sum(planned)
    if _planned(budget):  # planned by run_cell, which has the data the timing needs
        return configs
    if "steps" in budget:
        steps = [max(1, round(budget["steps"] * s / total)) for s in planned]
        steps[-1] += int(budget["steps"]) - sum(steps)  # rounding: the last stage takes the remainder
        return [apply_overrides(c, {"train.steps": max(1, s)}) for c, s in zip(configs, steps)]
    return [apply_overrides(c, {"train.time_limit": budget["seconds"] * s / total}) for c, s in zip(configs, planned)]


def run_cell(suite: Suite, cell: Cell, cell_dir: Path, data_cache: dict) -> dict[str, Any]:
    """Train one cell (resuming a stopped one) and evaluate its last and best weights on the test split."""
    from semivit.core.device import resolve_device
    from semivit.core.io import atomic_write_json
    from semivit.data import prepare_data
    from semivit.engine.checkpoint import load_model
    from semivit.engine.evaluate import predict_logits, top1
    from semivit.pipeline import run_stages

    configs = [apply_overrides(c, {"train.resume": True}) for c in cell_configs(suite, cell)]
    dcfg = configs[0].data
    source_key = (dcfg.source, dcfg.test, dcfg.unlabeled, dcfg.image_size)
    if source_key not in data_cache:  # decode a data set once for all its cells (one in memory at a time)
        data_cache.clear()
        data_cache[source_key] = prepare_data(dcfg, cell.seed).bundle
    data = prepare_data(dcfg, cell.seed, bundle=data_cache[source_key])
    split, bundle = data.split, data.bundle
    # label sets are scored by mAP (validation picks by it too), single labels by top-1
    metric = "map" if bundle.train.multilabel else "top1"
    start = time.perf_counter()
    budget = _cell_budget(suite, cell)
    planned = _planned(budget)
    if planned:
        from semivit.planning import plan_run

        configs = plan_run(configs, data, planned[0], cell_dir, stretch=planned[1])
    result = run_stages(configs, cell_dir, data)
    wall = time.perf_counter() - start
    stages = [json.loads((cell_dir / f"stage{k}-{c.train.method}" / "results.json").read_text())
              for k, c in enumerate(configs, 1)]
    seconds = sum(st["train_seconds"] for st in stages)
    images = sum(st["train_seconds"] * st["images_per_sec"] for st in stages)
    metrics, classifier = result.metrics, _trains_classifier(configs[-1])
    # a last stage that trains no classifier (pre-training) is scored by its snn / k-NN test accuracy
    last = metrics.get(f"test_{metric}") if classifier else \
        metrics.get("test_snn_top1", metrics.get("test_knn_top1"))
    best = last
    best_file = result.run_dir / "checkpoints" / "best.safetensors"
    if classifier and best_file.is_file() and data.test is not None:
        from semivit.engine.multilabel_eval import mean_ap

        model, _ = load_model(best_file)
        device = resolve_device(configs[-1].train.device)
        logits = predict_logits(model.to(device), data.test, device=device)
        best = mean_ap(logits, data.test.labels) if metric == "map" else top1(logits, data.test.labels)
    # the labels the cell consumed: training's and validation's (data.val may add labels beyond the row's)
    row = {"data": cell.data, "labels": cell.labels, "method": cell.method, "seed": cell.seed,
           **split.label_counts(), "classes": bundle.train.num_classes,
           "labels_per_class": len(split.labeled) / bundle.train.num_classes,
           "metric": metric, f"test_{metric}_last": last, f"test_{metric}_best": best,
           f"best_val_{metric}": metrics.get(f"best_val_{metric}"), f"val_{metric}": metrics.get(f"val_{metric}"),
           # present when the test classes are skewed (engine/evaluate.is_skewed): top-1 alone rewards the lean
           **{k: metrics[k] for k in ("test_balanced_accuracy", "test_macro_f1") if metrics.get(k) is not None},
           "steps": sum(st["steps"] for st in stages),
           "images_per_sec": images / max(seconds, 1e-9), "train_seconds": seconds, "wall_seconds": wall,
           "pseudo_acc": last_pseudo_accuracy([cell_dir / f"stage{k}-{c.train.method}"
                                               for k, c in enumerate(configs, 1)])}
    # cell.json marks the cell finished, and with --jobs the parent reads it while workers write theirs:
    # written in place, a half-written file could be read (or left by a crash) as a finished cell
    atomic_write_json(cell_dir / "cell.json", row)
    return row


def last_pseudo_accuracy(stage_dirs: list[Path], window: int = 5) -> float | None:
    """Accuracy of the pseudo-labels against the hidden labels of the unlabeled images, averaged over the last
    ``window`` logged steps of the last stage that logs it (None: no stage pseudo-labels). A collapse shows
    here as chance level while the labeled-batch accuracy climbs."""
    from semivit.report.plots import read_metrics

    for stage in reversed(stage_dirs):
        values = [r["train/pseudo_acc"] for r in read_metrics(stage / "metrics.csv") if "train/pseudo_acc" in r]
        if values:
            return statistics.fmean(values[-window:])
    return None


def _trains_classifier(cfg: Config) -> bool:
    from semivit.methods import method_class

    return method_class(cfg.train.method).trains_classifier


def run_suite(name: str | Path | Suite, out: str | None = None, only: str | None = None,
              dry_run: bool = False, jobs: int = 1) -> Path:
    """Run (or continue) every cell of a suite; returns the folder with table.md, the CSVs and the plots.
    ``only``: comma-separated substrings; a cell runs when its ``DATA/LABELS/METHOD/seedS`` contains one.
    ``jobs``: cells trained at the same time, each in its own process (CPU: the cores are shared out
    between them, one process per core trains small models faster than one process on all cores; GPU:
    several small models share one GPU)."""
    if jobs < 1:
        raise SemivitError(f"--jobs must be 1 or more, got {jobs}")
    suite = name if isinstance(name, Suite) else load_suite(name, out)
    root = suite.out / suite.name
    for dname, why in suite.skipped.items():
        log.warning("skipping data set %s: %s", dname, why)
    wanted = [part for part in (only or "").split(",") if part]
    cells = [c for c in suite.cells() if not wanted or any(part in c.key for part in wanted)]
    if dry_run:
        for c in cells:
            configs = cell_configs(suite, c)
            plan = ", ".join(f"{cfg.train.method} {cfg.train.steps or ''}"
                             f"{f' ≤{cfg.train.time_limit:.0f}s' if cfg.train.time_limit else ''}"
                             for cfg in configs)
            print(f"{c.key}: {plan}")
        return root
    todo = [c for c in cells if not (_cell_dir(root, c) / "cell.json").is_file()]
    # the frozen-backbone rows' feature caches, built once here: not charged to the first cell's budget, nor built
    # twice by cells side by side (bench_cache.py)
    embed_once([cell_configs(suite, c) for c in todo], root)
    if jobs > 1 and len(todo) > 1:
        _run_cells_in_processes(suite, root, todo, jobs)
    else:
        data_cache: dict = {}
        for n, cell in enumerate(todo, 1):
            log.info("bench %d/%d: %s", n, len(todo), cell.key)
            row = run_cell(suite, cell, _cell_dir(root, cell), data_cache)
            _log_row(cell, row)
            write_reports(suite, finished_rows(suite, root), root)
    write_reports(suite, finished_rows(suite, root), root)
    return root


def _log_row(cell: Cell, row: dict[str, Any], done: str = "") -> None:
    m = row_metric(row)
    log.info("bench %s%s: test %s %.4f (best-val weights %.4f), %.0f s", done, cell.key, METRIC_NAMES[m],
             row[f"test_{m}_last"] or 0, row[f"test_{m}_best"] or 0, row["wall_seconds"])



_worker_data_cache: dict = {}  # per worker process: the decoded data set, kept for the next cells


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


def _run_cell_in_worker(task: tuple[Suite, Cell]) -> tuple[Cell, dict[str, Any] | None, str]:
    """One cell in a pool process; errors come back as text so the other cells go on."""
    suite, cell = task
    try:
        return cell, run_cell(suite, cell, _cell_dir(suite.out / suite.name, cell), _worker_data_cache), ""
    except Exception as exc:  # noqa: BLE001 — reported by the parent with the cell's name
        return cell, None, f"{type(exc).__name__}: {exc}"


def _run_cells_in_processes(suite: Suite, root: Path, cells: list[Cell], jobs: int) -> None:
    import multiprocessing
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SemivitError("--jobs runs cells side by side on one machine; under torchrun use --jobs 1")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // jobs)  # the cores this process may use (a container's or taskset's share)
    log.info("bench: %d cells, %d at a time, %d thread(s) each", len(cells), jobs, threads)
    failed = []
    # spawn, not fork: a forked child would inherit the parent's torch threads and CUDA state
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(jobs, initializer=_init_worker, initargs=(threads,)) as pool:
        tasks = [(suite, cell) for cell in cells]
        for n, (cell, row, error) in enumerate(pool.imap_unordered(_run_cell_in_worker, tasks), 1):
            if row is None:
                failed.append(cell.key)
                log.warning("bench %d/%d: %s failed: %s", n, len(cells), cell.key, error)
                continue
            _log_row(cell, row, done=f"{n}/{len(cells)} done: ")
            write_reports(suite, finished_rows(suite, root), root)
    if failed:
        raise SemivitError(f"{len(failed)} cell(s) failed ({', '.join(failed)}): the reasons are above; "
                           "fix them and run the same command again (finished cells are kept)")


def _cell_dir(root: Path, cell: Cell) -> Path:
    return root / cell.data / cell.labels.replace("/", "_") / cell.method / f"seed{cell.seed}"


def finished_rows(suite: Suite, root: Path) -> list[dict[str, Any]]:
    """Every finished cell of the suite (whichever command ran it: reports cover the whole suite)."""
    files = (_cell_dir(root, c) / "cell.json" for c in suite.cells())
    return [_read_cell(f) for f in files if f.is_file()]


def _read_cell(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SemivitError(f"'{path}' is not a finished cell's results (empty or cut short, e.g. by a crash while "
                           f"it was written): delete it and run the same command to re-run that cell") from None


# ------------------------------------------------------------------------------------------------ reports
