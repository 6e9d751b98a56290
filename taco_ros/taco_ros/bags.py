"""rosbag2 files for taco_ros without a ROS install: synthetic scenes, video/WAV import, reading.

Bags are written with ``rosbags`` in the standard rosbag2 layout (sqlite3 or MCAP storage, metadata
version 9) with standard message types (sensor_msgs/Image or CompressedImage) and taco_msgs/AudioChunk,
so ``ros2 bag play`` replays them on a full ROS install that has taco_msgs built.

Timing convention of the written bags:
- camera frame i: header.stamp = start + t_i, logged at its stamp (a driver publishes at once);
- audio block k: header.stamp = time of its first sample (AudioChunk.msg), logged one block later,
  when a microphone driver could publish it.

No rclpy here: the rclpy side (play, record) is in taco_ros.commands.bag.
"""

from __future__ import annotations

import functools
import heapq
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_TOPIC = '/camera/image_raw'
AUDIO_TOPIC = '/audio'
STORAGES = ('sqlite3', 'mcap')
SCENE_FILE = 'scene.json'      # description of a synthetic scene, next to metadata.yaml

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
AUDIO_TYPE = 'taco_msgs/msg/AudioChunk'

_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


# ------------------------------------------------------------------------------------- types
def taco_msgs_dir() -> Path:
    """Directory holding taco_msgs' .msg files: the installed share dir, else the source tree."""
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        candidate = Path(prefix) / 'share' / 'taco_msgs' / 'msg'
        if prefix and candidate.is_dir():
            return candidate
    source = Path(__file__).resolve().parents[2] / 'taco_msgs' / 'msg'
    if source.is_dir():
        return source
    raise FileNotFoundError(
        'taco_msgs message definitions not found: source install/setup.bash (AMENT_PREFIX_PATH) '
        'or run from a taco_ros checkout')


