"""Where taco_ros looks for model files.

Search order (first hit wins): an explicit directory (node parameter ``model_dir`` or the ``--model-dir``
option), the ``TACO_MODEL_DIR`` environment variable, then ``~/.cache/taco_ros/models``
(``$XDG_CACHE_HOME/taco_ros/models`` when XDG_CACHE_HOME is set).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_MODEL_DIR = 'TACO_MODEL_DIR'


def default_cache_dir() -> Path:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'taco_ros' / 'models'


def model_search_dirs(model_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for model files, in priority order, without duplicates."""
    candidates: list[Path] = []
    if model_dir:
        candidates.append(Path(model_dir).expanduser())
    if os.environ.get(ENV_MODEL_DIR):
        candidates.append(Path(os.environ[ENV_MODEL_DIR]).expanduser())
    candidates.append(default_cache_dir())
    unique: list[Path] = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique
