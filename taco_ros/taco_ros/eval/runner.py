"""Run a benchmark through TACO in one of four modes and accumulate the paper's metrics (docs/method.md,
evaluation).

Modes:

* ``paper``: the reference solver (cold start on every frame, plain GD, 1800 steps); on S4 the frames of a
  video are factorised together with the batch temporal term, as the authors do.
* ``streaming``: the robot's solver (warm start from the previous frame of the same video, Adam with early
  stopping, causal temporal term); frames are played video by video, the state is reset between videos.
* ``coarse``: no segmenter; the k* activation map on the token grid is the prediction (the paper's ``*_u``).
* ``baseline``: the A-FC-CLIP baseline of the pipeline.

Several sources (``objects`` > 1, for MS3; the paper's protocol is one object, k*): every sounding factor of
core/sounding.py's rule is an object; the prediction is the union of the objects' masks, and the map the
threshold sweep sees is the pixelwise maximum of the objects' maps (of k*'s alone in a frame the solver calls
silent). Binary benchmarks only, not the baseline (it has no factors).

Post-processing of a soft map, as the authors' ``infer_once``: min-max normalise, then bicubic resize
(align_corners=True) to the ground truth's size (224×224 for every benchmark). Semantic benchmarks paint the
hard mask with the predicted class (ADE-SP-semantic: the min-max map rounded at 0.5, painted class + 1;
AVSS: argmax over the factors == k*, painted class) and resize it with nearest neighbours.

The runner only talks to an :class:`Engine`; :class:`PipelineEngine` wraps ``TacoPipeline``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from taco_ros.core.contract import EVAL_MODES
from taco_ros.eval import metrics as m
from taco_ros.eval.datasets import Benchmark, Sample, load_audio

CLIP_SECONDS = 7.0            # CLAP's input length: longer clips are cropped, shorter ones tiled
FRAME_PERIOD = 1.0            # AVSBench frames are one second apart


@dataclass
class Clip:
    """Audio handed to the engine for one frame."""

    samples: np.ndarray       # float32 [n] or [n, C]
    sample_rate: int
    start: float              # seconds; frames of a video are FRAME_PERIOD apart


@dataclass
class FrameOutput:
    """What the runner needs from one processed frame (all maps at the frame's size unless noted)."""

    score: np.ndarray | None          # soft map of k* (semantic map; coarse map upsampled in coarse mode)
    mask: np.ndarray                  # the node's own mask, 0 = background
    coarse: np.ndarray | None = None  # U_I[:, k*] on the token grid [g, g] (the paper's unrefined map)
    hard: np.ndarray | None = None    # argmax over the K semantic maps == k* (AVSS protocol)
    label: str | None = None          # best anchor word for the factor k*
    timings: dict[str, float] = field(default_factory=dict)


class Engine(Protocol):
    """A TACO implementation seen by the runner."""

    random_weights: bool
    vocabulary: list[str]
    description: dict

    def begin_run(self, run: int) -> None:
        """Called before each repetition (changes the solver seed)."""

    def run_video(self, frames: Sequence[np.ndarray], clips: Sequence[Clip],
                  temporal: bool) -> list[FrameOutput]:
        """Process consecutive frames of one video (or one image); ``temporal`` = paper batch term."""

    def close(self) -> None:
        """Free the models."""


# --------------------------------------------------------------------------------------------------
# Map post-processing (docs/method.md, evaluation)
# --------------------------------------------------------------------------------------------------

def minmax(score: np.ndarray) -> np.ndarray:
    """(s − min) / (max − min). A constant map (TACO would divide 0 by 0) becomes all zeros."""
    score = np.asarray(score, dtype=np.float32)
    low, high = float(score.min()), float(score.max())
    if not high > low:
        return np.zeros_like(score)
    return (score - low) / (high - low)


def resize_bicubic(score: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize with align_corners=True (values may overshoot [0, 1] slightly, as in the paper)."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(score, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode='bicubic', align_corners=True)[0, 0].numpy()


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (torch 'nearest': source index = floor(dst · in / out))."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.asarray(labels, dtype=np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode='nearest')[0, 0].numpy().round().astype(np.int64)


def paper_score(score: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """minmax → bicubic to ``size``: the map the paper's threshold sweeps see."""
    return resize_bicubic(minmax(score), size)


# --------------------------------------------------------------------------------------------------
# Audio policy
# --------------------------------------------------------------------------------------------------

def paper_audio(samples: np.ndarray, rate: int, rng: np.random.Generator) -> np.ndarray:
    """The authors' waveform handling: channels concatenated end to end, a random 7-s crop if longer."""
    if samples.ndim == 2:
        samples = np.ascontiguousarray(samples.T).reshape(-1)
    length = round(CLIP_SECONDS * rate)
    if samples.shape[0] > length:
        start = int(rng.integers(0, samples.shape[0] - length + 1))
        samples = samples[start:start + length]
    return samples


# --------------------------------------------------------------------------------------------------
# Per-run accumulation
# --------------------------------------------------------------------------------------------------

class RunMeters:
    """The meters of one run for one benchmark and mode."""

    def __init__(self, benchmark: Benchmark, mode: str, vocabulary: list[str]) -> None:
        self.benchmark = benchmark.name
        self.mode = mode
        self.vocabulary = {word: i for i, word in enumerate(vocabulary)}
        self.semantic = benchmark.semantic
        suffix = '_u' if mode == 'coarse' else ''
        self.suffix = suffix
        if self.semantic:
            self.semantic_meter = m.SemanticMeter(benchmark.num_classes)
        elif benchmark.name == 'ade_sp':
            self.refined = m.ADEDetectionMeter()
            self.unrefined = m.ADEDetectionMeter() if mode != 'coarse' else None
        else:
            self.refined = m.AVSBenchMeter()
            self.unrefined = m.AVSBenchMeter() if mode != 'coarse' else None
        self.fixed = m.FixedMaskIoU()
        self.negative = m.NegativeAudioMeter()
        self.timings: dict[str, list[float]] = defaultdict(list)
        self.unrefined_missing = 0

    def _class_index(self, label: str | None) -> int:
        if label is None or label not in self.vocabulary:
            raise ValueError(f'engine returned label {label!r}, which is not in the evaluation vocabulary')
        return self.vocabulary[label]

    def add(self, sample: Sample, output: FrameOutput, target: np.ndarray) -> None:
        for stage, value in output.timings.items():
            self.timings[stage].append(float(value))
        size = target.shape
        if self.semantic:
            self.semantic_meter.update(self._semantic_prediction(output, size), target)
            return
        if output.score is None:
            raise ValueError('engine returned no score map for a binary benchmark')
        self._update(self.refined, paper_score(output.score, size), target, sample)
        if self.unrefined is not None:
            if output.coarse is None:
                self.unrefined_missing += 1
            else:
                self._update(self.unrefined, paper_score(output.coarse, size), target, sample)
        self.fixed.update(resize_nearest(np.asarray(output.mask) > 0, size), target)

    def _semantic_prediction(self, output: FrameOutput, size: tuple[int, int]) -> np.ndarray:
        index = self._class_index(output.label)
        if self.benchmark == 'avss':
            hard = output.hard if output.hard is not None else np.asarray(output.mask) > 0
            return resize_nearest(np.asarray(hard, dtype=np.float32) * index, size)
        # ADE-SP-semantic: min-max map rounded at 0.5 (round half to even, like torch.round).
        if output.score is None:
            raise ValueError('engine returned no score map for ADE-SP-semantic')
        soft = np.rint(minmax(output.score))
        return resize_nearest(soft * (index + 1), size)

    def _update(self, meter, score: np.ndarray, target: np.ndarray, sample: Sample) -> None:
        if isinstance(meter, m.ADEDetectionMeter):
            meter.update(score, target, sample.class_id)
        else:
            meter.update(score, target)

    def add_negative(self, output: FrameOutput) -> None:
        self.negative.update(output.mask)

    # -- results ---------------------------------------------------------------------------------
    def result(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        if self.semantic:
            sem = self.semantic_meter.result()
            out.update(miou=sem['miou'], fscore=sem['fscore'])
            return out
        names = ('miou', 'map') if self.benchmark == 'ade_sp' else ('miou', 'fscore')
        refined = self.refined.result()
        for name in names:
            out[name + self.suffix] = refined[name]
        if self.unrefined is not None and self.unrefined.images:
            unrefined = self.unrefined.result()
            for name in names:
                out[name + '_u'] = unrefined[name]
        out['miou_fixed' + self.suffix] = self.fixed.result()['miou_fixed']
        if self.negative.frames:
            out['negative_empty_rate'] = self.negative.result()['negative_empty_rate']
        return out

    def curves(self) -> dict:
        """IoU against threshold, for the plot: AVSBench absolute thresholds, ADE-SP relative steps."""
        if self.semantic:
            return {}
        curves = {}
        for name, meter in (('refined' if self.mode != 'coarse' else 'coarse', self.refined),
                            ('coarse', self.unrefined)):
            if meter is None or meter.images == 0:
                continue
            if isinstance(meter, m.ADEDetectionMeter):
                iou = meter.mean_iou_by_step()
                curves[name] = {'thresholds': np.linspace(0, 1, len(iou)).tolist(), 'iou': iou.tolist(),
                                'x_label': 'threshold, fraction of each class score range (pooled IoU)'}
            else:
                curves[name] = {'thresholds': list(meter.thresholds),
                                'iou': meter.iou_by_threshold().tolist(),
                                'x_label': 'threshold on the min-max normalised map'}
        return curves


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------

@dataclass
class RunOptions:
    mode: str = 'paper'
    runs: int = 1
    seed: int = 0
    negative_audio: bool = True
    progress: bool = True

    def validate(self) -> None:
        if self.mode not in EVAL_MODES:
            raise ValueError(f'unknown mode {self.mode!r}; choose one of {", ".join(EVAL_MODES)}')
        if self.runs < 1:
            raise ValueError(f'runs must be at least 1, got {self.runs}')


def evaluation_units(benchmark: Benchmark, mode: str) -> list[list[Sample]]:
    """What is processed together: videos (S4 in every mode, any video in streaming), else single frames."""
    if benchmark.name == 's4' or mode == 'streaming':
        return benchmark.videos()
    return [[sample] for sample in benchmark.samples]


def negative_partners(units: list[list[Sample]]) -> list[int]:
    """For each unit, another unit whose audio plays over it: the next one from another video, preferably
    of another class. -1 when the benchmark has a single video."""
    partners = []
    for index, unit in enumerate(units):
        chosen, fallback = -1, -1
        for offset in range(1, len(units)):
            other = units[(index + offset) % len(units)]
            if other[0].video == unit[0].video:
                continue
            if fallback < 0:
                fallback = (index + offset) % len(units)
            if not unit[0].class_name or other[0].class_name != unit[0].class_name:
                chosen = (index + offset) % len(units)
                break
        partners.append(chosen if chosen >= 0 else fallback)
    return partners


class _AudioSource:
    """Loads clips with the mode's audio policy; the paper's random crops draw from a seeded generator."""

    def __init__(self, paper: bool, seed: int) -> None:
        self.paper = paper
        self.rng = np.random.default_rng(seed)

    def clip(self, sample: Sample) -> Clip:
        samples, rate = load_audio(sample.audio)
        if self.paper:
            samples = paper_audio(samples, rate, self.rng)
        return Clip(samples, rate, sample.frame_index * FRAME_PERIOD)


def _progress(total: int, description: str, enabled: bool):
    from tqdm import tqdm

    # disable=None turns the bar off when stderr is not a terminal (logs, CI).
    return tqdm(total=total, desc=description, unit='frame', disable=None if enabled else True,
                leave=False, dynamic_ncols=True)


def run_once(benchmark: Benchmark, engine: Engine, options: RunOptions, run: int) -> RunMeters:
    """One pass over the benchmark (plus the swapped-audio pass for binary benchmarks)."""
    meters = RunMeters(benchmark, options.mode, engine.vocabulary)
    units = evaluation_units(benchmark, options.mode)
    audio = _AudioSource(options.mode == 'paper', options.seed + run)
    # The authors factorise an S4 video's frames together; their unrefined maps come from that same run.
    temporal = benchmark.name == 's4' and options.mode in ('paper', 'coarse')
    negatives = options.negative_audio and not benchmark.semantic and len(units) > 1
    total = len(benchmark) * (2 if negatives else 1)
    engine.begin_run(run)
    with _progress(total, f'{benchmark.name} {options.mode} run {run + 1}/{options.runs}',
                   options.progress) as bar:
        for unit in units:
            frames = [benchmark.load_image(s) for s in unit]
            outputs = engine.run_video(frames, [audio.clip(s) for s in unit], temporal)
            for sample, output in zip(unit, outputs, strict=True):
                meters.add(sample, output, benchmark.load_mask(sample))
            bar.update(len(unit))
        if negatives:
            for unit, partner in zip(units, negative_partners(units), strict=True):
                if partner < 0:      # every unit is from the same video: no foreign audio to play
                    bar.update(len(unit))
                    continue
                other = units[partner]
                clips = [audio.clip(other[min(i, len(other) - 1)]) for i in range(len(unit))]
                outputs = engine.run_video([benchmark.load_image(s) for s in unit], clips, temporal)
                for output in outputs:
                    meters.add_negative(output)
                bar.update(len(unit))
    return meters


def evaluate(benchmark: Benchmark, engine: Engine, options: RunOptions,
             log: Callable[[str], None] = print) -> dict:
    """Repeat the benchmark ``options.runs`` times; the JSON-able summary of report.build_summary."""
    from taco_ros.eval.report import build_summary

    options.validate()
    results, curves, timings = [], [], defaultdict(list)
    notes: list[str] = []
    started = time.perf_counter()
    for run in range(options.runs):
        meters = run_once(benchmark, engine, options, run)
        results.append(meters.result())
        curves.append(meters.curves())
        for stage, values in meters.timings.items():
            timings[stage].extend(values)
        if meters.unrefined_missing:
            notes.append(f'run {run + 1}: the engine gave no token-grid map for {meters.unrefined_missing} '
                         'frames; *_u metrics cover the others only')
        log(f'run {run + 1}/{options.runs}: ' + ', '.join(
            f'{k} {v:.2f}' for k, v in results[-1].items() if v is not None))
    if engine.random_weights:
        notes.append('random weights: the numbers exercise the code path and mean nothing about TACO')
    if benchmark.name == 'avss' and options.mode != 'baseline':
        notes.append('AVSS image tokens come from the shared FC-CLIP pass (24×24 on the padded input); the '
                     'authors ran a separate CLIP pass without padding (23×23) for this benchmark')
    if options.mode in ('paper', 'coarse') and engine.description.get('paper_protocol') is False:
        notes.append('solver overrides or audio context in effect: not the paper protocol')
    if engine.description.get('objects', 1) > 1:
        notes.append(f"{engine.description['objects']} objects per frame: their masks' union, not one k*")
    settings = dict(engine.description)
    settings.update(root=str(benchmark.root), videos=len(benchmark.videos()),
                    mode=options.mode, runs=options.runs, seed=options.seed,
                    negative_audio=options.negative_audio,
                    audio='paper: channels concatenated, random 7-s crop' if options.mode == 'paper'
                    else 'as recorded (the encoder averages channels, keeps the last 7 s)',
                    wall_time_s=time.perf_counter() - started)
    return build_summary(benchmark=benchmark.name, mode=options.mode, runs=results, settings=settings,
                         samples=len(benchmark), random_weights=engine.random_weights,
                         curves=_mean_curves(curves), timings=timings, notes=notes)


def _mean_curves(per_run: list[dict]) -> dict:
    """Average each named curve over the runs (same thresholds in every run)."""
    out = {}
    for name in per_run[0] if per_run else []:
        runs = [c[name] for c in per_run if name in c]
        out[name] = dict(runs[0])
        out[name]['iou'] = np.mean([r['iou'] for r in runs], axis=0).tolist()
    return out


def resolve_vocabulary(benchmark: Benchmark, default: Sequence[str]) -> list[str]:
    """The factorisation bank: the benchmark's own, or ``default`` (AudioSet) minus its dropped labels."""
    if benchmark.vocabulary is not None:
        return list(benchmark.vocabulary)
    dropped = set(benchmark.dropped_labels)
    missing = dropped - set(default)
    if missing:
        raise ValueError(f'labels to drop are not in the default vocabulary: {sorted(missing)}')
    return [word for word in default if word not in dropped]



# --------------------------------------------------------------------------------------------------
# TacoPipeline as an engine
# --------------------------------------------------------------------------------------------------

PIPELINE_MODES = {'paper': 'full', 'streaming': 'full', 'coarse': 'coarse', 'baseline': 'baseline'}


class PipelineEngine:
    """TACO through :class:`taco_ros.core.pipeline.TacoPipeline` and its stages (core/stages.py).

    * streaming and baseline: ``TacoPipeline.process`` frame by frame, exactly the node's path (the state
      is reset at the start of every video; ``always_segment`` so that a map exists on silent frames too).
    * paper and coarse: the pipeline's stages with ``Stages.solve_video`` (the batch temporal term on S4),
      the FC-CLIP maps on the resized-image grid (764² at paper size) as the authors do; the coarse
      prediction is U_I[:, k*] on the token grid. The node's mask is decided by the node's rule
      (``stages.mask_decision``) on the same map.
    """

    def __init__(self, benchmark: Benchmark, *, mode: str, model_config: str = 'taco_convnext_large',
                 model_dir: str | None = None, device: str = 'auto', precision: str = 'fp32',
                 solver_overrides: dict | None = None, allow_random_weights: bool = False,
                 seed: int = 0, audio_context: str = 'tile', objects: int = 1) -> None:
        from taco_ros.core.pipeline import PipelineConfig, TacoPipeline, solver_config
        from taco_ros.core.vocabulary import audioset_labels

        if mode not in EVAL_MODES:
            raise ValueError(f'unknown mode {mode!r}; choose one of {", ".join(EVAL_MODES)}')
        check_objects(objects, benchmark, mode)
        self.mode, self.objects = mode, objects
        self.benchmark = benchmark
        self.seed = seed
        self.overrides = dict(solver_overrides or {})
        config = PipelineConfig(
            model_config=model_config, model_dir=model_dir, device=device, precision=precision,
            mode=PIPELINE_MODES[mode], vocabulary=resolve_vocabulary(benchmark, audioset_labels()),
            solver_profile='streaming' if mode == 'streaming' else 'paper',
            solver_overrides=dict(self.overrides), allow_random_weights=allow_random_weights, seed=seed,
            keep_text_encoders=False, always_segment=True, audio_context=audio_context, max_objects=objects)
        self.pipeline = TacoPipeline(config)
        if mode == 'paper' and self.pipeline.segmenter is None:
            self.pipeline.close()
            raise ValueError("eval mode 'paper' needs the FC-CLIP checkpoint: "
                             + ' '.join(self.pipeline.notes))
        self.random_weights = bool(self.pipeline.random_weights)
        self.vocabulary = list(self.pipeline.vocabulary)
        solver = solver_config(self.pipeline.config)
        self.description = {
            'engine': 'taco_ros.core.pipeline.TacoPipeline', 'model_config': model_config,
            'device': str(self.pipeline.device), 'precision': precision,
            'pipeline_mode': config.mode, 'solver_profile': config.solver_profile,
            'solver': {k: getattr(solver, k) for k in ('optimizer', 'lr', 'max_steps', 'tol', 'warm_start',
                                                       'beta_t', 'beta_p', 'K')},
            'solver_overrides': self.overrides, 'vocabulary_size': len(self.vocabulary),
            'mask_threshold': config.mask_threshold, 'audio_context': audio_context, 'objects': objects,
            'paper_protocol': mode in ('paper', 'coarse') and not self.overrides and audio_context == 'tile',
        }
        self._run_seed = seed

    def begin_run(self, run: int) -> None:
        # A new initialisation draw per run, like the authors' repeated runs without reseeding.
        self._run_seed = self.seed + run
        if self.mode in ('streaming', 'baseline'):
            self.pipeline.update(solver_overrides={**self.overrides, 'seed': self._run_seed})

    def run_video(self, frames: Sequence[np.ndarray], clips: Sequence[Clip],
                  temporal: bool) -> list[FrameOutput]:
        if self.mode in ('streaming', 'baseline'):
            return self._process_video(frames, clips)
        return self._factorise_video(frames, clips, temporal)

    def close(self) -> None:
        self.pipeline.close()

    # -- the node's path -------------------------------------------------------------------------
    def _window(self, clip: Clip, history: list[Clip]):
        from taco_ros.core.contract import AudioWindow

        # 'history' context: the video's earlier clips, when they share the rate and channel layout.
        usable = [c.samples for c in history
                  if c.sample_rate == clip.sample_rate and c.samples.shape[1:] == clip.samples.shape[1:]]
        past = np.concatenate(usable) if usable and len(usable) == len(history) else None
        return AudioWindow(samples=clip.samples, sample_rate=clip.sample_rate, start=clip.start,
                           history=past)

    def _process_video(self, frames: Sequence[np.ndarray], clips: Sequence[Clip]) -> list[FrameOutput]:
        self.pipeline.reset()
        outputs = []
        for index, (frame, clip) in enumerate(zip(frames, clips, strict=True)):
            result = self.pipeline.process(frame, self._window(clip, list(clips[:index])))
            score = result.score_map
            if score is None:
                score = np.zeros(frame.shape[:2], np.float32)
            # coarse_map: U_I[:, k*] on the token grid, the paper's unrefined map (None when the
            # solver did not run: silence gate, baseline). With several objects the result holds no
            # token-grid map per object: no unrefined map (the summary says so).
            coarse = result.coarse_map
            if self.objects > 1:
                score, coarse = np.maximum.reduce([score, *result.object_maps]), None
            outputs.append(FrameOutput(score=score, mask=result.mask, coarse=coarse,
                                       label=result.labels[0] if result.labels else None,
                                       timings=dict(result.timings)))
        return outputs

    # -- the authors' path -----------------------------------------------------------------------
    def _factorise_video(self, frames: Sequence[np.ndarray], clips: Sequence[Clip],
                         temporal: bool) -> list[FrameOutput]:
        from taco_ros.core.pipeline import solver_config

        stages = self.pipeline.stages
        timings: list[dict[str, float]] = [{} for _ in frames]
        images, audios = [], []
        for index, (frame, clip) in enumerate(zip(frames, clips, strict=True)):
            with stages.timed(timings[index], 'image_encoder'):
                images.append(stages.encode_frame(frame))
            with stages.timed(timings[index], 'audio_encoder'):
                audios.append(stages.encode_audio(clip.samples, clip.sample_rate, context='tile'))
        config = replace(solver_config(self.pipeline.config), seed=self._run_seed)
        solved: dict[str, float] = {}
        with stages.timed(solved, 'conmf'):
            results = stages.solve_video(images, audios, self.pipeline.bank, config,
                                         temporal=temporal and len(frames) > 1)
        outputs = []
        for index, (frame, image, result) in enumerate(zip(frames, images, results, strict=True)):
            timings[index]['conmf'] = solved['conmf'] / len(frames)
            with stages.timed(timings[index], 'segmenter'):
                output = self._maps(frame, image, result)
            timings[index]['total'] = sum(timings[index].values())
            output.timings = timings[index]
            outputs.append(output)
        return outputs

    def _maps(self, frame: np.ndarray, image, result) -> FrameOutput:
        """Score maps of one factorised frame, the node's mask, and (AVSS) the argmax-over-factors mask."""
        from taco_ros.core.masks import coarse_score_map
        from taco_ros.core.stages import mask_decision, token_grid

        stages = self.pipeline.stages
        k = int(result.k_star)
        column, _ = stages.columns(result, k)
        grid = token_grid(column, image.grid)
        label = result.labels[0] if result.labels else None
        config = self.pipeline.config
        if self.objects > 1 and result.sounding:
            return union_prediction(stages, config, self.pipeline.bank, frame.shape, image, result, self.mode)
        if self.mode == 'coarse':
            mask = np.zeros(frame.shape[:2], np.uint8)
            if result.sounding:
                # The paper's unrefined map at the frame's size (bicubic from the token grid).
                mask = mask_decision(coarse_score_map(grid, frame.shape[:2]), config).mask.astype(np.uint8)
            return FrameOutput(score=grid, mask=mask, coarse=grid, label=label)
        every = self.benchmark.name == 'avss'
        # On the resized-image grid (764² at paper size): the authors' sem_seg resolution.
        sem = stages.semantic_maps(image, result.image_factors, channels=None if every else [k])
        score = (sem[k] if every else sem[0]).cpu().numpy()
        hard = (sem.argmax(0) == k).cpu().numpy() if every else None
        mask = np.zeros(score.shape, np.uint8)
        if result.sounding:
            mask = mask_decision(score, config).mask.astype(np.uint8)
        return FrameOutput(score=score, mask=mask, coarse=grid, hard=hard, label=label)


def union_prediction(stages, config, bank, frame_shape: tuple[int, ...], image, result,
                     mode: str) -> FrameOutput:
    """Several objects (module docstring): per object the sum of its factors' semantic maps (or their
    largest activation on the token grid, ``mode`` 'coarse'); their pixelwise maximum; their masks' union."""
    from taco_ros.core.masks import coarse_score_map
    from taco_ros.core.objects import sounding_rule
    from taco_ros.core.sounding import select_sounding_factors
    from taco_ros.core.stages import mask_decision, token_grid

    factors = select_sounding_factors(result, bank, sounding_rule(config), grid=image.grid)
    grids = [token_grid(np.max([stages.columns(result, k)[0] for k in f.factors], axis=0), image.grid)
             for f in factors]
    coarse = np.maximum.reduce(grids)
    if mode == 'coarse':
        maps, score = [coarse_score_map(g, frame_shape[:2]) for g in grids], coarse
    else:
        channels = sorted({k for f in factors for k in f.factors})
        sem = stages.semantic_maps(image, result.image_factors, channels=channels).cpu().numpy()
        maps = [sum(sem[channels.index(k)] for k in f.factors) for f in factors]
        score = np.maximum.reduce(maps)
    mask = np.logical_or.reduce([mask_decision(m, config).mask for m in maps]).astype(np.uint8)
    return FrameOutput(score=score, mask=mask, coarse=coarse, label=result.labels[0])


def check_objects(objects: int, benchmark: Benchmark, mode: str) -> None:
    """ValueError unless ``objects`` fits: several need factors (no baseline) and a binary benchmark."""
    from taco_ros.core.contract import MAX_OBJECTS

    if isinstance(objects, bool) or not isinstance(objects, int) or not 1 <= objects <= MAX_OBJECTS:
        raise ValueError(f'objects must be an integer in [1, {MAX_OBJECTS}], got {objects!r}')
    if objects > 1 and benchmark.semantic:
        raise ValueError(f'several objects are scored on binary benchmarks only, not {benchmark.name}')
    if objects > 1 and mode == 'baseline':
        raise ValueError('several objects need the co-NMF factors; the baseline has none')
