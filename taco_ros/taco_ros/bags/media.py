"""Bags from media files: a video file (or a folder of images) plus a WAV file recorded with it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from taco_ros.bags.rosbag import BagSummary, write_bag
from taco_ros.bags.topics import AUDIO_TOPIC, IMAGE_TOPIC

_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')


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