@functools.cache
def typestore() -> Any:
    """rosbags Typestore: ROS 2 Jazzy's standard messages plus taco_msgs (from its .msg files)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    types: dict[str, Any] = {}
    for path in sorted(taco_msgs_dir().glob('*.msg')):
        types.update(get_types_from_msg(path.read_text(), f'taco_msgs/msg/{path.stem}'))
    store.register(types)
    return store


def _qos(depth: int, transient_local: bool = False) -> Any:
    """Offered QoS recorded with a connection (reliable: every subscriber can connect)."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    zero = QosTime(sec=0, nsec=0)   # rmw's "default" (infinite) deadline/lifespan/lease
    return Qos(history=QosHistory.KEEP_LAST, depth=depth, reliability=QosReliability.RELIABLE,
               durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


def _storage_plugin(storage: str) -> Any:
    from rosbags.rosbag2 import StoragePlugin
    if storage not in STORAGES:
        raise ValueError(f'storage must be one of {", ".join(STORAGES)}, got {storage!r}')
    return StoragePlugin.SQLITE3 if storage == 'sqlite3' else StoragePlugin.MCAP


def _stamp(ns: int) -> Any:
    from rosbags.typesys.stores.ros2_jazzy import builtin_interfaces__msg__Time as Time
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def _header(ns: int, frame_id: str) -> Any:
    from rosbags.typesys.stores.ros2_jazzy import std_msgs__msg__Header as Header
    return Header(stamp=_stamp(ns), frame_id=frame_id)


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (rosbags or rclpy) → integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# ---------------------------------------------------------------------------------- messages
def image_message(rgb: np.ndarray, stamp: int, frame_id: str) -> Any:
    """rosbags sensor_msgs/Image (rgb8, tight step) of a uint8 [H, W, 3] frame."""
    rgb = _check_frame(rgb)
    cls = typestore().types[IMAGE_TYPE]
    height, width = rgb.shape[:2]
    return cls(header=_header(stamp, frame_id), height=height, width=width, encoding='rgb8',
               is_bigendian=0, step=width * 3, data=rgb.reshape(-1))


def compressed_message(rgb: np.ndarray, stamp: int, frame_id: str, quality: int = 90) -> Any:
    """rosbags sensor_msgs/CompressedImage (jpeg, image_transport's format string) of a frame."""
    import cv2

    rgb = _check_frame(rgb)
    ok, jpeg = cv2.imencode('.jpg', rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError('JPEG encoding failed')
    cls = typestore().types[COMPRESSED_TYPE]
    return cls(header=_header(stamp, frame_id), format='rgb8; jpeg compressed bgr8',
               data=np.asarray(jpeg, dtype=np.uint8).reshape(-1))


def audio_message(samples: np.ndarray, sample_rate: int, stamp: int, frame_id: str) -> Any:
    """rosbags taco_msgs/AudioChunk of int16 samples [n] or [n, channels], first sample at ``stamp``."""
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        raise ValueError(f'audio samples must be int16, got {samples.dtype}')
    frames = samples.reshape(samples.shape[0], -1)
    cls = typestore().types[AUDIO_TYPE]
    return cls(header=_header(stamp, frame_id), sample_rate=int(sample_rate),
               channels=frames.shape[1], sample_format=cls.FORMAT_S16,
               int16_data=np.ascontiguousarray(frames).reshape(-1),
               int32_data=np.zeros(0, np.int32), float32_data=np.zeros(0, np.float32))


def _check_frame(rgb: np.ndarray) -> np.ndarray:
    rgb = np.ascontiguousarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'frames must be uint8 [H, W, 3] RGB, got {rgb.dtype} {rgb.shape}')
    return rgb


def frame_from_message(msg: Any) -> np.ndarray:
    """RGB frame of a (rosbags or rclpy) sensor_msgs/Image or CompressedImage."""
    from taco_ros.conversions import compressed_to_rgb, image_to_rgb
    return compressed_to_rgb(msg) if hasattr(msg, 'format') else image_to_rgb(msg)


def samples_from_message(msg: Any) -> np.ndarray:
    """Interleaved samples of an AudioChunk as [n, channels] in its own sample type."""
    field_name = {1: 'int16_data', 2: 'int32_data', 3: 'float32_data'}.get(int(msg.sample_format))
    if field_name is None:
        raise ValueError(f'unknown AudioChunk sample_format {msg.sample_format}')
    data = np.asarray(getattr(msg, field_name))
    return data.reshape(-1, max(1, int(msg.channels)))


# ------------------------------------------------------------------------------------- writing
@dataclass
class BagSummary:
    """What was written: topics, message counts and the time span (ns since the epoch)."""

    path: str
    storage: str
    image_topic: str
    audio_topic: str
    frames: int
    audio_chunks: int
    start_ns: int
    end_ns: int
    frame_stamps_ns: list[int] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def write_bag(
    path: str | os.PathLike,
    frames: Iterable[tuple[float, np.ndarray]],
    audio: np.ndarray,
    sample_rate: int,
    *,
    block_size: int = 512,
    storage: str = 'sqlite3',
    image_topic: str = IMAGE_TOPIC,
    audio_topic: str = AUDIO_TOPIC,
    compressed: bool = False,
    jpeg_quality: int = 90,
    start_ns: int | None = None,
    camera_frame: str = 'camera',
    mic_frame: str = 'microphone',
) -> BagSummary:
    """Write camera ``frames`` ((seconds from start, RGB uint8)) and int16 ``audio`` into a new bag.

    With ``compressed`` the images go to ``<image_topic>/compressed`` as JPEG CompressedImage (what
    image_transport's compressed plugin publishes). ``path`` must not exist yet.
    """
    from rosbags.rosbag2 import Writer

    if block_size <= 0 or sample_rate <= 0:
        raise ValueError('block_size and sample_rate must be positive')
    audio = np.asarray(audio)
    if audio.dtype != np.int16 or audio.ndim not in (1, 2) or audio.shape[0] == 0:
        raise ValueError(f'audio must be non-empty int16 [n] or [n, channels], got {audio.dtype} '
                         f'{audio.shape}')
    path = Path(path)
    if path.exists():
        raise FileExistsError(f'{path} exists; rosbag2 writes a new directory')
    start = time.time_ns() if start_ns is None else int(start_ns)
    store = typestore()
    block_ns = block_size * 1_000_000_000 // sample_rate
    if compressed and not image_topic.endswith('/compressed'):
        image_topic = image_topic.rstrip('/') + '/compressed'

    def camera() -> Iterator[tuple[int, int, Any]]:
        for t, rgb in frames:
            ns = start + round(t * 1e9)
            msg = (compressed_message(rgb, ns, camera_frame, jpeg_quality) if compressed
                   else image_message(rgb, ns, camera_frame))
            yield ns, 0, msg

    def microphone() -> Iterator[tuple[int, int, Any]]:
        for first in range(0, audio.shape[0], block_size):
            ns = start + first * 1_000_000_000 // sample_rate
            yield ns + block_ns, 1, audio_message(audio[first:first + block_size], sample_rate,
                                                  ns, mic_frame)

    summary = BagSummary(str(path), storage, image_topic, audio_topic, 0, 0, start, start)
    try:
        _write_merged(Writer(path, version=9, storage_plugin=_storage_plugin(storage)), store,
                      image_topic, audio_topic, compressed, camera(), microphone(), summary)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)    # no half-written bag left behind
        raise
    return summary


