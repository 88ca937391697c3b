"""Which images to label: random vs ``semivit suggest`` (TypiClust cold start), then one further round
(uncertainty × diversity from the trained run vs random), each trained supervised-only and with the Semi-ViT
recipe; plus the pseudo-label review deciles (issue 18).

    OMP_NUM_THREADS=1 python benchmarks/labeling/label_choice.py --data digits --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/labeling/label_choice.py --data fashion-mnist --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/labeling/label_choice.py --data cifar10 --seeds 0 1 2
    python benchmarks/labeling/label_choice.py --table    # the markdown tables of every finished cell
    OMP_NUM_THREADS=1 python benchmarks/labeling/label_choice.py --data cifar10 --linear --seeds 0 1 2

``--linear``: TypiClust's second framework (Hacohen et al. 2022, Sec. 4: "linear evaluation on a
self-supervised embedding"): the same selections (random vs TypiClust, same seeds and budgets), each scored
by a logistic regression on the frozen embedding that chose them (raw pixels, and the MAE stage below),
against the test part; plus the same classifier on every training label as the embedding's ceiling. No
network is trained per cell, so three seeds on CIFAR-10 take minutes instead of CPU-hours. Results go to
``runs/label-choice/DATA/linear.jsonl``.

Protocol (the same for both selections): the pool is the data set's whole training part with its labels
hidden (``--labels 0``); a selection of N images (1, 2 or 4 per class in total: 10, 20, 40) gets its true
labels and is the only labeled data: no validation labels (``data.val 0``), fixed step counts, test top-1
of the last weights. The Semi-ViT rows start every cell from one MAE stage per data set (seed 0; it sees no
labels), then the recipe's supervised and EMA-Teacher stages; supervised-only trains the recipe's
supervised stage from scratch for as many steps as those two stages together. The cold-start encoder is
raw pixels for digits and Fashion-MNIST, and that MAE stage for CIFAR-10 (say so in the table).
Results go to ``runs/label-choice/DATA/results.jsonl`` (one line per cell; finished cells are skipped). Two
processes (one per core) may work on one data set at once, e.g. ``--seeds 1 2`` and ``--seeds 2 1``: each
cell goes to the first that claims it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semivit.config import Config, load_yaml
from semivit.data import prepare_data
from semivit.engine.trainer import train
from semivit.labeling.pool import pool_from_data, pool_from_run
from semivit.labeling.pseudo import pseudo_labels, review_summary
from semivit.labeling.suggest import hidden_coverage, suggest
from semivit.pipeline import find_recipe, run_stages, stage_configs

OUT = Path("runs/label-choice")
SOURCES = {"digits": "digits", "fashion-mnist": "fashion-mnist", "cifar10": "../shared/data/cifar10_jpeg.zip"}
# (mae, supervised, ema_teacher) steps: digits at the demo recipe's MAE length, shorter later stages (a shared CPU);
# the 28/32-px sets at what a shared 2-core CPU affords (their absolute accuracies are low: compare columns)
STEPS = {"digits": (300, 300, 300), "fashion-mnist": (300, 200, 400), "cifar10": (300, 200, 400)}
ENCODER = {"digits": "pixels", "fashion-mnist": "pixels", "cifar10": "mae"}
PER_CLASS = (1, 2, 4)
ROUND_PER_CLASS = 2  # the further round starts from these cells and adds as many labels again

log = logging.getLogger("semivit")


SCALE = 1.0  # --scale: a smoke test of the script at a fraction of the steps


def configs(data: str, seed: int) -> list[Config]:
    mae, sup, ema = (max(2, int(s * SCALE)) for s in STEPS[data])
    _, cfgs = stage_configs(load_yaml(find_recipe("semivit")), {
        "data.source": SOURCES[data], "data.val": "0", "train.seed": seed, "train.progress": False,
        "train.tensorboard": False, "train.eval_every": 0})
    for cfg, steps in zip(cfgs, (mae, sup, ema)):
        cfg.train.steps = steps
    return cfgs


def mae_stage(data: str) -> Path:
    """The data set's one MAE stage (no labels): every Semi-ViT cell starts from it."""
    cfg = configs(data, 0)[0]
    run_dir = OUT / data / "mae"
    weights = run_dir / "checkpoints" / "model.safetensors"
    if not (run_dir / "results.json").is_file():
        cfg.data.labels = "all"
        train(cfg, run_dir=run_dir)
    return weights


def write_list(path: Path, ids: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(ids) + "\n")
    return path


