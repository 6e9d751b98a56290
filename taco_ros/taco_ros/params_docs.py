"""The files generated from :mod:`taco_ros.params`: config/<node>.yaml and the README's topic and
parameter tables (tests keep both equal to these functions' output)."""

from __future__ import annotations

from typing import Any

from taco_ros.params import MIC_NODE_NAME, NODE_NAME, NODES


def _format_default(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return '[]' if not value else '[' + ', '.join(f'"{v}"' for v in value) + ']'
    return repr(value)


def _cell(text: str) -> str:
    """Markdown table cell text (a bare '|' would end the cell)."""
    return str(text).replace('|', '\\|')


def markdown_table(node: str = NODE_NAME) -> str:
    """README tables of ``node``: topics/services, then parameters (from its tables)."""
    tables = NODES[node]
    lines = ['| Topic / service | Direction | Type | QoS | Content | Used when |',
             '|---|---|---|---|---|---|']
    for topic in tables.topics:
        lines.append(f'| `{topic.name}` | {topic.direction} | {_cell(topic.type)} | '
                     f'{_cell(topic.qos)} | {_cell(topic.description)} | '
                     f'{_cell(topic.enabled_by)} |')
    lines += ['', '| Parameter | Type | Default | Range | Changes | Description |',
              '|---|---|---|---|---|---|']
    for spec in tables.parameters:
        rng = '' if spec.range is None else f'{spec.range[0]} .. {spec.range[1]}'
        lines.append(
            f'| `{spec.name}` | {_cell(spec.type_name)} | `{_format_default(spec.default)}` | '
            f'{rng} | {spec.applies} | {_cell(spec.full_description(change_note=False))} |')
    return '\n'.join(lines) + '\n'


def readme_tables() -> str:
    """The README's generated block: taco_node's tables, then mic_node's."""
    return (markdown_table(NODE_NAME) + '\n**mic_node** (`config/mic.yaml`; every parameter is '
            'read at start-up):\n\n' + markdown_table(MIC_NODE_NAME))


def yaml_text(node: str = NODE_NAME) -> str:
    """config/<node>.yaml content: every parameter at its default, grouped.

    Keyed ``/**`` so the file applies to the node under any namespace and name (a plain
    ``taco_node:`` key does not match ``/robot1/taco_node``)."""
    tables = NODES[node]
    lines = [
        f'# {node} parameters (defaults). Generated from taco_ros/params.py; a test keeps them equal.',
        '# See the README for when each one takes effect and what it does.',
        '/**:', '  ros__parameters:']
    group = None
    for spec in tables.parameters:
        if spec.group != group:
            group = spec.group
            lines.append(f'    # -- {group}')
        if isinstance(spec.default, list) and not spec.default:
            # rcl's YAML parser reads an empty list as "not set": leave the default to the node.
            lines.append(f'    # {spec.name}: ["word", "other word"]   # default []: see the README')
            continue
        lines.append(f'    {spec.name}: {_format_default(spec.default)}')
    return '\n'.join(lines) + '\n'
