"""taco_node's parameters outside a running node: read a ROS 2 params file (the YAML that
``--params-file`` takes), apply overrides and check them with :mod:`taco_ros.params`, so ``bag
process`` runs with exactly the values the node would have.

Which entries of the file apply follows rcl: top-level (possibly nested) keys name nodes, ``*``
matches one name token and ``**`` any number of them (``/**`` = every node); every matching entry is
applied in file order, later ones overriding earlier ones.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from taco_ros import params

ROS_PARAMETERS = 'ros__parameters'
# Parameters rclpy nodes accept besides ours; ignored here without a warning.
_ROS_OWN = ('use_sim_time', 'start_type_description_service')


def default_params_file() -> Path:
    """config/taco.yaml as installed (ament index), else from the source tree."""
    try:
        from ament_index_python.packages import (
            PackageNotFoundError,
            get_package_share_directory,
        )
        try:
            return Path(get_package_share_directory('taco_ros')) / 'config' / 'taco.yaml'
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    return Path(__file__).resolve().parents[2] / 'config' / 'taco.yaml'


def _node_pattern(key: str) -> re.Pattern[str]:
    """Regex of a params-file node key ('/**', 'taco_node', '/ns/*/taco_node', ...)."""
    tokens = [t for t in key.strip('/').split('/') if t]
    parts = []
    for token in tokens:
        if token == '**':
            parts.append('(?:/[^/]+)*')
        else:
            parts.append('/' + re.escape(token).replace(r'\*', '[^/]*'))
    return re.compile(''.join(parts) + '$')


def _entries(tree: Any, prefix: str = '') -> list[tuple[str, dict[str, Any]]]:
    """(node key, ros__parameters) of every entry, in file order (nested keys joined by '/')."""
    if not isinstance(tree, dict):
        return []
    found = []
    for key, value in tree.items():
        if key == ROS_PARAMETERS:
            if not isinstance(value, dict):
                raise ValueError(f'{prefix or "/"}: ros__parameters must be a mapping')
            found.append((prefix or '/', value))
        else:
            found.extend(_entries(value, f'{prefix}/{str(key).strip("/")}'))
    return found


def _flatten(values: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    """Nested parameter mappings → dotted names (how rcl reads 'a: {b: 1}' = a.b)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(_flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def read_params_file(path: str | os.PathLike, node_name: str = '/' + params.NODE_NAME
                     ) -> dict[str, Any]:
    """The parameter values a params file gives the node ``node_name`` (fully qualified)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'params file {path} does not exist')
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f'{path} is not valid YAML: {exc}') from None
    fqn = '/' + node_name.strip('/')
    values: dict[str, Any] = {}
    for key, entry in _entries(tree or {}):
        if _node_pattern(key).match(fqn):
            values.update(_flatten(entry))
    return values


def node_parameters(params_file: str | os.PathLike | None = None,
                    overrides: dict[str, Any] | None = None, *,
                    node_name: str = '/' + params.NODE_NAME) -> tuple[dict[str, Any], list[str]]:
    """Every taco_node parameter (defaults ← params file ← ``overrides``), checked as the node
    checks them; returns (values, notes about ignored names). Raises ValueError naming each
    refused value."""
    given: dict[str, Any] = {}
    if params_file is not None:
        given.update(read_params_file(params_file, node_name))
    given.update(overrides or {})
    values = params.defaults()
    problems, notes = [], []
    for name, value in given.items():
        spec = params.PARAMETERS_BY_NAME.get(name)
        if spec is None:
            if name not in _ROS_OWN and not name.startswith('qos_overrides.'):
                notes.append(f'{name}: not a taco_node parameter, ignored')
            continue
        value = params.normalise(name, value)
        reason = params.validate(name, value)
        if reason:
            problems.append(reason)
            continue
        values[name] = value
    if not problems:
        reason = params.validate_together(values)
        if reason:
            problems.append(reason)
    if problems:
        raise ValueError('bad taco_node parameters:\n  ' + '\n  '.join(problems))
    return values, notes


def pipeline_config(values: dict[str, Any], *, keep_text_encoders: bool = False) -> Any:
    """The PipelineConfig that taco_node builds from these parameter values (the node keeps its
    text encoders for set_vocabulary; a replay never changes the vocabulary, so by default not)."""
    return params.pipeline_config(values, keep_text_encoders=keep_text_encoders)
