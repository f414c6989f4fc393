"""Setpoints in the node's own data type: a Float or Int32 node must never receive a Double, and
what a node reads back is compared within the precision its type keeps."""

from __future__ import annotations

import math

from asyncua import Node, ua


class SetpointWriteError(Exception):
    """A setpoint could not be written; the message says why, for the operator.

    `previous` is the value the node held before, when the write changed the node anyway.
    """

    def __init__(self, message: str, previous: float | None = None) -> None:
        super().__init__(message)
        self.previous = previous



_INTEGER_RANGES = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1), ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1), ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1), ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1), ua.VariantType.UInt64: (0, 2**64 - 1),
}
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TOLERANCE = 1e-6  # relative: a Float keeps about 7 significant digits
DOUBLE_TOLERANCE = 1e-9


def typed_setpoint(value: float, variant_type: ua.VariantType, where: str) -> float | int:
    """`value` as the node's type holds it; SetpointWriteError if that type cannot hold it."""
    if not math.isfinite(value):
        raise SetpointWriteError(f"{where}: {value} is not a finite number")
    if variant_type in _INTEGER_RANGES:
        low, high = _INTEGER_RANGES[variant_type]
        if value != int(value):
            raise SetpointWriteError(
                f"{where}: the node is {variant_type.name}, {value} is not a whole number; "
                "round the control (step 1) or use a Float/Double node")
        if not low <= int(value) <= high:
            raise SetpointWriteError(
                f"{where}: {value:g} is out of the {variant_type.name} range {low}..{high}")
        return int(value)
    if variant_type == ua.VariantType.Float:
        if abs(value) > FLOAT32_MAX:
            raise SetpointWriteError(f"{where}: {value:g} is out of the Float range")
        return float(value)
    if variant_type == ua.VariantType.Double:
        return float(value)
    raise SetpointWriteError(
        f"{where}: the node's data type is {variant_type.name}; setpoints must be numeric "
        "(Float, Double or an integer type)")


def same_setpoint(back: float, written: float, variant_type: ua.VariantType) -> bool:
    """Whether a read-back equals what was written, within what the node's type keeps."""
    if variant_type == ua.VariantType.Float:
        return math.isclose(back, written, rel_tol=FLOAT32_TOLERANCE, abs_tol=FLOAT32_TOLERANCE)
    if variant_type == ua.VariantType.Double:
        return math.isclose(back, written, rel_tol=DOUBLE_TOLERANCE, abs_tol=DOUBLE_TOLERANCE)
    return back == written


def is_number(value: object) -> bool:
    """A numeric OPC-UA value (a Boolean is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


async def write_verified(node: Node, value: float, where: str) -> tuple[float | None, float | int]:
    """Write `value` in the node's data type and read it back; return (value before, written).

    A read-back that differs raises SetpointWriteError with `previous` set: the node changed.
    """
    variant_type = await node.read_data_type_as_variant_type()
    typed = typed_setpoint(value, variant_type, where)
    before = await node.read_value()
    previous = float(before) if is_number(before) else None
    await node.write_value(ua.DataValue(ua.Variant(typed, variant_type)))
    back = await node.read_value()
    if not is_number(back) or not same_setpoint(float(back), float(typed), variant_type):
        raise SetpointWriteError(
            f"{where}: wrote {typed} ({variant_type.name}) but read back {back}; the PLC may "
            "clamp or override it: check its limits and interlocks", previous=previous)
    return previous, typed
