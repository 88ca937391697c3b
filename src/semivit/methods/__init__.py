"""Training methods. Importing this package registers every built-in method."""

from semivit.methods import (  # noqa: F401  (importing registers)
    byol,
    cvrl,
    distill,
    feature_distill,
    mae,
    nncsl,
    noisy_student,
    openmatch,
    paws,
    pseudo_label,
    s4l,
    semiformer,
    simclr,
    ssmae,
    supervised,
    uda,
)
from semivit.methods.base import METHODS, Method, StepOutput, method_class, method_params, register_method

__all__ = ["METHODS", "Method", "StepOutput", "method_class", "method_params", "register_method"]
