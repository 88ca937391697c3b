"""``semivit evaluate`` and ``semivit predict``: a trained model on labeled data (its report) and on image
files (a CSV of predictions). The parsers are in :mod:`semivit.cli`."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from semivit.errors import SemivitError


def cmd_evaluate(args: argparse.Namespace) -> int:
    from semivit.core.device import resolve_device
    from semivit.data.sources import load_source
    from semivit.engine.checkpoint import load_model
    from semivit.engine.evaluate import classification_report, predict_logits, summary_line

    model, meta = load_model(args.checkpoint)
    data, test = args.data, args.test
    if data is None:  # the run's own data (its config.yaml), as a user evaluating a run means
        data, test = _run_data(args.checkpoint, test)
    bundle = load_source(data, test=test, image_size=model.spec.image_size)
    part = bundle.test if args.part == "test" else bundle.train
    if part is None:
        raise SemivitError(f"'{data}' has no test part: pass --test PATH or --part train")
    if part.multilabel != model.spec.multilabel:
        raise SemivitError(f"the model predicts {'several labels' if model.spec.multilabel else 'one class'} per "
                           f"image and the data has {'several' if part.multilabel else 'one'}: evaluate on data like "
                           f"the data it was trained on")
    if part.multilabel:
        return _evaluate_multilabel(model, part, args)
    labeled = part.labels[part.labels >= 0]
    if len(labeled) and int(labeled.max()) >= model.spec.num_classes:
        raise SemivitError(f"the data has labels up to {int(labeled.max())} ({part.num_classes} classes) but the "
                           f"model predicts {model.spec.num_classes} classes: evaluate on data with the model's "
                           f"classes")
    if part.channels != model.spec.in_chans or part.image_size[0] != model.spec.image_size:
        raise SemivitError(f"the data is {part.channels}×{part.image_size[0]}px but the model expects "
                           f"{model.spec.in_chans}×{model.spec.image_size}px: evaluate on the data it was "
                           f"trained on")
    device = resolve_device(args.device or "auto")
    if args.classifier == "snn":
        logits = _snn_logits(model.to(device), bundle.train, part, args, device)
    else:
        logits = predict_logits(model.to(device), part, device=device)
    report = classification_report(logits, part.labels, model.spec.classes or part.classes)
    print(summary_line(report))
    if len(model.head_names) > 1:  # Semiformer: the fused prediction above, and each stream alone
        from semivit.engine.evaluate import heads_top1

        report["streams"] = heads_top1(model, part, device=device)
        print("  ".join(f"{name} top-1 {acc:.4f}" for name, acc in report["streams"].items()))
    for name, acc in report["per_class"].items():
        print(f"  {name:>20}: {acc:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _evaluate_multilabel(model: Any, part: Any, args: argparse.Namespace) -> int:
    """``semivit evaluate`` of a multi-label model: mAP, micro/macro F1 at the model's thresholds, per class."""
    from semivit.core.device import resolve_device
    from semivit.engine.evaluate import predict_logits
    from semivit.engine.multilabel_eval import multilabel_report, summary_line

    if part.num_classes != model.spec.num_classes:
        raise SemivitError(f"the data has {part.num_classes} classes and the model predicts "
                           f"{model.spec.num_classes}: evaluate on data with the model's classes")
    device = resolve_device(args.device or "auto")
    logits = predict_logits(model.to(device), part, device=device)
    report = multilabel_report(logits, part.labels, model.spec.classes or part.classes,
                               model.spec.decision_thresholds())
    print(summary_line(report))
    for name, row in report["per_class"].items():
        ap = "–" if row["ap"] is None else f"{row['ap']:.4f}"
        print(f"  {name:>20}: AP {ap}  F1 {row['f1']:.4f}  threshold {row['threshold']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _run_data(checkpoint: str, test: str | None) -> tuple[str, str | None]:
    """The data source (and test part) a run folder was trained on, from its config.yaml; digits for a bare
    model file, as before."""
    from semivit.report.runs import run_config

    folder = Path(checkpoint)
    folder = folder.parent.parent if folder.name == "model.safetensors" and folder.parent.name == "checkpoints" \
        else folder
    stages = sorted(p.parent for p in folder.glob("stage*/config.yaml"))  # a recipe's folder: its last stage
    run = folder if (folder / "config.yaml").is_file() else (stages[-1] if stages else None)
    if run is None:
        return "digits", test
    data = run_config(run).data
    return data.source, test or data.test


def _snn_logits(model: Any, train: Any, part: Any, args: argparse.Namespace, device: Any) -> Any:
    """Log-probabilities of the soft nearest-neighbour classifier (PAWS) with the run's labeled images as
    the support bank: ``--split``, else the run folder's split.json, else every labeled training image."""
    import torch

    from semivit.data.splits import load_split
    from semivit.engine.evaluate import extract_features, snn_probs

    split_path = args.split
    if split_path is None:
        path = Path(args.checkpoint)
        run = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else path.parent
        split_path = str(run / "split.json") if (run / "split.json").is_file() else None
    if split_path is not None:
        bank_idx = load_split(split_path, train).labeled
    else:
        bank_idx = torch.nonzero(train.labels >= 0).squeeze(1)
    if len(bank_idx) == 0:
        raise SemivitError("no labeled images for the snn classifier's support bank: pass --split")
    print(f"snn classifier: {len(bank_idx)} labeled images as the support bank"
          + (f" ({split_path})" if split_path else " (every labeled training image)"))
    # the model's own embedding when it carries one (PAWS: the projector output its snn loss was trained
    # on, as the reference's snn_eval.py), so this rebuilds the classifier the run reported
    bank = extract_features(model, train, bank_idx, device=device, embedding=True)
    queries = extract_features(model, part, device=device, embedding=True)
    probs = snn_probs(bank, train.labels[bank_idx], queries, model.spec.num_classes, args.tau)
    return probs.clamp_min(1e-12).log()


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from semivit.data.augment import to_float
    from semivit.data.sources import read_image_files
    from semivit.engine.checkpoint import load_model
    from semivit.models.outlier import model_outlier_scores

    model, _ = load_model(args.checkpoint)
    spec = model.spec
    paths, images = read_image_files(args.inputs, spec.image_size, spec.in_chans)
    classes = spec.classes or [str(i) for i in range(spec.num_classes)]
    if spec.multilabel:
        return _predict_multilabel(model, paths, images, classes, args.output)
    k = min(args.topk, spec.num_classes)
    main, *streams = model.head_names  # Semiformer: also each stream
    scored = getattr(model, "outlier_head", None) is not None  # an openmatch run: OVA outlier scores too
    with torch.no_grad():
        chunks = [to_float(images[i:i + 256]) for i in range(0, len(images), 256)]
        # an outlier head's model has one head: its logits and scores come from one pass over the backbone
        pairs = [model_outlier_scores(model, x) for x in chunks] if scored else []
        outs = [{main: logits} for logits, _ in pairs] if scored else [model.heads(x) for x in chunks]
        probs = {name: torch.cat([o[name] for o in outs]).softmax(1) for name in model.head_names}
        outlier = torch.cat([score for _, score in pairs]).tolist() if scored else []
    conf, idx = probs[main].topk(k, dim=1)
    with open(args.output, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "confidence", "topk",
                         *[f"{name}_{col}" for name in streams for col in ("label", "confidence")],
                         *(["outlier_score"] if scored else [])])
        for n, (path, c, i) in enumerate(zip(paths, conf.tolist(), idx.tolist())):
            topk = ";".join(f"{classes[j]}:{p:.4f}" for j, p in zip(i, c))
            per_stream = [v for name in streams for v in (classes[int(probs[name][n].argmax())],
                                                          f"{float(probs[name][n].max()):.4f}")]
            writer.writerow([path, classes[i[0]], f"{c[0]:.4f}", topk, *per_stream,
                             *([f"{outlier[n]:.4f}"] if scored else [])])
    print(f"wrote {len(paths)} predictions to {args.output}" +
          (" (outlier_score: 1 − p⁺ of the predicted class's one-vs-all head; ≥ 0.5 looks like none of your "
           "classes)" if scored else ""))
    return 0


def _predict_multilabel(model: Any, paths: list[str], images: Any, classes: list[str], output: str) -> int:
    """Predictions of a multi-label model: the classes whose probability reaches their threshold (``a|b``, the
    CSV form training reads), and each class's probability."""
    import torch

    from semivit.data.augment import to_float

    thresholds = torch.tensor(model.spec.decision_thresholds())
    with torch.no_grad():
        probs = torch.cat([model(to_float(images[i:i + 256])).float().sigmoid() for i in range(0, len(images), 256)])
    with open(output, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels", *classes])
        for path, row in zip(paths, probs):
            chosen = "|".join(c for c, p, t in zip(classes, row.tolist(), thresholds.tolist()) if p >= t)
            writer.writerow([path, chosen, *[f"{p:.4f}" for p in row.tolist()]])
    print(f"wrote {len(paths)} predictions to {output} (labels: classes at or above their thresholds)")
    return 0
