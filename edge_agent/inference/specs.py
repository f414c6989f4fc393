"""Tensor specs of an ONNX Runtime session's inputs and outputs, in the contract's terms.

How a declared spec differs from a model's real one is the contract's `spec_differences`.
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