def _write_merged(writer: Any, store: Any, image_topic: str, audio_topic: str, compressed: bool,
                  camera: Iterator[tuple[int, int, Any]], microphone: Iterator[tuple[int, int, Any]],
                  summary: BagSummary) -> None:
    with writer:
        image_type = COMPRESSED_TYPE if compressed else IMAGE_TYPE
        connections = (
            writer.add_connection(image_topic, image_type, typestore=store,
                                  offered_qos_profiles=[_qos(10)]),
            writer.add_connection(audio_topic, AUDIO_TYPE, typestore=store,
                                  offered_qos_profiles=[_qos(50)]),
        )
        types = (image_type, AUDIO_TYPE)
        # Merge by log time: readers (and ros2 bag play) expect time order.
        for log_ns, which, msg in heapq.merge(camera, microphone, key=lambda item: item[:2]):
            writer.write(connections[which], log_ns, store.serialize_cdr(msg, types[which]))
            if which == 0:
                summary.frames += 1
                summary.frame_stamps_ns.append(stamp_ns(msg.header.stamp))
            else:
                summary.audio_chunks += 1
            summary.end_ns = max(summary.end_ns, log_ns)
        if summary.frames == 0:
            raise ValueError('no camera frames were given')


def remove_bag(path: str | os.PathLike) -> None:
    """Delete a bag directory (only one that rosbag2 wrote: it must hold metadata.yaml)."""
    path = Path(path)
    if not path.exists():
        return
    if not (path / 'metadata.yaml').is_file():
        raise ValueError(f'{path} is not a rosbag2 directory (no metadata.yaml); not removing it')
    shutil.rmtree(path)


# ------------------------------------------------------------------------------ synthetic scene
@dataclass
class SceneConfig:
    """A synthetic scene: coloured shapes moving over a backdrop; speech and tones that start and
    stop, with silent stretches between them."""

    width: int = 640
    height: int = 480
    fps: float = 15.0
    duration: float = 12.0
    sample_rate: int = 16000
    seed: int = 0
    speech: str = 'Hello robot. Can you see where this voice is coming from?'

    def __post_init__(self) -> None:
        if self.width < 32 or self.height < 32:
            raise ValueError(f'scene must be at least 32x32 pixels, got {self.width}x{self.height}')
        if not 0.5 <= self.fps <= 120:
            raise ValueError(f'fps must be in [0.5, 120], got {self.fps}')
        if not 1.0 <= self.duration <= 3600:
            raise ValueError(f'duration must be in [1, 3600] s, got {self.duration}')
        if not 8000 <= self.sample_rate <= 192000:
            raise ValueError(f'sample_rate must be in [8000, 192000], got {self.sample_rate}')


@dataclass
class SoundEvent:
    """One sound of the scene: what, when (seconds from the start) and which shape 'makes' it."""

    kind: str          # speech | tone | beeps
    start: float
    end: float
    source: str        # name of the shape the sound is attributed to


