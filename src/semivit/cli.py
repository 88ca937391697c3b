"""The command line: ``semivit train | run | bench | compare | demo | evaluate | predict | export | probe |
suggest | pseudolabels | report``, and the sub-commands capabilities bring (``video``, ``continual``, ``labelcheck``).

User errors (bad paths, data, settings) print one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from semivit.arguments import add_common_arguments, build_config, overrides_from_args
from semivit.cli_evaluate import cmd_evaluate, cmd_predict
from semivit.config import parse_set_args
from semivit.errors import SemivitError

log = logging.getLogger("semivit")


def cmd_train(args: argparse.Namespace) -> int:
    from semivit.engine.trainer import train

    cfg = build_config(args)
    if cfg.train.resume:
        from semivit.engine.trainer import run_name
        from semivit.pipeline import require_resumable

        folder = Path(cfg.train.out) / run_name(cfg)
        require_resumable(folder, [folder])
    if args.budget:  # one stage, planned like a recipe's (semivit/planning.py)
        import time

        from semivit.planning import parse_budget, plan_one_stage

        cfg, data = plan_one_stage(cfg, None, parse_budget(args.budget), time.perf_counter())
        result = train(cfg, data)
    else:
        result = train(cfg)
    _print_metrics(result.metrics, result.run_dir)
    _write_report(result.run_dir)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from semivit.pipeline import run_recipe, stage_table

    budget = None
    if args.budget:
        from semivit.planning import parse_budget

        budget = parse_budget(args.budget)
    if args.recipe == "auto":  # the path and resolution for a pretrained backbone chosen to fit the budget
        from semivit.path_choice import run_auto

        result = run_auto(overrides_from_args(args), budget)
    else:
        result = run_recipe(args.recipe, overrides_from_args(args), budget=budget)
    print(stage_table(result.run_dir.parent))
    _print_metrics(result.metrics, result.run_dir)
    _write_report(result.run_dir)  # the recipe's folder: one section per stage
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from semivit.bench import run_suite

    root = run_suite(args.suite, out=args.out, only=args.only, dry_run=args.dry_run, jobs=args.jobs)
    if not args.dry_run:
        print((root / "table.md").read_text() if (root / "table.md").is_file() else "no cell ran")
        print(f"table, CSV and label-efficiency plots: {root}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from semivit.comparison import compare_suite, run_compare

    settings = parse_set_args(args.set)
    if args.pretrained:
        settings["model.pretrained"] = args.pretrained
    suite = compare_suite(args.data, args.labels, model=args.model, budget=args.budget, steps=args.steps,
                          split=args.split, test=args.test, seeds=args.seeds, val=args.val,
                          resolution=args.resolution, rows=args.rows, settings=settings, out=args.out, name=args.name)
    root, table, line = run_compare(suite, jobs=args.jobs)
    print(table)
    print(line)
    print(f"table, per-seed cells and plots: {root}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from semivit.demo import run_demo

    run_demo(out=Path(args.out or "runs") / "demo", device=args.device or "auto", quick=args.quick)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from semivit.probe import run_probe

    m = run_probe(build_config(args), run=args.run, out=args.json, semi=args.semi)
    which = ("map", "mAP") if "test_knn_map" in m else ("top1", "top-1")  # multi-label data: mAP
    knn, linear = m[f"test_knn_{which[0]}"], m[f"test_linear_{which[0]}"]
    print(f"k-NN {which[1]} {knn:.4f}  linear-probe {which[1]} {linear:.4f}  "
          f"({m['feature_dim']}-d frozen features of {m['model']}; {m['labeled']} labels, no validation labels)")
    if args.semi:
        print(f"label spreading top-1 {m['test_label_spreading_top1']:.4f}  self-training top-1 "
              f"{m['test_self_training_top1']:.4f}  (the unlabeled training images used, their labels not)")
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from semivit.data.shard_writer import write_shards

    counts = write_shards(args.source, args.out, args.shard_size, test=args.test, unlabeled=args.unlabeled,
                          root=args.root, on_corrupt=args.on_corrupt, short_side=args.short_side)
    print(", ".join(f"{n} {part} shard(s)" for part, n in counts.items()) + f" in {args.out}: read them with "
          f"--data {args.out} (or --data '{args.out}/train-{{000000..{counts['train'] - 1:06d}}}.tar')")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from semivit.export import export_run

    _, summary = export_run(args.run, args.format, args.output, weights=args.weights, opset=args.opset,
                            exporter=args.onnx_exporter)
    print(f"wrote {summary}")
    return 0


def _labeling_pool(args: argparse.Namespace) -> Any:
    from semivit.labeling.commands import make_pool

    return make_pool(args.run, getattr(args, "data", None), test=getattr(args, "test", None),
                     unlabeled=getattr(args, "unlabeled", None), labels=getattr(args, "labels", "all"),
                     split=getattr(args, "split", None), seed=getattr(args, "seed", 0),
                     settings=parse_set_args(getattr(args, "set", [])))


def cmd_suggest(args: argparse.Namespace) -> int:
    from semivit.labeling.commands import accept, suggest_command

    pool = _labeling_pool(args)
    if args.accept:
        print(accept(pool, args.accept, args.output))
        return 0
    print(suggest_command(pool, args.budget, args.output or "to_label.csv", strategy=args.strategy,
                          encoder=args.encoder, uncertainty=args.uncertainty, diversity=args.diversity,
                          seed=args.seed, device=args.device, min_distance=args.min_distance, outliers=args.outliers))
    return 0


def cmd_pseudolabels(args: argparse.Namespace) -> int:
    from semivit.labeling.commands import accept, pseudolabels_command

    pool = _labeling_pool(args)
    if args.accept:
        print(accept(pool, args.accept, args.output))
        return 0
    print(pseudolabels_command(pool, args.output or "pseudo.csv", html=args.html, threshold=args.threshold,
                               per_class=args.per_class, device=args.device))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from semivit.report import write_report

    print(f"report: {write_report(args.run, args.output, device=args.device)}")
    return 0


def _write_report(run_dir: Path) -> None:
    """The run's report.html at the end of train/run; a failure there only warns (the run itself is done)."""
    from semivit.report import write_report_or_warn

    write_report_or_warn(run_dir)


