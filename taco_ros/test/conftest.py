"""Shared pytest fixtures. Module-specific helpers live in test/*_fixtures.py next to their tests."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip('torch')


def pytest_configure(config: pytest.Config) -> None:
    # Two cores on CI: keep intra-op threads at the core count and make CPU runs reproducible.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason='no CUDA device')
    for item in items:
        if 'gpu' in item.keywords:
            item.add_marker(skip_gpu)