# Fractions of the scene's duration: silence, speech, silence, tone, silence, beeps, silence.
_TIMELINE = (('speech', 0.08, 0.36, 'red ball'), ('tone', 0.46, 0.66, 'blue box'),
             ('beeps', 0.76, 0.94, 'yellow triangle'))


def scene_events(config: SceneConfig) -> list[SoundEvent]:
    d = config.duration
    return [SoundEvent(kind, round(a * d, 3), round(b * d, 3), source)
            for kind, a, b, source in _TIMELINE]


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise RuntimeError(f'{tool} is needed for the synthetic scene audio '
                           f'(Debian: apt-get install {tool}); scripts/setup.sh installs it')
    return found


def _run(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f'{" ".join(args)} failed: {result.stderr.strip()}')


def _read_wav_float(path: Path) -> np.ndarray:
    import soundfile
    data, _ = soundfile.read(str(path), dtype='float32', always_2d=True)
    return data[:, 0]


def speech_audio(text: str, sample_rate: int, workdir: Path) -> np.ndarray:
    """espeak-ng speech of ``text`` at ``sample_rate``, float32 mono."""
    raw, wav = workdir / 'speech_raw.wav', workdir / 'speech.wav'
    _run([_need('espeak-ng'), '-w', str(raw), text])
    _run([_need('sox'), '-D', str(raw), '-r', str(sample_rate), '-c', '1', '-b', '16', str(wav)])
    return _read_wav_float(wav)


def tone_audio(seconds: float, frequency: float, sample_rate: int, workdir: Path) -> np.ndarray:
    """sox sine tone with 20 ms fades, float32 mono."""
    wav = workdir / f'tone_{frequency:g}.wav'
    fade = min(0.02, seconds / 4)
    _run([_need('sox'), '-D', '-n', '-r', str(sample_rate), '-c', '1', '-b', '16', str(wav),
          'synth', f'{seconds:.4f}', 'sine', f'{frequency:g}', 'fade', 'q', f'{fade:.4f}',
          f'{seconds:.4f}', f'{fade:.4f}'])
    return _read_wav_float(wav)


def scene_audio(config: SceneConfig, events: list[SoundEvent]) -> np.ndarray:
    """int16 mono soundtrack: each event's sound inside its span, silence elsewhere."""
    rate = config.sample_rate
    track = np.zeros(round(config.duration * rate), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix='taco_scene_') as tmp:
        workdir = Path(tmp)
        for event in events:
            span = event.end - event.start
            if event.kind == 'speech':
                sound = speech_audio(config.speech, rate, workdir)
                peak = float(np.abs(sound).max()) or 1.0
                sound = 0.6 * sound / peak
            elif event.kind == 'tone':
                sound = 0.4 * tone_audio(span, 440.0, rate, workdir)
            elif event.kind == 'beeps':
                sound = 0.4 * tone_audio(span, 880.0, rate, workdir)
                t = np.arange(sound.size) / rate
                sound = sound * ((t % 0.4) < 0.2)   # 200 ms on, 200 ms off
            else:
                raise ValueError(f'unknown sound event kind {event.kind!r}')
            first = round(event.start * rate)
            length = min(sound.size, round(span * rate), track.size - first)
            fade = min(length, int(0.01 * rate))
            sound = sound[:length].copy()
            if fade:
                sound[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)  # speech cut short
            track[first:first + length] = sound
    return np.round(np.clip(track, -1.0, 1.0) * 32767.0).astype(np.int16)


def _shape_positions(config: SceneConfig, t: float) -> dict[str, tuple[float, float]]:
    """Centres (x, y) in pixels of the three shapes at time t: smooth, distinct, always in view."""
    w, h = config.width, config.height
    phase = config.seed * 0.7
    return {
        'red ball': (w * (0.5 + 0.32 * np.sin(2 * np.pi * t / 6.0 + phase)), h * 0.62),
        'blue box': (w * 0.22, h * (0.5 + 0.25 * np.sin(2 * np.pi * t / 4.0 + phase))),
        'yellow triangle': (w * (0.72 + 0.12 * np.cos(2 * np.pi * t / 5.0 + phase)),
                            h * (0.32 + 0.12 * np.sin(2 * np.pi * t / 5.0 + phase))),
    }


