"""bench/bench_soak.py keeps running: its harness starts taco_node as a process, streams into it,
cycles it through its lifecycle services and reports.

Only the harness is checked (it ran, it measured, it printed its tables); how many windows a
real-time stream gave is the benchmark's business, never asserted here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / 'bench' / 'bench_soak.py'


def load_bench() -> Any:
    if 'bench_soak' not in sys.modules:
        spec = importlib.util.spec_from_file_location('bench_soak', BENCH)
        module = importlib.util.module_from_spec(spec)
        sys.modules['bench_soak'] = module    # its dataclasses look their module up by name
        spec.loader.exec_module(module)
    return sys.modules['bench_soak']


@pytest.mark.ros
def test_soak_harness_streams_cycles_and_reports(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_bench()
    args = bench.parse_args(['--minutes', '0.25', '--cycles', '1', '--cycle-sec', '4'])
    # The bench sets its DDS domain in os.environ: give it back to the other tests afterwards.
    monkeypatch.setenv('ROS_DOMAIN_ID', str(args.domain_id))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    parameters, phases = bench.run(args)
    bench.print_report(args, parameters, phases)
    out = capsys.readouterr().out

    assert float(parameters['hop_sec']) > 0 and float(parameters['window_sec']) > 0
    steady, cycles = phases
    assert [steady.name, cycles.name] == ['steady', 'cycles']
    for phase in phases:
        assert phase.stream['frames'] > 0 and phase.stream['chunks'] > 0
        assert phase.inputs, 'no /diagnostics inputs status of the node was received'
        assert 0 < phase.received['frames'] <= phase.stream['frames']
        assert 0 < phase.received['chunks'] <= phase.stream['chunks']
        assert set(phase.delay_max) == {'image', 'audio'}
        assert set(bench.drop_keys()) <= set(phase.counts)
        assert all(mib > 0 for mib in phase.rss), 'the node process RSS was not read'
    assert steady.due == bench.due_windows(steady.stream['seconds'], float(
        parameters['window_sec']), float(parameters['hop_sec']))
    assert [row[0] for row in cycles.cycles] == [0, 1]
    for heading in ('### steady', 'windows due', 'the node took (lost on the way)',
                    'share published', 'dropped (no frame)',
                    'latency mean / p95 / max (ms)', 'RSS growth stream start → end',
                    'published/due', '### lifecycle cycles', '| cycle | RSS (MiB)', 'load average'):
        assert heading in out, heading


def test_due_windows_follow_the_node_grid() -> None:
    bench = load_bench()
    assert bench.due_windows(0.99, 1.0, 1.0) == 0
    assert bench.due_windows(1.0, 1.0, 1.0) == 1
    assert bench.due_windows(600.0, 1.0, 1.0) == 600
    assert bench.due_windows(3.0, 1.0, 0.5) == 5
    assert bench.missing_windows([1.0, 3.0004], 3, 1.0, 1.0) == [2.0]
