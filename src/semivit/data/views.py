"""The named views a method asks for (:attr:`~semivit.methods.base.DataRequest.labeled_views` and
``unlabeled_views``), made from a batch by the augmentations of :mod:`semivit.data.augment`.

Examples:
    >>> import torch
    >>> x = torch.rand(4, 3, 32, 32)
    >>> make_view("weak", x, torch.Generator().manual_seed(0), flip=True).shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from semivit.data.augment import contrastive, multicrop_large, multicrop_small, strong, weak

# "none" is the batch as it is (evaluation view; draws no randomness).
_VIEWS: dict[str, Callable[..., torch.Tensor]] = {"none": lambda x, generator, flip: x, "weak": weak,
                                                   "strong": strong, "contrastive": contrastive,
                                                   "large": multicrop_large, "small": multicrop_small}
VIEW_NAMES: tuple[str, ...] = tuple(_VIEWS)


def make_view(name: str, x: torch.Tensor, generator: torch.Generator | None, flip: bool,
              **kwargs: object) -> torch.Tensor:
    """The view ``name`` (one of :data:`VIEW_NAMES`) of batch ``x``; ``kwargs`` go to the view's function.
    ``flip=False`` turns horizontal flips off (digits, text). Raises ValueError for an unknown name."""
    try:
        fn = _VIEWS[name]
    except KeyError:
        raise ValueError(f"unknown view '{name}': use one of {', '.join(VIEW_NAMES)}") from None
    return fn(x, generator, flip=flip, **kwargs)