def render_scene_frame(config: SceneConfig, t: float) -> np.ndarray:
    """RGB frame of the synthetic scene at time t (seconds), with the time printed in a corner."""
    import cv2

    w, h = config.width, config.height
    rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    wall, floor = np.array([200, 210, 225], np.float32), np.array([120, 110, 95], np.float32)
    horizon = 0.55
    frame = np.where(rows < horizon, wall * (0.85 + 0.15 * rows / horizon), floor)
    frame = np.broadcast_to(frame, (h, w, 3)).astype(np.uint8).copy()
    # OpenCV draws on BGR; the colours below are given as RGB and flipped at the end.
    bgr = np.ascontiguousarray(frame[..., ::-1])
    size = min(w, h)
    pos = _shape_positions(config, t)
    x, y = pos['red ball']
    cv2.circle(bgr, (int(x), int(y)), int(size * 0.11), (40, 40, 220), -1, cv2.LINE_AA)
    x, y = pos['blue box']
    half = int(size * 0.09)
    cv2.rectangle(bgr, (int(x) - half, int(y) - half), (int(x) + half, int(y) + half),
                  (200, 90, 30), -1, cv2.LINE_AA)
    x, y = pos['yellow triangle']
    r = size * 0.11
    corners = np.array([[x, y - r], [x - r * 0.87, y + r * 0.5], [x + r * 0.87, y + r * 0.5]])
    cv2.fillPoly(bgr, [corners.astype(np.int32)], (30, 210, 235), cv2.LINE_AA)
    # The time, top right under where overlays put their banners (they cover top and bottom).
    scale = max(0.35, size / 900)
    text = f't={t:5.2f}s'
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, int(scale * 2)))
    cv2.putText(bgr, text, (w - tw - 6, int(h * 0.14) + th), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (20, 20, 20), max(1, int(scale * 2)), cv2.LINE_AA)
    return np.ascontiguousarray(bgr[..., ::-1])


def scene_frames(config: SceneConfig) -> Iterator[tuple[float, np.ndarray]]:
    """Frames at 0, 1/fps, ... up to and including the end of the soundtrack, so the window that
    ends with the audio has a frame at its end to be paired with."""
    count = int(np.floor(config.duration * config.fps + 1e-9)) + 1
    for i in range(count):
        t = i / config.fps
        yield t, render_scene_frame(config, t)


def make_synthetic_bag(path: str | os.PathLike, config: SceneConfig | None = None, *,
                       storage: str = 'sqlite3', compressed: bool = False, block_size: int = 512,
                       start_ns: int | None = None, image_topic: str = IMAGE_TOPIC,
                       audio_topic: str = AUDIO_TOPIC) -> BagSummary:
    """Write the synthetic scene to a new bag, with ``scene.json`` (config + sound events) beside it."""
    config = config or SceneConfig()
    events = scene_events(config)
    audio = scene_audio(config, events)
    summary = write_bag(path, scene_frames(config), audio, config.sample_rate,
                        block_size=block_size, storage=storage, compressed=compressed,
                        start_ns=start_ns, image_topic=image_topic, audio_topic=audio_topic)
    scene = {'config': asdict(config), 'events': [asdict(e) for e in events],
             'start_ns': summary.start_ns}
    (Path(path) / SCENE_FILE).write_text(json.dumps(scene, indent=2))
    return summary


def read_scene(path: str | os.PathLike) -> dict[str, Any] | None:
    """The scene description of a synthetic bag, None for other bags."""
    scene = Path(path) / SCENE_FILE
    return json.loads(scene.read_text()) if scene.is_file() else None


# ---------------------------------------------------------------------------------- media import
def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """int16 samples [n, channels] and the rate of a WAV (or any libsndfile format) file."""
    import soundfile
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'audio file {path} does not exist')
    data, rate = soundfile.read(str(path), dtype='int16', always_2d=True)
    if data.shape[0] == 0:
        raise ValueError(f'{path} holds no audio samples')
    return data, int(rate)


