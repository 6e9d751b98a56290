"""``taco-ros eval``: runner plumbing with an oracle engine, reports, the whole command on tiny datasets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from eval_fixtures import write_all

from taco_ros.eval import report as r
from taco_ros.eval import runner as rn
from taco_ros.eval.datasets import load_benchmark


@pytest.fixture(scope='module')
def tiny(tmp_path_factory) -> dict[str, dict]:
    return write_all(tmp_path_factory.mktemp('eval_command'))


# ---------------------------------------------------------------- post-processing

def test_minmax_and_bicubic_align_corners():
    score = np.array([[1.0, 3.0], [5.0, 9.0]], np.float32)
    normalised = rn.minmax(score)
    assert normalised.min() == 0.0 and normalised.max() == 1.0
    assert rn.minmax(np.full((3, 3), 4.0)).max() == 0.0            # constant map: no NaN
    resized = rn.paper_score(score, (5, 5))
    # align_corners=True keeps the corner values exactly.
    assert resized[0, 0] == pytest.approx(0.0) and resized[-1, -1] == pytest.approx(1.0)
    assert resized[0, -1] == pytest.approx(0.25) and resized[-1, 0] == pytest.approx(0.5)
    same = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    np.testing.assert_allclose(rn.resize_bicubic(same, (7, 7)), same, atol=1e-6)


def test_nearest_resize_of_labels():
    labels = np.array([[0, 1], [2, 3]])
    np.testing.assert_array_equal(rn.resize_nearest(labels, (4, 4)),
                                  [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])


def test_paper_audio_concatenates_channels_and_crops_to_7_s():
    rng = np.random.default_rng(0)
    stereo = np.stack([np.zeros(100, np.float32), np.ones(100, np.float32)], axis=1)
    flat = rn.paper_audio(stereo, 100, rng)
    np.testing.assert_array_equal(flat, np.r_[np.zeros(100), np.ones(100)])   # L then R, not averaged
    long = np.arange(1000, dtype=np.float32)
    crop = rn.paper_audio(long, 100, rng)
    assert crop.shape == (700,) and np.all(np.diff(crop) == 1)
    assert rn.paper_audio(long[:300], 100, rng).shape == (300,)                # short: left to the encoder


def test_vocabulary_drops_music_for_ms3(tiny):
    ms3 = load_benchmark('ms3', tiny['ms3']['root'])
    assert rn.resolve_vocabulary(ms3, ['Music', 'Speech', 'Dog']) == ['Speech', 'Dog']
    avss = load_benchmark('avss', tiny['avss']['root'])
    assert rn.resolve_vocabulary(avss, ['Music']) == avss.vocabulary
    with pytest.raises(ValueError, match='Music'):
        rn.resolve_vocabulary(ms3, ['Speech'])


def test_negative_partners_prefer_another_video_and_class(tiny):
    s4 = load_benchmark('s4', tiny['s4']['root'])
    units = rn.evaluation_units(s4, 'paper')
    assert [len(u) for u in units] == [3, 3]
    assert rn.negative_partners(units) == [1, 0]
    ade = load_benchmark('ade_sp', tiny['ade_sp']['root'])
    units = rn.evaluation_units(ade, 'paper')
    partners = rn.negative_partners(units)
    for index, partner in enumerate(partners):
        assert units[partner][0].class_name != units[index][0].class_name
    assert rn.negative_partners([[s4.samples[0]]]) == [-1]


# ---------------------------------------------------------------- runner with an oracle engine

def _contains(signal: np.ndarray, piece: np.ndarray) -> bool:
    """Whether ``piece`` occurs in ``signal`` (the paper policy may have cropped the clip anywhere)."""
    for start in np.flatnonzero(signal == piece[0])[:2000]:
        if np.array_equal(signal[start:start + piece.size], piece):
            return True
    return False


class OracleEngine:
    """Returns the ground truth as the score map when the audio is the frame's own, nothing otherwise.

    Frames are recognised by their pixels, and an image prompted with several sounds by its audio.
    """

    random_weights = False

    def __init__(self, benchmark, vocabulary):
        self.description = {'engine': 'oracle'}
        self.vocabulary = vocabulary
        self.benchmark = benchmark
        self.truth = {}
        self.runs = []
        self.temporal_calls = []
        for sample in benchmark.samples:
            own, _ = rn.load_audio(sample.audio)
            # Both layouts a clip can arrive in: channels concatenated (paper) or interleaved frames.
            layouts = (np.ravel(own.T), np.ravel(own))
            self.truth.setdefault(benchmark.load_image(sample).tobytes(), []).append(
                (sample, benchmark.load_mask(sample), layouts))

    def begin_run(self, run):
        self.runs.append(run)

    def _output(self, frame, clip):
        heard = np.ravel(clip.samples)
        heard = heard[np.flatnonzero(heard)[0]:][:64]      # speech starts with silence: skip it
        for sample, target, layouts in self.truth[frame.tobytes()]:
            if any(_contains(own, heard) for own in layouts):
                binary = (target > 0).astype(np.float32)
                label = self.vocabulary[max(sample.class_id, 0)] if self.benchmark.semantic else None
                return binary, label
        return np.zeros((224, 224), np.float32), self.vocabulary[0]

    def run_video(self, frames, clips, temporal):
        self.temporal_calls.append(temporal)
        outputs = []
        for frame, clip in zip(frames, clips, strict=True):
            binary, label = self._output(frame, clip)
            outputs.append(rn.FrameOutput(score=binary, mask=binary.astype(np.uint8), coarse=binary[::8, ::8],
                                          hard=binary > 0, label=label,
                                          timings={'conmf': 2.0, 'total': 3.0}))
        return outputs

    def close(self):
        pass


def _evaluate(benchmark, mode='paper', runs=1):
    vocabulary = rn.resolve_vocabulary(benchmark, ['Music', 'Dog bark'])
    engine = OracleEngine(benchmark, vocabulary)
    options = rn.RunOptions(mode=mode, runs=runs, progress=False)
    return engine, rn.evaluate(benchmark, engine, options, log=lambda _: None)


def test_oracle_scores_100_on_s4_with_the_temporal_batch(tiny):
    benchmark = load_benchmark('s4', tiny['s4']['root'])
    engine, summary = _evaluate(benchmark, runs=2)
    assert engine.runs == [0, 1]
    assert all(engine.temporal_calls)                               # S4 paper: one temporal batch per video
    mean = summary['mean']
    assert mean['miou'] == pytest.approx(100, abs=1e-3) and mean['fscore'] == pytest.approx(100, abs=1e-3)
    assert mean['miou_fixed'] == pytest.approx(100, abs=1e-3)
    # Swapped audio: the oracle outputs nothing, so every negative frame is empty.
    assert mean['negative_empty_rate'] == 100
    assert 0 < mean['miou_u'] <= 100                                # the 8× coarser grid is imperfect
    assert summary['std']['miou'] == 0 and len(summary['runs']) == 2
    assert summary['timings_ms']['conmf']['mean'] == 2.0
    assert summary['timings_ms']['conmf']['count'] == 2 * len(benchmark)
    assert summary['curves']['refined']['thresholds'] == list(r_thresholds())
    assert set(summary['reference']) == {'miou', 'fscore', 'miou_u', 'fscore_u'}


def r_thresholds():
    from taco_ros.eval.metrics import AVSBENCH_THRESHOLDS

    return AVSBENCH_THRESHOLDS


def test_oracle_streaming_plays_videos_in_order(tiny):
    benchmark = load_benchmark('ms3', tiny['ms3']['root'])
    engine, summary = _evaluate(benchmark, mode='streaming')
    assert not any(engine.temporal_calls)
    assert summary['mean']['miou'] == pytest.approx(100, abs=1e-3)
    assert summary['settings']['mode'] == 'streaming'


def test_oracle_coarse_mode_reports_unrefined_keys(tiny):
    benchmark = load_benchmark('ade_sp', tiny['ade_sp']['root'])
    _, summary = _evaluate(benchmark, mode='coarse')
    assert set(summary['mean']) == {'miou_u', 'map_u', 'miou_fixed_u', 'negative_empty_rate'}
    assert summary['mean']['miou_u'] == pytest.approx(100, abs=1e-3)
    assert summary['mean']['map_u'] == pytest.approx(100, abs=1e-3)


def test_oracle_semantic_benchmarks(tiny):
    ade = load_benchmark('ade_sp_semantic', tiny['ade_sp']['root'])
    _, summary = _evaluate(ade)
    # Background, dog and car are perfect; 'person' (the last class) falls outside the authors' histogram.
    assert summary['mean']['miou'] == pytest.approx(100) and summary['mean']['fscore'] == pytest.approx(100)
    assert 'negative_empty_rate' not in summary['mean']
    avss = load_benchmark('avss', tiny['avss']['root'])
    _, summary = _evaluate(avss)
    # The oracle paints the sounding object only: the guitar region (class 3) is missed.
    assert 0 < summary['mean']['miou'] < 100


def test_bad_run_options():
    with pytest.raises(ValueError, match='mode'):
        rn.RunOptions(mode='fast').validate()
    with pytest.raises(ValueError, match='runs'):
        rn.RunOptions(runs=0).validate()


# ---------------------------------------------------------------- reports

def _summary(random_weights=False):
    runs = [{'miou': 60.0, 'fscore': 70.0, 'miou_fixed': 50.0}, {'miou': 62.0, 'fscore': 72.0,
                                                                 'miou_fixed': None}]
    return r.build_summary(benchmark='s4', mode='paper', runs=runs, settings={'device': 'cpu'}, samples=10,
                           random_weights=random_weights,
                           curves={'refined': {'thresholds': [0.1, 0.2], 'iou': [0.5, 0.6]}},
                           timings={'conmf': [10.0, 20.0], 'total': [30.0, 50.0]}, notes=['n'])


def test_summary_mean_std_and_reference():
    summary = _summary()
    assert summary['mean']['miou'] == 61.0 and summary['std']['miou'] == 1.0       # np.std: population
    assert summary['mean']['miou_fixed'] == 50.0 and summary['std']['miou_fixed'] == 0.0
    ref = summary['reference']['miou']
    assert ref['reference'] == 64.04 and ref['delta'] == pytest.approx(-3.04)
    assert not ref['within_tolerance']                                             # > max(2·0.25, 1)
    assert summary['timings_ms']['total'] == {'mean': 40.0, 'std': 10.0, 'median': 40.0, 'p90': 48.0,
                                              'count': 2}
    assert _summary(random_weights=True)['reference'] == {}


def test_table_and_json(tmp_path):
    table = r.format_table(_summary())
    assert '61.00 ± 1.00' in table and '64.04 ± 0.25' in table and '-3.04 !' in table
    assert 'RANDOM WEIGHTS' in r.format_table(_summary(random_weights=True))
    summary = _summary()
    summary['mean']['nan_metric'] = math.nan
    path = r.write_json(tmp_path / 'out' / 'summary.json', summary)
    loaded = json.loads(path.read_text())
    assert loaded['mean']['nan_metric'] is None and loaded['runs'][1]['miou_fixed'] is None


def test_plots_are_png(tmp_path):
    paths = r.write_plots(_summary(), tmp_path / 'plots')
    assert [p.name for p in paths] == ['s4_paper_iou.png', 's4_paper_timing.png']
    for path in paths:
        assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    empty = dict(_summary(), curves={}, timings_ms={})
    assert r.write_plots(empty, tmp_path / 'none') == []


# ---------------------------------------------------------------- the whole command, random-weight models

FAST_SOLVER = ['--solver', 'max_steps=12', '--solver', 'kmeans_restarts=1']


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory) -> str:
    """taco_tiny at a 128² input instead of 764²: same code path, a fraction of the CPU time."""
    from taco_ros.core.models import load_model_config

    config = load_model_config('taco_tiny')
    config['name'] = 'taco_tiny_128'
    config['clip']['input_size'] = 128
    path = tmp_path_factory.mktemp('eval_models') / 'taco_tiny_128.json'
    path.write_text(json.dumps(config))
    return str(path)


def _eval(*args: str) -> int:
    from taco_ros.cli import main

    return main(['eval', '--device', 'cpu', '--no-progress', *args])


def _load(path) -> dict:
    return json.loads(path.read_text())


def test_s4_paper_two_runs_json_table_plots(tiny, tiny_config, tmp_path, capsys):
    out = tmp_path / 's4.json'
    # One video (3 frames, one temporal batch), two runs; a single video has no foreign audio to swap in.
    code = _eval('--benchmark', 's4', '--root', str(tiny['s4']['root']), '--mode', 'paper', '--runs', '2',
                 '--limit', '1', '--model-config', tiny_config, '--allow-random-weights', *FAST_SOLVER,
                 '--output', str(out), '--plots', str(tmp_path / 'plots'))
    assert code == 0
    printed = capsys.readouterr().out
    assert 'RANDOM WEIGHTS' in printed and 'mIoU (best threshold)' in printed
    assert 'note: solver overrides or audio context in effect: not the paper protocol' in printed
    summary = _load(out)
    assert summary['random_weights'] and summary['reference'] == {}
    assert summary['samples'] == 3 and len(summary['runs']) == 2
    assert set(summary['mean']) == {'miou', 'fscore', 'miou_u', 'fscore_u', 'miou_fixed'}
    for key, value in summary['mean'].items():
        assert 0 <= value <= 100, key
        assert summary['std'][key] >= 0
    settings = summary['settings']
    assert settings['solver_profile'] == 'paper' and settings['solver']['optimizer'] == 'gd'
    assert settings['solver_overrides'] == {'max_steps': 12, 'kmeans_restarts': 1}
    assert not settings['paper_protocol']
    # Per stage, every frame of both runs (timings come from the pass with the frames' own audio).
    assert summary['timings_ms']['conmf']['count'] == 2 * 3
    assert set(summary['timings_ms']) == {'image_encoder', 'audio_encoder', 'conmf', 'segmenter', 'total'}
    assert len(summary['curves']['refined']['iou']) == 19
    for name in ('s4_paper_iou.png', 's4_paper_timing.png'):
        assert (tmp_path / 'plots' / name).read_bytes()[:4] == b'\x89PNG'


def test_ms3_streaming(tiny, tiny_config, tmp_path):
    out = tmp_path / 'ms3.json'
    assert _eval('--benchmark', 'ms3', '--root', str(tiny['ms3']['root']), '--mode', 'streaming',
                 '--runs', '1', '--limit', '4', '--model-config', tiny_config, '--allow-random-weights',
                 '--solver', 'max_steps=12', '--audio-context', 'history', '--output', str(out)) == 0
    summary = _load(out)
    assert summary['settings']['audio_context'] == 'history'
    assert summary['samples'] == 4 and summary['settings']['solver_profile'] == 'streaming'
    assert summary['settings']['solver']['warm_start'] is True
    assert {'miou', 'fscore', 'miou_u', 'miou_fixed', 'negative_empty_rate'} <= set(summary['mean'])
    assert summary['settings']['vocabulary_size'] == 526                      # AudioSet minus "Music"


def test_ade_sp_coarse(tiny, tiny_config, tmp_path):
    out = tmp_path / 'ade.json'
    assert _eval('--benchmark', 'ade_sp', '--root', str(tiny['ade_sp']['root']), '--mode', 'coarse',
                 '--runs', '1', '--model-config', tiny_config, '--allow-random-weights', *FAST_SOLVER,
                 '--output', str(out)) == 0
    summary = _load(out)
    assert set(summary['mean']) == {'miou_u', 'map_u', 'miou_fixed_u', 'negative_empty_rate'}
    assert summary['timings_ms']['segmenter']['mean'] < summary['timings_ms']['total']['mean']


def test_semantic_benchmarks_paper_and_baseline(tiny, tiny_config, tmp_path):
    out = tmp_path / 'avss.json'
    assert _eval('--benchmark', 'avss', '--root', str(tiny['avss']['root']), '--runs', '1',
                 '--model-config', tiny_config, '--allow-random-weights', *FAST_SOLVER,
                 '--output', str(out)) == 0
    summary = _load(out)
    assert set(summary['mean']) == {'miou', 'fscore'} and summary['settings']['vocabulary_size'] == 4
    out = tmp_path / 'ade_sem.json'
    assert _eval('--benchmark', 'ade_sp_semantic', '--root', str(tiny['ade_sp']['root']), '--mode',
                 'baseline', '--runs', '1', '--model-config', tiny_config, '--allow-random-weights',
                 '--output', str(out)) == 0
    summary = _load(out)
    assert summary['settings']['pipeline_mode'] == 'baseline' and set(summary['mean']) == {'miou', 'fscore'}


def test_command_errors(tiny, tiny_config, tmp_path, monkeypatch, capsys):
    assert _eval('--benchmark', 's4', '--root', str(tmp_path / 'absent')) == 2
    assert 'root directory not found' in capsys.readouterr().err
    assert _eval('--benchmark', 's4', '--root', str(tiny['s4']['root']), '--solver', 'max_steps') == 2
    assert 'FIELD=VALUE' in capsys.readouterr().err
    # No model files anywhere and no --allow-random-weights: a clear refusal, not random numbers.
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    monkeypatch.delenv('TACO_MODEL_DIR', raising=False)
    assert _eval('--benchmark', 's4', '--root', str(tiny['s4']['root']), '--model-config', tiny_config,
                 '--model-dir', str(tmp_path / 'models')) == 2
    assert 'taco-tiny' in capsys.readouterr().err


def test_paper_mode_needs_fcclip_and_coarse_mode_does_not(tiny, tiny_config, tmp_path, monkeypatch):
    """Without the FC-CLIP file the pipeline degrades to coarse maps; the eval refuses to call that
    'paper', and its coarse mode runs on the same stages."""
    from encoder_fixtures import write_tiny_model_files

    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    monkeypatch.delenv('TACO_MODEL_DIR', raising=False)
    models = tmp_path / 'models'
    write_tiny_model_files(models)
    benchmark = load_benchmark('s4', tiny['s4']['root'], limit=2)
    options = dict(model_config=tiny_config, model_dir=str(models), device='cpu',
                   solver_overrides={'max_steps': 5, 'kmeans_restarts': 1})
    with pytest.raises(ValueError, match='needs the FC-CLIP checkpoint'):
        rn.PipelineEngine(benchmark, mode='paper', **options)
    engine = rn.PipelineEngine(benchmark, mode='coarse', **options)
    try:
        unit = benchmark.samples[:2]
        clips = [rn.Clip(*rn.load_audio(s.audio), start=float(i)) for i, s in enumerate(unit)]
        outputs = engine.run_video([benchmark.load_image(s) for s in unit], clips, temporal=True)
    finally:
        engine.close()
    assert not engine.random_weights
    for output in outputs:
        assert output.coarse.shape == (4, 4) and output.score is output.coarse
        assert output.label in engine.vocabulary
        assert set(output.timings) == {'image_encoder', 'audio_encoder', 'conmf', 'segmenter', 'total'}


# ------------------------------------------------------------------------------ several objects (MS3)
def _engine_outputs(benchmark, tiny_config, mode: str, objects: int) -> list:
    overrides = {'max_steps': 12, 'kmeans_restarts': 1, 'sounding_threshold': 0.0}
    engine = rn.PipelineEngine(benchmark, mode=mode, model_config=tiny_config, device='cpu', seed=42,
                               solver_overrides=overrides, allow_random_weights=True, objects=objects)
    try:
        unit = benchmark.samples[:2]
        clips = [rn.Clip(*rn.load_audio(s.audio), start=float(i)) for i, s in enumerate(unit)]
        return engine.run_video([benchmark.load_image(s) for s in unit], clips, temporal=False)
    finally:
        engine.close()


@pytest.mark.parametrize('mode', ['paper', 'coarse'])
def test_several_objects_predict_the_union_of_their_masks(tiny, tiny_config, mode):
    """k*'s map is one of the objects' maps (or a part of it, when factors merged), so the union's map is
    at least k*'s everywhere and its mask holds k*'s mask; with one object the two runs are the same."""
    benchmark = load_benchmark('ms3', tiny['ms3']['root'], limit=2)
    single = _engine_outputs(benchmark, tiny_config, mode, 1)
    union = _engine_outputs(benchmark, tiny_config, mode, 4)
    for one, many in zip(single, union, strict=True):
        assert one.label == many.label and many.score.shape == one.score.shape
        assert (many.score >= one.score - 1e-6).all()
        assert (many.mask >= one.mask).all() and set(np.unique(many.mask).tolist()) <= {0, 1}
        assert (many.coarse >= one.coarse).all()


def test_ms3_with_several_objects(tiny, tiny_config, tmp_path, capsys):
    out = tmp_path / 'ms3_objects.json'
    assert _eval('--benchmark', 'ms3', '--root', str(tiny['ms3']['root']), '--mode', 'paper', '--runs', '1',
                 '--limit', '2', '--model-config', tiny_config, '--allow-random-weights', *FAST_SOLVER,
                 '--objects', '3', '--output', str(out)) == 0
    assert "note: 3 objects per frame: their masks' union, not one k*" in capsys.readouterr().out
    summary = _load(out)
    assert summary['settings']['objects'] == 3
    assert {'miou', 'fscore', 'miou_u', 'fscore_u', 'miou_fixed'} <= set(summary['mean'])
    # Streaming: the node's own path; the results hold no per-object token-grid map, so no *_u metrics.
    assert _eval('--benchmark', 'ms3', '--root', str(tiny['ms3']['root']), '--mode', 'streaming',
                 '--runs', '1', '--limit', '2', '--model-config', tiny_config, '--allow-random-weights',
                 '--objects', '2', '--solver', 'max_steps=12', '--no-negative-audio',
                 '--output', str(out)) == 0
    summary = _load(out)
    assert {'miou', 'fscore', 'miou_fixed'} == set(summary['mean'])
    assert any('no token-grid map' in note for note in summary['notes'])


@pytest.mark.parametrize(('args', 'message'), [
    (('--benchmark', 'avss', '--objects', '2'), 'binary benchmarks only'),
    (('--benchmark', 'ms3', '--mode', 'baseline', '--objects', '2'), 'the baseline has none'),
    (('--benchmark', 'ms3', '--objects', '9'), 'objects must be an integer in [1, 8]'),
])
def test_several_objects_are_refused_where_they_mean_nothing(tiny, tiny_config, capsys, args, message):
    root = tiny['avss' if 'avss' in args else 'ms3']['root']
    assert _eval(*args, '--root', str(root), '--model-config', tiny_config, '--allow-random-weights') == 2
    assert message in capsys.readouterr().err
