"""One parameter truth per node: declare with descriptions and ranges, refuse invalid, unknown or misplaced values
by name, print them for --help, and log the values in force.

A node lists its parameters once, as a `ParamSpec` (name -> (default, description, constraint)), usually a
class attribute `PARAMS`; `declare_checked` declares them (read-only unless listed in `dynamic`), and
`posevla_ros.node_main.spin_node` uses the same table for `--help`, for refusing parameters nobody declared
(`watchdog:=0.1` for `watchdog_s`), for refusing a params file with no section for this node (`executor_node:`
instead of `/**:` or `/executor:`), and for the start-up log line. `spec_from_dataclass` builds the table
from a config dataclass whose fields carry `metadata={"description": ..., "range": ...}`.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

# name -> (default, description, constraint); constraint: None, (lo, hi) for numbers, or a tuple of choices
ParamSpec = dict[str, tuple[Any, str, Any]]

# parameters rclpy itself declares or accepts on every node
ROS_PARAMETERS = ("use_sim_time", "start_type_description_service")
_SPECS_ATTR = "_posevla_param_specs"


def _is_range(constraint: Any) -> bool:
    return isinstance(constraint, tuple) and len(constraint) == 2 and all(
        isinstance(c, (int, float)) and not isinstance(c, bool) for c in constraint)


def _is_choices(constraint: Any) -> bool:
    return isinstance(constraint, Sequence) and not isinstance(constraint, str) and not _is_range(constraint)


def _string_override(node: Node, name: str) -> None:
    """A string parameter given as `-p serial:=123456789` arrives as INTEGER; take it as the string it is.

    (A YAML `serial: 0123` would already have lost its leading zero: quote serials in YAML files.)"""
    overrides = getattr(node, "_parameter_overrides", {})
    prm = overrides.get(name)
    if prm is None or prm.type_ == Parameter.Type.STRING:
        return
    if prm.type_ in (Parameter.Type.INTEGER, Parameter.Type.DOUBLE):
        overrides[name] = Parameter(name, Parameter.Type.STRING, str(prm.value))
    elif prm.type_ == Parameter.Type.BOOL:
        overrides[name] = Parameter(name, Parameter.Type.STRING, "true" if prm.value else "false")


def declare_checked(node: Node, specs: ParamSpec, dynamic: Sequence[str] | None = None) -> dict[str, Any]:
    """Declare every parameter, then validate; raises ValueError naming the first invalid parameter.

    With `dynamic` given, the parameters not in it are read-only (a node that does not act on a change refuses
    it); `dynamic=None` leaves every parameter writable (nodes not yet converted)."""
    values: dict[str, Any] = {}
    for name, (default, description, constraint) in specs.items():
        desc = ParameterDescriptor(description=description, read_only=dynamic is not None and name not in dynamic)
        if _is_range(constraint) and isinstance(default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(constraint[0]), to_value=float(constraint[1]))]
        elif _is_range(constraint) and isinstance(default, int) and not isinstance(default, bool):
            desc.integer_range = [IntegerRange(from_value=int(constraint[0]), to_value=int(constraint[1]), step=1)]
        elif _is_choices(constraint):
            desc.additional_constraints = f"one of {list(constraint)}"
        if isinstance(default, str):
            _string_override(node, name)
        try:
            value = node.declare_parameter(name, default, desc).value
        except Exception as exc:  # rclpy raises on out-of-range or wrong-type overrides
            raise ValueError(f"parameter {name}: {exc}") from None
        if _is_range(constraint) and not (constraint[0] <= value <= constraint[1]):
            raise ValueError(f"parameter {name}={value} is outside [{constraint[0]}, {constraint[1]}]")
        if _is_choices(constraint) and value not in constraint:
            raise ValueError(f"parameter {name}={value!r} must be one of {list(constraint)}")
        values[name] = value
    if not hasattr(node, _SPECS_ATTR):
        setattr(node, _SPECS_ATTR, {})
    getattr(node, _SPECS_ATTR).update(specs)
    return values


def spec_from_dataclass(cls: type, table: dict[str, tuple[str, Any]] | None = None,
                        names: Sequence[str] | None = None, **defaults: Any) -> ParamSpec:
    """A ParamSpec whose defaults come from a config dataclass (the one place they are written).

    Description and range (or choices) per field: from `table` (name -> (description, constraint)) when given,
    else from `field(metadata={"description": ..., "range": ...})`. Fields: those in `table`, or `names`, or all.
    `defaults` replace field defaults; tuples become lists (ROS array parameters)."""
    out: ParamSpec = {}
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    wanted = list(table) if table else list(names) if names is not None else list(by_name)
    for name in wanted:
        if name not in by_name:
            raise ValueError(f"{cls.__name__} has no field {name!r}")
        f = by_name[name]
        if name in defaults:
            default = defaults[name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise ValueError(f"{cls.__name__}.{name} has no default; pass it to spec_from_dataclass")
        if isinstance(default, tuple):
            default = list(default)
        description, constraint = (table or {}).get(name, (f.metadata.get("description", name), f.metadata.get("range")))
        out[name] = (default, description, constraint)
    return out


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


def reject_unknown(node: Node) -> None:
    """Raise ValueError naming the first parameter given to this node (-p or a params file) that it never declared."""
    declared = set(node._parameters)
    overrides = getattr(node, "_parameter_overrides", {})
    unknown = sorted(n for n in overrides
                     if n not in declared and n not in ROS_PARAMETERS and not n.startswith("qos_overrides."))
    if unknown:
        known = sorted(declared - set(ROS_PARAMETERS))
        raise ValueError(f"unknown parameter {unknown[0]}{_suggest(unknown[0], known)}; "
                         f"{node.get_fully_qualified_name()} has: {', '.join(known)}")


def params_files(argv: Sequence[str]) -> list[Path]:
    """The --params-file arguments of a ROS command line."""
    return [Path(argv[i + 1]) for i, a in enumerate(argv[:-1]) if a == "--params-file"]


def _section_matches(key: str, fqn: str) -> bool:
    """rcl's rule for a params-file section: '/**' any node, '*' one name level, else the node's full name."""
    key = key if key.startswith("/") else "/" + key
    pattern = re.escape(key).replace(r"/\*\*", "(/[^/]+)*").replace(r"\*", "[^/]+")
    return re.fullmatch(pattern, fqn) is not None


def check_params_files(node: Node, argv: Sequence[str]) -> None:
    """Every params file given to the node must have a section for it, holding `ros__parameters`."""
    fqn = node.get_fully_qualified_name()
    for path in params_files(argv):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"params file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"params file {path}: expected '/**:' or '{fqn}:' sections at the top level")
        matching = [k for k in data if _section_matches(str(k), fqn)]
        if not matching:
            raise ValueError(f"params file {path}: no section for node {fqn} (sections: {', '.join(map(str, data))}); "
                             f"key the parameters under '/**:' or '{fqn}:'")
        for k in matching:
            body = data[k]
            if not isinstance(body, dict) or set(body) != {"ros__parameters"}:
                raise ValueError(f"params file {path}: section {k}: expected exactly 'ros__parameters:' under it")


def describe(specs: ParamSpec) -> str:
    """The parameter table printed by --help."""
    rows = []
    for name, (default, description, constraint) in specs.items():
        limit = (f"[{constraint[0]}, {constraint[1]}]" if _is_range(constraint) else
                 f"one of {list(constraint)}" if _is_choices(constraint) else "")
        rows.append((name, repr(default), limit, description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    return "\n".join(f"  {n:<{widths[0]}}  {d:<{widths[1]}}  {lim:<{widths[2]}}  {desc}" for n, d, lim, desc in rows)


def in_force(node: Node) -> str:
    """One line: every declared parameter with its value (and range), for the start-up log."""
    specs: ParamSpec = getattr(node, _SPECS_ATTR, {})
    parts = []
    for name in sorted(node._parameters):
        if name in ROS_PARAMETERS:
            continue
        value = node.get_parameter(name).value
        constraint = specs.get(name, (None, "", None))[2]
        parts.append(f"{name}={value!r}" + (f" in [{constraint[0]}, {constraint[1]}]" if _is_range(constraint) else ""))
    return "parameters in force: " + ", ".join(parts)
