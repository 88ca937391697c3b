"""Where clips start: CVRL's temporal interval sampling for the two pre-training clips, a random clip for
fine-tuning and evenly spaced clips for evaluation.

Temporal interval sampling (Qian et al. 2021, Sec. 3.2): draw the gap t between the two clips'
start frames from a monotonically decreasing distribution over [0, M], then the first start uniformly in
[0, M − t] and the second t later (which clip is the first view is random). The paper compares
decreasing, uniform and increasing distributions and keeps the decreasing one, P(t) ∝ −t + c. With
M = L − (n−1)·s the number of valid starts (L frames, clips of n frames at stride s), the official code
(tensorflow/models ``video_ssl_preprocess_ops.sample_ssl_sequence``) samples t by inverting the CDF

    F(t) = ((p+1)·x − x^(p+1)) / p,   x = t/M,   i.e. the density  f(t) = (p+1)(1 − x^p) / (p·M)

with power p = 1: f(t) = 2(M − t)/M², linear, largest at t = 0 and zero at t = M (c = M). Here t is
⌊F⁻¹(u)⌋ with u ~ U[0, 1), so P(t = d) = F((d+1)/M) − F(d/M) for the integer gaps d = 0..M−1
(:func:`interval_probabilities`, what the tests check against). ``power`` generalises the shape as the
official code does (p → ∞: uniform); ``power = 0`` gives the uniform-gap baseline of the paper's
comparison. A video shorter than one clip has M = L; both starts are then uniform and the frames wrap
around, as the official code tiles short sequences.
"""

from __future__ import annotations

import torch


def interval_cdf(x: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """F(x) of the gap as a fraction x = t/M of the span (see the module docstring); x in [0, 1]."""
    x = x.clamp(0, 1)
    if power == 0:  # the uniform-gap baseline
        return x
    return ((power + 1) * x - x.pow(power + 1)) / power


def interval_probabilities(max_offset: int, power: float = 1.0) -> torch.Tensor:
    """P(gap = d) for d = 0..M−1 under :func:`sample_intervals` (M = ``max_offset``)."""
    edges = torch.arange(max_offset + 1, dtype=torch.float64) / max_offset
    return interval_cdf(edges, power).diff()


def _inverse_cdf(u: torch.Tensor, power: float) -> torch.Tensor:
    """x with F(x) = u, elementwise: closed form for p = 1 (x = 1 − √(1 − u)), bisection otherwise."""
    if power == 0:
        return u
    if power == 1:
        return 1 - (1 - u).clamp_min(0).sqrt()
    lo, hi = torch.zeros_like(u), torch.ones_like(u)
    for _ in range(48):  # F is increasing on [0, 1]; 48 halvings reach float64 precision
        mid = (lo + hi) / 2
        below = interval_cdf(mid, power) < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def sample_intervals(max_offsets: torch.Tensor, generator: torch.Generator | None = None,
                     power: float = 1.0) -> torch.Tensor:
    """Integer gaps d ∈ [0, M−1] per video (``max_offsets``: M per video), P(d) as in
    :func:`interval_probabilities`."""
    u = torch.rand(max_offsets.shape, generator=generator, dtype=torch.float64)
    m = max_offsets.to(torch.float64)
    return torch.minimum((_inverse_cdf(u, power) * m).floor(), m - 1).long().clamp_min(0)


def clip_span(num_frames: int, stride: int) -> int:
    """Frames one clip covers: (n − 1)·s + 1."""
    return (num_frames - 1) * stride + 1


def sample_clip_pair(lengths: torch.Tensor, num_frames: int, stride: int = 1,
                     generator: torch.Generator | None = None,
                     power: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame indices (B×n each) of CVRL's two clips per video of ``lengths`` (B,): the gap between their
    starts drawn by :func:`sample_intervals`, the pair placed uniformly, the order of the pair random."""
    lengths = lengths.long()
    fits = lengths >= clip_span(num_frames, stride)
    max_offset = torch.where(fits, lengths - (num_frames - 1) * stride, lengths)
    gap = sample_intervals(max_offset, generator, power)
    u = torch.rand((3, len(lengths)), generator=generator, dtype=torch.float64)
    first = (u[0] * (max_offset - gap)).floor().long()
    second = first + gap
    # a video shorter than one clip: two independent uniform starts (frames wrap around below)
    other = (u[1] * lengths).floor().long()
    second = torch.where(fits, second, other)
    swap = u[2] < 0.5
    start1, start2 = torch.where(swap, second, first), torch.where(swap, first, second)
    steps = torch.arange(num_frames) * stride
    return ((start1[:, None] + steps) % lengths[:, None], (start2[:, None] + steps) % lengths[:, None])


def random_clip(lengths: torch.Tensor, num_frames: int, stride: int = 1,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices (B×n) of one clip per video with a uniform start (fine-tuning; wraps short videos)."""
    lengths = lengths.long()
    max_offset = (lengths - (num_frames - 1) * stride).clamp_min(1)
    start = (torch.rand(len(lengths), generator=generator, dtype=torch.float64) * max_offset).floor().long()
    return (start[:, None] + torch.arange(num_frames) * stride) % lengths[:, None]


def spaced_clips(length: int, num_frames: int, stride: int = 1, num_clips: int = 4) -> torch.Tensor:
    """Indices (K×n) of ``num_clips`` evenly spaced clips of one video (evaluation: the official code's
    ``sample_linspace_sequence``; features or predictions are averaged over them)."""
    max_start = max(length - clip_span(num_frames, stride), 0)
    starts = torch.linspace(0, max_start, num_clips).round().long()
    return (starts[:, None] + torch.arange(num_frames) * stride) % length
