"""TacoPipeline (ROS-free) on random-weight taco_tiny models: the result contract, modes, warm start,
silence, vocabulary, options, determinism, model files and anchor banks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from node_fixtures import (  # noqa: E402
    WORDS,
    isolate_model_search,
    make_frame,
    noise_window,
    small_model_config,
    write_all_tiny_files,
)

from taco_ros.core.model_files import ModelFileNotFound  # noqa: E402
from taco_ros.core.pipeline import (  # noqa: E402
    STAGES,
    AudioWindow,
    PipelineConfig,
    TacoPipeline,
    solver_config,
)
from taco_ros.core.stages import sounding_objects, token_grid  # noqa: E402

STEPS = {'max_steps': 15}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp('pipeline')


@pytest.fixture(scope='module')
def small_config(workdir: Path) -> Path:
    return small_model_config(workdir)


@pytest.fixture(scope='module')
def empty_dir(workdir: Path) -> Path:
    path = workdir / 'empty'
    path.mkdir()
    return path


@pytest.fixture(scope='module')
def pipeline(small_config: Path, empty_dir: Path) -> TacoPipeline:
    pipe = TacoPipeline(PipelineConfig(
        model_config=str(small_config), model_dir=str(empty_dir), device='cpu',
        allow_random_weights=True, vocabulary=list(WORDS), solver_overrides=dict(STEPS)))
    yield pipe
    pipe.close()


def check_result(result, frame: np.ndarray, window: AudioWindow) -> None:
    assert result.mask.dtype == np.uint8 and result.mask.shape == frame.shape[:2]
    values = set(np.unique(result.mask).tolist()) - {0}
    assert values == {obj.mask_value for obj in result.objects}
    for obj in result.objects:
        x, y, w, h = obj.bbox
        inside = np.argwhere(result.mask == obj.mask_value)
        assert inside[:, 0].min() == y and inside[:, 0].max() == y + h - 1
        assert inside[:, 1].min() == x and inside[:, 1].max() == x + w - 1
        assert obj.top_labels[0] == obj.label and len(obj.top_labels) == len(obj.top_scores)
    assert result.activation.shape == result.token_offsets.shape
    assert result.activation.size >= 1
    assert result.token_offsets[0] == 0.0
    assert result.token_offsets[-1] + result.token_duration == pytest.approx(window.duration)
    assert result.window_duration == pytest.approx(window.duration)
    assert np.all((result.activation >= 0) & (result.activation <= 1))
    assert set(result.timings) == set(STAGES)
    assert result.timings['total'] >= max(v for k, v in result.timings.items() if k != 'total')
    assert result.random_weights is True


def test_result_contract_and_warm_start(pipeline: TacoPipeline) -> None:
    frame, window = make_frame(), noise_window()
    pipeline.reset()
    first = pipeline.process(frame, window)
    check_result(first, frame, window)
    assert first.cold_start and 0 <= first.k_star < 8 and 1 <= first.steps <= STEPS['max_steps']
    assert first.labels[0] in WORDS
    second = pipeline.process(frame, window)
    assert not second.cold_start, second.cold_reason
    pipeline.reset()
    assert pipeline.process(frame, window).cold_start


def test_cpu_runs_are_deterministic(pipeline: TacoPipeline) -> None:
    frame, window = make_frame(seed=3), noise_window(seed=3)
    pipeline.update(always_segment=True)
    try:
        pipeline.reset()
        a = pipeline.process(frame, window)
        pipeline.reset()
        b = pipeline.process(frame, window)
    finally:
        pipeline.update(always_segment=False)
    assert a.k_star == b.k_star and a.labels == b.labels and a.steps == b.steps
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.score_map, b.score_map)
    np.testing.assert_array_equal(a.activation, b.activation)


@pytest.mark.parametrize('mode', ['full', 'coarse', 'baseline'])
def test_modes(pipeline: TacoPipeline, mode: str) -> None:
    frame, window = make_frame((90, 200)), noise_window(0.75)
    pipeline.update(mode=mode, always_segment=True)
    try:
        result = pipeline.process(frame, window)
    finally:
        pipeline.update(mode='full', always_segment=False)
    check_result(result, frame, window)
    assert result.mode == mode
    assert result.score_map.shape == frame.shape[:2] and result.score_map.dtype == np.float32
    if mode == 'baseline':
        assert result.steps == 0 and result.timings['conmf'] == 0.0
        assert result.labels[0] == pipeline.vocabulary[result.k_star]
        assert result.coarse_map is None                       # no co-NMF, no U_I
    else:
        assert result.coarse_map is not None
    if mode == 'coarse':
        assert 0.0 <= result.score_map.min() and result.score_map.max() <= 1.0


def test_mask_follows_the_threshold(pipeline: TacoPipeline) -> None:
    frame, window = make_frame(seed=5), noise_window(seed=5)
    # sounding_threshold 0: the solver always says "sounding", so the mask is always decided.
    pipeline.update(mode='coarse', solver_overrides={**STEPS, 'sounding_threshold': 0.0})
    try:
        pipeline.reset()
        result = pipeline.process(frame, window)
        assert result.sounding
        threshold = float(np.median(result.score_map))
        pipeline.update(mask_threshold=threshold)
        pipeline.reset()
        lower = pipeline.process(frame, window)
        pipeline.update(mask_threshold=1.0)
        pipeline.reset()
        none = pipeline.process(frame, window)
    finally:
        pipeline.update(mode='full', solver_overrides=dict(STEPS), mask_threshold=0.5)
    assert (lower.mask > 0).sum() == (lower.score_map > threshold).sum()
    assert not none.mask.any() and none.objects == [] and none.sounding


def _single_k_star_window(pipeline: TacoPipeline, frame: np.ndarray, window: AudioWindow, previous):
    """One window as TacoPipeline.process composed it before ``max_objects`` existed (its k* alone), from
    the same stages: the reference that max_objects = 1 must reproduce exactly."""
    stages, config = pipeline.stages, pipeline.config
    image = stages.encode_frame(frame)
    audio = stages.encode_audio(window.samples, window.sample_rate, context=config.audio_context)
    result = stages.solve(image, audio, pipeline.bank, solver_config(config), previous)
    k = int(result.k_star)
    image_column, audio_column = stages.columns(result, k)
    score_map = None
    if result.sounding or config.always_segment:
        if config.mode == 'coarse':
            score_map = stages.coarse_map(image_column, image, frame.shape)
        else:
            score_map = stages.semantic_maps(image, result.image_factors, channels=[k],
                                             out_size=frame.shape[:2])[0].cpu().numpy()
    timeline = stages.timeline(audio_column, audio, window.duration)
    objects, mask = sounding_objects(
        score_map if result.sounding else None, config, frame.shape[:2], k=k, labels=result.labels,
        scores=result.label_scores, confidence=float(result.confidence),
        audio_activation=float(audio_column.mean()))
    return result, dict(mask=mask, objects=objects, score_map=score_map, activation=timeline.values,
                        coarse_map=token_grid(image_column, image.grid))


@pytest.mark.parametrize('mode', ['full', 'coarse'])
@pytest.mark.parametrize('sounding_threshold', [None, 0.0])
def test_max_objects_1_is_the_single_k_star_output(pipeline: TacoPipeline, mode: str,
                                                   sounding_threshold: float | None) -> None:
    """Every field of every window equals the single-k* composition (warm starts included); the new
    fields only add to it: k*'s audio factor and timeline, and a track id (1 while it keeps sounding)."""
    overrides = dict(STEPS) if sounding_threshold is None else {**STEPS, 'sounding_threshold': 0.0}
    pipeline.update(mode=mode, max_objects=1, solver_overrides=overrides)
    previous, objects = None, 0
    try:
        pipeline.reset()
        for i in range(4):
            frame, window = make_frame(seed=i % 2), noise_window(seed=i)
            got = pipeline.process(frame, window)
            previous, want = _single_k_star_window(pipeline, frame, window, previous)
            assert (got.k_star, got.sounding, got.confidence, got.steps, got.cold_start, got.labels,
                    got.label_scores) == (previous.k_star, previous.sounding, previous.confidence,
                                          previous.steps, previous.cold_start, previous.labels,
                                          previous.label_scores)
            for name in ('mask', 'score_map', 'activation', 'coarse_map'):
                if want[name] is None:
                    assert getattr(got, name) is None, name
                else:
                    np.testing.assert_array_equal(getattr(got, name), want[name], err_msg=name)
            assert len(got.objects) == len(want['objects'])
            for obj, expected in zip(got.objects, want['objects'], strict=True):
                assert replace(obj, audio_factor=-1, track_id=0, activation=None) == expected
                assert obj.audio_factor == got.k_star and obj.track_id >= 1
                np.testing.assert_array_equal(obj.activation, got.activation)
            objects += len(got.objects)
    finally:
        pipeline.update(mode='full', solver_overrides=dict(STEPS))
    assert objects > 0 or sounding_threshold is None


