"""Parameters are declared with descriptions/ranges and invalid values are refused by name."""
from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy")
from posevla_ros.params import declare_checked  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

SPECS = {
    "rate_hz": (50.0, "control rate", (1.0, 500.0)),
    "mode": ("full", "modalities", ("rgb", "full")),
    "name": ("", "free text", None),
}


def _node(ctx, overrides):
    return rclpy.create_node("params_test", context=ctx, parameter_overrides=overrides)


def test_defaults_and_descriptors(rclpy_context) -> None:
    node = _node(rclpy_context, [])
    values = declare_checked(node, SPECS)
    assert values == {"rate_hz": 50.0, "mode": "full", "name": ""}
    desc = node.describe_parameter("rate_hz")
    assert desc.description == "control rate"
    assert desc.floating_point_range[0].to_value == 500.0
    node.destroy_node()


@pytest.mark.parametrize("override,match", [(Parameter("rate_hz", value=1000.0), "rate_hz"),
                                            (Parameter("mode", value="depth"), "mode")])
def test_invalid_values_are_refused_by_name(rclpy_context, override, match) -> None:
    node = _node(rclpy_context, [override])
    with pytest.raises(ValueError, match=match):
        declare_checked(node, SPECS)
    node.destroy_node()
