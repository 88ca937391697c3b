"""semivit's own ViT sizes registered with timm, so ``timm.create_model("vit_nano")`` builds the network
semivit trains (a ViT with global average pooling, as MAE fine-tuning and Semi-ViT use) and other timm-based
code can use those names. Called once when timm is imported after ``import semivit`` (semivit/__init__.py)."""

from __future__ import annotations

from typing import Any


def register_timm_models() -> list[str]:
    """Register each size of :data:`~semivit.models.sizes.VIT_SIZES` that timm does not know; returns the
    names registered (none on a second call)."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    from semivit.models.sizes import VIT_SIZES

    added = []
    for name, (embed_dim, depth, num_heads) in VIT_SIZES.items():
        if timm.is_model(name):
            continue

        def build(pretrained: bool = False, _dims: tuple = (embed_dim, depth, num_heads), **kwargs: Any) -> Any:
            if pretrained:
                raise ValueError("semivit's ViT sizes have no published weights: train them with semivit")
            for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's own, not the ViT's
                kwargs.pop(timm_only, None)
            kwargs = {"patch_size": 16, "global_pool": "avg", **kwargs}
            return VisionTransformer(embed_dim=_dims[0], depth=_dims[1], num_heads=_dims[2], **kwargs)

        build.__name__, build.__qualname__, build.__module__ = name, name, __name__
        register_model(build)
        added.append(name)
    return added
