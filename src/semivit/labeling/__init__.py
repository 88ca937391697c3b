"""The labeling loop: which images to label next (``semivit suggest``), a review of the teacher's
pseudo-labels (``semivit pseudolabels``), and the merge of a person's labels into the next run's data."""

from semivit.labeling.merge import merge_labels, read_labels
from semivit.labeling.pool import Pool, pool_from_data, pool_from_run
from semivit.labeling.pseudo import PseudoLabels, pseudo_labels
from semivit.labeling.suggest import Suggestion, suggest

__all__ = ["Pool", "PseudoLabels", "Suggestion", "merge_labels", "pool_from_data", "pool_from_run", "pseudo_labels",
           "read_labels", "suggest"]
