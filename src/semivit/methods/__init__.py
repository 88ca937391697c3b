"""Training methods. Importing this package registers every built-in method."""

from semivit.methods import distill, mae, pseudo_label, simclr, supervised  # noqa: F401  (registers)
from semivit.methods.base import METHODS, Method, StepOutput, method_class, method_params, register_method

__all__ = ["METHODS", "Method", "StepOutput", "method_class", "method_params", "register_method"]
