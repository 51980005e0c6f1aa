"""Declare node parameters with descriptions and ranges, and reject invalid values at start-up by name."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node

# name -> (default, description, constraint); constraint: None, (lo, hi) for numbers, or a tuple of choices
ParamSpec = dict[str, tuple[Any, str, Any]]


def declare_checked(node: Node, specs: ParamSpec) -> dict[str, Any]:
    """Declare every parameter, then validate; raises ValueError naming the first invalid parameter."""
    values: dict[str, Any] = {}
    for name, (default, description, constraint) in specs.items():
        desc = ParameterDescriptor(description=description)
        is_range = isinstance(constraint, tuple) and len(constraint) == 2 and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in constraint)
        if is_range and isinstance(default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(constraint[0]), to_value=float(constraint[1]))]
        elif is_range and isinstance(default, int) and not isinstance(default, bool):
            desc.integer_range = [IntegerRange(from_value=int(constraint[0]), to_value=int(constraint[1]), step=1)]
        elif isinstance(constraint, Sequence) and not isinstance(constraint, str):
            desc.additional_constraints = f"one of {list(constraint)}"
        try:
            value = node.declare_parameter(name, default, desc).value
        except Exception as exc:  # rclpy raises on out-of-range or wrong-type overrides
            raise ValueError(f"parameter {name}: {exc}") from exc
        if is_range and not (constraint[0] <= value <= constraint[1]):
            raise ValueError(f"parameter {name}={value} is outside [{constraint[0]}, {constraint[1]}]")
        if not is_range and isinstance(constraint, Sequence) and not isinstance(constraint, str) and value not in constraint:
            raise ValueError(f"parameter {name}={value!r} must be one of {list(constraint)}")
        values[name] = value
    return values
