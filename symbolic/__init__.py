"""symgrad's symbolic half: specs, the tensor-level chain rule, the reference evaluator."""

from .derive import Derivation, Kink, Step, Value, derive
from .errors import SpecError, SpecWarning
from .evaluate import DomainError, Reference
from .spec import ParamSpec, Spec, TrainSpec, load_spec, spec_from_dict, spec_from_toml

__all__ = [
    "Derivation", "DomainError", "Kink", "ParamSpec", "Reference", "Spec", "SpecError",
    "SpecWarning", "Step", "TrainSpec", "Value", "derive", "load_spec", "spec_from_dict",
    "spec_from_toml",
]
