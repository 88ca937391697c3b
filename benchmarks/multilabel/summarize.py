"""The multi-label table of benchmarks/RESULTS.md from the runs of run_cifar10.sh / run_fmnist.sh.

    python benchmarks/multilabel/summarize.py runs/multilabel

One row per data set, label share and method: test mAP, micro-F1 and macro-F1 (thresholds chosen on the
validation labels), mean ± std over the seeds found, and the labels each run consumed (training + validation).
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

NAME = re.compile(r"(?P<data>[a-z0-9]+)-(?P<pct>\d+)pct-(?P<thr>fixed|cap|control|tuned|captuned|capmix)"
                  r"-s(?P<seed>\d+)")
STAGE2 = {"fixed": "fixmatch (recipe: lr 1e-3, τ⁺ 0.7, τ⁻ 0.05)", "cap": "fixmatch (recipe, CAP thresholds)",
          "control": "control: 3,000 more steps on the labels alone (λ_u 0, lr 1e-4)",
          "tuned": "fixmatch (lr 1e-4, τ⁺ 0.95, τ⁻ 0.01)", "captuned": "fixmatch (lr 1e-4, CAP, cap_keep 0.25)",
          "capmix": "fixmatch (lr 1e-4, CAP, cap_keep 0.25) + pseudo mixup of features"}
PROBE = re.compile(r"(?P<data>[a-z0-9]+)-(?P<pct>\d+)pct-probe-s(?P<seed>\d+)\.json")
SINGLE = re.compile(r"(?P<data>[a-z0-9]+)-(?P<pct>\d+)pct-(?P<variant>supervised|fixmatch-fixed|fixmatch-cap)"
                    r"-s(?P<seed>\d+)")  # one-stage runs (run_digits.sh)
LABELS = {"supervised": "supervised (labels only)", "fixmatch-fixed": "fixmatch, fixed thresholds",
          "fixmatch-cap": "fixmatch, cap thresholds"}


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/multilabel")
    rows: dict[tuple, list[dict]] = defaultdict(list)
    for run in sorted(root.iterdir()):
        probe = PROBE.fullmatch(run.name)
        if probe:  # k-NN and the linear probe: all of --labels, no validation labels
            r = json.loads(run.read_text())
            for key, method in (("test_knn_map", "k-NN (labels only)"),
                                ("test_linear_map", "linear probe (labels only)")):
                rows[(probe["data"], int(probe["pct"]), method)].append(
                    {**r, "test_map": r[key], "test_micro_f1": float("nan"), "test_macro_f1": float("nan")})
            continue
        single = SINGLE.fullmatch(run.name)
        if single and (run / "results.json").is_file():
            rows[(single["data"], int(single["pct"]), LABELS[single["variant"]])].append(
                json.loads((run / "results.json").read_text()))
            continue
        m = NAME.fullmatch(run.name)
        if not m:
            continue
        for stage, method in (("stage1-supervised", "supervised (linear head, labels only)"),
                              ("stage2-fixmatch", STAGE2[m["thr"]])):
            results = run / stage / "results.json"
            if not results.is_file():
                continue
            if stage.startswith("stage1") and m["thr"] != "fixed":
                continue  # the same stage 1 in every variant: count it once
            r = json.loads(results.read_text())
            rows[(m["data"], int(m["pct"]), method)].append(r)
    print("| data | labeled | labels used (train + val) | method | seeds | test mAP | micro-F1 | macro-F1 |")
    print("|---|---|---|---|---|---|---|---|")
    def stat(rs: list[dict], key: str) -> str:
        v = np.array([r[key] for r in rs], dtype=float)
        return f"{v.mean():.3f} ± {v.std():.3f}" if len(v) > 1 else f"{v[0]:.3f}"

    for (data, pct, method), rs in sorted(rows.items()):
        used = f"{rs[0]['labels_total']} ({rs[0]['labeled']} + {rs[0]['val_labeled']})"
        print(f"| {data} | {pct}% | {used} | {method} | {len(rs)} | {stat(rs, 'test_map')} | "
              f"{stat(rs, 'test_micro_f1')} | {stat(rs, 'test_macro_f1')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
