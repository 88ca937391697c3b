"""Multi-stage recipes: each stage is one method run by the Trainer, started from the previous stage's
exported weights (an EMA teacher's when the stage has one) — or, for a teacher-student stage (``distill``,
``noisy_student``, ``feature_distill``), with the previous stage as its teacher and a student trained from
scratch (or from the teacher's weights: the stage sets ``model: {pretrained: teacher}``).

A recipe is YAML: shared ``data / model / optim / train`` sections and a list of ``stages``, each with a
``method``, its ``params`` and any section overrides. Stages are written to ``OUT/NAME/stageK-METHOD/``;
with ``--resume`` finished stages are skipped and an interrupted one continues at its step.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semivit.config import Config, apply_overrides, check_keys, load_yaml
from semivit.core.runlock import RunLock
from semivit.data import prepare_data
from semivit.engine.trainer import Trainer, TrainResult
from semivit.errors import SemivitError
from semivit.methods import method_class, method_params

log = logging.getLogger("semivit")
RECIPES = Path(__file__).parent / "recipes"
_STAGE_KEYS = ("method", "params", "model", "optim", "train")


def find_recipe(name: str | Path) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    shipped = RECIPES / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    hint = " (auto, which chooses among the pretrained-backbone recipes for a --budget, runs from semivit run)" \
        if str(name) == "auto" else ""
    raise SemivitError(f"recipe '{name}' not found: pass a YAML file or one of {', '.join(names)}{hint}")


def stage_configs(recipe: dict[str, Any], overrides: dict[str, Any],
                  base: Config | None = None) -> tuple[str, list[Config]]:
    """The resolved config of every stage: ``base`` (default: Config's defaults; a video run's defaults for video
    recipes) < recipe sections < stage sections < command-line overrides."""
    stages = recipe.get("stages")
    if not isinstance(stages, list) or not stages:
        raise SemivitError("a recipe needs a non-empty 'stages' list (each with a 'method')")
    shared = {k: v for k, v in recipe.items() if k not in ("stages", "name", "description")}
    base = apply_overrides(base or Config(), shared)
    configs = []
    for k, stage in enumerate(stages, 1):
        if not isinstance(stage, dict) or "method" not in stage:
            raise SemivitError(f"stage {k} of the recipe needs a 'method'")
        check_keys(stage, _STAGE_KEYS, f"stage {k} of the recipe")
        values: dict[str, Any] = {"train.method": stage["method"]}
        for section in ("model", "optim", "train"):
            values.update({f"{section}.{key}": v for key, v in (stage.get(section) or {}).items()})
        cfg = apply_overrides(base, values)
        cfg.method = dict(stage.get("params") or {})
        configs.append(cfg)
    targeted = stage_overrides(overrides, [c.train.method for c in configs])
    configs = [apply_overrides(c, o) for c, o in zip(configs, targeted)]
    for cfg in configs:  # every stage's method settings checked now, before any data loads
        method_params(cfg.train.method, cfg.method)
    return str(recipe.get("name", "recipe")), configs


def stage_overrides(overrides: dict[str, Any], methods: list[str]) -> list[dict[str, Any]]:
    """Each stage's share of the command-line overrides, decided before any data loads:

    - ``stageK.SECTION.KEY`` (``stage3.optim.lr=…``): stage K only;
    - ``METHOD.KEY`` (``ema_teacher.threshold=0.8``): the stages of that method;
    - ``method.KEY``: every stage whose method has that setting (``semivit run semivit --set
      method.threshold=0.8`` reaches the EMA-Teacher stage and leaves MAE and supervised alone), an error only
      when no stage has it;
    - anything else (``optim.lr``, ``train.seed``): every stage."""
    import dataclasses
    import re

    from semivit.methods.base import METHODS

    def has(method: str, key: str) -> bool:
        cls = METHODS.get(method)
        return cls is not None and key.split(".", 1)[0] in {f.name for f in dataclasses.fields(cls.Params)}

    out: list[dict[str, Any]] = [{} for _ in methods]
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        stage = re.fullmatch(r"stage(\d+)", head)
        if stage:
            k = int(stage.group(1))
            if not 1 <= k <= len(methods) or "." not in rest:
                raise SemivitError(f"'{key}': the recipe has stages 1..{len(methods)}; write stageK.SECTION.KEY "
                                   f"(e.g. stage{len(methods)}.optim.lr=1e-3)")
            out[k - 1][rest] = value
        elif head in METHODS and rest:
            targets = [k for k, m in enumerate(methods) if m == head]
            if not targets:
                raise SemivitError(f"'{key}': no stage of this recipe runs {head} (its stages: {', '.join(methods)})")
            for k in targets:
                out[k][f"method.{rest}"] = value
        elif head == "method" and rest and len(methods) > 1:
            targets = [k for k, m in enumerate(methods) if has(m, rest)]
            if not targets:
                raise SemivitError(f"unknown setting '{key}': no stage's method has it (stages: "
                                   f"{', '.join(methods)})")
            for k in targets:
                out[k][key] = value
        else:
            for o in out:
                o[key] = value
    return out


def run_recipe(recipe_name: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None,
               run_name: str | None = None, budget: float | None = None) -> TrainResult:
    """Run every stage of a recipe (a shipped name, a YAML file or its parsed dict); returns the last
    stage's result. ``budget`` (seconds) plans every stage's steps to fit it (:mod:`semivit.planning`)."""
    start = time.perf_counter()
    recipe = recipe_name if isinstance(recipe_name, dict) else load_yaml(find_recipe(recipe_name))
    name, configs = stage_configs(recipe, overrides or {})
    first = configs[0]
    root = Path(first.train.out) / (run_name or first.train.name or name)
    if first.train.resume:
        require_resumable(root, [root / f"stage{k}-{c.train.method}" for k, c in enumerate(configs, 1)])
    return run_stages(configs, root, budget=budget, start=start)


def require_resumable(root: Path, run_dirs: list[Path]) -> None:
    """``--resume`` needs something to resume: a checkpoint or a finished result in one of ``run_dirs`` (a
    run's folder, or a recipe's stage folders). Without one it would silently start a new run."""
    if not any((d / "checkpoints" / "last.pt").is_file() or (d / "results.json").is_file() for d in run_dirs):
        raise SemivitError(f"--resume: there is no run to continue in '{root}' (no checkpoint there): check --out "
                           f"and --name, or drop --resume to start a new run")


def stage_table(root: Path) -> str:
    """A plain-text table of the finished stages under ``root`` (a recipe's folder): the summary
    ``semivit run`` and ``semivit demo`` print at the end."""
    import json

    rows = []
    for stage_dir in sorted(root.glob("stage*")):
        results = stage_dir / "results.json"
        if not results.is_file():
            continue
        m = json.loads(results.read_text())
        # a pre-training stage is judged by the k-NN top-1 of its features (its classifier is untrained)
        knn = m.get("test_knn_top1")
        test = knn if knn is not None else m.get("test_top1")
        note = "k-NN" if knn is not None else ""
        if m.get("test_map") is not None:  # multi-label data: judged by mAP
            test, note = m["test_map"], f"mAP; micro-F1 {m.get('test_micro_f1', 0):.4f}"
        if m.get("test_balanced_accuracy") is not None:  # skewed test classes: what top-1 alone hides
            note = f"balanced acc {m['test_balanced_accuracy']:.4f}, macro-F1 {m.get('test_macro_f1', 0):.4f}"
        rows.append([stage_dir.name, str(m.get("steps", "")), f"{m.get('train_seconds', 0):.0f}",
                     f"{m.get('images_per_sec', 0):.0f}", _fmt(m.get("best_val_top1", m.get("best_val_map"))),
                     _fmt(test), note])
    header = ["stage", "steps", "seconds", "img/s", "best val top-1", "test top-1", ""]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in [header, *rows])


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def run_stages(configs: list[Config], root: Path, data: Any = None, budget: float | None = None,
               start: float | None = None, trainer: Callable[[Config, Any, Path], Trainer] = Trainer,
               load: Callable[[Path], Any] | None = None) -> TrainResult:
    """Run resolved stage configs in ``root/stageK-METHOD`` (``data``: already prepared, to share it;
    ``budget``: seconds for all stages together, counted from ``start``). ``trainer(cfg, data, stage_dir)``
    builds each stage's Trainer (video runs build one on clips) and ``load(file)`` reads a finished stage's
    exported model (default: an image classifier)."""
    start = time.perf_counter() if start is None else start
    if int(os.environ.get("RANK", "0")) == 0:  # one run per folder: the recipe's, besides each stage's
        with RunLock(root):
            return _run_stages(configs, root, data, budget, start, trainer, load)
    return _run_stages(configs, root, data, budget, start, trainer, load)


def _run_stages(configs: list[Config], root: Path, data: Any, budget: float | None, start: float,
                trainer: Callable[[Config, Any, Path], Trainer], load: Callable[[Path], Any] | None) -> TrainResult:
    data = data if data is not None else prepare_data(configs[0].data, configs[0].train.seed)
    if budget:
        from semivit.planning import plan_run

        configs = plan_run(configs, data, budget, root, spent=time.perf_counter() - start)
    previous: Path | None = None
    result: TrainResult | None = None
    for k, cfg in enumerate(configs, 1):
        stage_dir = root / f"stage{k}-{cfg.train.method}"
        if previous is not None and method_class(cfg.train.method).previous_stage_is_teacher:
            # the previous stage is the teacher; the student starts from scratch (unless the stage sets
            # model.pretrained itself)
            if "teacher" not in cfg.method:
                cfg = apply_overrides(cfg, {"method.teacher": str(previous)})
        elif previous is not None:
            cfg = apply_overrides(cfg, {"model.pretrained": str(previous)})
        exported = stage_dir / "checkpoints" / "model.safetensors"
        if cfg.train.resume and (stage_dir / "results.json").is_file() and exported.is_file():
            log.info("stage %d (%s) already finished: %s", k, cfg.train.method, stage_dir)
            previous = exported
            continue
        log.info("stage %d/%d: %s → %s", k, len(configs), cfg.train.method, stage_dir)
        result = trainer(cfg, data, stage_dir).fit()
        previous = exported
    if result is None:  # every stage had finished before: report the last one
        import json

        from semivit.engine.checkpoint import load_model

        model = load(previous) if load is not None else load_model(previous)[0]  # type: ignore[arg-type]
        metrics = json.loads((stage_dir / "results.json").read_text())
        result = TrainResult(stage_dir, metrics, model)  # type: ignore[arg-type]
    return result
