"""Several sounding objects per window (core/objects.py, stages.layered_objects, PipelineConfig.max_objects):
the shared mask, each object's map, audio activation and track id, on planted two-source windows solved by
the real co-NMF and on the random-weight taco_tiny pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from node_fixtures import WORDS, make_frame, noise_window, small_model_config  # noqa: E402
from planted_multi import MultiScene, make_multi_problem  # noqa: E402

from taco_ros.core.clip_backbone import ImageTokens  # noqa: E402
from taco_ros.core.conmf import CoNMFConfig, solve  # noqa: E402
from taco_ros.core.contract import MAX_OBJECTS, PipelineConfig, SoundingObjectResult  # noqa: E402
from taco_ros.core.masks import bounding_box  # noqa: E402
from taco_ros.core.objects import ObjectTracks, several_objects, sounding_rule  # noqa: E402
from taco_ros.core.pipeline import TacoPipeline  # noqa: E402
from taco_ros.core.sounding import SoundingFactor, select_sounding_factors  # noqa: E402
from taco_ros.core.stages import ObjectLayer, layered_objects, sounding_objects  # noqa: E402

FRAME = (96, 112, 3)


def _object(k: int) -> SoundingObjectResult:
    return SoundingObjectResult(mask_value=0, label=f'w{k}', score=0.3, top_labels=[f'w{k}'],
                                top_scores=[0.3], confidence=0.2, audio_activation=0.4, bbox=(0, 0, 0, 0),
                                factor_index=k)


def _square(shape: tuple[int, int], rows: slice, cols: slice, value: float) -> np.ndarray:
    score = np.zeros(shape, np.float32)
    score[rows, cols] = value
    return score


# ------------------------------------------------------------------------------------- the shared mask
def test_overlapping_masks_go_to_the_higher_map_and_a_lost_layer_is_dropped() -> None:
    shape, config = (20, 30), PipelineConfig()
    first = _square(shape, slice(0, 10), slice(0, 10), 0.6)
    second = _square(shape, slice(5, 15), slice(5, 20), 0.8)      # beats the first where they overlap
    hidden = _square(shape, slice(6, 9), slice(6, 9), 0.7)         # inside the second, always lower
    fourth = _square(shape, slice(16, 20), slice(25, 30), 0.9)
    layers = [ObjectLayer(m, _object(k)) for k, m in enumerate((first, second, hidden, fourth))]
    kept, mask = layered_objects(layers, config, shape)
    assert kept == [0, 1, 3]
    assert [layers[i].obj.mask_value for i in kept] == [1, 2, 3]
    expected = np.zeros(shape, np.uint8)
    expected[0:10, 0:10] = 1
    expected[5:15, 5:20] = 2
    expected[16:20, 25:30] = 3
    np.testing.assert_array_equal(mask, expected)
    assert layers[0].obj.bbox == bounding_box(expected == 1) == (0, 0, 10, 10)
    assert layers[1].obj.bbox == (5, 5, 15, 10) and layers[3].obj.bbox == (25, 16, 5, 4)


def test_a_tie_goes_to_the_earlier_layer_and_one_layer_is_the_single_object_rule() -> None:
    shape, config = (12, 12), PipelineConfig(min_component_area=3)
    a = _square(shape, slice(0, 6), slice(0, 6), 0.7)
    a[10, 10] = 0.9                                                # a speck the clean-up removes
    b = _square(shape, slice(3, 9), slice(3, 9), 0.7)
    layers = [ObjectLayer(a, _object(0)), ObjectLayer(b, _object(1))]
    kept, mask = layered_objects(layers, config, shape)
    assert kept == [0, 1] and (mask[3:6, 3:6] == 1).all() and mask[10, 10] == 0
    objects, single = sounding_objects(a, config, shape, k=0, labels=['w0'], scores=[0.3], confidence=0.2,
                                       audio_activation=0.4)
    alone = [ObjectLayer(a, _object(0))]
    kept, mask = layered_objects(alone, config, shape)
    np.testing.assert_array_equal(mask, single)
    assert kept == [0] and alone[0].obj == objects[0]
    assert layered_objects([ObjectLayer(np.zeros(shape, np.float32), _object(0))], config, shape)[0] == []


# ------------------------------------------------------------------- planted two-source windows
@pytest.fixture(scope='module')
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> TacoPipeline:
    work = tmp_path_factory.mktemp('multi')
    (work / 'empty').mkdir()
    pipe = TacoPipeline(PipelineConfig(
        model_config=str(small_model_config(work)), model_dir=str(work / 'empty'), device='cpu',
        allow_random_weights=True, vocabulary=list(WORDS), solver_overrides={'max_steps': 15}))
    yield pipe
    pipe.close()


@pytest.fixture(scope='module')
def two_sources() -> list[tuple]:
    """Planted windows with two visible sources, solved cold by the streaming solver."""
    problems = [make_multi_problem(seed, MultiScene(n_sources=2, n_distractors=1)) for seed in range(4)]
    return [(p, solve(p.x_image, p.x_audio, p.bank, CoNMFConfig.streaming())) for p in problems]


def _planted_tokens(problem, pipeline: TacoPipeline) -> tuple[ImageTokens, object]:
    """The planted image tokens with the paper's 24×24 geometry (764² squashed into a 768² input), and a
    real audio encoding of 64 tokens (the timeline's time axis)."""
    image = ImageTokens(tokens=problem.x_image[None], grid=(24, 24), valid_size=(764, 764), features={})
    audio = pipeline.stages.encode_audio(noise_window().samples, 16000)
    assert audio.tokens.shape[1] == problem.x_audio.shape[0]
    return image, audio


def test_every_sounding_factor_becomes_an_object_in_coarse_mode(two_sources: list, pipeline) -> None:
    config = PipelineConfig(mode='coarse', max_objects=3)
    several = 0
    for problem, result in two_sources:
        image, audio = _planted_tokens(problem, pipeline)
        factors = select_sounding_factors(result, problem.bank, sounding_rule(config), grid=(24, 24))
        found = several_objects(pipeline.stages, FRAME, image, audio, 1.0, result, problem.bank, config,
                                'coarse')
        several += len(found.objects) >= 2
        # k* first, then the rule's other factors in the rule's order (an object without pixels drops out)
        chosen = [f.factor_index for f in factors]
        got = [obj.factor_index for obj in found.objects]
        assert got == [k for k in chosen if k in got] and got[0] == result.k_star
        assert [f.factors for f in found.factors] == [f.factors for f in factors if f.factor_index in got]
        assert sorted(set(np.unique(found.mask).tolist()) - {0}) == list(range(1, len(got) + 1))
        for value, (obj, factor, score_map) in enumerate(zip(found.objects, found.factors, found.maps,
                                                             strict=True), start=1):
            assert obj.mask_value == value and obj.bbox == bounding_box(found.mask == value)
            assert (obj.label, obj.top_labels, obj.audio_factor) == (factor.label, factor.top_labels,
                                                                     factor.audio_factor)
            column = pipeline.stages.columns(result, factor.audio_factor)[1]
            assert obj.audio_activation == float(column.mean())
            np.testing.assert_array_equal(obj.activation,
                                          pipeline.stages.timeline(column, audio, 1.0).values)
            # The object's map: the largest activation of its factors, upsampled like U_I[:, k*].
            activation = np.max([pipeline.stages.columns(result, k)[0] for k in factor.factors], axis=0)
            np.testing.assert_array_equal(score_map, pipeline.stages.coarse_map(activation, image, FRAME))
            # Its pixels: above the threshold on its own map and highest there among the maps above it.
            claimed = np.stack([m > config.mask_threshold for m in found.maps])
            stacked = np.where(claimed, np.stack(found.maps), -np.inf)
            inside = found.mask == value
            assert claimed[value - 1][inside].all()
            assert (stacked[value - 1][inside] >= stacked[:, inside].max(axis=0)).all()
        assert found.objects[0].confidence == pytest.approx(result.confidence)
        k_star_column = pipeline.stages.columns(result, result.k_star)[0]
        np.testing.assert_array_equal(found.k_star_map,
                                      pipeline.stages.coarse_map(k_star_column, image, FRAME))
    assert several >= 2, 'the rule should find both sources on most of these planted windows'


# -------------------------------------------------------------------------------------- track ids
def _factor(k: int, label: str, rows: slice, grid: tuple[int, int] = (24, 24)) -> SoundingFactor:
    mask = np.zeros(grid, dtype=bool)
    mask[rows, 2:8] = True
    return SoundingFactor(factor_index=k, audio_factor=k, label=label, score=0.3, top_labels=[label],
                          top_scores=[0.3], class_id=0, confidence=0.2, match_depth=0.2,
                          audio_activation=0.3, coarse_mask=mask, primary=k == 0)


def test_track_ids_last_while_sounding_and_restart_on_reset_silence_or_a_new_meaning() -> None:
    tracks = ObjectTracks()
    dog, bell = _factor(0, 'Dog', slice(2, 8)), _factor(3, 'Bell', slice(12, 20))
    key = ('full', (24, 24))

    def ids(factors, cold=False, key=key):
        objects = [_object(f.factor_index) for f in factors]
        tracks.assign(objects, factors, cold, key)
        return [obj.track_id for obj in objects]

    first = ids([dog, bell])
    assert 0 not in first and len(set(first)) == 2
    assert ids([dog, bell]) == first
    assert ids([bell, dog], cold=True) == first[::-1]              # a cold start matches by label and mask
    tracks.end_all()                                               # a silent window ends every track
    after_silence = ids([dog])
    assert after_silence[0] not in first
    tracks.reset()
    after_reset = ids([dog])
    assert after_reset[0] not in first + after_silence
    assert ids([dog], key=('coarse', (24, 24)))[0] not in first + after_silence + after_reset


# ------------------------------------------------------------------------------------- the pipeline
@pytest.mark.parametrize('value', [0, MAX_OBJECTS + 1, True, 2.0, '3'])
def test_max_objects_is_bounded(pipeline: TacoPipeline, value: object) -> None:
    assert 'max_objects must be an integer in [1, 8]' in PipelineConfig(max_objects=value).problem()
    with pytest.raises(ValueError, match='max_objects'):
        pipeline.update(max_objects=value)


def test_a_window_with_one_sounding_factor_gives_the_same_result_for_any_cap(pipeline) -> None:
    """Coarse maps of single-factor objects are computed alike with any cap: the results are equal."""
    compared = 0
    pipeline.update(mode='coarse', solver_overrides={'max_steps': 15, 'sounding_threshold': 0.0})
    try:
        runs = {}
        for cap in (1, MAX_OBJECTS):
            pipeline.update(max_objects=cap)
            pipeline.reset()
            runs[cap] = [pipeline.process(make_frame(seed=i), noise_window(seed=i)) for i in range(3)]
    finally:
        pipeline.update(mode='full', max_objects=1, solver_overrides={'max_steps': 15})
    tracks: dict[int, list[int]] = {1: [], MAX_OBJECTS: []}
    for one, many in zip(runs[1], runs[MAX_OBJECTS], strict=True):
        assert one.sounding and many.sounding
        if len(many.objects) != 1:
            continue
        compared += 1
        np.testing.assert_array_equal(one.mask, many.mask)
        np.testing.assert_array_equal(one.score_map, many.score_map)
        _assert_same_objects(one.objects, many.objects)
        tracks[1].append(one.objects[0].track_id)
        tracks[MAX_OBJECTS].append(many.objects[0].track_id)
    assert compared >= 1
    # Track ids never repeat after a reset, so the two runs' ids differ by a constant.
    offset = tracks[MAX_OBJECTS][0] - tracks[1][0]
    assert offset > 0 and [t + offset for t in tracks[1]] == tracks[MAX_OBJECTS]


def _assert_same_objects(a: list[SoundingObjectResult], b: list[SoundingObjectResult]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.activation, y.activation)
        skip = {'activation': None, 'track_id': None}
        assert {**vars(x), **skip} == {**vars(y), **skip}


def test_several_objects_in_full_mode_keep_the_result_contract(pipeline: TacoPipeline) -> None:
    pipeline.update(max_objects=4, solver_overrides={'max_steps': 15, 'sounding_threshold': 0.0})
    try:
        pipeline.reset()
        results = [pipeline.process(make_frame(seed=i), noise_window(seed=i)) for i in range(3)]
    finally:
        pipeline.update(max_objects=1, solver_overrides={'max_steps': 15})
    for result in results:
        assert result.sounding and len(result.object_maps) == len(result.objects) <= 4
        assert set(np.unique(result.mask).tolist()) - {0} == {o.mask_value for o in result.objects}
        for obj, score_map in zip(result.objects, result.object_maps, strict=True):
            assert obj.bbox == bounding_box(result.mask == obj.mask_value)
            assert obj.track_id >= 1 and obj.activation.shape == result.activation.shape
            assert score_map.shape == result.mask.shape and score_map.dtype == np.float32
        assert result.objects[0].factor_index == result.k_star if result.objects else True
    ids = [{o.track_id for o in r.objects} for r in results]
    assert all(len(s) == len(r.objects) for s, r in zip(ids, results, strict=True))


def test_max_objects_reaches_the_pipeline_from_the_node_parameters(tmp_path: Path) -> None:
    from taco_ros import params

    values = params.defaults()
    assert values['max_objects'] == 1 and params.pipeline_config(values).max_objects == 1
    values['max_objects'] = 5
    assert params.validate('max_objects', 5) is None and params.pipeline_config(values).max_objects == 5
    assert params.validate('max_objects', MAX_OBJECTS + 1) is not None
    assert params.PARAMETERS_BY_NAME['max_objects'].applies == 'live'


def test_the_evaluation_scores_the_union_of_the_objects(two_sources: list, pipeline) -> None:
    """eval --objects N (coarse protocol): the swept map is the maximum of the objects' token-grid maps and
    the mask the union of their masks, larger than k*'s alone where a second source was found."""
    from taco_ros.core.masks import coarse_score_map
    from taco_ros.core.stages import mask_decision, token_grid
    from taco_ros.eval.runner import union_prediction

    config = PipelineConfig(mode='coarse', max_objects=3)
    grown = 0
    for problem, result in two_sources:
        image, _ = _planted_tokens(problem, pipeline)
        factors = select_sounding_factors(result, problem.bank, sounding_rule(config), grid=(24, 24))
        output = union_prediction(pipeline.stages, config, problem.bank, FRAME, image, result, 'coarse')
        grids = [token_grid(np.max([pipeline.stages.columns(result, k)[0] for k in f.factors], axis=0),
                            (24, 24)) for f in factors]
        np.testing.assert_array_equal(output.score, np.max(grids, axis=0))
        np.testing.assert_array_equal(output.coarse, output.score)
        masks = [mask_decision(coarse_score_map(g, FRAME[:2]), config).mask for g in grids]
        np.testing.assert_array_equal(output.mask, np.any(masks, axis=0))
        k_star_mask = mask_decision(coarse_score_map(grids[0], FRAME[:2]), config).mask
        assert (output.mask[k_star_mask] == 1).all() and output.label == result.labels[0]
        grown += int(output.mask.sum()) > int(k_star_mask.sum())
    assert grown >= 2
