"""``semivit labelcheck``: the labeled images whose given label is most likely wrong, and the merge of the
reviewed corrections.

    semivit labelcheck --data digits --labels all -o issues.csv           # CSV + issues.html
    semivit labelcheck --data digits --labels all --accept issues.csv -o labels.npz
    semivit labelcheck runs/NAME --probs teacher                           # a run's validation labels
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from semivit.errors import SemivitError
from semivit.labelcheck.choices import FILTER_BY, PROBS, RANK_BY


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``labelcheck`` sub-command to the main parser's sub-parsers."""
    p = sub.add_parser("labelcheck", help="the labeled images whose label is most likely wrong (confident learning, "
                                          "Cleanlab): CSV + contact sheet; --accept merges the corrections",
                       description="Rank the labeled images whose given label is most likely wrong, from "
                                   "out-of-sample probabilities (k-fold on the labeled set, or a run's teacher on "
                                   "its validation images) and Cleanlab's find_label_issues (Northcutt et al. "
                                   "2021). Needs pip install 'semivit[labelcheck]'.")
    p.add_argument("run", nargs="?", help="a finished run: its labels (split.json) and, by default, its model's "
                                          "features; omit it and pass --data")
    g = p.add_argument_group("the labeled set (as train splits it for the same --data --labels --seed)")
    g.add_argument("--data", help="a data source (folder, CSV, .npz, built-in name)")
    g.add_argument("--test", help="its separate test part (kept in a merged .npz)")
    g.add_argument("--unlabeled", help="an extra pool of unlabeled images")
    g.add_argument("--labels", help="which labels to check: all (default) or N-per-class/N/P%% (validation labels "
                                    "that data.val adds are checked too)")
    g.add_argument("--split", help="a split.json or list file naming the labeled images")
    g.add_argument("--seed", type=int, help="the split's seed and the folds' (default 0)")
    g = p.add_argument_group("the out-of-sample probabilities")
    g.add_argument("--probs", default="kfold", choices=PROBS, help="kfold (default): logistic regression "
                   "cross-validated over the labeled set; teacher: a RUN's teacher on its validation images only")
    g.add_argument("--model", help="features of this pretrained backbone (a tagged timm name, hf-hub:..., "
                                   "local-dir:FOLDER; cached, shared with semivit probe)")
    g.add_argument("--pretrained", nargs="?", const="hub", metavar="hub|PATH", help="the backbone's weights")
    g.add_argument("--encoder", help="features of this model instead: a run or hub folder, or pixels (tiny images); "
                                     "default: the RUN's model, else pixels")
    g.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5, stratified)")
    g.add_argument("--rank-by", default="self_confidence", choices=RANK_BY, help="Cleanlab's label quality score "
                   "that orders the flagged images (default self_confidence)")
    g.add_argument("--filter-by", default="prune_by_noise_rate", choices=FILTER_BY,
                   help="Cleanlab's rule for which images to flag (default prune_by_noise_rate)")
    p.add_argument("-o", "--output", help="the CSV to write (default label_issues.csv; the contact sheet .html goes "
                                          "beside it); with --accept: the merged labels, .csv (manifest) or .npz")
    p.add_argument("--no-html", action="store_true", help="no contact sheet")
    p.add_argument("--accept", metavar="CSV", help="merge the reviewed CSV (rows with keep = yes: their label) into "
                                                   "the labeled set, write -o")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (for the features)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, e.g. --set model.resolution=96 --set data.val=0")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_labelcheck)


def cmd_labelcheck(args: argparse.Namespace) -> int:
    from semivit.arguments import build_config
    from semivit.labelcheck.sources import labeled_pool

    if args.run and args.data:
        raise SemivitError("pass a run folder or --data, not both (a run already names its data)")
    args.model_name = args.model
    args.model = None  # the backbone is for the features, not the data's model settings
    cfg = build_config(args)
    pool, data = labeled_pool(cfg, args.run)
    if args.accept:
        from semivit.labeling.commands import accept

        print(accept(pool, args.accept, args.output))
        return 0
    print(check_command(pool, data, args.output or "label_issues.csv", html=not args.no_html,
                        origin=_origin(args), probs=args.probs, model=args.model_name, encoder=args.encoder,
                        folds=args.folds, seed=cfg.train.seed, rank_by=args.rank_by, filter_by=args.filter_by,
                        device=args.device))
    return 0


def check_command(pool: Any, data: Any, out: str, *, html: bool = True, origin: str = "",
                  **options: Any) -> str:
    """Check the pool's labels, write the CSV (and the contact sheet beside it); returns the lines to print."""
    from semivit.labelcheck.output import merged_name, write_csv, write_sheet
    from semivit.labelcheck.sources import check_labels

    issues = check_labels(pool, data, **options)
    csv_path = write_csv(pool, issues, out)
    lines = [f"{len(issues)} of {issues.checked} labels look wrong (probabilities: {issues.source}): {csv_path}"]
    if html:
        lines.append(f"contact sheet: {write_sheet(pool, issues, Path(out).with_suffix('.html'))}")
    lines.append(f"review (keep = yes where the given label is wrong; fix 'label' if need be), then: "
                 f"semivit labelcheck {origin} --accept {csv_path} -o {merged_name(pool)}")
    return "\n".join(lines)


def _origin(args: argparse.Namespace) -> str:
    """The arguments that rebuild the same labeled set, for the --accept command printed after a check."""
    parts = [shlex.quote(args.run)] if args.run else []
    for flag, value in (("--data", args.data), ("--test", args.test), ("--unlabeled", args.unlabeled),
                        ("--labels", args.labels), ("--split", args.split), ("--seed", args.seed)):
        if value is not None:
            parts += [flag, shlex.quote(str(value))]
    for setting in args.set:
        if setting.startswith("data."):  # data settings change the split; model settings do not
            parts += ["--set", shlex.quote(setting)]
    return " ".join(parts)
