"""``semivit labelcheck``: which given labels are most likely wrong — confident learning (Northcutt et al. 2021,
through Cleanlab) on out-of-sample probabilities — written as a CSV and a contact sheet for review, and the
reviewed corrections merged back into the labeled set (:mod:`semivit.labeling.merge`).

The Python API is :func:`semivit.find_label_issues` (:func:`semivit.api.find_label_issues`). This package's names
load on first use, so that the command line's parser starts without numpy or torch.

Examples:
    >>> import semivit
    >>> issues = semivit.find_label_issues("digits", labels="all", seed=0)  # doctest: +SKIP
    >>> from semivit.labelcheck import find_issues, out_of_sample_probs
    >>> probs = out_of_sample_probs(features, labels, folds=5, seed=0)  # doctest: +SKIP
    >>> find_issues(labels, probs).indices  # doctest: +SKIP
"""

import importlib
from typing import Any

_NAMES = {"LabelIssues": "check", "find_issues": "check", "out_of_sample_probs": "check",
          "precision_recall": "check", "check_labels": "sources", "labeled_pool": "sources"}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"semivit.labelcheck.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'semivit.labelcheck' has no attribute '{name}'")
