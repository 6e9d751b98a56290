"""A synthetic scene for demos and tests: coloured shapes moving over a backdrop, with speech
(espeak-ng), a tone and beeps (sox) between silences, the beeps starting while the tone still sounds
(two sources at once); written as a bag with ``scene.json`` (the configuration and the true sound
events) beside its metadata.yaml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taco_ros.bags.rosbag import BagSummary, write_bag
from taco_ros.bags.topics import AUDIO_TOPIC, IMAGE_TOPIC

SCENE_FILE = 'scene.json'      # description of a synthetic scene, next to metadata.yaml


@dataclass
class SceneConfig:
    """A synthetic scene: coloured shapes moving over a backdrop; speech and tones that start and
    stop, with silent stretches between them and one stretch where two sound at once."""

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


# Fractions of the scene's duration: silence, speech, silence, tone, tone + beeps, beeps, silence.
_TIMELINE = (('speech', 0.08, 0.36, 'red ball'), ('tone', 0.46, 0.80, 'blue box'),
             ('beeps', 0.66, 0.94, 'yellow triangle'))


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
    """int16 mono soundtrack: each event's sound inside its span (overlapping ones mixed), silence
    elsewhere."""
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
            track[first:first + length] += sound
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
