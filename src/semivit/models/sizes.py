"""semivit's ViT sizes, in a module of their own that imports nothing: the factory builds them, and timm's
registry learns them (models/timm_registry.py) while timm itself is being imported."""

# name → (embed_dim, depth, num_heads). nano/micro are for CPU runs on small images.
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "vit_nano": (96, 6, 3),
    "vit_micro": (128, 6, 4),
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    "vit_huge": (1280, 32, 16),
}
