"""Temporally consistent spatial augmentation (CVRL, Qian et al. 2021, Sec. 3.3), batched on the device.

One random draw per *clip* — crop box, flip, colour jitter, grayscale, blur, solarization — applied
identically to every frame of that clip: drawing per frame would make the crop jump and the colours
flicker, motion the network would then have to learn to ignore (the paper's ablation finds per-frame
augmentation clearly worse on Kinetics-400). The pieces are the image pipeline's
own (:mod:`semivit.data.augment`): the parameters are drawn for a B-clip batch and repeated over the T
frames, so one ``grid_sample`` crops every frame, one batched matrix product colours them, and the blur is
one grouped convolution whose per-clip kernel covers all T·C channels of the clip.

Settings follow the official code (``video_ssl_input._process_image``): crop of 30–100% of the area with
aspect 1/2–2, flip, colour jitter of strength 1 with prob. 0.8, grayscale 0.2; blur with prob. 1.0 on the
first view and 0.1 on the second, solarization 0.2 on the second (the asymmetric BYOL-style pair).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semivit.data.augment import crop_theta, gaussian_blur, jitter_matrix, size_pair, uniform, warp


@dataclass
class ClipAugment:
    """Parameters of one clip view (the defaults are CVRL's first view; see :func:`cvrl_views`)."""

    scale: tuple[float, float] = (0.3, 1.0)
    ratio: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter_strength: float = 1.0
    p_jitter: float = 0.8
    p_gray: float = 0.2
    p_blur: float = 1.0
    p_solarize: float = 0.0
    #: the ablation the paper argues against (Sec. 3.3): an independent draw for every frame
    per_frame: bool = False


def cvrl_views(flip: bool = True, blur: bool = True, per_frame: bool = False) -> tuple[ClipAugment, ClipAugment]:
    """CVRL's two views; ``blur=False`` drops the blur (it erases most of a 32-px frame); ``per_frame``
    draws every frame's augmentation independently (the ablation of Sec. 3.3)."""
    return (ClipAugment(flip=flip, p_blur=1.0 if blur else 0.0, per_frame=per_frame),
            ClipAugment(flip=flip, p_blur=0.1 if blur else 0.0, p_solarize=0.2, per_frame=per_frame))


def finetune_view(flip: bool = True) -> ClipAugment:
    """Fine-tuning / supervised view: crop and flip only (the official fine-tuning pipeline)."""
    return ClipAugment(flip=flip, p_jitter=0.0, p_gray=0.0, p_blur=0.0)


def augment_clips(clips: torch.Tensor, generator: torch.Generator | None, aug: ClipAugment,
                  out_size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Augment a float batch of clips B×T×C×H×W in [0, 1] with one draw per clip (every frame of clip b
    gets clip b's crop, flip, colour matrix, blur and solarization). Returns B×T×C×h×w in [0, 1]."""
    if clips.dim() != 5 or not clips.is_floating_point():
        raise ValueError(f"expected a float B×T×C×H×W batch of clips in [0, 1], got {clips.dtype} "
                         f"{tuple(clips.shape)}")
    b, t, c = clips.shape[:3]
    if aug.per_frame:  # every frame its own "clip" of one frame
        one = ClipAugment(**{**aug.__dict__, "per_frame": False})
        out = augment_clips(clips.reshape(b * t, 1, c, *clips.shape[-2:]), generator, one, out_size)
        return out.view(b, t, *out.shape[2:])
    mean_frame = clips.mean(1)  # a B×C×H×W stand-in: draws depend on the batch shape only
    theta = crop_theta(mean_frame, generator, aug.scale, aug.ratio)
    flipped = uniform(generator, mean_frame, b) < (0.5 if aug.flip else 0.0)
    theta[:, 0, 0] = torch.where(flipped, -theta[:, 0, 0], theta[:, 0, 0])  # mirror the sampling grid
    h, w = size_pair(out_size, mean_frame)
    frames = warp(clips.reshape(b * t, c, *clips.shape[-2:]), theta.repeat_interleave(t, 0), (h, w))
    x = frames.view(b, t, c, h, w)
    # contrast blends towards the clip's mean grey (over all its frames), so it too is one per clip
    m, offset = jitter_matrix(x.mean(1), generator, aug.jitter_strength, aug.p_jitter, aug.p_gray)
    x = torch.baddbmm(offset.to(x.dtype).view(b, 1, 1), m.to(x.dtype), x.transpose(1, 2).reshape(b, c, -1))
    x = x.view(b, c, t, h, w).transpose(1, 2).clamp_(0, 1)
    if aug.p_blur > 0:  # the clip's T·C channels as one sample: one σ per clip
        x = gaussian_blur(x.reshape(b, t * c, h, w), generator, aug.p_blur).view(b, t, c, h, w).clamp_(0, 1)
    if aug.p_solarize > 0:
        sol = (uniform(generator, x, b) < aug.p_solarize).view(b, 1, 1, 1, 1)
        x = torch.where(sol & (x >= 0.5), 1 - x, x)
    return x.contiguous()
