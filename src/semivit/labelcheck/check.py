"""Confident learning on out-of-sample probabilities: which given labels are most likely wrong.

Confident learning (Northcutt, Jiang & Chuang 2021, "Confident Learning: Estimating Uncertainty in Dataset
Labels", JAIR 70) estimates the joint distribution of given and true labels from out-of-sample predicted
probabilities and flags the images whose given label that joint says is likely wrong. semivit does not
re-implement it: :func:`find_issues` calls Cleanlab's ``cleanlab.filter.find_label_issues`` (Apache-2.0, the
authors' own code; the optional extra ``semivit[labelcheck]``). What this module adds is the honest part:
the probabilities come from a model that never saw the label it judges (:func:`out_of_sample_probs`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from semivit.errors import SemivitError
from semivit.labelcheck.choices import FILTER_BY, RANK_BY

#: the inverse regularisation strengths the inner split chooses among (:func:`_classifier`)
CS = (0.01, 0.1, 1.0, 10.0)


def require_cleanlab() -> Any:
    """The ``cleanlab`` module, or a one-line error naming the extra that installs it."""
    try:
        import cleanlab.filter
        import cleanlab.rank  # noqa: F401 - both are used by find_issues
    except ImportError:
        raise SemivitError("semivit labelcheck needs Cleanlab: pip install 'semivit[labelcheck]' "
                           "(or pip install 'cleanlab>=2.6')") from None
    return cleanlab


@dataclass
class LabelIssues:
    """The labels confident learning flags, most likely wrong first.

    ``indices``: the images (indices into the training part); ``given``/``suggested``: class indices (the
    label the data has, the out-of-sample argmax); ``quality``: Cleanlab's label quality score of the given
    label (0–1, low = likely wrong); ``given_prob``/``suggested_prob``: the out-of-sample probability of each;
    ``checked``: how many labels were checked; ``source``: where the probabilities came from.
    """

    indices: np.ndarray
    given: np.ndarray
    suggested: np.ndarray
    quality: np.ndarray
    given_prob: np.ndarray
    suggested_prob: np.ndarray
    checked: int
    source: str
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.indices)


def out_of_sample_probs(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0,
                        num_classes: int | None = None) -> np.ndarray:
    """Each image's class probabilities from a logistic regression fitted on the *other* folds (stratified
    ``folds``-fold cross-validation, shuffled by ``seed``; its C chosen inside the fitting folds): probabilities
    of a model that never saw the label they are judged against, as confident learning requires (Northcutt et
    al. 2021, §2). The features are standardised on all rows first (no labels involved). Columns are the
    classes ``0 … num_classes-1``; a class absent from a training fold gets probability 0 there.

    Examples:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([rng.normal(0, 1, (20, 4)), rng.normal(3, 1, (20, 4))])
        >>> y = np.repeat([0, 1], 20)
        >>> p = out_of_sample_probs(x, y, folds=5, seed=0)
        >>> p.shape, bool((p.argmax(1) == y).mean() > 0.9)
        ((40, 2), True)
    """
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise SemivitError(f"features ({x.shape}) and labels ({y.shape}) must have one row per image")
    k = int(num_classes if num_classes is not None else y.max() + 1)
    counts = np.bincount(y, minlength=k)
    if folds < 2:
        raise SemivitError(f"--folds is {folds}: cross-validation needs at least 2 folds")
    if len(y) < 2 * folds or (counts > 0).sum() < 2 or counts.max() < folds:
        raise SemivitError(f"{len(y)} labels of {(counts > 0).sum()} class(es), at most {counts.max()} a class, are "
                           f"too few to check: {folds}-fold cross-validation needs 2 or more classes and {folds} "
                           f"labels in at least one (pass fewer --folds, or more labels)")
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    probs = np.zeros((len(y), k))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # a class with fewer labels than folds is split as well as it can be (UserWarning); scikit-learn's
        # notices of changing defaults (FutureWarning) do not change what is fitted here
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        for fit_rows, held_out in splitter.split(x, y):
            present = np.unique(y[fit_rows])
            if len(present) == 1:  # one class left to fit on: it predicts that class
                probs[np.ix_(held_out, present)] = 1.0
                continue
            clf = _classifier(y[fit_rows], seed)
            clf.fit(x[fit_rows], y[fit_rows])
            probs[np.ix_(held_out, clf.classes_)] = clf.predict_proba(x[held_out])
    return probs


def _classifier(y: np.ndarray, seed: int) -> Any:
    """Logistic regression with its inverse regularisation C chosen among :data:`CS` by an inner stratified
    3-fold split of the fitting rows alone (nested: the held-out fold never picks C). Label noise and few
    labels need more regularisation than scikit-learn's C = 1: on 400 digits with 10% flipped (seed 0), C = 1
    reached 0.85 out-of-sample accuracy and flags of precision 0.58, the inner choice 0.93 and 0.80. Where a class
    has fewer than 3 fitting rows no inner split is possible: C = 1."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    if np.bincount(y)[np.unique(y)].min() < 3:
        return LogisticRegression(max_iter=2000)
    # log loss picks C: confident learning reads the probabilities themselves, not only their argmax
    return LogisticRegressionCV(Cs=list(CS), cv=StratifiedKFold(3, shuffle=True, random_state=seed),
                                scoring="neg_log_loss", max_iter=2000)


