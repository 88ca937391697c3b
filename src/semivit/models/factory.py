"""``create_model``: one registry for every backbone, built from a few arguments (timm-style).

Every model semivit trains is an :class:`ImageClassifier`: a timm backbone plus the normalisation of its
training data (as buffers), so a saved ``.safetensors`` file is self-contained — ``predict`` needs no
dataset statistics. Models take float images in [0, 1].
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import timm
import torch
from torch import nn

from semivit.config import ModelConfig
from semivit.errors import SemivitError
from semivit.models.sizes import VIT_SIZES

log = logging.getLogger("semivit")

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
#: name prefix → builder(spec, mean, std, **sizes) of model families with their own module, registered by that
#: module (models/semiformer.py) so this one never imports them back
MODEL_FAMILIES: dict[str, Any] = {}


def default_patch_size(image_size: int) -> int:
    """A patch size that gives a useful number of tokens: 8×8 → 4 (4 tokens), 16 → 2, 32 → 4 (64), 224 → 16
    (196), 512 → 32 (256).

    8×8 digits get 4×4-pixel patches: with 2×2 patches a ViT reached ~40% validation top-1 with 4 labels
    per class against ~81% with 4×4 (and ran 2× slower) — see benchmarks/RESULTS.md. Above 256 px, 32-px
    patches keep the sequence at ≤ 256 tokens: a recipe sized for small images stays affordable on large ones
    (attention grows with the square of the tokens), as ViT-B/32 does at 384 px.
    """
    if image_size <= 8:
        return 4 if image_size % 4 == 0 else 2
    if image_size <= 16:
        return 2
    if image_size <= 32:
        return 4
    if image_size <= 64:
        return 8
    if image_size <= 256:
        return 16
    return 32


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model (stored in checkpoints' metadata)."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    # several labels per image: sigmoid outputs, and each class's decision threshold (chosen on the validation
    # split at the end of training; empty = 0.5), which predict and the ONNX export apply
    multilabel: bool = False
    thresholds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.multilabel:  # single-label specs keep the fields they always had
            del out["multilabel"], out["thresholds"]
        return out

    def decision_thresholds(self) -> list[float]:
        """Each class's threshold on σ(logit) (0.5 where none was chosen)."""
        return list(self.thresholds) if self.thresholds else [0.5] * self.num_classes