def _print_metrics(metrics: dict[str, Any], run_dir: Path) -> None:
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
    print(json.dumps(shown))
    if "labels_total" in metrics:  # results.json of runs before the counts were recorded lack them
        from semivit.data.splits import describe_label_counts

        print(describe_label_counts(metrics))
    print(f"run folder: {run_dir}")


# Modules with ``add_parser(sub)``: each adds its sub-command(s), so a new capability keeps its CLI with it
# rather than growing this file.
COMMAND_MODULES = ("semivit.continual.commands", "semivit.video.commands", "semivit.labelcheck.commands")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semivit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one method")
    p.add_argument("--method", help="supervised, mae, fixmatch, ema_teacher, ... (default supervised)")
    p.add_argument("--config", help="a YAML file with data/model/optim/train/method sections")
    add_common_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="run a multi-stage recipe (e.g. semivit: mae → supervised → ema_teacher)")
    p.add_argument("recipe", help="a recipe YAML, a shipped name (semivit, fixmatch, frozen-fixmatch, ...), or "
                   "auto: with --model BACKBONE and --budget, the way to use a pretrained backbone (frozen, partial "
                   "or full fine-tuning) and its resolution chosen to fit the budget")
    add_common_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="run a benchmark suite: method × data × labels × seed under one budget")
    p.add_argument("suite", help="a suite YAML or a name in benchmarks/suites/ (cpu-small, gpu)")
    p.add_argument("--out", help="folder for the cells and reports (default: the suite's, runs/bench)")
    p.add_argument("--only", help="run only cells whose DATA/LABELS/METHOD/seedS contains this text "
                   "(or one of several, comma-separated)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their stage steps; train nothing")
    p.add_argument("--jobs", type=int, default=1, help="cells trained side by side, one process each (CPU: the "
                   "number of cores; one GPU: 4-8 small models share it)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("compare", help="does my unlabeled data help? linear probe and fine-tuning on the labels "
                       "alone against the semi-supervised paths, on your data at one budget")
    p.add_argument("--data", required=True, help="your data (folder, .zip, .csv, .npz or a built-in name)")
    p.add_argument("--labels", help="all | N-per-class | N | P%% (default all labeled images)")
    p.add_argument("--split", help="a list file of labeled images, or a split.json")
    p.add_argument("--test", help="a separate test part (when --data has no test/ folder)")
    p.add_argument("--model", required=True, help="the pretrained backbone: a hub name, local-dir:FOLDER, or an "
                   "architecture with --pretrained FILE")
    p.add_argument("--pretrained", help="a weights file for --model (bare .safetensors/.pth)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", default="30m", help="wall-clock limit of each path's run (default 30m): its "
                        "stages are timed; its recipe's own steps when they fit, else shrunk to fit")
    budget.add_argument("--steps", type=int, help="instead of --budget: this many optimizer steps for every path")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per path (default 0 1 2)")
    p.add_argument("--val", default="20%-of-labels", help="validation labels carved out of --labels, which the "
                   "recommendation reads (default 20%%-of-labels)")
    p.add_argument("--resolution", default="96", help="the backbone's input size for every path (default 96)")
    p.add_argument("--rows", nargs="+", help="paths to run (default: linear-probe fine-tuning frozen-fixmatch "
                   "partial-semivit; also partial-fixmatch, frozen-semivit)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for every path")
    p.add_argument("--out", default="runs/compare", help="folder (default runs/compare)")
    p.add_argument("--name", default="compare", help="the comparison's folder under --out")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side, one process each")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", help="supervised-only vs Semi-ViT on digits with 4 labels per class")
    p.add_argument("--out")
    p.add_argument("--device")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for smoke tests)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="top-1/top-5, per-class accuracy, confusion, calibration")
    p.add_argument("checkpoint", help="a run folder or its model.safetensors")
    p.add_argument("--data", help="the data set (default: the run's own data, from its config.yaml)")
    p.add_argument("--test", help="a separate test part")
    p.add_argument("--part", choices=["test", "train"], default="test")
    p.add_argument("--device")
    p.add_argument("--json", help="also write the full report (with the confusion matrix) here")
    p.add_argument("--classifier", choices=["head", "snn"], default="head",
                   help="the model's head, or soft nearest neighbours over the labeled images (after paws)")
    p.add_argument("--split", help="snn: the labeled images (a split.json or list; default: the run's)")
    p.add_argument("--tau", type=float, default=0.1, help="snn: temperature of the soft nearest neighbours")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("probe", help="baselines on frozen features: k-NN and a linear probe on the labels alone")
    p.add_argument("run", nargs="?", help="a run folder or hub folder to probe (default: --model's pretrained "
                                          "weights)")
    p.add_argument("--json", help="also write the metrics here")
    p.add_argument("--semi", action="store_true", help="also label spreading and self-training (scikit-learn) over "
                                                       "the unlabeled images' features")
    add_common_arguments(p)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("export", help="the trained classifier as a hub folder (timm), ONNX or TorchScript")
    p.add_argument("run", help="a run folder (a recipe's: its last stage) or a model.safetensors")
    p.add_argument("--format", choices=["hub", "onnx", "torchscript"], default="hub")
    p.add_argument("-o", "--output", help="where to write (default: RUN/export/{hub,model.onnx,model.pt})")
    p.add_argument("--weights", choices=["model", "best"], default="model",
                   help="the final evaluation model (the EMA teacher where there is one) or the best-validation one")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (≥ 17)")
    p.add_argument("--onnx-exporter", choices=["dynamo", "legacy"], default="dynamo",
                   help="torch.export-based (default) or the older TorchScript-based ONNX exporter")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="label images: CSV of label, confidence and top-k")
    p.add_argument("checkpoint", help="a run folder, its model.safetensors, or a hub folder (semivit export)")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("-o", "--output", default="predictions.csv")
    p.add_argument("--topk", type=int, default=5)
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("shards", help="write any data source as WebDataset-style tar shards (train-000000.tar, ...)")
    p.add_argument("source", help="a data source: folder, .zip, .csv, .npz, Hugging Face data, shards, built-in name")
    p.add_argument("out", help="a new folder for the shards (train-*.tar, test-*.tar, val-*.tar, classes.txt)")
    p.add_argument("--shard-size", type=int, default=10_000, help="samples per shard (default 10000)")
    p.add_argument("--test", help="a separate test part to write as test-*.tar")
    p.add_argument("--unlabeled", help="an extra pool of unlabeled images, appended to the train shards")
    p.add_argument("--root", help="where built-in sets live (data.root)")
    p.add_argument("--on-corrupt", default="skip", choices=["skip", "fail"], help="unreadable images")
    p.add_argument("--short-side", type=int, help="store images larger than this many pixels on their short side "
                   "shrunk to it (aspect kept; JPEG q90, else PNG): e.g. 256 for 224-px training, ~3× faster to "
                   "decode than ImageNet's originals")
    p.set_defaults(func=cmd_shards)
    p = sub.add_parser("suggest", help="the unlabeled images to label next (CSV + contact sheet), or merge "
                                       "the labels written into that CSV (--accept)")
    p.add_argument("run", nargs="?", help="a finished run (its teacher and labels); omit it and pass --data for a "
                                          "cold start")
    p.add_argument("--data", help="cold start: a data source (folder, CSV, .npz, built-in name)")
    p.add_argument("--test", help="with --data: its separate test part (kept in merged .npz files)")
    p.add_argument("--unlabeled", help="with --data: an extra pool of unlabeled images")
    p.add_argument("--labels", default="all", help="with --data: which of its labels count as known: all "
                   "(default), 0 (none: a simulation on a labeled set) or an N-per-class/N/P%% spec")
    p.add_argument("--split", help="with --data: a split.json or list file naming the labeled images")
    p.add_argument("--budget", type=int, help="how many images to choose")
    p.add_argument("-o", "--output", help="the CSV to write (default to_label.csv; a contact sheet .html goes "
                   "beside it); with --accept: the merged labels, .csv (manifest), .txt (--split list), .json or .npz")
    p.add_argument("--strategy", default="auto", help="auto (TypiClust while labels are few, then uncertainty), "
                   "typiclust, probcover, uncertainty, random")
    p.add_argument("--encoder", help="what embeds the images: a run or hub folder (e.g. a simclr/mae/byol run), a "
                   "pretrained backbone name (vit_small_patch14_dinov2.lvd142m, hf-hub:..., local-dir:...) or "
                   "pixels (tiny images only); default: the run's model")
    p.add_argument("--uncertainty", default="margin", help="margin or entropy (later rounds)")
    p.add_argument("--diversity", default="kmeans++", help="kmeans++ (uncertainty-weighted) or kcenter (later rounds)")
    p.add_argument("--min-distance", type=float, help="embedding distance under which an image is a near-duplicate "
                   "of a labeled one (default: a tenth of the median nearest-neighbour distance)")
    p.add_argument("--accept", metavar="CSV", help="merge the labels a person wrote into this CSV, write -o")
    p.add_argument("--outliers", default="keep", help="with an OpenMatch run: keep (default), skip the images that "
                   "look like none of your classes, or target them (to add a class)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --data: data settings "
                   "(e.g. data.image_size=64)")
    p.set_defaults(func=cmd_suggest)

    p = sub.add_parser("pseudolabels", help="the run's teacher's label for every unlabeled image, for review "
                                            "(CSV, HTML per class); --accept turns kept rows into labels")
    p.add_argument("run", help="a finished run whose classifier was trained")
    p.add_argument("-o", "--output", help="the CSV to write (default pseudo.csv); with --accept: the merged labels")
    p.add_argument("--html", action="store_true", help="also write a contact sheet per class beside the CSV")
    p.add_argument("--threshold", type=float, help="τ for the passes column (default: the run's method.threshold)")
    p.add_argument("--per-class", type=int, default=120, help="images per class on the contact sheet")
    p.add_argument("--accept", metavar="CSV", help="a reviewed pseudo.csv: rows with keep=yes become labels")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.set_defaults(func=cmd_pseudolabels)

    p = sub.add_parser("report", help="a self-contained report.html of a run (curves, confusion, calibration, "
                                      "test images)")
    p.add_argument("run", help="a run folder, or a recipe's folder (one section per stage)")
    p.add_argument("-o", "--output", help="where to write it (default RUN/report.html)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.set_defaults(func=cmd_report)

    for module in COMMAND_MODULES:  # capabilities that bring their own sub-commands
        importlib.import_module(module).add_parser(sub)
    return parser


def _prepare_outputs(args: argparse.Namespace) -> None:
    """Every command's output paths checked (and their folders created) before it works: ``-o/--output`` and
    ``--json``, the same way everywhere (core.io.prepare_output)."""
    from semivit.core.io import prepare_output

    for attr in ("output", "json"):
        value = getattr(args, attr, None)
        if isinstance(value, str) and value:
            prepare_output(value, folder=attr == "output" and getattr(args, "format", None) == "hub")


def main(argv: list[str] | None = None) -> int:
    rank = int(os.environ.get("RANK", "0"))
    # semivit's own progress lines at INFO (rank 0); every other library's (timm, huggingface_hub) only from
    # WARNING, so a refused file or a bad setting reads as one line, not as a library's log
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("semivit").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    args = make_parser().parse_args(argv)
    from semivit.engine.interrupt import TrainingInterrupted

    try:
        _prepare_outputs(args)
        return args.func(args)
    except TrainingInterrupted as e:  # Ctrl-C or SIGTERM in training: a checkpoint was written at a whole step
        print(f"semivit: {e}", file=sys.stderr)
        return e.exit_code
    except SemivitError as e:
        print(f"semivit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("semivit: interrupted; continue with the same command and --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
