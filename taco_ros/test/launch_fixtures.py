"""launch/taco.launch.py without launch_ros: stand-ins of the launch API and a resolver that turns the
description into the command lines ``ros2 launch`` runs.

launch/launch_ros are not installable from PyPI (platform.md), so the launch file is executed against
recording stand-ins of exactly the names in LAUNCH_API, and the resolver evaluates them the way
launch_ros does: launch arguments fill ``context.launch_configurations``, OpaqueFunctions run on that
context, and each node's command line is ``<exe> [--ros-args <ros_arguments>] --ros-args -r __node:=N
-r __ns:=/NS --params-file F ... -r from:=to ...`` where a parameter dict becomes a temporary YAML file
keyed by the node's fully qualified name (launch_ros' Node._create_params_file_from_dict).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILE = REPO / 'taco_ros' / 'launch' / 'taco.launch.py'


def _install_prefix() -> Path:
    """The install folder of the sourced workspace (``install/`` here; a robot workspace's or the
    Jazzy lane's elsewhere), found as ``ros2 run`` finds packages: through the ament index."""
    try:
        from ament_index_python.packages import get_package_prefix
        return Path(get_package_prefix('taco_ros')).parent
    except Exception:   # nothing sourced: the tests that need an install say so
        return REPO / 'install'


INSTALL = _install_prefix()
LIB_DIR = INSTALL / 'taco_ros' / 'lib' / 'taco_ros'
SHARE_DIR = INSTALL / 'taco_ros' / 'share' / 'taco_ros'

# What the launch file may use, module by module.
LAUNCH_API = {
    'launch': ['LaunchDescription'],
    'launch.actions': ['DeclareLaunchArgument', 'OpaqueFunction'],
    'launch.substitutions': ['PathJoinSubstitution'],
    'launch_ros.actions': ['Node', 'LifecycleNode'],
    'launch_ros.parameter_descriptions': ['ParameterValue'],
    'launch_ros.substitutions': ['FindPackageShare'],
}
NODE_KINDS = ('Node', 'LifecycleNode')


class Recorded:
    """A stand-in launch entity: remembers its constructor arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __repr__(self) -> str:
        return f'{type(self).__name__}{self.args}{self.kwargs}'


def _stand_in_module(name: str, members: list[str]) -> types.ModuleType:
    module = types.ModuleType(name)
    for member in members:
        setattr(module, member, type(member, (Recorded,), {}))
    return module


def load_launch_module(path: Path = LAUNCH_FILE) -> types.ModuleType:
    """Import a launch file against the stand-ins; a name outside LAUNCH_API fails the import."""
    saved = {name: sys.modules.get(name) for name in LAUNCH_API}
    try:
        for name, members in LAUNCH_API.items():
            sys.modules[name] = _stand_in_module(name, members)
        spec = importlib.util.spec_from_file_location('taco_launch_under_test', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)   # its globals keep the stand-ins after the restore
        return module
    finally:
        _restore(saved)


def _restore(saved: dict[str, Any]) -> None:
    for name, previous in saved.items():
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous


def load_launch_description(path: Path = LAUNCH_FILE) -> Any:
    """``generate_launch_description()`` of a launch file, built from the stand-ins."""
    return load_launch_module(path).generate_launch_description()


class LaunchContext:
    """The part of launch.LaunchContext an OpaqueFunction may use: the launch configurations.

    Reads are recorded, so a test can check that every declared argument is used.
    """

    def __init__(self, configurations: dict[str, str]) -> None:
        self.read: set[str] = set()
        context = self

        class Recording(dict):
            def __getitem__(self, key: str) -> str:
                context.read.add(key)
                return super().__getitem__(key)

        self.launch_configurations = Recording(configurations)
        self.environment = dict(os.environ)     # launch.LaunchContext.environment


class LaunchResolver:
    """Evaluates the stand-in description the way ``ros2 launch`` would, for given argument values."""

    def __init__(self, description: Any, overrides: dict[str, str] | None = None,
                 share_dirs: dict[str, Path] | None = None, params_dir: Path | None = None) -> None:
        self.entities = list(description.args[0])
        self.declared = {e.args[0]: e.kwargs.get('default_value') for e in self.entities
                         if type(e).__name__ == 'DeclareLaunchArgument'}
        self.overrides = dict(overrides or {})
        unknown = set(self.overrides) - set(self.declared)
        if unknown:
            raise KeyError(f'launch arguments {sorted(unknown)} are not declared')
        self.share_dirs = share_dirs or {'taco_ros': SHARE_DIR}
        self.params_dir = Path(params_dir or tempfile.mkdtemp(prefix='launch_params_'))
        self.configurations = {name: str(self.value(default)) for name, default in self.declared.items()}
        self.configurations.update(self.overrides)
        self.context = LaunchContext(self.configurations)
        self._nodes: list[Any] | None = None

    @property
    def used(self) -> set[str]:
        """Launch arguments the launch file read while building its nodes."""
        self.nodes()
        return set(self.context.read)

    def nodes(self) -> list[Any]:
        """The node actions the description starts for these arguments (OpaqueFunctions run)."""
        if self._nodes is None:
            actions: list[Any] = []
            for entity in self.entities:
                kind = type(entity).__name__
                if kind == 'OpaqueFunction':
                    actions += list(entity.kwargs['function'](self.context) or [])
                elif kind in NODE_KINDS:
                    actions.append(entity)
            self._nodes = [a for a in actions if type(a).__name__ in NODE_KINDS]
        return self._nodes

    def node(self, executable: str) -> Any:
        """The one node running ``executable``."""
        (found,) = [n for n in self.nodes() if n.kwargs['executable'] == executable]
        return found

    def value(self, item: Any) -> Any:
        kind = type(item).__name__
        if isinstance(item, str):
            return item
        if isinstance(item, (list, tuple)):
            return ''.join(str(self.value(part)) for part in item)
        if kind == 'PathJoinSubstitution':
            return os.path.join(*[str(self.value(part)) for part in item.args[0]])
        if kind == 'FindPackageShare':
            package = item.args[0]
            if package not in self.share_dirs:
                raise KeyError(f'share directory of {package!r} unknown here')
            return str(self.share_dirs[package])
        if kind == 'ParameterValue':
            return self.typed(self.value(item.args[0]), item.kwargs.get('value_type'))
        if isinstance(item, (bool, int, float)):
            return item
        raise TypeError(f'cannot evaluate {item!r}')

    @staticmethod
    def typed(text: Any, value_type: Any) -> Any:
        """launch_ros' conversion: YAML rules unless a value_type is given."""
        if value_type is str:
            return str(text)
        if value_type is bool:
            parsed = yaml.safe_load(str(text))
            if not isinstance(parsed, bool):
                raise ValueError(f'{text!r} is not a bool')
            return parsed
        return yaml.safe_load(text) if isinstance(text, str) else text

    def parameters(self, node: Any) -> tuple[list[str], dict[str, Any]]:
        """(parameter files, {name: value} of the dicts); later entries win, as in launch_ros."""
        files, values = [], {}
        for entry in node.kwargs.get('parameters', []):
            if isinstance(entry, dict):
                values.update({key: self.value(raw) for key, raw in entry.items()})
            else:
                files.append(str(self.value(entry)))
        return files, values

    def environment(self, node: Any) -> dict[str, str]:
        """The variables ``ros2 launch`` adds to a node's environment (``additional_env``)."""
        return {str(self.value(k)): str(self.value(v))
                for k, v in (node.kwargs.get('additional_env') or {}).items()}

    def remappings(self, node: Any) -> dict[str, str]:
        return {str(self.value(a)): str(self.value(b)) for a, b in node.kwargs.get('remappings', [])}

    def full_name(self, node: Any) -> str:
        namespace = '/' + str(self.value(node.kwargs.get('namespace', ''))).strip('/')
        return namespace.rstrip('/') + '/' + str(self.value(node.kwargs['name']))

    def command(self, node: Any, lib_dir: Path | None = None) -> list[str]:
        """The command line ``ros2 launch`` runs for a node."""
        lib_dir = LIB_DIR if lib_dir is None else lib_dir
        name = str(self.value(node.kwargs['name']))
        namespace = '/' + str(self.value(node.kwargs.get('namespace', ''))).strip('/')
        args = [str(lib_dir / node.kwargs['executable'])]
        args += [str(self.value(a)) for a in node.kwargs.get('arguments', [])]
        ros_arguments = [str(self.value(a)) for a in node.kwargs.get('ros_arguments', [])]
        if ros_arguments:
            args += ['--ros-args', *ros_arguments]
        args += ['--ros-args', '-r', f'__node:={name}', '-r', f'__ns:={namespace}']
        for entry in node.kwargs.get('parameters', []):
            if isinstance(entry, dict):
                values = {key: self.value(raw) for key, raw in entry.items()}
                args += ['--params-file', str(self._params_file(self.full_name(node), values))]
            else:
                args += ['--params-file', str(self.value(entry))]
        for source, target in self.remappings(node).items():
            args += ['-r', f'{source}:={target}']
        return args

    def _params_file(self, full_name: str, values: dict[str, Any]) -> Path:
        handle, path = tempfile.mkstemp(prefix='launch_params_', dir=self.params_dir)
        with os.fdopen(handle, 'w') as stream:
            yaml.dump({full_name: {'ros__parameters': values}}, stream, default_flow_style=False)
        return Path(path)
