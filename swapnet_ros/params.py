"""Run-time parameter checks shared by the coordinator and the model nodes."""

from __future__ import annotations

import math

from rclpy.parameter import Parameter


def accept_integers_as_doubles(node, names) -> None:
    """`ros2 param set /depth budget_mb 120` sends an INTEGER; the parameter is a DOUBLE, which rclpy
    would refuse as 'Wrong parameter type'. Convert it before validation (rclpy >= Iron has the hook;
    on Humble the integer is refused with rclpy's reason). Other types (string, bool) stay refused."""
    names = frozenset(names)

    def convert(params):
        return [Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
                if p.name in names and p.type_ == Parameter.Type.INTEGER else p for p in params]

    add = getattr(node, "add_pre_set_parameters_callback", None)
    if add is not None:
        add(convert)


def on_parameters(node, check, apply) -> None:
    """Register `check(params) -> SetParametersResult` (validation only, no side effects) and
    `apply(params)`, run once the new values are set: rclpy's post-set callback where it exists (Iron
    and later), else right after a successful check (Humble)."""
    add_post = getattr(node, "add_post_set_parameters_callback", None)
    if add_post is not None:
        node.add_on_set_parameters_callback(check)
        add_post(apply)
        return

    def check_then_apply(params):
        result = check(params)
        if result.successful:
            apply(params)
        return result

    node.add_on_set_parameters_callback(check_then_apply)


def mib_to_bytes(name: str, value) -> int:
    """A MiB parameter as bytes; ValueError with the reason for NaN, infinities and non-positive values
    (the descriptors' ranges refuse them too; this keeps the refusal independent of rclpy's checks)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number of MiB, got {value!r}")
    return int(value * (1 << 20))