def test_silence_gate(pipeline: TacoPipeline) -> None:
    frame = make_frame()
    window = AudioWindow(samples=np.zeros(8000, np.float32), sample_rate=16000, start=5.0)
    pipeline.update(silence_rms=1e-3)
    try:
        result = pipeline.process(frame, window)
    finally:
        pipeline.update(silence_rms=0.0)
    check_result(result, frame, window)
    assert not result.sounding and result.objects == [] and not result.mask.any()
    assert result.steps == 0 and result.k_star == -1 and result.score_map is None
    assert result.coarse_map is None
    assert not result.activation.any()


def test_coarse_map_is_u_i_of_k_star_on_the_token_grid(pipeline: TacoPipeline) -> None:
    """TacoResult.coarse_map is U_I[:, k*] on the token grid (what the eval scores as the paper's
    unrefined map); mode coarse's score map is that grid upsampled to the frame."""
    frame, window = make_frame(seed=4), noise_window(seed=4)
    pipeline.update(mode='coarse', always_segment=True)
    try:
        pipeline.reset()
        result = pipeline.process(frame, window)
    finally:
        pipeline.update(mode='full', always_segment=False)
    image = pipeline.stages.encode_frame(frame)
    grid = result.coarse_map
    assert grid.shape == image.grid == (4, 4) and grid.dtype == np.float32
    assert np.all((grid > 0) & (grid < 1))                     # sigmoid activations
    upsampled = pipeline.stages.coarse_map(grid.ravel(), image, frame.shape)
    np.testing.assert_array_equal(upsampled, result.score_map)