class ImageClassifier(nn.Module):
    """A backbone with its input normalisation; ``forward`` gives logits, ``features`` pooled features.

    ``embedding`` (optional, None by default) is the representation a pre-training method trained, when it
    is not the pooled features: PAWS's projector output, which its soft nearest-neighbour classifier reads
    (facebookresearch/suncet ``snn_eval.py``: ``z = encoder(imgs)``, the ``fc`` projection head's output).
    :meth:`embed` runs it after the kept projection-head layers; it is saved with the weights and rebuilt
    from ``spec.kwargs["embedding"]`` (see :meth:`attach_embedding`), and never touches ``forward``, so a
    model fine-tuned from the export ignores it.
    """

    embedding: nn.Module | None
    outlier_head: nn.Module | None  # OpenMatch's one-vs-all heads, when the run trained them (models/outlier.py)

    def __init__(self, backbone: nn.Module, spec: ModelSpec, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.backbone, self.spec = backbone, spec
        c = spec.in_chans
        self.register_buffer("mean", (mean if mean is not None else torch.full((c,), 0.5)).view(1, c, 1, 1))
        self.register_buffer("std", (std if std is not None else torch.full((c,), 0.25)).view(1, c, 1, 1))
        self.embedding = self.outlier_head = None

    @property
    def classifier_attr(self) -> str:
        """The backbone attribute that holds the classifier (timm's ``pretrained_cfg["classifier"]``)."""
        return (getattr(self.backbone, "pretrained_cfg", None) or {}).get("classifier", "head")

    def head_layers(self) -> list[nn.Module]:
        """The projection-head layers kept before the classifier (:func:`attach_head_layers`), or []."""
        head = getattr(self.backbone, self.classifier_attr, None)
        return list(head)[:-1] if isinstance(head, nn.Sequential) else []

    def attach_embedding(self, desc: dict[str, Any], module: nn.Module | None = None) -> nn.Module:
        """Install the embedding described by ``desc`` and record it in the spec (so ``spec_check.model_from_spec``
        rebuilds it); returns the module. ``desc`` describes projection-head blocks ``start:`` of a
        :class:`~semivit.models.heads.ProjectionHead` (``in_dim``, ``hidden_dim``, ``out_dim``,
        ``num_layers``, ``start``, ``last_bn``); ``module`` is the already-built module (a method passes
        the layers it trains), else fresh layers of that shape are built (to load saved weights into)."""
        from semivit.models.heads import ProjectionHead

        keys = ("in_dim", "hidden_dim", "out_dim", "num_layers", "start", "last_bn")
        if set(desc) != set(keys):
            raise SemivitError(f"an embedding description needs exactly {', '.join(keys)}; got {sorted(desc)}")
        if module is None:
            head = ProjectionHead(desc["in_dim"], desc["hidden_dim"], desc["out_dim"], desc["num_layers"],
                                  last_bn=desc["last_bn"])
            module = nn.Sequential(*head.blocks[desc["start"]:])
        self.embedding = module
        self.spec.kwargs["embedding"] = dict(desc)
        return module

    def classifier_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the final linear classifier reads: the pooled features after the kept head layers."""
        h = self.features(x)
        for layer in self.head_layers():
            h = layer(h)
        return h

    def classifier(self) -> nn.Linear:
        """The final linear classifier (the last layer of the backbone's head)."""
        head = getattr(self.backbone, self.classifier_attr, None)
        last = head[-1] if isinstance(head, nn.Sequential) else head
        if not isinstance(last, nn.Linear):
            raise SemivitError(f"model '{self.spec.name}' has no single linear classifier "
                               f"({type(last).__name__}): model.head_init=imprint needs one")
        return last

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The representation to evaluate (k-NN, linear probe, soft nearest neighbours): the pooled
        features, or with an ``embedding`` the output of features → kept head layers → embedding."""
        if self.embedding is None:
            return self.features(x)
        return self.embedding(self.classifier_input(x))

    @property
    def is_vit(self) -> bool:
        return hasattr(self.backbone, "blocks") and hasattr(self.backbone, "patch_embed")

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with the stored mean/std, then (pretrained backbones whose native resolution the data
        does not have) resize to the backbone's input size: ``spec.kwargs['backbone_size']``, see
        :func:`semivit.models.hub.choose_resolution`. Resizing inside the model keeps stored images small
        and makes ``predict``, ONNX and training see one preprocessing."""
        x = (x - self.mean) / self.std
        target = self.spec.kwargs.get("backbone_size")
        if target and target != self.spec.image_size:
            scale = target / self.spec.image_size
            size = [round(s * scale) for s in x.shape[-2:]]
            if self.is_vit:  # whole patches: multi-crop's small views scale to a patch multiple too
                patch = self.backbone.patch_embed.patch_size[0]
                size = [max(patch, round(s / patch) * patch) for s in size]
            # the backbone's pretraining interpolation (timm's pretrained_cfg: bicubic for EfficientNet, ViTs),
            # antialiased when shrinking
            mode = self.spec.kwargs.get("interpolation", "bilinear")
            mode = mode if mode in ("bilinear", "bicubic") else "bilinear"
            x = nn.functional.interpolate(x, size=size, mode=mode, align_corners=False,
                                          antialias=size[0] < x.shape[-2])
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features (B×num_features). ViTs also take images of another size (a multiple
        of the patch size: multi-crop's small views), with the position embeddings resampled to fit."""
        x = self.normalize(x)
        size = self.spec.kwargs.get("backbone_size") or self.spec.image_size
        if self.is_vit and tuple(x.shape[-2:]) != (size, size):
            tokens = self._vit_tokens_any_size(x)
        else:
            tokens = self.backbone.forward_features(x)
        return self.backbone.forward_head(tokens, pre_logits=True)

    def _vit_tokens_any_size(self, x: torch.Tensor) -> torch.Tensor:
        """A ViT's tokens for an image of another size than its own: timm's own position-embedding code on its
        ``dynamic_img_size`` path (class and register tokens, ``no_embed_class``, the grid resampled), switched
        on for this call only, so a model built for one size keeps its fixed-size fast path elsewhere."""
        vit = self.backbone
        patch = vit.patch_embed.patch_size[0]
        if x.shape[-1] % patch or x.shape[-2] % patch:
            raise ValueError(f"a {tuple(x.shape[-2:])} image is not a multiple of the {patch}-px patch")
        t = vit.patch_embed.norm(vit.patch_embed.proj(x).permute(0, 2, 3, 1))  # B×h×w×D, as that path takes it
        was = vit.dynamic_img_size
        vit.dynamic_img_size = True
        try:
            t = vit._pos_embed(t)
        finally:
            vit.dynamic_img_size = was
        return vit.norm(vit.blocks(vit.norm_pre(vit.patch_drop(t))))

    #: the names :meth:`heads` returns, the main prediction first (what ``forward`` gives)
    head_names: tuple[str, ...] = ("logits",)

    def heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every prediction head's logits, keyed by :attr:`head_names`, the main one first: one for a plain
        classifier; a dual-stream Semiformer reports its fused, conv and transformer heads. Evaluation,
        prediction and methods read heads through this, never by probing a model's attributes."""
        return {"logits": self(x)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean.view_as(self.mean))
        self.std.copy_(std.clamp_min(1e-3).view_as(self.std))


def wrap_module(module: nn.Module, num_classes: int, in_chans: int, image_size: int,
                classes: list[str] | None = None) -> ImageClassifier:
    """Your own network as a semivit classifier, trained as it is: ``module`` maps N×C×H×W inputs to N×K logits.
    A timm model keeps the mean/std of its ``pretrained_cfg``; any other module gets images in [0, 1]
    (mean 0, std 1: normalise inside it if it needs to). The run exports its weights with the spec
    ``external:CLASS``; load them back into your own module (``load_state_dict``).

    Examples:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        >>> wrap_module(net, 10, 1, 8)(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    if isinstance(module, ImageClassifier):
        return module
    cfg = getattr(module, "pretrained_cfg", None) or {}
    spec = ModelSpec(f"external:{type(module).__name__}", num_classes, in_chans, image_size, {}, list(classes or []))
    mean = torch.tensor(cfg["mean"], dtype=torch.float32)[:in_chans] if "mean" in cfg else torch.zeros(in_chans)
    std = torch.tensor(cfg["std"], dtype=torch.float32)[:in_chans] if "std" in cfg else torch.ones(in_chans)
    return ImageClassifier(module, spec, mean, std)


def vit_patch_size(image_size: int, patch_size: int | None, embed_dim: int, num_heads: int) -> int:
    """The patch size (given, or the default for the image size), after checking that the image divides
    into whole patches and the width into whole heads."""
    patch = patch_size or default_patch_size(image_size)
    if image_size % patch:
        raise SemivitError(f"image size {image_size} is not divisible by patch size {patch}: set "
                           f"model.patch_size to a divisor of {image_size} or data.image_size")
    if embed_dim % num_heads:
        raise SemivitError(f"model.embed_dim {embed_dim} is not divisible by model.num_heads {num_heads}")
    return patch


def _vit(name: str, spec: ModelSpec, patch_size: int | None, embed_dim: int | None, depth: int | None,
         num_heads: int | None, drop_path: float) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    base = VIT_SIZES[name]
    embed_dim, depth, num_heads = embed_dim or base[0], depth or base[1], num_heads or base[2]
    patch = vit_patch_size(spec.image_size, patch_size, embed_dim, num_heads)
    spec.kwargs.update(patch_size=patch, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                       drop_path=drop_path)
    # Global average pooling, as in MAE fine-tuning and Semi-ViT; sin-cos-free learned pos-embed here,
    # MAE pre-training overwrites it with fixed sin-cos values.
    return VisionTransformer(img_size=spec.image_size, patch_size=patch, in_chans=spec.in_chans,
                             num_classes=spec.num_classes, embed_dim=embed_dim, depth=depth,
                             num_heads=num_heads, drop_path_rate=drop_path, global_pool="avg")


def _resnet(name: str, spec: ModelSpec, drop_path: float) -> nn.Module:
    model = timm.create_model(name, pretrained=False, num_classes=spec.num_classes, in_chans=spec.in_chans,
                              drop_path_rate=drop_path)
    if spec.image_size <= 64:
        # CIFAR-style stem: a 7×7/2 conv and a max-pool would shrink 32×32 images to 8×8 at once.
        model.conv1 = nn.Conv2d(spec.in_chans, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    spec.kwargs.update(drop_path=drop_path)
    return model


def create_model(name: str, num_classes: int, in_chans: int = 3, image_size: int = 32, *,
                 patch_size: int | None = None, embed_dim: int | None = None, depth: int | None = None,
                 num_heads: int | None = None, drop_path: float = ModelConfig.drop_path,
                 classes: list[str] | None = None, mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                 head_layers: int = 0,
                 head_hidden: int | None = None, pretrained: bool = False, cache_dir: str | None = None,
                 resolution: str = "auto", hub: Any = None) -> ImageClassifier:
    """Build a classifier: a semivit ViT size (``vit_nano`` … ``vit_huge``), a ResNet, any timm name, or a
    pretrained backbone (a tagged timm name, ``hf-hub:ORG/NAME``, ``local-dir:FOLDER``; see
    :mod:`semivit.models.hub`).

    ``pretrained`` loads the backbone's published weights (from the cache, else downloaded into
    ``cache_dir``) and its mean/std; ``resolution`` decides the size it runs at (see
    :func:`~semivit.models.hub.choose_resolution`). ``hub`` (a resolved :class:`~semivit.models.hub.HubModel`)
    rebuilds a saved pretrained architecture without reading any config. ``head_layers`` > 0 puts that many
    projection-head layers (Linear–BN–ReLU, ``head_hidden`` wide) between the pooled features and the
    classifier: SimCLRv2 fine-tunes "from the first layer of the projection head" this way.
    """
    import semivit.models.hub as hubs

    spec = ModelSpec(name, num_classes, in_chans, image_size, {}, list(classes or []))
    if hub is not None or pretrained or hubs.is_pretrained_name(name):
        return _hub_model(hub or hubs.resolve(name, cache_dir), spec, pretrained=pretrained, cache_dir=cache_dir,
                          resolution=resolution, drop_path=drop_path, mean=mean, std=std,
                          head_layers=head_layers, head_hidden=head_hidden, patch_size=patch_size)
    family = next((f for prefix, f in MODEL_FAMILIES.items() if name.startswith(prefix)), None)
    if family is not None:  # a family with its own wrapper (Semiformer's dual-stream model)
        if head_layers > 0:
            raise SemivitError(f"model.head_layers is not supported by {name}")
        return family(spec, mean, std, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                      num_heads=num_heads, drop_path=drop_path)
    if name in VIT_SIZES:
        backbone = _vit(name, spec, patch_size, embed_dim, depth, num_heads, drop_path)
    elif name in RESNETS:
        backbone = _resnet(name, spec, drop_path)
    elif timm.is_model(name):
        kwargs: dict[str, Any] = {"drop_path_rate": drop_path}
        if "vit" in name or "deit" in name:
            kwargs["img_size"] = image_size
            if patch_size:
                kwargs["patch_size"] = patch_size
        backbone = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                     **kwargs)
        spec.kwargs.update({k: v for k, v in kwargs.items() if k != "img_size"})
    else:
        import difflib

        known = [*VIT_SIZES, *RESNETS]
        near = difflib.get_close_matches(name, known + timm.list_models(), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise SemivitError(f"unknown model '{name}'{hint}: use one of {', '.join(known)} or a timm name")
    return _with_head_layers(ImageClassifier(backbone, spec, mean, std), head_layers, head_hidden)


def _hub_model(hub: Any, spec: ModelSpec, *, pretrained: bool, cache_dir: str | None, resolution: str,
               drop_path: float, mean: torch.Tensor | None, std: torch.Tensor | None, head_layers: int,
               head_hidden: int | None, patch_size: int | None) -> ImageClassifier:
    """A timm backbone named by a pretrained source (see :mod:`semivit.models.hub`), wrapped with its
    pretraining mean/std and, when its resolution differs from the data's, a resize inside the model."""
    import semivit.models.hub as hubs

    own_patch = hub.patch_size
    if patch_size and own_patch and patch_size != own_patch:
        raise SemivitError(f"model.patch_size {patch_size} differs from the pretrained backbone's {own_patch} px: "
                           f"a pretrained ViT keeps its patch size; unset model.patch_size")
    size, why = hubs.choose_resolution(hub, spec.image_size, resolution)
    if pretrained:
        log.info("%s: %s", hub.name, why)
    backbone = hubs.create_backbone(hub, spec.num_classes, spec.in_chans, size, pretrained=pretrained,
                                    drop_path=drop_path, cache_dir=cache_dir)
    spec.kwargs.update(hubs.spec_kwargs(hub, size), drop_path=drop_path, resolution=str(resolution),
                       interpolation=str(hub.pretrained_cfg.get("interpolation") or "bilinear"))
    if pretrained and mean is None:
        mean, std = hubs.normalization(hub, spec.in_chans)
    return _with_head_layers(ImageClassifier(backbone, spec, mean, std), head_layers, head_hidden)


def _with_head_layers(model: ImageClassifier, head_layers: int, head_hidden: int | None) -> ImageClassifier:
    """``model`` with ``head_layers`` fresh projection-head layers (Linear–BN–ReLU, ``head_hidden`` wide)
    before its classifier, when > 0."""
    if head_layers > 0:
        from semivit.models.heads import ProjectionHead

        hidden = head_hidden or model.num_features
        attach_head_layers(model, list(ProjectionHead(model.num_features, hidden, hidden, head_layers + 1)
                                       .blocks[:head_layers]), hidden)
    return model


def attach_head_layers(model: ImageClassifier, layers: list[nn.Module], hidden: int) -> None:
    """Insert ``layers`` (projection-head blocks, output width ``hidden``) before a new linear classifier,
    and record them in the spec so the model can be rebuilt."""
    setattr(model.backbone, model.classifier_attr, nn.Sequential(*layers, nn.Linear(hidden, model.spec.num_classes)))
    model.spec.kwargs.update(head_layers=len(layers), head_hidden=hidden)


def set_head_dropout(model: ImageClassifier, rate: float) -> None:
    """Dropout with probability ``rate`` on the pooled features before the classifier (training mode only):
    Noisy Student's dropout noise on the student's final layer (Xie et al. 2020, Sec. 2). Has no weights,
    so saved models are unchanged; ViTs (timm's ``head_drop``) and timm CNNs with a ``drop_rate``."""
    if not 0.0 <= rate < 1.0:
        raise SemivitError(f"dropout must be in [0, 1), got {rate}")
    backbone = model.backbone
    if hasattr(backbone, "head_drop"):
        backbone.head_drop = nn.Dropout(rate)
    elif hasattr(backbone, "drop_rate"):
        backbone.drop_rate = rate
    elif rate > 0:
        raise SemivitError(f"model '{model.spec.name}' has no classifier dropout to set")
