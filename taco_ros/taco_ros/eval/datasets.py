"""Readers for the five TACO benchmarks, from the on-disk layouts of method.md §7.2.

Layouts (``root`` is the directory given with ``--root``):

* ``s4`` / ``ms3`` (AVSBench): ``root/metadataExtended.csv`` with columns video_id, frame, mask (paths
  relative to ``root``), file_path (audio; absolute in the authors' CSV), source_type (single | multi) and
  split. S4 keeps one row per video and reads *every* file of its frame, audio and mask folders, sorted by
  name and cut to the shortest (one audio clip per frame). MS3 has one row per frame; its frame files are
  named ``{stem}.mp4_{i}.ext`` on disk while the CSV says ``{stem}_{i}.ext``.
  Masks: first channel / 255 cast to int, so only 255 is foreground.
* ``ade_sp`` / ``ade_sp_semantic``: ``root/test_metadata.csv`` with image_location, file_path (relative to
  the VGGSound root, ``audio_root``), ade_class_id and ade_class; images in ``root/frames/``, ADE20K
  annotations in ``root/annotations/<stem>_seg.png`` (class = (R // 10)·256 + G), resized bilinearly
  (align_corners) to 224×224 as a class-id map and compared with the sample's class id.
* ``avss``: ``root/metadataExtendedTest.csv`` (rows with source_type == "v2"; frame, mask, file_path,
  label), ``root/label2idx.json``; masks are the ``labels_rgb`` colour PNGs (71-colour VOC bit palette),
  nearest-resized to 224×224.

Audio paths that are absolute but absent (the authors' CSVs name their own mounts) are looked up under
``root`` by dropping leading path components; the first prefix that works is reused for the other rows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

BENCHMARKS = ('s4', 'ms3', 'ade_sp', 'avss', 'ade_sp_semantic')
SEMANTIC_BENCHMARKS = ('avss', 'ade_sp_semantic')
MASK_SIZE = 224
AVSS_CLASSES = 71
AVSBENCH_METADATA = 'metadataExtended.csv'
AVSS_METADATA = 'metadataExtendedTest.csv'
AVSS_LABEL_INDEX = 'label2idx.json'
ADE_METADATA = 'test_metadata.csv'
ADE_FRAMES = 'frames'
ADE_ANNOTATIONS = 'annotations'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
AUDIO_EXTENSIONS = ('.wav', '.flac', '.mp3', '.ogg')
# MS3's factorisation bank leaves out AudioSet's "Music" (the authors drop the first label of their list).
MS3_DROPPED_LABELS = ('Music',)
# Paper defaults: only MS3 is shuffled, with numpy seed 42.
DEFAULT_SHUFFLE = {'ms3': True}
DEFAULT_SEED = {'ms3': 42}


class DatasetError(FileNotFoundError):
    """A benchmark file or column is missing; the message names it."""


@dataclass(frozen=True)
class Sample:
    """One evaluated frame: where its image, audio and mask are, and which video it belongs to."""

    key: str               # unique name, used in reports
    video: str             # frames of one video share it (S4 temporal batch, streaming warm start)
    frame_index: int       # order inside the video
    image: Path
    audio: Path
    mask: Path
    class_id: int = -1     # ade_sp: ADE class id; ade_sp_semantic: bank index; avss: label2idx value
    class_name: str = ''
    mask_class: int = -1   # ADE benchmarks: the ADE class id whose pixels form the mask


@dataclass
class Benchmark:
    """A benchmark's samples plus what the evaluation needs to know about it."""

    name: str
    root: Path
    samples: list[Sample]
    vocabulary: list[str] | None = None   # None: the AudioSet bank (minus ``dropped_labels``)
    dropped_labels: tuple[str, ...] = ()
    num_classes: int = 0                  # SemanticMeter size; 0 for binary benchmarks

    @property
    def semantic(self) -> bool:
        return self.name in SEMANTIC_BENCHMARKS

    def __len__(self) -> int:
        return len(self.samples)

    def videos(self) -> list[list[Sample]]:
        """Samples grouped by video, videos in order of first appearance, frames by frame index."""
        groups: dict[str, list[Sample]] = {}
        for sample in self.samples:
            groups.setdefault(sample.video, []).append(sample)
        return [sorted(frames, key=lambda s: s.frame_index) for frames in groups.values()]

    def load_image(self, sample: Sample) -> np.ndarray:
        """RGB uint8 [H, W, 3] at the file's own size (the pipeline does TACO's resizing)."""
        return load_rgb(sample.image)

    def load_mask(self, sample: Sample) -> np.ndarray:
        """Ground truth: 0/1 int mask (binary benchmarks) or an int label map (semantic ones)."""
        if self.name in ('s4', 'ms3'):
            return decode_avsbench_mask(sample.mask)
        if self.name == 'ade_sp':
            return decode_ade_binary_mask(sample.mask, sample.mask_class)
        if self.name == 'ade_sp_semantic':
            # Painted with bank index + 1 so that 0 stays background, as the authors' ground truth is.
            return decode_ade_binary_mask(sample.mask, sample.mask_class) * (sample.class_id + 1)
        return decode_avss_mask(sample.mask)


