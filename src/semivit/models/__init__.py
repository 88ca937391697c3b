"""Models: the create_model registry over timm (factory), pretrained backbones (hub, hub_folder, pretrained),
heads, and the model families with their own module, which register themselves here on import."""

from semivit.models import semiformer as _semiformer  # noqa: F401 - registers the semiformer_* family
