"""semivit: train image classifiers from a few labels and many unlabeled images.

The Python surface (each name is imported on first use, so ``import semivit`` and the command line stay fast):

- :func:`fit` trains a method or a recipe and returns a :class:`~semivit.api.Run`; :func:`load`, :func:`predict`,
  :func:`evaluate`, :func:`suggest` and :func:`export` do what the commands of the same names do, and
  :func:`find_label_issues` what ``semivit labelcheck`` does; :func:`outlier_scores` scores images with an
  ``openmatch`` run's one-vs-all heads;
- :class:`Config`, :func:`create_model`, :func:`list_methods`, :func:`run_recipe`, :data:`__version__`;
- the pieces: ``semivit.methods.losses``, ``semivit.methods.mixing``, ``semivit.models.heads``,
  ``semivit.data.augment`` and ``semivit.data.views`` (views), ``semivit.engine.callbacks``.

After ``import semivit``, timm knows semivit's ViT sizes: ``timm.create_model("vit_nano")``.

Examples:
    >>> import semivit
    >>> "fixmatch" in semivit.list_methods()
    True
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.abc import MetaPathFinder
from typing import Any

_API = {"fit": "semivit.api", "load": "semivit.api", "predict": "semivit.api", "evaluate": "semivit.api",
        "outlier_scores": "semivit.api",
        "suggest": "semivit.api", "compare": "semivit.api", "export": "semivit.api", "list_methods": "semivit.api",
        "find_label_issues": "semivit.api", "Run": "semivit.api",
        "Config": "semivit.config", "create_model": "semivit.models.factory", "run_recipe": "semivit.pipeline",
        "Trainer": "semivit.engine.trainer", "SemivitError": "semivit.errors"}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("semivit")
        except PackageNotFoundError:
            return "0+unknown"
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'semivit' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)


class _AfterTimmImport(MetaPathFinder):
    """Registers semivit's models with timm once timm has been imported (importing timm here would cost
    seconds on every ``semivit`` command)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            from semivit.models.timm_registry import register_timm_models

            register_timm_models()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "timm" in sys.modules:
    from semivit.models.timm_registry import register_timm_models as _register

    _register()
elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _AfterTimmImport())
