"""Declaring the parameter tables of :mod:`taco_ros.params` on an rclpy node: descriptors (description,
range, read-only) and declarations that never raise on a refused start-up value."""

from __future__ import annotations

from typing import Any

from taco_ros.params import NODE_NAME, NODES, ParamSpec, copy_default


def descriptor(spec: ParamSpec) -> Any:
    """rcl_interfaces ParameterDescriptor of a spec (description, range, read_only)."""
    from rcl_interfaces.msg import (
        FloatingPointRange,
        IntegerRange,
        ParameterDescriptor,
        ParameterType,
    )

    result = ParameterDescriptor(
        name=spec.name, description=spec.full_description(), read_only=spec.startup_only)
    if spec.range is not None:
        if spec.type_name == 'int':
            result.integer_range = [IntegerRange(
                from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=0)]
        else:
            result.floating_point_range = [FloatingPointRange(
                from_value=float(spec.range[0]), to_value=float(spec.range[1]), step=0.0)]
    if spec.choices:
        result.additional_constraints = 'one of: ' + spec.choice_list
    if spec.type_name == 'string[]':
        # An empty default cannot carry the string-array type, so the type is checked by validate().
        result.type = ParameterType.PARAMETER_STRING_ARRAY
        result.dynamic_typing = True
    if spec.also_int:
        result.dynamic_typing = True
    return result


def declare_all(node: Any, name: str = NODE_NAME) -> list[str]:
    """Declare every parameter of node table ``name`` on ``node``; values from overrides (a YAML
    file, ``-p``) win. An override rclpy refuses (wrong type, out of range) never raises: the
    default is declared instead and the problem returned, one readable line each."""
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    problems = []
    for spec in NODES[name].parameters:
        try:
            node.declare_parameter(spec.name, copy_default(spec.default), descriptor(spec))
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            node.declare_parameter(spec.name, copy_default(spec.default), descriptor(spec),
                                   ignore_override=True)
            problems.append(f'{spec.name}: the value given at start-up was refused: {exc}')
    return problems