def train_cell(data: str, seed: int, split_file: Path, cell: Path, mae: Path, bundle: Any) -> dict[str, float]:
    """Supervised-only and Semi-ViT (stages 2-3 from the shared MAE stage) on the labels of ``split_file``."""
    out: dict[str, float] = {}
    cfgs = configs(data, seed)
    for cfg in cfgs:
        cfg.data.split = str(split_file)
    prepared = prepare_data(cfgs[1].data, seed, bundle)
    baseline = configs(data, seed)[1]
    baseline.data.split, baseline.model.pretrained = str(split_file), "none"
    baseline.train.steps = sum(c.train.steps or 0 for c in cfgs[1:])
    out["supervised"] = train(baseline, prepared, cell / "supervised").metrics["test_top1"]
    cfgs[1].model.pretrained = str(mae)
    result = run_stages(cfgs[1:], cell / "semivit", data=prepared)
    out["semivit"] = result.metrics["test_top1"]
    return out


def done_cells(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["cell"]: r for r in rows}


def claim(cell: Path) -> bool:
    """Whether this process may train ``cell``: several processes (one per core) share one results file,
    and each cell goes to the first that claims it. A claim whose process has died is taken over."""
    cell.mkdir(parents=True, exist_ok=True)
    mark = cell / ".claim"
    for _ in range(2):
        try:
            fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(mark.read_text() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                mark.unlink(missing_ok=True)  # its process is gone
                continue
            except PermissionError:
                pass
            return pid == os.getpid()
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def to_train(results: Path, cell: Path, name: str) -> bool:
    """Whether this process trains cell ``name``: not finished yet, and claimed by no other process."""
    return name not in done_cells(results) and claim(cell)


def record(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def run(data: str, seeds: list[int]) -> None:
    root = OUT / data
    root.mkdir(parents=True, exist_ok=True)
    results = root / "results.jsonl"
    mae = mae_stage(data)
    encoder = str(mae.parent.parent) if ENCODER[data] == "mae" else "pixels"
    base_cfg = configs(data, 0)[1]
    pool = pool_from_data(base_cfg, labels="0")
    bundle = prepare_data(base_cfg.data, 0).bundle
    classes = pool.train.num_classes
    ids = pool.train.ids
    for seed in seeds:
        for per_class in PER_CLASS:
            for strategy in ("random", "typiclust"):
                name = f"{strategy}/{per_class}/seed{seed}"
                if not to_train(results, root / name, name):
                    continue
                chosen = suggest(pool, per_class * classes, strategy=strategy, encoder=encoder, seed=seed)
                covered = hidden_coverage(pool, chosen)
                split_file = write_list(root / name / "labeled.txt", [ids[i] for i in chosen.indices])
                accs = train_cell(data, seed, split_file, root / name, mae, bundle)
                record(results, {"cell": name, "round": 0, "strategy": strategy, "per_class": per_class,
                                 "seed": seed, "labels": len(chosen), "classes_covered": covered[0], **accs})
                log.info("label-choice %s %s: %s", data, name, accs)
        if f"typiclust/{ROUND_PER_CLASS}/seed{seed}" in done_cells(results):  # else another process trains it
            further_round(data, seed, root, results, mae, classes, bundle)


def further_round(data: str, seed: int, root: Path, results: Path, mae: Path, classes: int, bundle: Any) -> None:
    """From the Semi-ViT run trained on the TypiClust cold start at ``ROUND_PER_CLASS``: +N labels chosen by
    the run (uncertainty × diversity) vs +N random ones, each retrained; and the run's pseudo-label deciles."""
    start = root / f"typiclust/{ROUND_PER_CLASS}/seed{seed}"
    run_dir = start / "semivit" / "stage2-ema_teacher"
    pool = pool_from_run(run_dir)
    ids = pool.train.ids
    review = review_summary(pool, pseudo_labels(pool))
    name = f"review/seed{seed}"
    if name not in done_cells(results) and review is not None:
        record(results, {"cell": name, "seed": seed, **review})
    for strategy in ("random", "uncertainty"):
        name = f"round1-{strategy}/{ROUND_PER_CLASS}+{ROUND_PER_CLASS}/seed{seed}"
        if not to_train(results, root / name, name):
            continue
        chosen = suggest(pool, ROUND_PER_CLASS * classes, strategy=strategy, seed=seed)
        labeled = [ids[i] for i in pool.labeled] + [ids[i] for i in chosen.indices]
        split_file = write_list(root / name / "labeled.txt", labeled)
        accs = train_cell(data, seed, split_file, root / name, mae, bundle)
        record(results, {"cell": name, "round": 1, "strategy": strategy, "per_class": 2 * ROUND_PER_CLASS,
                         "seed": seed, "labels": len(labeled),
                         "classes_covered": hidden_coverage(pool, chosen)[0], **accs})
        log.info("label-choice %s %s: %s", data, name, accs)


LINEAR_ENCODERS = ["pixels", "mae"]  # --encoders; "pretrained" = the --backbone's features (the feature cache)
BACKBONE = {"name": "local-dir:runs/lite0-hub", "resolution": "96"}


def frozen_features(data: str, encoder: str, bundle: Any) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised features of the training and test parts: raw pixels as ``suggest --encoder pixels``
    embeds them (the PCA fitted on the training part), or the MAE stage's embedding."""
    from semivit.engine.checkpoint import load_model
    from semivit.engine.evaluate import extract_features
    from semivit.labeling.pool import pixel_embedding
    from semivit.labeling.select import normalize

    if encoder == "pretrained":  # what `suggest --encoder BACKBONE` embeds with: the cached pooled features
        from semivit.config import apply_overrides
        from semivit.core.distributed import DistInfo
        from semivit.engine.inputs import backbone_features

        cfg = apply_overrides(configs(data, 0)[1], {"model.name": BACKBONE["name"], "model.pretrained": "hub",
                                                    "model.resolution": BACKBONE["resolution"]})
        _, feats = backbone_features(cfg, prepare_data(cfg.data, 0), DistInfo(), torch.device("cpu"), views=0)
        return normalize(feats.train["none"].float().numpy()), normalize(feats.test.float().numpy())
    if encoder == "mae":
        model, _ = load_model(mae_stage(data).parent.parent)
        return tuple(normalize(extract_features(model.eval(), part).numpy())  # type: ignore[return-value]
                     for part in (bundle.train, bundle.test))
    train_f, test_f = pixel_embedding(bundle.train, bundle.test)
    return train_f, test_f


#: the linear evaluator's one setting, chosen on a digits validation split (benchmarks/labeling/linear_setting.py:
#: 360 training images held out of the pool; Fashion-MNIST and CIFAR-10 untouched): logistic regression on the
#: L2-normalised embedding, nearly unregularised (C 1,000; standardising the features was worse on both encoders)
LINEAR_C = 1000.0


def linear_top1(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray,
                c: float = LINEAR_C, standardise: bool = False) -> float:
    """Top-1 on ``test_f`` of a logistic regression fitted on the labeled features ``train_f``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if standardise:  # with the labeled images' statistics only
        scaler = StandardScaler().fit(train_f)
        train_f, test_f = scaler.transform(train_f), scaler.transform(test_f)
    clf = LogisticRegression(C=c, max_iter=5000).fit(train_f, train_y)
    return float(clf.score(test_f, test_y))


def run_linear(data: str, seeds: list[int]) -> None:
    """The ``--linear`` framework: every selection of ``run`` scored by a linear classifier on the frozen
    embedding that chose it."""
    root = OUT / data
    root.mkdir(parents=True, exist_ok=True)
    results = root / "linear.jsonl"
    base_cfg = configs(data, 0)[1]
    pool = pool_from_data(base_cfg, labels="0")
    bundle = prepare_data(base_cfg.data, 0).bundle
    classes = pool.train.num_classes
    train_y, test_y = pool.train.labels.numpy(), bundle.test.labels.numpy()
    done = done_cells(results)
    for encoder in LINEAR_ENCODERS:
        train_f, test_f = frozen_features(data, encoder, bundle)
        name = f"{encoder}/all"
        if name not in done:
            record(results, {"cell": name, "encoder": encoder, "labels": len(train_y),
                             "linear": linear_top1(train_f, train_y, test_f, test_y)})
        for seed in seeds:
            for per_class in PER_CLASS:
                for strategy in ("random", "typiclust"):
                    name = f"{encoder}/{strategy}/{per_class}/seed{seed}"
                    if name in done:
                        continue
                    chosen = suggest(pool, per_class * classes, strategy=strategy, embedding=train_f, seed=seed)
                    idx = chosen.indices
                    record(results, {"cell": name, "encoder": encoder, "strategy": strategy, "seed": seed,
                                     "per_class": per_class, "labels": len(idx),
                                     "classes_covered": hidden_coverage(pool, chosen)[0],
                                     "linear": linear_top1(train_f[idx], train_y[idx], test_f, test_y)})
                    log.info("label-choice linear %s %s", data, name)


def linear_table() -> str:
    lines = []
    for data in SOURCES:
        rows = list(done_cells(OUT / data / "linear.jsonl").values())
        if not rows:
            continue
        seeds = sorted({r["seed"] for r in rows if "seed" in r})
        lines += [f"### {data}, linear evaluation (seeds {', '.join(map(str, seeds))})", "",
                  "| labels | selection | " + " | ".join(f"{e}: classes covered | {e}: linear top-1"
                                                          for e in LINEAR_ENCODERS) + " |",
                  "|---|---|" + "---|---|" * len(LINEAR_ENCODERS)]
        for per_class in PER_CLASS:
            for strategy in ("random", "typiclust"):
                cells = []
                for e in LINEAR_ENCODERS:
                    rs = [r for r in rows if r.get("encoder") == e and r.get("strategy") == strategy
                          and r.get("per_class") == per_class]
                    cov = f"{statistics.fmean(r['classes_covered'] for r in rs):.1f}" if rs else "—"
                    cells += [cov, _ms([r["linear"] for r in rs])]
                lines.append(f"| {per_class * 10} | {strategy} | " + " | ".join(cells) + " |")
        ceiling = [next((f"{r['linear']:.3f}" for r in rows if r["cell"] == f"{e}/all"), "—") for e in LINEAR_ENCODERS]
        lines += ["| all | every training label | — | " + " | — | ".join(ceiling) + " |", ""]
    return "\n".join(lines)


def _ms(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:  # one seed: no spread to show
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def table() -> str:
    lines = []
    for data in SOURCES:
        rows = list(done_cells(OUT / data / "results.jsonl").values())
        if not rows:
            continue
        seeds = sorted({r["seed"] for r in rows})
        lines += [f"### {data} (seeds {', '.join(map(str, seeds))}; cold-start encoder: {ENCODER[data]}; "
                  f"steps mae/supervised/ema_teacher {'/'.join(map(str, STEPS[data]))})", "",
                  "| labels | selection | classes covered | supervised-only | Semi-ViT |", "|---|---|---|---|---|"]
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in rows:
            if "strategy" in r:
                groups.setdefault((r["round"], r["per_class"], r["strategy"]), []).append(r)
        for (rnd, per_class, strategy), rs in sorted(groups.items()):
            labels = f"{per_class * 10}" if rnd == 0 else f"{per_class * 5} + {per_class * 5}"
            what = strategy if rnd == 0 else f"round 2: {strategy}"
            lines.append(f"| {labels} | {what} | {statistics.fmean(r['classes_covered'] for r in rs):.1f} | "
                         f"{_ms([r['supervised'] for r in rs])} | {_ms([r['semivit'] for r in rs])} |")
        reviews = [r for r in rows if r["cell"].startswith("review/")]
        if reviews:
            lines += ["", "Pseudo-label review (the TypiClust 20-label Semi-ViT run's teacher on the unlabeled "
                      "pool, against the hidden labels): accuracy of all / least confident tenth / most confident "
                      f"tenth: {_ms([r['accuracy'] for r in reviews])} / "
                      f"{_ms([r['least_confident_tenth'] for r in reviews])} / "
                      f"{_ms([r['most_confident_tenth'] for r in reviews])}"]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=list(SOURCES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--linear", action="store_true", help="score the selections with a linear classifier "
                        "on the frozen embedding (TypiClust's linear-evaluation framework)")
    parser.add_argument("--scale", type=float, default=1.0, help="steps × this (a smoke test of the script)")
    parser.add_argument("--out", default="runs/label-choice")
    parser.add_argument("--encoders", nargs="+", default=LINEAR_ENCODERS, choices=["pixels", "mae", "pretrained"],
                        help="--linear: the embeddings that choose and are scored")
    parser.add_argument("--backbone", default=BACKBONE["name"], help="the 'pretrained' encoder (suggest --encoder)")
    parser.add_argument("--resolution", default=BACKBONE["resolution"], help="its model.resolution")
    args = parser.parse_args()
    global SCALE, OUT
    SCALE, OUT = args.scale, Path(args.out)
    LINEAR_ENCODERS[:] = args.encoders
    BACKBONE.update(name=args.backbone, resolution=args.resolution)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    np.seterr(all="ignore")
    if args.table:
        print(linear_table() if args.linear else table())
        return 0
    if args.linear:
        run_linear(args.data, args.seeds)
        print(linear_table())
        return 0
    run(args.data, args.seeds)
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