# --------------------------------------------------------------------------------------------------
# File decoding
# --------------------------------------------------------------------------------------------------

def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert('RGB'), dtype=np.uint8).copy()


def load_audio(path: Path) -> tuple[np.ndarray, int]:
    """Samples as float32 [n] (mono) or [n, C], and the sample rate."""
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype='float32', always_2d=False)
    except soundfile.LibsndfileError:
        import librosa

        # Formats libsndfile cannot read (old mp3 builds): librosa decodes through audioread.
        samples, rate = librosa.load(str(path), sr=None, mono=False)
        samples = samples.T.astype(np.float32)
    if samples.size == 0:
        raise ValueError(f'audio file {path} has no samples')
    return samples, int(rate)


def decode_avsbench_mask(path: Path) -> np.ndarray:
    """First channel of the PNG, /255 cast to int: 255 is foreground, anything else background."""
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., 0]
    return (array.astype(np.float32) / 255).astype(np.int64)


def ade_class_map(rgb: np.ndarray) -> np.ndarray:
    """ADE20K full-format annotation colours → class ids: (R // 10)·256 + G."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f'ADE annotation must be RGB [H, W, 3], got shape {rgb.shape}')
    return (rgb[..., 0] // 10).astype(np.int64) * 256 + rgb[..., 1].astype(np.int64)


def decode_ade_binary_mask(path: Path, class_id: int, size: int = MASK_SIZE) -> np.ndarray:
    """Pixels of ``class_id`` after a bilinear (align_corners) resize of the class-id map to size².

    Resizing ids bilinearly is the authors' choice: boundary pixels blend neighbouring ids and usually
    match no class, which thins every region by about a pixel.
    """
    import torch
    import torch.nn.functional as F

    classes = ade_class_map(load_rgb(path)).astype(np.float32)
    resized = F.interpolate(torch.from_numpy(classes)[None, None], size=(size, size),
                            mode='bilinear', align_corners=True)[0, 0]
    return (resized == float(class_id)).numpy().astype(np.int64)


def avss_palette(num_classes: int = AVSS_CLASSES) -> np.ndarray:
    """The VOC-style bit palette: label bits 0,1,2 go to R,G,B from the most significant bit down."""
    palette = np.zeros((num_classes, 3), dtype=np.int64)
    for label in range(num_classes):
        value, bit = label, 7
        while value > 0:
            for channel in range(3):
                palette[label, channel] |= ((value >> channel) & 1) << bit
            value >>= 3
            bit -= 1
    return palette


def decode_avss_mask(path: Path, size: int = MASK_SIZE) -> np.ndarray:
    """Colour mask → label map via :func:`avss_palette` (unknown colours → 0), nearest-resized to size²."""
    import torch
    import torch.nn.functional as F

    rgb = load_rgb(path).astype(np.int64)
    palette = avss_palette()
    labels = np.zeros(rgb.shape[:2], dtype=np.int64)
    # Walk the palette backwards so the lowest matching label wins, like an argmax over matches.
    for label in range(len(palette) - 1, -1, -1):
        labels[np.all(rgb == palette[label], axis=-1)] = label
    resized = F.interpolate(torch.from_numpy(labels.astype(np.float32))[None, None],
                            size=(size, size), mode='nearest')[0, 0]
    return resized.numpy().astype(np.int64)


def ms3_frame_name(path: str) -> str:
    """CSV name ``dir/{stem}_{i}.ext`` → on-disk name ``dir/{stem}.mp4_{i}.ext``."""
    head, _, name = path.rpartition('/')
    stem, sep, tail = name.rpartition('_')
    if not sep:
        raise ValueError(f'MS3 frame name {path!r} has no "_<index>" suffix')
    renamed = f'{stem}.mp4_{tail}'
    return f'{head}/{renamed}' if head else renamed


# --------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------

def read_metadata(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a metadata CSV; DatasetError naming the file or the missing columns."""
    if not path.is_file():
        raise DatasetError(f'metadata file not found: {path}')
    with open(path, newline='', encoding='utf-8') as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise DatasetError(f'{path} lacks column(s) {", ".join(missing)} (has: {", ".join(columns)})')
        return list(reader)


