"""Run a method over the class-incremental task sequence: one Trainer run per task, evaluation on every seen
class after each, the replay buffer updated between tasks; resumable between tasks and inside one.

Layout of a run folder (``OUT/NAME``)::

    continual.json      settings, tasks, label shares, one row per finished task with the buffer after it (the
                        resume state)
    results.json        accuracy matrix, A_i, final / average incremental accuracy, forgetting
    results.md          the same as a readable table
    task1/ … taskT/     each task's Trainer run (config.yaml, split.json, metrics.csv, checkpoints/)

Between tasks the state is written atomically after the task's evaluation, so a stopped run restarts at the
first unfinished task; inside a task the Trainer's own ``checkpoints/last.pt`` resumes it at its step.

Methods (``--method``):

- ``nncsl``: CSL + NND + replay (:mod:`semivit.methods.nncsl`, the ``nncsl`` recipe);
- ``csl``: the same without NND (the paper's ablation, ``w_dist 0``);
- ``paws``: PAWS per task with the buffer and no distillation, supports of every seen class (the authors'
  ``*_paws.yaml``: ``w_dist 0``, ``mask false``);
- ``finetune``: sequential supervised fine-tuning on each task's labels (the forgetting lower bound);
- ``replay``: the same with the buffer's exemplars among the labels (experience replay);
- ``joint``: the CSL objective trained once on every task's data, for T × the steps (the upper bound).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from semivit.config import Config, load_yaml
from semivit.continual import METHODS, RESULTS, STATE, TABLE
from semivit.continual.buffer import ReplayBuffer
from semivit.continual.metrics import format_table, seen_class_accuracy, summary
from semivit.continual.tasks import in_classes, label_shares, make_tasks, task_split
from semivit.core.io import atomic_write_json
from semivit.data import PreparedData, prepare_data
from semivit.errors import SemivitError
from semivit.pipeline import find_recipe, stage_configs

log = logging.getLogger("semivit")

#: settings a resumed run must share with the run it continues
_SAME = ("method", "tasks", "buffer", "source", "labels", "seed", "steps", "model", "test_per_class")


def method_config(method: str, overrides: dict[str, Any]) -> Config:
    """The per-task config of ``method``: its recipe's stage, the method's own settings, then ``overrides``
    (command-line ``--set`` and shortcuts, which win)."""
    if method not in METHODS:
        raise SemivitError(f"unknown continual method '{method}': use one of {', '.join(METHODS)}")
    entry = METHODS[method]
    recipe = load_yaml(find_recipe(entry["recipe"]))
    stage = dict(recipe["stages"][0])
    stage["params"] = {**(stage.get("params") or {}), **entry["params"]}
    _, configs = stage_configs({**recipe, "stages": [stage]}, overrides)
    return configs[0]


def _test_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """All test images, or ``per_class`` of each class (seeded) to keep evaluation cheap on a CPU."""
    if per_class <= 0:
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        members = torch.nonzero(labels == c).flatten()
        picks.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.sort(torch.cat(picks)).values


def _check_same(saved: dict[str, Any], settings: dict[str, Any], root: Path) -> None:
    for key in _SAME:
        if saved.get(key) != settings.get(key):
            raise SemivitError(f"'{root}' holds a continual run with {key}={saved.get(key)!r}, this command says "
                               f"{settings.get(key)!r}: repeat the first command's settings with --resume, or "
                               f"choose another --name")


def run_continual(method: str, num_tasks: int, buffer_size: int, overrides: dict[str, Any], *,
                  resume: bool = False, test_per_class: int = 0) -> dict[str, Any]:
    """Run ``method`` over ``num_tasks`` class-incremental tasks with a buffer of ``buffer_size`` labeled
    exemplars; returns the results (also written to the run folder, see the module docstring)."""
    from semivit.core.device import resolve_device
    from semivit.engine.evaluate import predict_logits
    from semivit.engine.trainer import Trainer

    if buffer_size < 0:
        raise SemivitError(f"--buffer must be ≥ 0, got {buffer_size}")
    entry = METHODS.get(method, {})
    cfg = method_config(method, overrides)
    if cfg.train.steps is None or cfg.train.epochs is not None:
        raise SemivitError("continual runs count optimizer steps per task: give --steps N (not --epochs)")
    source = Path(cfg.data.source).stem if ("/" in cfg.data.source or "." in cfg.data.source) else cfg.data.source
    name = cfg.train.name or f"{method}-{source}-{cfg.data.labels}-{num_tasks}t-b{buffer_size}-s{cfg.train.seed}"
    root = Path(cfg.train.out) / name.replace("%", "pct")
    settings = {"method": method, "tasks": num_tasks, "buffer": buffer_size if entry["buffer"] else 0,
                "source": cfg.data.source, "labels": cfg.data.labels, "seed": cfg.train.seed,
                "steps": cfg.train.steps, "model": cfg.model.name, "test_per_class": test_per_class}

    data = prepare_data(cfg.data, cfg.train.seed)
    if data.test is None or len(data.test) == 0:
        raise SemivitError("continual runs evaluate on a test part after every task, and this data has none: "
                           "give one with --test FOLDER (or data.test)")
    if data.train.multilabel:
        raise SemivitError("continual runs split the classes into tasks, one class per image, and this data has "
                           "several labels per image: use semivit train or run")
    train, test = data.train, data.test
    labels, labeled = train.labels, data.split.labeled
    tasks = make_tasks(train.num_classes, num_tasks)
    run_tasks = [sorted(c for t in tasks for c in t)] if entry.get("joint") else tasks
    test_idx = _test_subset(test.labels, test_per_class, cfg.train.seed)
    test_labels = test.labels[test_idx]
    device = resolve_device(cfg.train.device)

    buffer = ReplayBuffer(settings["buffer"])
    state_path = root / STATE
    if state_path.is_file():
        if not resume:
            raise SemivitError(f"'{root}' already holds a continual run: add --resume to continue it, or choose "
                               f"another --name")
        state = json.loads(state_path.read_text())
        _check_same(state["settings"], settings, root)
        if state["rows"]:  # the buffer as the last finished task left it
            buffer.load_state_dict(state["rows"][-1]["buffer"])
        log.info("continual: resuming %s after %d of %d tasks", root, len(state["rows"]), len(run_tasks))
    else:
        state = {"settings": settings, "tasks": tasks, "label_shares": label_shares(labels, labeled, tasks),
                 "rows": []}
        atomic_write_json(state_path, state)

    family = cfg.train.method == "nncsl"  # the soft nearest-neighbour methods (nncsl, csl, paws, joint)
    for t, classes in enumerate(run_tasks):
        if t < len(state["rows"]):
            continue
        old = [c for group in run_tasks[:t] for c in group]
        split = task_split(labels, labeled, classes, buffer.indices())
        task_cfg = copy.deepcopy(cfg)
        task_cfg.train.resume = True  # a task folder with a last.pt is this run's own interrupted task
        if entry.get("joint"):
            task_cfg.train.steps = cfg.train.steps * num_tasks  # the same total budget as the sequence
        previous = root / f"task{t}" / "checkpoints" / "model.safetensors" if t else None
        if family:
            task_cfg.method.update(classes=classes, old_classes=old,
                                   distill_classes=buffer.classes() or classes)
            if previous is not None:
                task_cfg.method.update(init=str(previous), teacher=str(previous))
        elif previous is not None:
            task_cfg.model.pretrained = str(previous)
        log.info("continual: task %d/%d, classes %s, %d labeled (%d from the buffer), %d unlabeled",
                 t + 1, len(run_tasks), classes, len(split.labeled), len(buffer), len(split.unlabeled))
        prepared = PreparedData(replace(data.bundle, test=None), split, data.flip)  # the loop tests, not the Trainer
        result = Trainer(task_cfg, prepared, root / f"task{t + 1}").fit()
        logits = predict_logits(result.model, test, test_idx, device=device)
        upto = len(tasks) - 1 if entry.get("joint") else t
        row, overall = seen_class_accuracy(logits, test_labels, tasks, upto)
        if entry["buffer"]:
            mine = labeled[in_classes(labels[labeled], classes)]
            buffer.update(mine, labels[mine], classes, cfg.train.seed * 1_000 + t)
        state["rows"].append({"task": t + 1, "classes": classes, "accuracy": row, "seen_accuracy": overall,
                              "labeled_pool": len(split.labeled), "buffer_after": len(buffer),
                              "train_seconds": result.metrics.get("train_seconds"),
                              "buffer": buffer.state_dict()})
        atomic_write_json(state_path, state)
        results = _results(state, tasks)
        atomic_write_json(root / RESULTS, results)
        (root / TABLE).write_text(format_table(results["matrix"], results["seen_accuracy"], tasks,
                                               _title(settings)))
        log.info("continual: after task %d: seen-class accuracy %.4f", t + 1, overall)
    results = _results(state, tasks)
    results["run_dir"] = str(root)
    return results


def _title(s: dict[str, Any]) -> str:
    return (f"{s['method']} · {s['source']} · labels {s['labels']} · {s['tasks']} tasks · buffer {s['buffer']} · "
            f"{s['steps']} steps/task · seed {s['seed']}")


def _results(state: dict[str, Any], tasks: list[list[int]]) -> dict[str, Any]:
    matrix = [r["accuracy"] for r in state["rows"]]
    overall = [r["seen_accuracy"] for r in state["rows"]]
    return {**state["settings"], "task_classes": tasks, "label_shares": state["label_shares"],
            "matrix": matrix, "seen_accuracy": overall, **summary(matrix, overall),
            "train_seconds": sum(r.get("train_seconds") or 0.0 for r in state["rows"])}
