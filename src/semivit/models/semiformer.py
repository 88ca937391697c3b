"""Semiformer's dual-stream network (Weng et al., "Semi-Supervised Vision Transformers", ECCV 2022,
arXiv 2111.11067, Sec. 3 and Fig. 2).

A convolutional stream and a Transformer stream run side by side and exchange features in every block
through the feature-coupling units (FCU) of Conformer (Peng et al., ICCV 2021), which Semiformer uses as its
fusion module. With x_i the conv map after block i and t_i the patch tokens:

    map → tokens (FCU-down):   t_i ← t_i + GELU(LN(AvgPool_grid(Conv1×1(x_i))))
    tokens → map (FCU-up):     x_i ← x_i + Upsample(ReLU(BN(Conv1×1(reshape(t_i')))))

where t_i' are the tokens after Transformer block i. Each stream ends in its own classifier: the conv head on
the globally average-pooled map, the Transformer head on the mean of the patch tokens (LayerNorm, then
linear, as semivit's ViTs). At test time the paper fuses the two heads by summing their probabilities:

    p_fused = ½ (softmax(z_conv) + softmax(z_trans))

``forward`` returns **log p_fused** (a log-probability vector): softmax of it gives back p_fused exactly, its
argmax is the argmax of the summed probabilities, so top-1/top-5, calibration and ``predict`` confidences of
the fused prediction come out of the usual code paths. :meth:`Semiformer.stream_logits` gives each head.

Where this differs from the reference network (said here so results are read correctly):

* The Transformer stream embeds patches from the image (a ViT patch embedding) instead of from the conv stem,
  and its keys follow timm's ViT layout (``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks.N``,
  ``fc_norm``, ``head``), so a semivit ViT of the same width (e.g. one MAE pre-trained) loads into it.
* The up-coupled map is added to the conv map and read by the next block's conv block, rather than by an
  extra fusion conv block inside each unit (half the conv compute per unit).
* Small images (≤ 64 px) get a 3×3 stride-1 stem instead of the 7×7/2 conv + max-pool (as semivit's ResNets),
  and the conv map is never made coarser than the token grid: the last stage sits at the grid's resolution,
  as in the reference (56 → 28 → 14 with 16-px patches on 224-px images).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from semivit.config import ModelConfig
from semivit.errors import SemivitError
from semivit.models.factory import MODEL_FAMILIES, ImageClassifier, ModelSpec, vit_patch_size


@dataclass(frozen=True)
class SemiformerSize:
    """Transformer stream (embed_dim, depth, heads), conv stream (stem width, channels of its 3 stages)."""

    embed_dim: int
    depth: int
    num_heads: int
    stem_channels: int
    conv_channels: tuple[int, int, int]


SEMIFORMER_SIZES: dict[str, SemiformerSize] = {
    # CPU runs on small images: a vit_nano Transformer stream beside a narrow bottleneck conv stream (on
    # 8×8 digits a training step costs ~1.9× vit_nano's; twice these widths cost ~2.8×).
    "semiformer_tiny": SemiformerSize(96, 6, 3, 32, (32, 64, 128)),
    # The paper's model: ViT-S (384-d, 12 blocks, 6 heads) with Conformer-S's conv stream
    # (64-channel stem, 256 / 512 / 1024 channels), 16-px patches at 224 px.
    "semiformer_small": SemiformerSize(384, 12, 6, 64, (256, 512, 1024)),
}
STREAMS = ("conv", "transformer")


def fuse_logits(conv: torch.Tensor, transformer: torch.Tensor) -> torch.Tensor:
    """log(½(softmax(conv) + softmax(transformer))): the fused prediction of the two heads (paper, Sec. 3)."""
    both = torch.stack([conv.float().log_softmax(-1), transformer.float().log_softmax(-1)])
    return torch.logsumexp(both, 0) - math.log(2.0)


class ConvBlock(nn.Module):
    """Bottleneck residual block (1×1 → 3×3 → 1×1, inner width out/4), as the conv stream of Conformer."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        from timm.layers import DropPath

        mid = max(out_ch // 4, 8)
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        nn.init.zeros_(self.body[-1].weight)  # each block starts as the identity (plus its shortcut)
        self.shortcut = (nn.Identity() if stride == 1 and in_ch == out_ch else
                         nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.drop_path(self.body(x)))


class CouplingDown(nn.Module):
    """FCU-down: conv map (B×C×H×W) → tokens (B×N×D): 1×1 conv, average pool to the token grid, LN, GELU."""

    def __init__(self, channels: int, embed_dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.proj = nn.Conv2d(channels, embed_dim, 1)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pooling first is the same function (a 1×1 conv and an average commute) at 1/k² of the cost; the
        # pool is an exact average over k×k cells when the map is k× the grid (the usual case).
        (h, w), (gh, gw) = x.shape[-2:], self.grid
        if (h, w) != (gh, gw):
            x = F.avg_pool2d(x, (h // gh, w // gw)) if h % gh == 0 and w % gw == 0 else \
                F.adaptive_avg_pool2d(x, self.grid)
        return F.gelu(self.norm(self.proj(x).flatten(2).transpose(1, 2)))


class CouplingUp(nn.Module):
    """FCU-up: patch tokens (B×N×D) → conv map (B×C×H×W): 1×1 conv on the token grid, BN, ReLU, upsample."""

    def __init__(self, embed_dim: int, channels: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.proj = nn.Conv2d(embed_dim, channels, 1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, d = tokens.shape
        x = tokens.transpose(1, 2).reshape(b, d, *self.grid)
        x = F.relu(self.bn(self.proj(x)))
        return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="nearest")


class Semiformer(nn.Module):
    """The dual-stream backbone; takes normalised images. ``depth`` coupled units, split into 3 conv stages
    (channels ``conv_channels``; each later stage halves the map while it stays at least the token grid)."""

    num_prefix_tokens = 1  # the class token (kept for timm-layout compatibility; the head pools patch tokens)

    def __init__(self, img_size: int, patch_size: int, in_chans: int, num_classes: int, embed_dim: int,
                 depth: int, num_heads: int, stem_channels: int, conv_channels: tuple[int, ...],
                 mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        from timm.layers import PatchEmbed, trunc_normal_
        from timm.models.vision_transformer import Block

        self.num_classes, self.embed_dim = num_classes, embed_dim
        # ---- Transformer stream (timm ViT layout)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid: tuple[int, int] = tuple(self.patch_embed.grid_size)  # type: ignore[assignment]
        num_patches = self.grid[0] * self.grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, embed_dim))
        rates = [float(r) for r in torch.linspace(0, drop_path, depth)]  # stochastic depth, as timm's ViT
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=rates[i],
                                            norm_layer=partial(nn.LayerNorm, eps=1e-6))
                                      for i in range(depth)])
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        # ---- Conv stream
        if img_size <= 64:  # CIFAR-style stem: keep the resolution of small images
            self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_channels, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True))
            size = img_size
        else:  # ResNet stem, 1/4 resolution (224 → 56)
            self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_channels, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
            size = (img_size + 3) // 4
        self.map_sizes: list[int] = []  # conv map side after each unit's conv block
        conv, down, up = [], [], []
        in_ch, stages = stem_channels, len(conv_channels)
        for i in range(depth):
            stage = i * stages // depth
            first = i == 0 or stage != (i - 1) * stages // depth
            stride = 2 if first and stage > 0 and size // 2 >= max(self.grid) else 1
            size = (size + stride - 1) // stride
            out_ch = conv_channels[stage]
            conv.append(ConvBlock(in_ch, out_ch, stride, rates[i]))
            down.append(CouplingDown(out_ch, embed_dim, self.grid))
            up.append(CouplingUp(embed_dim, out_ch, self.grid))
            self.map_sizes.append(size)
            in_ch = out_ch
        self.conv_blocks, self.down, self.up = nn.ModuleList(conv), nn.ModuleList(down), nn.ModuleList(up)
        self.conv_head = nn.Linear(in_ch, num_classes)
        self.conv_features = in_ch
        self.num_features = embed_dim + in_ch  # pooled features: [transformer, conv]
        # ---- initialisation (timm ViT: truncated normal 0.02; conv: He)
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d) and not name.startswith("patch_embed"):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both streams through every coupled unit; returns (tokens B×(1+N)×D, conv map B×C×h×w)."""
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1) + self.pos_embed
        m = self.stem(x)
        for conv, down, block, up in zip(self.conv_blocks, self.down, self.blocks, self.up):
            m = conv(m)
            t = torch.cat([t[:, :1], t[:, 1:] + down(m)], 1)  # map → patch tokens (the class token is kept)
            t = block(t)
            m = m + up(t[:, 1:], m.shape[-2:])  # tokens → map
        return t, m

    def pooled(self, feats: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, m = feats
        return self.fc_norm(tokens[:, 1:].mean(1)), m.mean((2, 3))

    def stream_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of each head: ``{"conv", "transformer", "fused"}`` (fused = log of the mean probabilities)."""
        trans, conv = self.pooled(self.forward_features(x))
        out = {"conv": self.conv_head(conv), "transformer": self.head(trans)}
        out["fused"] = fuse_logits(out["conv"], out["transformer"])
        return out

    def forward_head(self, feats: tuple[torch.Tensor, torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        trans, conv = self.pooled(feats)
        if pre_logits:
            return torch.cat([trans, conv], 1)
        return fuse_logits(self.conv_head(conv), self.head(trans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class DualStreamClassifier(ImageClassifier):
    """An :class:`ImageClassifier` whose ``forward`` is the fused prediction, with each stream on request."""

    @property
    def is_vit(self) -> bool:
        return False  # the Transformer stream depends on the conv stream: ViT-only methods (MAE) do not apply

    head_names = ("fused", "conv", "transformer")

    def stream_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"conv", "transformer", "fused"}`` logits for float images in [0, 1]."""
        return self.backbone.stream_logits(self.normalize(x))

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.stream_logits(x)
        return {name: out[name] for name in self.head_names}


def create_semiformer(spec: ModelSpec, mean: torch.Tensor | None = None, std: torch.Tensor | None = None, *,
                      patch_size: int | None = None, embed_dim: int | None = None, depth: int | None = None,
                      num_heads: int | None = None, drop_path: float = ModelConfig.drop_path) -> DualStreamClassifier:
    """Build ``spec.name`` (a :data:`SEMIFORMER_SIZES` key) with optional Transformer-stream overrides;
    records the settings in ``spec.kwargs`` so :func:`~semivit.models.spec_check.model_from_spec` rebuilds it."""
    if spec.name not in SEMIFORMER_SIZES:
        near = difflib.get_close_matches(spec.name, list(SEMIFORMER_SIZES), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise SemivitError(f"unknown model '{spec.name}'{hint}: Semiformer sizes are {', '.join(SEMIFORMER_SIZES)}")
    size = SEMIFORMER_SIZES[spec.name]
    embed_dim, depth, num_heads = embed_dim or size.embed_dim, depth or size.depth, num_heads or size.num_heads
    patch = vit_patch_size(spec.image_size, patch_size, embed_dim, num_heads)
    kwargs: dict[str, Any] = dict(patch_size=patch, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                                  drop_path=drop_path)
    spec.kwargs.update(kwargs)
    backbone = Semiformer(spec.image_size, patch, spec.in_chans, spec.num_classes, embed_dim, depth, num_heads,
                          size.stem_channels, size.conv_channels, drop_path=drop_path)
    return DualStreamClassifier(backbone, spec, mean, std)


MODEL_FAMILIES["semiformer"] = create_semiformer
