"""Deterministic replay (``taco-ros bag process``): every window of a recorded bag through
taco_node's own window policy (core.windows.WindowPolicy, every window in order) and TacoPipeline,
on bag time, with no DDS and nothing dropped for lack of time; the node's output messages
(taco_ros.outputs) are written into a new bag under the node's topic names.

Clock: "now" is the log time of the input message just read (when the recorder received it), so the
policy waits for late frames and detects a stopped stream exactly as the node would have with an
infinitely fast computer. A window's outputs are logged at the log time of the message after which
it became due; label_info at the bag's first message. Same bag, parameters and seed on the CPU →
the same results (stage timings excepted: they are measured).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taco_ros.bags.inputs import IMAGE_TYPES, AudioRelease, AudioSamples, InputDecoder
from taco_ros.bags.result_writer import ResultWriter
from taco_ros.bags.rosbag import STORAGES, BagMessage, bag_topics, read_messages
from taco_ros.bags.topics import AUDIO_INFO_TYPE, NODE_NAME


@dataclass
class ProcessReport:
    """What a replay did. ``seconds``: wall time of the window loop (model loading excluded)."""

    input_bag: str
    output_bag: str
    image_topic: str
    audio_topic: str
    model_config: str = ''
    device: str = ''
    random_weights: bool = False
    frames: int = 0
    audio_chunks: int = 0
    windows: int = 0
    sounding: int = 0
    failed: int = 0                       # windows whose pipeline run raised
    problems: Counter[str] = field(default_factory=Counter)   # refused inputs, by kind
    drops: dict[str, int] = field(default_factory=dict)       # windows the policy could not pair
    labels: Counter[str] = field(default_factory=Counter)
    stage_ms: dict[str, float] = field(default_factory=dict)  # summed over windows
    load_seconds: float = 0.0
    seconds: float = 0.0
    stopped_early: bool = False           # max_windows reached
    notices: list[str] = field(default_factory=list)
    last_error: str = ''

    @property
    def windows_per_second(self) -> float:
        return self.windows / self.seconds if self.seconds > 0 else float('nan')


def _pick_topics(path: Path, image_topic: str | None, audio_topic: str | None
                 ) -> tuple[str, str, dict[str, tuple[str, int]]]:
    from taco_ros import conversions as conv

    topics = bag_topics(path)

    def first(types: tuple[str, ...] | dict[str, str]) -> str | None:
        return next((t for t, (m, _) in sorted(topics.items()) if m in types), None)

    image_topic = image_topic or first(IMAGE_TYPES)
    audio_topic = audio_topic or first(conv.TOPIC_TYPE_KINDS)
    for role, topic in (('camera', image_topic), ('audio', audio_topic)):
        if topic is None:
            raise ValueError(f'{path} has no {role} topic taco_node can read; its topics: '
                             f'{", ".join(f"{t} ({m})" for t, (m, _) in sorted(topics.items()))}')
        if topic not in topics:
            raise ValueError(f'{path} has no topic {topic}; it has {", ".join(sorted(topics))}')
    return image_topic, audio_topic, topics


def _bag_storage(path: Path) -> str:
    """The storage plugin a bag was written with (its metadata.yaml), sqlite3 when unknown."""
    import yaml

    try:
        info = yaml.safe_load((path / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
        storage = str(info.get('storage_identifier', 'sqlite3'))
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return 'sqlite3'
    return storage if storage in STORAGES else 'sqlite3'


class BagProcessor:
    """One replay: the pipeline, the policy and the output bag (use :func:`process_bag`)."""

    def __init__(self, values: dict[str, Any], *, debug_image: bool = False,
                 max_windows: int | None = None) -> None:
        from taco_ros.core.windows import WindowSettings

        if max_windows is not None and max_windows < 1:
            raise ValueError(f'max_windows must be >= 1, got {max_windows}')
        self.values = values
        self.debug_image = debug_image
        self.max_windows = max_windows
        self.settings = WindowSettings.from_params(values)    # refused here, before loading
        self.policy: Any = None
        self.pipeline: Any = None
        self.decoder: InputDecoder | None = None
        self.writer: ResultWriter | None = None
        self.report: ProcessReport | None = None
        self.load_seconds = 0.0

    # -- set-up --------------------------------------------------------------------------------
    def load(self) -> None:
        from taco_ros.bags.node_params import pipeline_config
        from taco_ros.core.pipeline import TacoPipeline

        started = time.perf_counter()
        self.pipeline = TacoPipeline(pipeline_config(self.values))
        self.load_seconds = time.perf_counter() - started

    def run(self, input_bag: Path, output_bag: Path, *, image_topic: str | None = None,
            audio_topic: str | None = None, storage: str | None = None,
            node_name: str = NODE_NAME, copy_inputs: bool = False,
            progress: bool = False) -> ProcessReport:
        from taco_ros.core.windows import WindowPolicy

        if output_bag.exists():       # before the models load: that takes a while
            raise FileExistsError(f'{output_bag} exists; the results go into a new bag')
        image_topic, audio_topic, topics = _pick_topics(input_bag, image_topic, audio_topic)
        self.decoder = InputDecoder(topics[image_topic][0], topics[audio_topic][0], self.values)
        info_topic = next((t for t, (m, _) in sorted(topics.items()) if m == AUDIO_INFO_TYPE), None)
        if self.pipeline is None:
            self.load()
        pipeline = self.pipeline
        pipeline.reset()        # a processor may run several bags: each starts afresh
        self.policy = WindowPolicy(self.settings)
        report = self.report = ProcessReport(
            str(input_bag), str(output_bag), image_topic, audio_topic,
            model_config=Path(self.values['model_config']).stem, device=str(pipeline.device),
            random_weights=bool(pipeline.random_weights), load_seconds=self.load_seconds,
            notices=list(pipeline.notes))
        wanted = [image_topic, audio_topic] + ([info_topic] if info_topic else [])
        total = sum(topics[t][1] for t in wanted)
        with ResultWriter(output_bag, storage=storage or _bag_storage(input_bag),
                          node_name=node_name, debug_image=self.debug_image) as writer:
            self.writer = writer
            if copy_inputs:
                for topic in wanted:
                    writer.add_input(topic, topics[topic][0])
            started = time.perf_counter()
            self._loop(read_messages(input_bag, wanted), total, image_topic, audio_topic,
                       copy_inputs, progress)
            report.seconds = time.perf_counter() - started
        report.drops = dict(self.policy.drops)
        report.notices += self.policy.take_notices()
        return report

    # -- the loop ------------------------------------------------------------------------------
    def _loop(self, messages: Any, total: int, image_topic: str, audio_topic: str,
              copy_inputs: bool, progress: bool) -> None:
        from tqdm import tqdm

        bar = tqdm(total=total, unit='msg', disable=not progress, dynamic_ncols=True,
                   desc='bag process')
        first_ns: int | None = None
        now_ns = 0
        try:
            for message in messages:
                now_ns = message.log_ns
                if first_ns is None:
                    first_ns = now_ns
                    self._write_label_info(now_ns)
                if copy_inputs:
                    self.writer.write(message.topic, now_ns, message.raw)
                if message.topic == image_topic:
                    self._add_frame(message)
                elif message.topic == audio_topic:
                    self._add_audio(message)
                else:
                    self._place_audio(self.decoder.audio_info(message.raw))
                bar.update(1)
                if self._run_due(now_ns, end_of_stream=False, bar=bar):
                    return
            if first_ns is not None:
                self._run_due(now_ns, end_of_stream=True, bar=bar)
        finally:
            bar.close()

    def _add_frame(self, message: BagMessage) -> None:
        from taco_ros.conversions import stamp_to_sec

        self.report.frames += 1
        now = message.log_ns / 1e9
        try:
            msg = self.decoder.image(message.raw)
        except ValueError as exc:
            self._problem('bad_images', exc)
            return
        stamp = stamp_to_sec(msg.header.stamp)
        if stamp <= 0.0:      # unset stamp: paired by receipt time, as the node does
            self.report.problems['zero_stamp_images'] += 1
            stamp = now
        self.policy.add_frame(stamp, msg, now=now)

    def _add_audio(self, message: BagMessage) -> None:
        self.report.audio_chunks += 1
        try:
            release = self.decoder.audio(message.raw, message.log_ns / 1e9)
        except ValueError as exc:
            self._problem('bad_audio', exc)
            return
        self._place_audio(release)

    def _place_audio(self, release: AudioRelease) -> None:
        """Count what the decoder refused or dropped, and place its chunks, as the node does."""
        if release.refusal is not None:
            self.report.problems['refused_audio_chunks'] += release.dropped
            self.report.last_error = f'refused_audio: {release.refusal}'
        elif release.dropped:
            self.report.problems['held_audio_dropped'] += release.dropped
        if release.reset is not None:
            self.report.problems['audio_format_changes'] += 1
            self.report.notices.append(release.reset)
        for exc in release.problems:
            self._problem('bad_audio', exc)
        for chunk in release.chunks:
            self._place_chunk(chunk)

    def _place_chunk(self, chunk: AudioSamples) -> None:
        from taco_ros.node_inputs import receipt_stamp

        if chunk.samples.size == 0:
            self.report.problems['empty_audio'] += 1
            return
        stamp, tolerance = chunk.stamp, None
        if stamp is None:    # no capture stamp: receipt time minus duration, as the node does
            self.report.problems['unstamped_audio'] += 1
            stamp, tolerance = receipt_stamp(chunk.received, chunk.duration,
                                             self.values['stamp_tolerance'])
        try:
            self.policy.add_audio(chunk.samples, stamp, chunk.sample_rate, now=chunk.received,
                                  tolerance=tolerance)
        except ValueError as exc:
            self._problem('bad_audio', exc)

    def _problem(self, kind: str, exc: Exception) -> None:
        self.report.problems[kind] += 1
        self.report.last_error = f'{kind}: {exc}'

    def _run_due(self, now_ns: int, *, end_of_stream: bool, bar: Any) -> bool:
        """Run every window due at ``now_ns``; True once max_windows is reached."""
        while True:
            if self.max_windows is not None and self.report.windows >= self.max_windows:
                self.report.stopped_early = True
                return True
            job = self.policy.next_job(now_ns / 1e9, newest_only=False,
                                       end_of_stream=end_of_stream)
            if job is None:
                return False
            self._run_window(job, now_ns)
            bar.set_postfix(windows=self.report.windows, refresh=False)

    def _run_window(self, job: Any, log_ns: int) -> None:
        from taco_ros import outputs

        report, pipeline = self.report, self.pipeline
        try:
            frame = self.decoder.rgb(job.frame)
        except ValueError as exc:
            self._problem('bad_images', exc)
            return
        if job.cold_reason is not None:
            pipeline.reset()
        try:
            result = pipeline.process(frame, job.window)
        except Exception as exc:    # the node logs a failed window and goes on
            report.failed += 1
            report.last_error = f'window at {job.end:.3f} s: {type(exc).__name__}: {exc}'
            return
        header = job.frame.header
        # The node's own call: class ids and the mask encoding as the robot's parameters say.
        messages = outputs.window_messages(result, header, job.window, pipeline.vocabulary,
                                           self.values['mask_encoding'])
        self.writer.write_message('mask', log_ns, messages.mask)
        self.writer.write_message('objects', log_ns, messages.objects)
        self.writer.write_message('audio_activation', log_ns, messages.activation)
        if self.debug_image:
            self.writer.write_message('debug_image', log_ns, outputs.debug_image_message(
                frame, result, header, self.values['debug_alpha']))
        report.windows += 1
        report.sounding += int(bool(result.sounding))
        report.labels[result.objects[0].label if result.objects else '(nothing)'] += 1
        for stage, ms in result.timings.items():
            report.stage_ms[stage] = report.stage_ms.get(stage, 0.0) + float(ms)

    def _write_label_info(self, log_ns: int) -> None:
        from builtin_interfaces.msg import Time

        from taco_ros import outputs

        sec, nanosec = divmod(int(log_ns), 1_000_000_000)
        msg = outputs.label_info_message(self.pipeline.vocabulary, self.values['mask_threshold'],
                                         Time(sec=sec, nanosec=nanosec))
        self.writer.write_message('label_info', log_ns, msg)

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
            self.pipeline = None


def process_bag(input_bag: str | os.PathLike, output_bag: str | os.PathLike,
                values: dict[str, Any], *, image_topic: str | None = None,
                audio_topic: str | None = None, storage: str | None = None,
                node_name: str = NODE_NAME, debug_image: bool = False, copy_inputs: bool = False,
                max_windows: int | None = None, progress: bool = False) -> ProcessReport:
    """Run taco_node's windows over a bag and write its outputs into ``output_bag`` (new).

    values: every taco_node parameter (bags.node_params.node_parameters). image_topic /
    audio_topic: default the first camera (Image, CompressedImage) and audio topic of a type the
    node reads. storage: of the output bag (default: the input's). copy_inputs: also write the
    camera and audio messages, so one bag shows frames and masks together. max_windows: stop after
    that many windows.
    """
    processor = BagProcessor(values, debug_image=debug_image, max_windows=max_windows)
    try:
        return processor.run(Path(input_bag), Path(output_bag), image_topic=image_topic,
                             audio_topic=audio_topic, storage=storage, node_name=node_name,
                             copy_inputs=copy_inputs, progress=progress)
    finally:
        processor.close()


def format_report(report: ProcessReport) -> str:
    """The summary table printed at the end of ``bag process``."""
    n = max(report.windows, 1)
    rows = [
        ('input', f'{report.input_bag} ({report.image_topic}, {report.audio_topic})'),
        ('output', report.output_bag),
        ('model', f'{report.model_config} on {report.device}'
                  + (' (RANDOM WEIGHTS)' if report.random_weights else '')),
        ('frames / audio chunks', f'{report.frames} / {report.audio_chunks}'),
        ('windows', f'{report.windows} ({report.sounding} sounding)'
                    + (' (stopped at --max-windows)' if report.stopped_early else '')),
        ('windows not paired', ', '.join(f'{k} {v}' for k, v in sorted(report.drops.items())) or '0'),
        ('failed windows', f'{report.failed}' + (f' (last: {report.last_error})'
                                                 if report.failed else '')),
        ('refused inputs', ', '.join(f'{k} {v}' for k, v in sorted(report.problems.items())) or '0'),
        ('model loading', f'{report.load_seconds:.1f} s'),
        ('processing', f'{report.seconds:.1f} s, {report.windows_per_second:.2f} windows/s, '
                       f'{1e3 * report.seconds / n:.0f} ms/window'),
        ('mean stage ms', ', '.join(f'{k} {v / n:.0f}' for k, v in report.stage_ms.items())),
        ('labels', ', '.join(f'{label} {count}' for label, count in report.labels.most_common())),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f'{name:<{width}}  {value}' for name, value in rows]
    lines += [f'note: {note}' for note in report.notices]
    return '\n'.join(lines)