def test_any_rate_stereo_and_history(pipeline: TacoPipeline) -> None:
    frame = make_frame()
    stereo = noise_window(0.5, rate=44100, channels=2)
    check_result(pipeline.process(frame, stereo), frame, stereo)
    window = noise_window(1.0, rate=8000)
    window.history = noise_window(3.0, rate=8000, seed=9).samples
    pipeline.update(audio_context='history')
    try:
        result = pipeline.process(frame, window)
    finally:
        pipeline.update(audio_context='tile')
    check_result(result, frame, window)


def test_letterbox_keeps_output_at_frame_size(small_config: Path, empty_dir: Path) -> None:
    pipe = TacoPipeline(PipelineConfig(
        model_config=str(small_config), model_dir=str(empty_dir), device='cpu',
        allow_random_weights=True, vocabulary=list(WORDS), resize='letterbox', mode='coarse',
        always_segment=True, solver_overrides=dict(STEPS)))
    try:
        frame, window = make_frame((60, 200)), noise_window()
        result = pipe.process(frame, window)
        check_result(result, frame, window)
        assert result.score_map.shape == (60, 200)
    finally:
        pipe.close()


def test_vocabulary_changes_labels(pipeline: TacoPipeline) -> None:
    frame, window = make_frame(), noise_window()
    new_words = ['violin', 'drum kit', 'siren']
    try:
        pipeline.set_vocabulary(new_words)
        assert pipeline.vocabulary == new_words
        result = pipeline.process(frame, window)
        assert set(result.labels) <= set(new_words) and result.labels
        for bad, reason in [(['one'], 'at least 2'), (['a', 'a'], 'duplicate'), (['a', ' '], 'non-empty')]:
            assert reason in pipeline.vocabulary_problem(bad)
            with pytest.raises(ValueError, match=reason):
                pipeline.set_vocabulary(bad)
        assert pipeline.vocabulary == new_words
    finally:
        pipeline.set_vocabulary(list(WORDS))


@pytest.mark.parametrize('changes,message', [
    ({'mode': 'panoptic'}, 'mode'), ({'mask_threshold': 1.5}, 'mask_threshold'),
    ({'top_k': 0}, 'top_k'), ({'solver_overrides': {'max_iter': 3}}, 'unknown'),
    ({'solver_overrides': {'max_steps': 0}}, 'max_steps'), ({'device': 'cpu'}, 'cannot change'),
])
def test_bad_updates_are_refused(pipeline: TacoPipeline, changes: dict, message: str) -> None:
    before = pipeline.config
    with pytest.raises(ValueError, match=message):
        pipeline.update(**changes)
    assert pipeline.config == before


