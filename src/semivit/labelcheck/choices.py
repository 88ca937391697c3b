"""The choices ``semivit labelcheck`` offers, apart from the code that needs numpy or torch (the command line's
parser reads them, and must start fast)."""

#: Cleanlab's orderings of the flagged images (``return_indices_ranked_by``), worst first
RANK_BY = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
#: Cleanlab's rules for which images to flag (``filter_by``); prune_by_noise_rate is its default
FILTER_BY = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
             "low_normalized_margin", "low_self_confidence")
#: where the out-of-sample probabilities come from (semivit.labelcheck.sources)
PROBS = ("kfold", "teacher")