def find_issues(labels: np.ndarray, probs: np.ndarray, *, rank_by: str = "self_confidence",
                filter_by: str = "prune_by_noise_rate", source: str = "") -> LabelIssues:
    """The labels Cleanlab's ``find_label_issues`` flags (confident learning, Northcutt et al. 2021), ranked
    worst first by the label quality score ``rank_by``. ``labels``: the given class of each row; ``probs``:
    out-of-sample probabilities (:func:`out_of_sample_probs`); ``indices`` of the result are row numbers.

    Examples:
        >>> import numpy as np
        >>> probs = np.array([[0.9, 0.1]] * 10 + [[0.1, 0.9]] * 10)
        >>> labels = np.array([0] * 9 + [1] + [1] * 10)   # row 9 looks like a 0 but says 1
        >>> find_issues(labels, probs).indices.tolist()
        [9]
    """
    require_cleanlab()
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if rank_by not in RANK_BY:
        raise SemivitError(f"unknown --rank-by '{rank_by}': use one of {', '.join(RANK_BY)}")
    if filter_by not in FILTER_BY:
        raise SemivitError(f"unknown --filter-by '{filter_by}': use one of {', '.join(FILTER_BY)}")
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(1, keepdims=True).clip(min=1e-12)  # Cleanlab checks that rows sum to 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Cleanlab warns on classes with few labels: expected with few labels
        # n_jobs=1: no worker processes (the CLI's machine may be shared; the result does not depend on it)
        flagged = np.asarray(find_label_issues(y, p, filter_by=filter_by, return_indices_ranked_by=rank_by,
                                               n_jobs=1), dtype=np.int64)
        quality = get_label_quality_scores(y, p, method=rank_by)
    suggested = p.argmax(1)
    return LabelIssues(indices=flagged, given=y[flagged], suggested=suggested[flagged], quality=quality[flagged],
                       given_prob=p[flagged, y[flagged]], suggested_prob=p[flagged, suggested[flagged]],
                       checked=len(y), source=source)


def out_of_sample_multilabel_probs(features: np.ndarray, targets: np.ndarray, folds: int = 5,
                                   seed: int = 0) -> np.ndarray:
    """For several labels per image: each image's per-class probabilities from one logistic regression per class
    (scikit-learn's defaults) fitted on the *other* folds of a shuffled ``folds``-fold split seeded by ``seed``;
    ``targets`` N×C of 0/1. A class a training fold shows always (or never) gets that probability there."""
    from sklearn.model_selection import KFold

    from semivit.engine.multilabel_eval import per_class_probs

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)
    if folds < 2 or len(y) < 2 * folds:
        raise SemivitError(f"{len(y)} labeled images are too few to check with {folds}-fold cross-validation: pass "
                           f"fewer --folds (≥ 2), or more labels")
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    probs = np.zeros(y.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for fit_rows, held_out in KFold(folds, shuffle=True, random_state=seed).split(x):
            probs[held_out] = per_class_probs(x[fit_rows], y[fit_rows], x[held_out])
    return probs


def find_multilabel_issues(label_sets: list[tuple[int, ...]], probs: np.ndarray, *, rank_by: str = "self_confidence",
                           filter_by: str = "prune_by_noise_rate", source: str = "") -> LabelIssues:
    """:func:`find_issues` for several labels per image: Cleanlab's ``find_label_issues(..., multi_label=True)``
    and its multi-label quality score (``cleanlab.multilabel_classification``) on per-class out-of-sample
    probabilities. ``given``/``suggested`` hold label sets (the suggestion: the classes with p ≥ 0.5);
    ``given_prob`` is the probability the model gives the given answer for the class it doubts most, and
    ``suggested_prob`` the same for the suggestion."""
    require_cleanlab()
    from cleanlab.filter import find_label_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    if rank_by not in RANK_BY:
        raise SemivitError(f"unknown --rank-by '{rank_by}': use one of {', '.join(RANK_BY)}")
    if filter_by not in FILTER_BY:
        raise SemivitError(f"unknown --filter-by '{filter_by}': use one of {', '.join(FILTER_BY)}")
    labels = [sorted(int(c) for c in s) for s in label_sets]
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flagged = np.asarray(find_label_issues(labels, p, multi_label=True, filter_by=filter_by,
                                               return_indices_ranked_by=rank_by, n_jobs=1), dtype=np.int64)
        quality = get_label_quality_scores(labels, p, method=rank_by)
    given = np.zeros(p.shape, dtype=bool)
    for row, present in enumerate(labels):
        given[row, present] = True
    suggested = p >= 0.5
    agree = np.where(given, p, 1 - p).min(1)
    sure = np.maximum(p, 1 - p).min(1)
    sets = np.empty(len(labels), dtype=object)
    sets[:] = [tuple(r) for r in labels]
    suggestions = np.empty(len(labels), dtype=object)
    suggestions[:] = [tuple(np.nonzero(row)[0].tolist()) for row in suggested]
    return LabelIssues(indices=flagged, given=sets[flagged], suggested=suggestions[flagged], quality=quality[flagged],
                       given_prob=agree[flagged], suggested_prob=sure[flagged], checked=len(labels), source=source)


def precision_recall(flagged: np.ndarray, wrong: np.ndarray) -> tuple[float, float]:
    """Precision and recall of the flagged images against the truly wrong ones (a simulation's flipped
    labels): precision = right flags / flags, recall = right flags / wrong labels (0 where undefined)."""
    hit = len(set(np.asarray(flagged).tolist()) & set(np.asarray(wrong).tolist()))
    return (hit / len(flagged) if len(flagged) else 0.0, hit / len(wrong) if len(wrong) else 0.0)