@pytest.mark.parametrize('frame,window,message', [
    (np.zeros((10, 10), np.uint8), noise_window(), 'RGB'),
    (np.zeros((10, 10, 3), np.float32), noise_window(), 'uint8'),
    (make_frame(), AudioWindow(np.array([0.1, np.nan], np.float32), 16000, 0.0), 'NaN'),
    (make_frame(), AudioWindow(np.zeros(0, np.float32), 16000, 0.0), 'n > 0'),
    (make_frame(), AudioWindow(np.zeros(10, np.float32), 0, 0.0), 'sample_rate'),
])
def test_bad_inputs(pipeline: TacoPipeline, frame, window, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pipeline.process(frame, window)


def test_bad_configs() -> None:
    from taco_ros.core.pipeline import validate_config

    # Whether the CUDA device exists needs torch: the pipeline's check, not PipelineConfig's.
    with pytest.raises(ValueError, match='CUDA is not available' if not torch.cuda.is_available()
                       else 'only'):
        validate_config(PipelineConfig(device='cuda:7' if torch.cuda.is_available() else 'cuda'))
    with pytest.raises(ValueError, match='device'):
        PipelineConfig(device='tpu').validate()
    with pytest.raises(ValueError, match='precision'):
        PipelineConfig(precision='int8').validate()


def test_missing_model_files_are_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    empty = isolate_model_search(monkeypatch, tmp_path)
    with pytest.raises(ModelFileNotFound, match=r'not found'):
        TacoPipeline(PipelineConfig(model_config='taco_tiny', model_dir=str(empty), device='cpu'))


def test_real_files_and_an_anchor_bank_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            small_config: Path) -> None:
    """Model files in their real formats load without the random-weights flag; a bank built from
    them serves a vocabulary subset without text encoders."""
    from taco_ros.core.models import create_clap, create_clap_text, create_clip
    from taco_ros.core.vocabulary import build_anchor_bank, save_anchor_bank

    isolate_model_search(monkeypatch, tmp_path)
    model_dir = write_all_tiny_files(tmp_path / 'models')
    words = [*WORDS, 'violin']
    clip = create_clip(str(small_config), model_dir=model_dir)
    audio = create_clap(str(small_config), model_dir=model_dir)
    text = create_clap_text(str(small_config), model_dir=model_dir)
    bank_path = save_anchor_bank(build_anchor_bank(words, clip, text, audio), tmp_path / 'bank.st')
    pipe = TacoPipeline(PipelineConfig(
        model_config=str(small_config), model_dir=str(model_dir), device='cpu',
        anchors=str(bank_path), vocabulary=WORDS[:3], keep_text_encoders=False,
        solver_overrides=dict(STEPS)))
    try:
        assert not pipe.random_weights
        assert pipe.vocabulary == WORDS[:3]
        assert not pipe.backbone.has_text_tower
        frame, window = make_frame(), noise_window()
        result = pipe.process(frame, window)
        assert result.random_weights is False and set(result.labels) <= set(WORDS[:3])
        pipe.set_vocabulary(['violin', 'dog'])
        assert 'not in the anchor bank' in pipe.vocabulary_problem(['dog', 'trumpet'])
        pipe.set_vocabulary(None)
        assert pipe.vocabulary == words
    finally:
        pipe.close()


def test_suspend_resume_and_close(small_config: Path, empty_dir: Path) -> None:
    pipe = TacoPipeline(PipelineConfig(
        model_config=str(small_config), model_dir=str(empty_dir), device='cpu',
        allow_random_weights=True, vocabulary=list(WORDS), solver_overrides=dict(STEPS)))
    frame, window = make_frame(), noise_window()
    pipe.suspend()
    pipe.resume()
    check_result(pipe.process(frame, window), frame, window)
    pipe.close()
    assert pipe.backbone is None and pipe.segmenter is None


@pytest.mark.gpu
def test_cuda_autocast_and_suspend(small_config: Path, empty_dir: Path) -> None:
    pipe = TacoPipeline(PipelineConfig(
        model_config=str(small_config), model_dir=str(empty_dir), device='cuda',
        precision='fp16', allow_random_weights=True, vocabulary=list(WORDS),
        solver_overrides=dict(STEPS)))
    try:
        frame, window = make_frame(), noise_window()
        check_result(pipe.process(frame, window), frame, window)
        used = torch.cuda.memory_allocated()
        pipe.suspend()
        assert torch.cuda.memory_allocated() < used
        pipe.resume()
        check_result(pipe.process(frame, window), frame, window)
    finally:
        pipe.close()


