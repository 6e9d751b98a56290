"""Anchor banks: AudioSet word list, msclap-style CLAP text encoding, build → save → load round
trip into the co-NMF's AnchorBank, refusal of banks built for other models, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import encoder_fixtures as ef
import pytest
import torch

from taco_ros.core.models import create_clap, create_clap_text, create_clip
from taco_ros.core.vocabulary import (
    AnchorBankMismatch,
    TextEncoders,
    Vocabulary,
    audioset_labels,
    build_anchor_bank,
    load_anchor_bank,
    parse_word_list,
    read_anchor_bank,
    save_anchor_bank,
    words_hash,
)

WORDS = ['Dog', 'Cat', 'Engine', 'Speech']


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp('models')
    ef.write_tiny_model_files(root, seed=7)
    return root


@pytest.fixture(scope='module')
def encoders(model_dir: Path) -> dict:
    return {
        'clip': create_clip('taco_tiny', model_dir=model_dir),
        'audio': create_clap('taco_tiny', model_dir=model_dir),
        'text': create_clap_text('taco_tiny', model_dir=model_dir),
    }


@pytest.fixture(scope='module')
def bank_file(encoders: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bank = build_anchor_bank(WORDS, encoders['clip'], encoders['text'], encoders['audio'])
    return save_anchor_bank(bank, tmp_path_factory.mktemp('banks') / 'bank.safetensors')


def test_audioset_labels_in_taco_order():
    labels = audioset_labels()
    assert len(labels) == 527 == len(set(labels))
    assert labels[:4] == ['Music', 'Female singing', 'Child singing', 'Canidae, dogs, wolves']
    assert labels[-3:] == ['Rock music', 'Frying (food)', 'Orchestra']
    assert "Dental drill, dentist's drill" in labels


def test_word_list_parsing(tmp_path: Path):
    assert parse_word_list(['# robot words', ' dog ', '', 'door bell']) == ['dog', 'door bell']
    with pytest.raises(ValueError, match='duplicates'):
        parse_word_list(['dog', 'cat', 'dog'])
    with pytest.raises(ValueError, match='empty'):
        parse_word_list(['# nothing'])
    assert words_hash(['a', 'b']) != words_hash(['b', 'a'])


def test_clap_text_follows_msclap_tokenisation(encoders: dict):
    text = encoders['text']
    tokens = text.tokenize(['This is a sound of dog'])
    ids = tokens['input_ids'][0]
    assert ids.shape == (77,)
    content = len('This is a sound of dog') + 2  # byte-level symbols + ' ' + <|endoftext|>
    assert ids[content - 1] == 256  # <|endoftext|> of the tiny vocabulary
    assert torch.all(ids[content:] == 0) and torch.all(tokens['attention_mask'][0, content:] == 0)
    with torch.no_grad():
        hidden = text.base(**tokens)[0]
        expected = text.projection(hidden[0, content - 1])
    assert torch.allclose(text(['This is a sound of dog'])[0], expected, atol=1e-5)
    with pytest.raises(ValueError, match='longer than 77'):
        text.tokenize(['x' * 100])


def test_round_trip_into_conmf_anchor_bank(encoders: dict, bank_file: Path):
    import open_clip

    from taco_ros.core.conmf import AnchorBank
    clip, audio, text = encoders['clip'], encoders['audio'], encoders['text']
    bank = load_anchor_bank(bank_file, {'clip': clip.model_id, 'clap': audio.model_id})
    assert isinstance(bank, AnchorBank)
    assert bank.words == WORDS
    assert bank.image.shape == (4, 64) and bank.audio.shape == (4, 48)
    prompts = [f'A photo of a {w}' for w in WORDS]
    assert torch.allclose(bank.image, clip.encode_text(open_clip.tokenizer.tokenize(prompts)))
    assert torch.allclose(bank.audio, text([f'This is a sound of {w}' for w in WORDS]), atol=1e-6)
    assert bank.audio_logit_scale == pytest.approx(20.0)
    x = torch.randn(3, audio.token_dim)
    with torch.no_grad():
        assert torch.allclose(bank.audio_projection(x), audio.projection(x), atol=1e-6)
    assert not bank.audio_projection.training


def test_bank_file_holds_only_vectors_and_metadata(bank_file: Path):
    from safetensors import safe_open
    with safe_open(str(bank_file), framework='pt') as handle:
        keys = set(handle.keys())
        header = json.loads(handle.metadata()['taco_ros'])
    assert keys == {'clip_text', 'clap_text', 'clap_logit_scale', 'audio_projection.linear1.weight',
                    'audio_projection.linear2.weight', 'audio_projection.layer_norm.weight',
                    'audio_projection.layer_norm.bias'}
    assert header['model_ids'] == {'clip': 'taco_tiny:clip', 'clap': 'taco_tiny:clap'}
    assert header['prompts'] == {'clip': 'A photo of a {}', 'clap': 'This is a sound of {}'}
    assert header['words'] == WORDS and header['words_sha256'] == words_hash(WORDS)


def test_bank_for_other_models_is_refused(bank_file: Path):
    with pytest.raises(AnchorBankMismatch, match='open_clip:convnext_large_d_320'):
        load_anchor_bank(bank_file, {'clip': 'open_clip:convnext_large_d_320/laion2b_s29b_b131k_ft_soup',
                                     'clap': 'taco_tiny:clap'})
    with pytest.raises(AnchorBankMismatch, match='clap'):
        load_anchor_bank(bank_file, {'clip': 'taco_tiny:clip', 'clap': 'taco_tiny:clap+random-init'})


def test_exclude_words(bank_file: Path):
    full = load_anchor_bank(bank_file, None)
    bank = load_anchor_bank(bank_file, None, exclude=['Dog'])
    assert bank.words == WORDS[1:]
    assert torch.equal(bank.image, full.image[1:]) and torch.equal(bank.audio, full.audio[1:])
    with pytest.raises(ValueError, match='cannot exclude'):
        load_anchor_bank(bank_file, None, exclude=['Unicorn'])


def test_corrupt_or_foreign_files_are_refused(tmp_path: Path, bank_file: Path):
    from safetensors.torch import save_file
    save_file({'x': torch.zeros(1)}, str(tmp_path / 'other.safetensors'))
    with pytest.raises(ValueError, match='header'):
        read_anchor_bank(tmp_path / 'other.safetensors')
    (tmp_path / 'junk.safetensors').write_bytes(b'not a file')
    with pytest.raises(ValueError, match='not an anchor bank'):
        read_anchor_bank(tmp_path / 'junk.safetensors')
    with pytest.raises(FileNotFoundError, match='taco-ros anchors build'):
        read_anchor_bank(tmp_path / 'absent.safetensors')
    data = read_anchor_bank(bank_file)
    data.words_sha256 = '0' * 64
    save_anchor_bank(data, tmp_path / 'tampered.safetensors')
    with pytest.raises(ValueError, match='hash'):
        read_anchor_bank(tmp_path / 'tampered.safetensors')


def test_random_weights_are_marked_in_the_bank(model_dir: Path, encoders: dict, tmp_path: Path):
    random_clip = create_clip('taco_tiny', model_dir=tmp_path, allow_random_weights=True)
    bank = build_anchor_bank(['dog'], random_clip, encoders['text'], encoders['audio'])
    assert bank.model_ids['clip'].endswith('+random-init')
    with pytest.raises(ValueError, match='different checkpoints'):
        random_audio = create_clap('taco_tiny', model_dir=tmp_path, allow_random_weights=True)
        build_anchor_bank(['dog'], encoders['clip'], encoders['text'], random_audio)


def test_pipeline_and_bank_files_encode_words_alike(encoders: dict, bank_file: Path):
    """The pipeline's text encoders (all new words in one pass, cached) and a bank file (64 per
    pass) give the same vectors: one encoding path."""
    text = TextEncoders(encoders['clip'], encoders['text'], encoders['audio'])
    image, audio = text.encode(WORDS)
    data = read_anchor_bank(bank_file)
    assert torch.equal(image, data.clip_text) and torch.equal(audio, data.clap_text)
    again = text.encode(list(reversed(WORDS)))                   # from the cache, in the new order
    assert torch.equal(again[0], image.flip(0)) and torch.equal(again[1], audio.flip(0))


def test_vocabulary_from_encoders_or_a_bank_file(model_dir: Path, bank_file: Path):
    from taco_ros.core.contract import PipelineConfig
    from taco_ros.core.models import create_models

    config = PipelineConfig(model_config='taco_tiny', model_dir=str(model_dir), device='cpu')
    cpu = torch.device('cpu')
    models = create_models(config, segmenter=False)
    assert models.segmenter is None and not models.random_weights
    vocabulary = Vocabulary(models, cpu, words=WORDS[:2])
    assert vocabulary.words == WORDS[:2] and vocabulary.bank.image.shape == (2, 64)
    vocabulary.set(['kettle', 'blender'])                         # encoded on demand
    assert vocabulary.problem(['kettle']) == 'the vocabulary needs at least 2 words'
    models.drop_text_encoders()
    assert not models.backbone.has_text_tower
    assert 'freed' in vocabulary.problem(['kettle', 'blender'])
    # A bank file: its words by default, any subset without text encoders, nothing else.
    models = create_models(config.copy(anchors=str(bank_file), keep_text_encoders=False),
                           segmenter=False)
    assert models.text is None and not models.backbone.has_text_tower
    from_file = Vocabulary(models, cpu, anchors=str(bank_file))
    assert from_file.words == WORDS
    from_file.set(['Speech', 'Dog'])
    full = load_anchor_bank(bank_file, None)
    assert torch.equal(from_file.bank.image, full.image[[3, 0]])
    assert 'not in the anchor bank' in from_file.problem(['Dog', 'kettle'])
    from_file.set(None)
    assert from_file.words == WORDS


def test_cli_build_and_show(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from taco_ros.cli import main
    words = tmp_path / 'words.txt'
    words.write_text('# kitchen\nkettle\nblender\n', encoding='utf-8')
    out = tmp_path / 'kitchen.safetensors'
    assert main(['anchors', 'build', '--words', str(words), '--model-config', 'taco_tiny',
                 '--model-dir', str(model_dir), '--out', str(out)]) == 0
    assert read_anchor_bank(out).words == ['kettle', 'blender']
    assert main(['anchors', 'show', str(out)]) == 0
    assert main(['anchors', 'build', '--audioset', '--model-config', 'taco_tiny',
                 '--model-dir', str(tmp_path / 'empty'), '--out', str(tmp_path / 'x')]) == 1
    printed = capsys.readouterr().out
    assert 'kettle' in printed and 'taco_tiny:clip' in printed
    assert 'no public download' in printed  # the missing tiny file, named with its directory
