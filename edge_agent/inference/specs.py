"""Tensor specs of ONNX models, and how a declared spec differs from a model's real one.

Pure functions shared by the agent (manifest against the file it received) and central's
registry (metadata against the file being published).
"""

from __future__ import annotations

from typing import Any

from edge_agent.kernel.contract import TensorSpec

# ONNX Runtime names element types "tensor(float)"; manifests use numpy-style names.
_ORT_DTYPES = {
    "float": "float32", "double": "float64", "float16": "float16", "bfloat16": "bfloat16",
    "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
    "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64",
    "bool": "bool", "string": "string",
}


def tensor_specs(args: list[Any]) -> list[TensorSpec]:
    """TensorSpecs of an ONNX Runtime session's `get_inputs()` or `get_outputs()`."""
    specs = []
    for arg in args:
        element = arg.type[len("tensor("):-1] if arg.type.startswith("tensor(") else arg.type
        specs.append(TensorSpec(name=arg.name, dtype=_ORT_DTYPES.get(element, element),
                                shape=list(arg.shape or [])))
    return specs


def spec_differences(side: str, declared: list[TensorSpec], actual: list[TensorSpec],
                     source: str = "manifest") -> list[str]:
    """What differs between declared specs and the model's; empty when they agree.

    `side` is "input" or "output". A dynamic dimension (null or a name) matches any dynamic
    dimension.
    """
    declared_names = [spec.name for spec in declared]
    actual_names = [spec.name for spec in actual]
    if declared_names != actual_names:
        return [f"{side}s are {actual_names} in the model, {source} says {declared_names}"]
    problems = []
    for want, got in zip(declared, actual, strict=True):
        if want.dtype != got.dtype:
            problems.append(f"{side} {got.name!r} has dtype {got.dtype} in the model, "
                            f"{source} says {want.dtype}")
        if [_dim(d) for d in want.shape] != [_dim(d) for d in got.shape]:
            problems.append(f"{side} {got.name!r} has shape {_shape(got.shape)} in the model, "
                            f"{source} says {_shape(want.shape)}")
    return problems


def _dim(value: int | str | None) -> int | None:
    return value if isinstance(value, int) else None


def _shape(shape: list[int | str | None]) -> str:
    return "x".join("?" if not isinstance(d, int) else str(d) for d in shape) or "scalar"
