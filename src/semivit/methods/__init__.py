"""Training methods. Importing this package registers every built-in method."""

from semivit.methods import (  # noqa: F401  (importing registers)
    distill,
    mae,
    paws,
    pseudo_label,
    semiformer,
    simclr,
    ssmae,
    supervised,
)
from semivit.methods.base import METHODS, Method, StepOutput, method_class, method_params, register_method

__all__ = ["METHODS", "Method", "StepOutput", "method_class", "method_params", "register_method"]
