"""Tiny benchmark datasets in the real on-disk layouts (method.md §7.2), written by the tests.

Random images, audio from espeak-ng and sox, hand-made masks. Every writer returns what a reader should
find, so tests can compare against it.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from taco_ros.eval.datasets import avss_palette

IMAGE_SIZE = (48, 64)     # (H, W) of the random frames: small on purpose, the pipeline resizes anyway
# The authors' CSVs hold absolute audio paths on their own mounts; the reader must re-root them.
FOREIGN_PREFIX = '/authors/mount/avsbench'


def make_audio(directory: Path) -> dict[str, Path]:
    """speech ('dog', espeak-ng, 22.05 kHz), tone (1 s 440 Hz, sox, 16 kHz), long (10 s stereo, sox)."""
    if not (shutil.which('espeak-ng') and shutil.which('sox')):
        pytest.skip('espeak-ng and sox are needed to write the test audio')
    directory.mkdir(parents=True, exist_ok=True)
    files = {'speech': directory / 'speech.wav', 'tone': directory / 'tone.wav',
             'long': directory / 'long.wav'}
    subprocess.run(['espeak-ng', '-w', str(files['speech']), 'dog'], check=True)
    subprocess.run(['sox', '-n', '-r', '16000', str(files['tone']), 'synth', '1', 'sine', '440'], check=True)
    subprocess.run(['sox', '-n', '-r', '16000', '-c', '2', str(files['long']), 'synth', '10', 'sine', '300'],
                   check=True)
    return files


def _random_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = IMAGE_SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


_clips_written = [0]


def _copy(source: Path, destination: Path) -> None:
    """Copy a clip at a gain of its own, so that no two clips of a dataset hold the same samples."""
    import soundfile

    _clips_written[0] += 1
    samples, rate = soundfile.read(str(source), dtype='float32')
    destination.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(destination), samples * (0.9 - 0.01 * (_clips_written[0] % 50)), rate,
                    subtype='PCM_16')


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, 'w', newline='', encoding='utf-8') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def avsbench_mask(index: int, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """A grey-level mask PNG array and its expected decoding (only 255 is foreground)."""
    array = np.zeros((size, size), np.uint8)
    if index % 3 == 2:
        return array, np.zeros((size, size), np.int64)          # silent frame: empty mask
    top = 20 + 10 * index
    array[top:top + 60, 30:130] = 255
    array[0:10, 0:10] = 128                                      # not foreground: 128 / 255 → 0
    expected = (array == 255).astype(np.int64)
    return array, expected


def write_avsbench(root: Path, audio: dict[str, Path], seed: int = 0) -> dict:
    """AVSBench root with S4 (single, one 1-s clip per frame) and MS3 (multi) rows in one CSV."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, str]] = []
    expected: dict = {'s4': {}, 'ms3': [], 'masks': {}}
    # S4: video vA has 3 complete frames; vB has an extra mask, so only 3 are kept; vT is train split.
    for video, frames, masks, split in (('vA', 3, 3, 'test'), ('vB', 3, 4, 'test'), ('vT', 2, 2, 'train')):
        for i in range(1, max(frames, masks) + 1):
            if i <= frames:
                _random_image(root / 'visual_frames' / 'test' / video / f'{video}_{i}.png', rng)
                clip = audio['speech'] if (i + len(video)) % 2 else audio['tone']
                _copy(clip, root / 'audio_1s' / 'test' / video / f'{video}_{i}.wav')
            png, decoded = avsbench_mask(i)
            _save(root / 'gt_masks' / 'test' / video / f'{video}_{i}.png', png)
            expected['masks'][f'{video}/{i - 1}'] = decoded
            rows.append({'video_id': video, 'frame': f'visual_frames/test/{video}/{video}_{i}.png',
                         'mask': f'gt_masks/test/{video}/{video}_{i}.png',
                         'file_path': f'{FOREIGN_PREFIX}/audio_1s/test/{video}/{video}_{i}.wav',
                         'source_type': 'single', 'split': split, 'category': 'dog'})
        if split == 'test':
            expected['s4'][video] = min(frames, masks)
    # MS3: frames stored as {stem}.mp4_{i}.png, RGB masks, one clip per video.
    for video in ('mA', 'mB', 'mC'):
        _copy(audio['speech'] if video != 'mB' else audio['tone'], root / 'ms3_audio' / f'{video}.wav')
        for i in (1, 2):
            _random_image(root / 'ms3_frames' / f'{video}.mp4_{i}.png', rng)
            png, decoded = avsbench_mask(i)
            _save(root / 'ms3_masks' / f'{video}_{i}.png', np.stack([png, png // 2, png // 3], -1))
            expected['masks'][f'{video}/{video}.mp4_{i}.png'] = decoded
            expected['ms3'].append(f'{video}/{video}.mp4_{i}.png')
            rows.append({'video_id': video, 'frame': f'ms3_frames/{video}_{i}.png',
                         'mask': f'ms3_masks/{video}_{i}.png', 'file_path': f'ms3_audio/{video}.wav',
                         'source_type': 'multi', 'split': 'test', 'category': 'x'})
    _write_csv(root / 'metadataExtended.csv', rows)
    return expected


# ADE20K full-format colours: class = (R // 10) * 256 + G.
ADE_CLASSES = {'dog': (516, (20, 4, 0)), 'car': (300, (10, 44, 0)), 'person': (12, (0, 12, 0))}


def write_ade(root: Path, audio: dict[str, Path], seed: int = 0) -> dict:
    """ADE-SP root (frames/, annotations/, test_metadata.csv) plus root/vggsound/ audio."""
    rng = np.random.default_rng(seed)
    rows, expected = [], {'keys': [], 'classes': []}
    images = {
        'ADE_val_1.jpg': [('dog', (slice(0, 16), slice(0, 20))), ('car', (slice(16, 32), slice(20, 40)))],
        'sub/ADE_val_2.jpg': [('person', (slice(4, 28), slice(4, 30)))],
    }
    for location, regions in images.items():
        _random_image(root / 'frames' / location, rng)
        annotation = np.zeros((32, 40, 3), np.uint8)
        for name, (rows_slice, cols_slice) in regions:
            annotation[rows_slice, cols_slice] = ADE_CLASSES[name][1]
        _save(root / 'annotations' / f'{location.rsplit(".", 1)[0]}_seg.png', annotation)
        for name, _ in regions:
            clip = f'clips/{name}.wav'
            _copy(audio['long'] if name == 'car' else audio['speech'], root / 'vggsound' / clip)
            rows.append({'image_location': location, 'file_path': clip,
                         'ade_class_id': str(ADE_CLASSES[name][0]), 'ade_class': name})
            expected['keys'].append(f'{location}|{ADE_CLASSES[name][0]}')
            expected['classes'].append(name)
    _write_csv(root / 'test_metadata.csv', rows)
    return expected


AVSS_LABELS = {'background': 0, 'dog': 1, 'car': 2, 'guitar': 3}


def write_avss(root: Path, audio: dict[str, Path], seed: int = 0) -> dict:
    """AVSBench-semantic root: metadataExtendedTest.csv, label2idx.json, v2 frames and labels_rgb masks."""
    rng = np.random.default_rng(seed)
    palette = avss_palette()
    rows, expected = [], {'keys': [], 'labels': {}}
    for video, label in (('v2a', 'dog'), ('v2b', 'car_engine')):
        _copy(audio['speech'] if label == 'dog' else audio['tone'], root / 'v2' / video / 'audio.wav')
        for i in range(2):
            frame = f'v2/{video}/frames/{i}.jpg'
            _random_image(root / frame, rng)
            labels = np.zeros((40, 40), np.int64)
            labels[5 + i:25, 5:30] = AVSS_LABELS[label.split('_')[0]]
            labels[30:, 30:] = AVSS_LABELS['guitar']
            _save(root / 'v2' / video / 'labels_rgb' / f'{i}.png', palette[labels].astype(np.uint8))
            rows.append({'video_id': video, 'frame': frame, 'mask': f'v2/{video}/labels_semantic/{i}.png',
                         'file_path': f'{FOREIGN_PREFIX}/v2/{video}/audio.wav', 'source_type': 'v2',
                         'label': label})
            expected['keys'].append(frame)
            expected['labels'][frame] = labels
    # A v1s row, which the AVSS benchmark leaves out.
    rows.append({'video_id': 'old', 'frame': 'v1s/old/0.jpg', 'mask': 'v1s/old/0.png',
                 'file_path': 'v1s/old.wav', 'source_type': 'v1s', 'label': 'dog'})
    _write_csv(root / 'metadataExtendedTest.csv', rows)
    (root / 'label2idx.json').write_text(json.dumps(AVSS_LABELS))
    return expected


def write_all(base: Path) -> dict[str, dict]:
    """Every benchmark under ``base``: {name: {'root': Path, 'expected': dict}}."""
    audio = make_audio(base / 'audio_sources')
    avsbench, ade, avss = base / 'avsbench', base / 'ade_sp', base / 'avss'
    avsbench_expected = write_avsbench(avsbench, audio)
    ade_expected = write_ade(ade, audio)
    avss_expected = write_avss(avss, audio)
    return {'s4': {'root': avsbench, 'expected': avsbench_expected},
            'ms3': {'root': avsbench, 'expected': avsbench_expected},
            'ade_sp': {'root': ade, 'expected': ade_expected},
            'ade_sp_semantic': {'root': ade, 'expected': ade_expected},
            'avss': {'root': avss, 'expected': avss_expected}}