def _result_with_square(random_weights: bool, sounding: bool = True):
    from taco_ros.core.pipeline import SoundingObjectResult, TacoResult

    mask = np.zeros((120, 160), np.uint8)
    objects = []
    if sounding:
        mask[40:80, 60:120] = 1
        objects = [SoundingObjectResult(
            mask_value=1, label='dog', score=0.31, top_labels=['dog', 'cat'],
            top_scores=[0.31, 0.2], confidence=0.8, audio_activation=0.6,
            bbox=(60, 40, 60, 40), factor_index=2)]
    return TacoResult(
        mask=mask, objects=objects, sounding=sounding, confidence=0.8, k_star=2, steps=5,
        cold_start=False, mode='full', activation=np.array([0.1, 0.9, 0.5, 0.0, 1.0], np.float32),
        token_offsets=np.arange(5, dtype=np.float32) * 0.2, token_duration=0.2,
        window_duration=1.0, timings={}, score_map=None, random_weights=random_weights)


def test_debug_overlay() -> None:
    from taco_ros.overlay import colour_of, draw_debug

    frame = np.full((120, 160, 3), 100, np.uint8)
    plain = draw_debug(frame, _result_with_square(random_weights=False), alpha=0.5)
    assert plain.shape == frame.shape and plain.dtype == np.uint8
    inside = plain[60:75, 80:100].reshape(-1, 3).mean(axis=0)
    expected = 0.5 * 100 + 0.5 * np.array(colour_of(1))
    np.testing.assert_allclose(inside, expected, atol=2)
    assert np.all(plain[2:10, 2:10] == 100)          # far from mask, text and strip: untouched
    strip = plain[-12:, :].astype(int)
    assert strip.std() > 10                          # the activation bars are drawn
    flagged = draw_debug(frame, _result_with_square(random_weights=True))
    top = np.median(flagged[:8].reshape(-1, 3), axis=0)   # mostly banner, some text
    assert top[0] > top[1] + 50 and top[0] > top[2] + 50   # a red banner
    empty = draw_debug(frame, _result_with_square(random_weights=False, sounding=False))
    assert empty.shape == frame.shape
    with pytest.raises(ValueError, match='RGB'):
        draw_debug(frame[..., 0], _result_with_square(random_weights=False))


def test_missing_fcclip_checkpoint_falls_back_to_the_coarse_map(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, small_config: Path) -> None:
    """Issue 5: without the segmenter's file, CLIP + CLAP still give the coarse 24x24 map; only the
    A-FC-CLIP baseline, which is FC-CLIP itself, refuses to start."""
    from encoder_fixtures import write_tiny_model_files

    isolate_model_search(monkeypatch, tmp_path)
    model_dir = tmp_path / 'models_without_fcclip'
    write_tiny_model_files(model_dir)
    config = PipelineConfig(
        model_config=str(small_config), model_dir=str(model_dir), device='cpu', mode='full',
        vocabulary=list(WORDS), always_segment=True, solver_overrides=dict(STEPS))
    pipe = TacoPipeline(config)
    try:
        assert pipe.segmenter is None
        assert any('FC-CLIP checkpoint missing' in note for note in pipe.notes)
        frame, window = make_frame(), noise_window()
        result = pipe.process(frame, window)
        assert result.mode == 'coarse'
        assert result.score_map is not None and result.score_map.shape == frame.shape[:2]
        assert 'needs the FC-CLIP checkpoint' in pipe.update_problem(mode='baseline')
    finally:
        pipe.close()
    with pytest.raises(ModelFileNotFound):
        TacoPipeline(replace(config, mode='baseline'))


def test_solver_runs_on_its_own_thread_count() -> None:
    """The co-NMF block runs with solver_threads intra-op threads; the process's setting comes back."""
    from taco_ros.core.contract import PipelineConfig
    from taco_ros.core.stages import Stages

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        stages = Stages(models=None, device=torch.device('cpu'), solver_threads=1)
        with stages.solver_thread_count():
            inside = torch.get_num_threads()
        assert inside == 1 and torch.get_num_threads() == 2
        stages.solver_threads = 0   # 0: the process's setting is kept
        with stages.solver_thread_count():
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert PipelineConfig(solver_threads=-1).problem() is not None
    assert PipelineConfig(solver_threads=4).problem() is None