def media_frames(source: str | os.PathLike, fps: float | None = None,
                 max_duration: float | None = None,
                 resize: tuple[int, int] | None = None) -> tuple[Iterator[tuple[float, np.ndarray]], float]:
    """Frames of a video file or a folder of images (sorted by name), and their frame rate.

    A folder needs ``fps``; a video uses its own rate unless ``fps`` is given (then frames are
    taken at that rate). ``resize`` = (width, height).
    """
    import cv2

    source = Path(source)
    convert: Callable[[np.ndarray], np.ndarray] = (
        (lambda bgr: cv2.resize(bgr, resize, interpolation=cv2.INTER_AREA)[..., ::-1].copy())
        if resize else (lambda bgr: bgr[..., ::-1].copy()))
    limit = float('inf') if max_duration is None else max_duration
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f'no images ({", ".join(_IMAGE_SUFFIXES)}) in {source}')
        if not fps or fps <= 0:
            raise ValueError('an image folder needs --fps')

        def from_folder() -> Iterator[tuple[float, np.ndarray]]:
            for i, file in enumerate(files):
                if i / fps >= limit:
                    return
                bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise ValueError(f'cannot read image {file}')
                yield i / fps, convert(bgr)
        return from_folder(), float(fps)

    if not source.is_file():
        raise FileNotFoundError(f'video or image folder {source} does not exist')
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise ValueError(f'OpenCV cannot open video {source}')
    native = capture.get(cv2.CAP_PROP_FPS) or 0.0
    if native <= 0 and not fps:
        raise ValueError(f'{source} does not state its frame rate; give --fps')
    rate = float(fps or native)

    def from_video() -> Iterator[tuple[float, np.ndarray]]:
        index, next_t = 0, 0.0
        try:
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                t = index / native if native > 0 else index / rate
                index += 1
                if t + 1e-9 < next_t:
                    continue       # resampling to a lower rate
                if next_t >= limit:
                    return
                yield next_t, convert(bgr)
                next_t += 1.0 / rate
        finally:
            capture.release()
    return from_video(), rate


def make_media_bag(path: str | os.PathLike, video: str | os.PathLike, wav: str | os.PathLike, *,
                   fps: float | None = None, max_duration: float | None = None,
                   resize: tuple[int, int] | None = None, storage: str = 'sqlite3',
                   compressed: bool = False, block_size: int = 512, start_ns: int | None = None,
                   image_topic: str = IMAGE_TOPIC, audio_topic: str = AUDIO_TOPIC) -> BagSummary:
    """Bag of a video file (or image folder) and a WAV file that start at the same instant."""
    audio, rate = read_wav(wav)
    if max_duration is not None:
        audio = audio[:round(max_duration * rate)]
    frames, _ = media_frames(video, fps, max_duration, resize)
    return write_bag(path, frames, audio, rate, block_size=block_size, storage=storage,
                     compressed=compressed, start_ns=start_ns, image_topic=image_topic,
                     audio_topic=audio_topic)


# ------------------------------------------------------------------------------------- reading
@dataclass
class BagMessage:
    topic: str
    msgtype: str
    log_ns: int        # receive/record time
    raw: bytes         # CDR, as on the wire
    _msg: Any = None

    @property
    def msg(self) -> Any:
        """The deserialized (rosbags) message."""
        if self._msg is None:
            self._msg = typestore().deserialize_cdr(self.raw, self.msgtype)
        return self._msg


def read_messages(path: str | os.PathLike, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """Messages of a bag in log-time order, optionally only some topics."""
    from rosbags.rosbag2 import Reader

    wanted = None if topics is None else set(topics)
    with Reader(Path(path)) as reader:
        connections = [c for c in reader.connections if wanted is None or c.topic in wanted]
        for connection, log_ns, raw in reader.messages(connections=connections):
            yield BagMessage(connection.topic, connection.msgtype, log_ns, bytes(raw))


def bag_topics(path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """{topic: (message type, message count)} of a bag."""
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}


def find_topic(path: str | os.PathLike, msgtypes: Iterable[str]) -> str | None:
    """First topic of the bag whose type is one of ``msgtypes``."""
    wanted = tuple(msgtypes)
    for topic, (msgtype, _) in sorted(bag_topics(path).items()):
        if msgtype in wanted:
            return topic
    return None