class PathResolver:
    """Finds files named in the metadata, also when the CSV holds another machine's absolute paths."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dropped: int | None = None   # leading components to drop from absent absolute paths

    def __call__(self, text: str) -> Path:
        path = Path(text)
        if not path.is_absolute():
            return self.root / path
        if path.exists():
            return path
        parts = PurePath(text).parts[1:]
        if self._dropped is not None:
            candidate = self.root.joinpath(*parts[self._dropped:])
            if candidate.exists():
                return candidate
        for dropped in range(len(parts)):
            candidate = self.root.joinpath(*parts[dropped:])
            if candidate.exists():
                self._dropped = dropped
                return candidate
        return path


def _sorted_files(directory: Path, extensions: tuple[str, ...]) -> list[Path]:
    if not directory.is_dir():
        return []
    files = [p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in extensions]
    return sorted(files, key=lambda p: p.name)


def _order(count: int, shuffle: bool, seed: int) -> np.ndarray:
    # RandomState(seed).permutation is the order pandas' sample(frac=1) gives after np.random.seed(seed).
    return np.random.RandomState(seed).permutation(count) if shuffle else np.arange(count)


def _take(rows: list, shuffle: bool, seed: int, limit: int | None) -> list:
    if limit is not None and limit < 1:
        raise ValueError(f'limit must be a positive number of items, got {limit}')
    ordered = [rows[i] for i in _order(len(rows), shuffle, seed)]
    return ordered if limit is None else ordered[:limit]


def _frame_number(name: str, fallback: int) -> int:
    tail = Path(name).stem.rpartition('_')[2]
    return int(tail) if tail.isdigit() else fallback


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------

_AVSBENCH_COLUMNS = ('video_id', 'frame', 'mask', 'file_path', 'source_type', 'split')


def _read_s4(root: Path, split: str, shuffle: bool, seed: int, limit: int | None) -> Benchmark:
    rows = read_metadata(root / AVSBENCH_METADATA, _AVSBENCH_COLUMNS)
    resolve = PathResolver(root)
    seen: set[str] = set()
    videos = []
    for row in rows:
        if row['source_type'] == 'single' and row['split'] == split and row['video_id'] not in seen:
            seen.add(row['video_id'])
            videos.append(row)
    samples = []
    for row in _take(videos, shuffle, seed, limit):
        image_dir = root / PurePath(row['frame']).parent
        audio_dir = resolve(row['file_path']).parent
        mask_dir = root / PurePath(row['mask']).parent
        images = _sorted_files(image_dir, IMAGE_EXTENSIONS)
        audios = _sorted_files(audio_dir, AUDIO_EXTENSIONS)
        masks = _sorted_files(mask_dir, IMAGE_EXTENSIONS)
        count = min(len(images), len(audios), len(masks))
        if count == 0:
            raise DatasetError(
                f'S4 video {row["video_id"]}: need frames, audio clips and masks; found {len(images)} '
                f'in {image_dir}, {len(audios)} in {audio_dir}, {len(masks)} in {mask_dir}')
        for index in range(count):
            samples.append(Sample(f'{row["video_id"]}/{index}', row['video_id'], index,
                                  images[index], audios[index], masks[index]))
    return Benchmark('s4', root, samples)


def _read_ms3(root: Path, split: str, shuffle: bool, seed: int, limit: int | None) -> Benchmark:
    rows = read_metadata(root / AVSBENCH_METADATA, _AVSBENCH_COLUMNS)
    resolve = PathResolver(root)
    rows = [r for r in rows if r['source_type'] == 'multi' and r['split'] == split]
    samples = []
    for position, row in enumerate(_take(rows, shuffle, seed, limit)):
        frame = ms3_frame_name(row['frame'])
        samples.append(Sample(f'{row["video_id"]}/{Path(frame).name}', row['video_id'],
                              _frame_number(row['frame'], position), root / frame,
                              resolve(row['file_path']), root / row['mask']))
    return Benchmark('ms3', root, samples, dropped_labels=MS3_DROPPED_LABELS)


_ADE_COLUMNS = ('image_location', 'file_path', 'ade_class_id', 'ade_class')


def _ade_samples(root: Path, audio_root: Path, rows: list[dict[str, str]],
                 class_index: dict[str, int] | None) -> list[Sample]:
    samples = []
    for row in rows:
        location = row['image_location']
        stem = location.rsplit('.', 1)[0]
        ade_id = int(row['ade_class_id'])
        class_id = ade_id if class_index is None else class_index[row['ade_class']]
        # One image can be prompted with several classes: the key names both.
        key = f'{location}|{ade_id}'
        samples.append(Sample(key, key, 0, root / ADE_FRAMES / location, audio_root / row['file_path'],
                              root / ADE_ANNOTATIONS / f'{stem}_seg.png', class_id, row['ade_class'],
                              ade_id))
    return samples


def _read_ade(name: str, root: Path, audio_root: Path, shuffle: bool, seed: int,
              limit: int | None) -> Benchmark:
    rows = _take(read_metadata(root / ADE_METADATA, _ADE_COLUMNS), shuffle, seed, limit)
    for row in rows:
        try:
            int(row['ade_class_id'])
        except ValueError:
            raise DatasetError(f'{root / ADE_METADATA}: ade_class_id {row["ade_class_id"]!r} of '
                               f'{row["image_location"]} is not an integer') from None
    if name == 'ade_sp':
        return Benchmark(name, root, _ade_samples(root, audio_root, rows, None))
    # The semantic bank is the distinct class names of the evaluated rows, in order of appearance.
    vocabulary = list(dict.fromkeys(row['ade_class'] for row in rows))
    index = {label: i for i, label in enumerate(vocabulary)}
    samples = _ade_samples(root, audio_root, rows, index)
    return Benchmark(name, root, samples, vocabulary=vocabulary, num_classes=len(vocabulary))


def _read_avss(root: Path, shuffle: bool, seed: int, limit: int | None) -> Benchmark:
    rows = read_metadata(root / AVSS_METADATA, ('frame', 'mask', 'file_path', 'source_type', 'label'))
    index_path = root / AVSS_LABEL_INDEX
    if not index_path.is_file():
        raise DatasetError(f'AVSS label index not found: {index_path}')
    with open(index_path, encoding='utf-8') as handle:
        label_index = json.load(handle)
    if not isinstance(label_index, dict) or not label_index:
        raise DatasetError(f'{index_path} must be a JSON object mapping label names to indices')
    resolve = PathResolver(root)
    rows = _take([r for r in rows if r['source_type'] == 'v2'], shuffle, seed, limit)
    samples = []
    for position, row in enumerate(rows):
        video = row.get('video_id') or str(PurePath(row['frame']).parent)
        mask = str(root / row['mask']).replace('labels_semantic', 'labels_rgb')
        label = row['label'].split('_')[0]
        samples.append(Sample(row['frame'], video, _frame_number(row['frame'], position),
                              root / row['frame'], resolve(row['file_path']), Path(mask),
                              int(label_index.get(label, -1)), label))
    return Benchmark('avss', root, samples, vocabulary=[str(k) for k in label_index],
                     num_classes=AVSS_CLASSES)


def check_files(benchmark: Benchmark, shown: int = 5) -> None:
    """DatasetError listing the image, audio and mask files the samples name but the disk lacks."""
    missing = []
    for sample in benchmark.samples:
        for kind in ('image', 'audio', 'mask'):
            path = getattr(sample, kind)
            if not path.is_file():
                missing.append(f'{kind} {path} (sample {sample.key})')
    if missing:
        more = f' … and {len(missing) - shown} more' if len(missing) > shown else ''
        raise DatasetError(f'{benchmark.name}: {len(missing)} file(s) missing under {benchmark.root}: '
                           + '; '.join(missing[:shown]) + more)


def load_benchmark(name: str, root: str | Path, *, limit: int | None = None,
                   shuffle: bool | None = None, seed: int | None = None,
                   audio_root: str | Path | None = None, split: str = 'test') -> Benchmark:
    """Read a benchmark's metadata and check that every file it names exists.

    ``limit`` keeps the first N items after the optional shuffle (videos for S4, rows otherwise).
    ``shuffle``/``seed`` default to the paper's choice (MS3 shuffled with seed 42, the rest in CSV order);
    the shuffle is ``numpy.random.RandomState(seed).permutation``. ``audio_root`` is the VGGSound root for
    the ADE-SP benchmarks (default ``root/vggsound``).
    """
    if name not in BENCHMARKS:
        raise ValueError(f'unknown benchmark {name!r}; choose one of {", ".join(BENCHMARKS)}')
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f'{name} root directory not found: {root}')
    shuffle = DEFAULT_SHUFFLE.get(name, False) if shuffle is None else shuffle
    seed = DEFAULT_SEED.get(name, 0) if seed is None else seed
    if name == 's4':
        benchmark = _read_s4(root, split, shuffle, seed, limit)
    elif name == 'ms3':
        benchmark = _read_ms3(root, split, shuffle, seed, limit)
    elif name in ('ade_sp', 'ade_sp_semantic'):
        audio = Path(audio_root).expanduser() if audio_root else root / 'vggsound'
        benchmark = _read_ade(name, root, audio, shuffle, seed, limit)
    else:
        benchmark = _read_avss(root, shuffle, seed, limit)
    if not benchmark.samples:
        raise DatasetError(f'{name}: no sample found under {root} (check the source_type/split columns)')
    check_files(benchmark)
    return benchmark


def iter_samples(benchmark: Benchmark) -> Iterator[tuple[Sample, np.ndarray, np.ndarray]]:
    """(sample, RGB frame, ground truth) in benchmark order."""
    for sample in benchmark.samples:
        yield sample, benchmark.load_image(sample), benchmark.load_mask(sample)
