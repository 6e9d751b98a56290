"""Benchmark readers on tiny datasets written in the real layouts (method.md §7.2)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from eval_fixtures import ADE_CLASSES, AVSS_LABELS, write_all

from taco_ros.eval import datasets as d


@pytest.fixture(scope='module')
def tiny(tmp_path_factory) -> dict[str, dict]:
    return write_all(tmp_path_factory.mktemp('eval_datasets'))


def test_s4_one_row_per_video_all_files_of_its_folders(tiny):
    bench = d.load_benchmark('s4', tiny['s4']['root'])
    expected = tiny['s4']['expected']
    videos = bench.videos()
    assert [v[0].video for v in videos] == list(expected['s4'])          # train video vT left out
    assert [len(v) for v in videos] == list(expected['s4'].values())     # vB cut to its 3 frames
    assert bench.vocabulary is None and bench.dropped_labels == ()
    for sample in bench.samples:
        # The CSV names another machine's absolute audio path; the reader finds it under root.
        assert sample.audio.is_file() and str(sample.audio).startswith(str(bench.root))
        assert sample.audio.parent.name == sample.video
        mask = bench.load_mask(sample)
        assert mask.shape == (224, 224) and mask.dtype == np.int64
        np.testing.assert_array_equal(mask, expected['masks'][sample.key])
    image = bench.load_image(bench.samples[0])
    assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
    # limit counts videos for S4.
    limited = d.load_benchmark('s4', tiny['s4']['root'], limit=1)
    assert len(limited.videos()) == 1 and len(limited) == 3


def test_ms3_rows_renamed_frames_and_paper_shuffle(tiny):
    root = tiny['ms3']['root']
    expected = tiny['ms3']['expected']['ms3']
    ordered = d.load_benchmark('ms3', root, shuffle=False)
    assert [s.key for s in ordered.samples] == expected
    assert all('.mp4_' in s.image.name for s in ordered.samples)
    assert ordered.dropped_labels == ('Music',)
    shuffled = d.load_benchmark('ms3', root)                               # paper: shuffled, seed 42
    permutation = np.random.RandomState(42).permutation(len(expected))
    assert [s.key for s in shuffled.samples] == [expected[i] for i in permutation]
    other = d.load_benchmark('ms3', root, seed=7)
    assert sorted(s.key for s in other.samples) == sorted(expected)
    assert d.load_benchmark('ms3', root, seed=7).samples == other.samples  # seedable, repeatable
    limited = d.load_benchmark('ms3', root, limit=2)
    assert [s.key for s in limited.samples] == [expected[i] for i in permutation[:2]]
    # Masks: first channel of an RGB PNG.
    masks = tiny['ms3']['expected']['masks']
    for sample in ordered.samples:
        np.testing.assert_array_equal(ordered.load_mask(sample), masks[sample.key])
    # Frames of one video share it, in frame order.
    assert [[s.frame_index for s in v] for v in ordered.videos()] == [[1, 2]] * 3


def test_ade_sp_class_decoding_and_audio_root(tiny):
    bench = d.load_benchmark('ade_sp', tiny['ade_sp']['root'])
    assert [s.key for s in bench.samples] == tiny['ade_sp']['expected']['keys']
    for sample in bench.samples:
        assert sample.class_id == ADE_CLASSES[sample.class_name][0] == sample.mask_class
        assert sample.audio.parent.parent == bench.root / 'vggsound'
        mask = bench.load_mask(sample)
        assert mask.shape == (224, 224)
        assert set(np.unique(mask)) == {0, 1}
    dog = bench.load_mask(bench.samples[0])
    # dog covers rows 0-15 / cols 0-19 of a 32×40 annotation: the upper-left quarter after resize.
    assert dog[:100, :100].all() and not dog[130:, :].any() and not dog[:, 130:].any()
    car = bench.load_mask(bench.samples[1])
    assert car[130:210, 130:210].all() and not (car & dog).any()


def test_ade_decoding_formula():
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 0] = (20, 4, 0)
    rgb[0, 1] = (29, 255, 7)           # R // 10 = 2 as well
    np.testing.assert_array_equal(d.ade_class_map(rgb), [[516, 2 * 256 + 255]])


def test_ade_sp_semantic_bank_and_painted_targets(tiny):
    bench = d.load_benchmark('ade_sp_semantic', tiny['ade_sp']['root'])
    assert bench.vocabulary == list(dict.fromkeys(tiny['ade_sp']['expected']['classes']))
    assert bench.num_classes == len(bench.vocabulary) and bench.semantic
    for sample in bench.samples:
        labels = bench.load_mask(sample)
        assert set(np.unique(labels)) == {0, sample.class_id + 1}
    # The bank comes from the evaluated rows only (the authors limit the table first).
    assert d.load_benchmark('ade_sp_semantic', tiny['ade_sp']['root'], limit=1).vocabulary == ['dog']


def test_avss_palette_masks_labels_and_bank(tiny):
    palette = d.avss_palette()
    assert palette.shape == (71, 3)
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert palette[2].tolist() == [0, 128, 0] and palette[8].tolist() == [64, 0, 0]
    assert len({tuple(c) for c in palette}) == 71
    bench = d.load_benchmark('avss', tiny['avss']['root'])
    expected = tiny['avss']['expected']
    assert [s.key for s in bench.samples] == expected['keys']              # the v1s row is left out
    assert bench.vocabulary == list(AVSS_LABELS) and bench.num_classes == 71
    assert [s.class_id for s in bench.samples] == [1, 1, 2, 2]             # 'car_engine' → 'car'
    for sample in bench.samples:
        assert 'labels_rgb' in str(sample.mask)
        labels = bench.load_mask(sample)
        assert labels.shape == (224, 224)
        # Nearest resize of the 40×40 label map: pixel (r, c) of 224 reads source (r·40//224, c·40//224).
        source = expected['labels'][sample.key]
        index = (np.arange(224) * 40) // 224
        np.testing.assert_array_equal(labels, source[np.ix_(index, index)])


def test_load_audio_reads_the_tools_output(tiny):
    bench = d.load_benchmark('s4', tiny['s4']['root'])
    samples, rate = d.load_audio(bench.samples[0].audio)
    assert rate in (16000, 22050) and samples.dtype == np.float32 and samples.ndim == 1
    assert 0 < np.abs(samples).max() <= 1
    stereo, rate = d.load_audio(tiny['ade_sp']['root'] / 'vggsound' / 'clips' / 'car.wav')
    assert stereo.shape == (160000, 2) and rate == 16000


# ---------------------------------------------------------------- clear errors

def test_missing_root_metadata_and_columns(tmp_path):
    with pytest.raises(d.DatasetError, match='root directory not found'):
        d.load_benchmark('s4', tmp_path / 'nowhere')
    with pytest.raises(d.DatasetError, match=r'metadataExtended\.csv'):
        d.load_benchmark('s4', tmp_path)
    (tmp_path / 'test_metadata.csv').write_text('image_location,file_path\nx.jpg,a.wav\n')
    with pytest.raises(d.DatasetError, match='ade_class_id, ade_class'):
        d.load_benchmark('ade_sp', tmp_path)
    with pytest.raises(ValueError, match='unknown benchmark'):
        d.load_benchmark('coco', tmp_path)


def _copy_tree(source: Path, destination: Path) -> Path:
    import shutil

    shutil.copytree(source, destination)
    return destination


def test_missing_files_are_named(tiny, tmp_path):
    root = _copy_tree(tiny['ade_sp']['root'], tmp_path / 'ade')
    (root / 'annotations' / 'ADE_val_1_seg.png').unlink()
    (root / 'vggsound' / 'clips' / 'car.wav').unlink()
    with pytest.raises(d.DatasetError) as error:
        d.load_benchmark('ade_sp', root)
    message = str(error.value)
    assert 'ADE_val_1_seg.png' in message and 'car.wav' in message and '3 file(s) missing' in message
    avss = _copy_tree(tiny['avss']['root'], tmp_path / 'avss')
    (avss / 'label2idx.json').unlink()
    with pytest.raises(d.DatasetError, match=r'label2idx\.json'):
        d.load_benchmark('avss', avss)


def test_s4_video_without_audio_folder(tiny, tmp_path):
    root = _copy_tree(tiny['s4']['root'], tmp_path / 'avsbench')
    import shutil

    shutil.rmtree(root / 'audio_1s' / 'test' / 'vB')
    with pytest.raises(d.DatasetError, match='S4 video vB'):
        d.load_benchmark('s4', root)


def test_no_rows_for_the_benchmark(tmp_path):
    with open(tmp_path / 'metadataExtended.csv', 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['video_id', 'frame', 'mask', 'file_path', 'source_type', 'split'])
        writer.writerow(['a', 'f/a_1.png', 'm/a_1.png', 'a.wav', 'single', 'train'])
    with pytest.raises(d.DatasetError, match='no sample'):
        d.load_benchmark('s4', tmp_path)
    with pytest.raises(ValueError, match='limit'):
        d.load_benchmark('ms3', tmp_path, limit=0)


def test_ms3_frame_name_rewrite():
    assert d.ms3_frame_name('a/b/foo_1.png') == 'a/b/foo.mp4_1.png'
    assert d.ms3_frame_name('video_12.jpg') == 'video.mp4_12.jpg'
    with pytest.raises(ValueError, match='suffix'):
        d.ms3_frame_name('plain.png')
