"""Planted co-NMF problems: synthetic windows shaped like TACO's real features, with a known answer.

The generator imitates the geometry of the real inputs rather than their values (there are no real weights
here):

* **CLIP side.** Every concept j has a text vector ``t_j = 0.75 m_T + 0.66 e_j + 0.1 w_j`` (a shared "text
  cone" direction m_T, so that word-word cosines are high as with CLIP, a concept direction e_j and a small
  wobble) and an image prototype ``p_j ∝ c m_V + 0.5 e_j + 0.65 g_j`` (a shared "image cone" m_V only partly
  aligned with m_T, the modality gap; the concept direction; a concept-specific appearance direction g_j).
  Image tokens form a 24×24 grid (576 tokens, row-major like FC-CLIP's ``clip_vis_dense``): a background
  concept with a few rectangular objects of distinct concepts, each token being its concept's prototype plus
  Gaussian noise, rescaled to a fixed token norm. Coordinates can be negative; the solver clamps them at 0,
  as TACO does. Concept, appearance and wobble directions are orthogonal to the all-ones direction and to
  both cones, so no word is a "hub" that every image resembles. (Real CLIP banks have hubs; here they only
  added seed-dependent failures of the paper's solver.)
* **CLAP side.** Every concept has an audio prototype in the HTS-AT token space (LayerNorm-like: zero mean,
  unit variance, plus a component shared by all concepts). The 64 audio tokens (2 bands × 32 frames,
  band-major like the tscam regrouping) hold the sounding concept in a run of 20 to 32 frames over a faint
  ambient concept present in every frame, plus noise, re-normalised per token. The CLAP text bank is each
  concept's audio prototype passed through a random msclap-shaped ``Projection`` (D_A→D_P: linear, GELU,
  linear, residual, LayerNorm), perturbed a little (CLAP text and audio embeddings never coincide).
* **Negatives.** ``negative=True``: the heard concept is not among the visible ones (a sound from
  off-screen). ``silent=True``: nothing but the ambient sound, fainter. The ambient concept is never
  visible.

The difficulty was set so that the paper's solver (1800 plain GD steps) recovers the sounding object on most
seeds: objects of 5 to 10 cells a side, a faint ambient sound, no hub words. With smaller objects (4 cells),
a louder ambient sound or hub words it fails on a sizeable share of seeds (an ambient word that resembles the
scene wins the closest-factor race; speckles left by the random logit initialisation swamp a small object),
which is also how TACO fails on real data.

``PlantedSpec.paper()`` has the paper's shapes (D_I = D_A = 768, D_P = 1024, J = 527);
``PlantedSpec.small()`` keeps the real token counts and token dimensions but shrinks the CLAP space and the
bank (D_P = 256, J = 64) so that tests running the 1800-step paper profile stay fast.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from taco_ros.core.conmf import AnchorBank

__all__ = [
    'GRID',
    'PlantedConcepts',
    'PlantedProblem',
    'PlantedSpec',
    'ProjectionLike',
    'activation_iou',
    'make_drifting_sequence',
    'make_planted_bank',
    'make_planted_problem',
]

GRID = 24
N_AUDIO = 64
N_FRAMES = 32
_BASE_WORDS = [
    'Dog', 'Cat', 'Car', 'Guitar', 'Piano', 'Baby cry, infant cry', 'Bird', 'Water', 'Engine', 'Speech',
    'Drum', 'Violin, fiddle', 'Helicopter', 'Train', 'Horse', 'Cattle, bovinae', 'Chicken, rooster', 'Sheep',
    'Motorcycle', 'Bicycle', 'Telephone', 'Door', 'Clock', 'Vacuum cleaner', 'Typing', 'Saxophone', 'Trumpet',
    'Lawn mower', 'Chainsaw', 'Boat, Water vehicle', 'Fire', 'Wind', 'Rain', 'Frog', 'Duck', 'Goat', 'Pig',
    'Accordion', 'Harp', 'Flute', 'Cello', 'Ukulele', 'Bell', 'Siren', 'Truck', 'Bus', 'Airplane', 'Owl',
]
_AMBIENT_WORDS = ('Wind', 'Rain', 'Water', 'Engine')


@dataclass(frozen=True)
class PlantedSpec:
    """Shapes and difficulty of planted problems.

    Attributes:
        n_words: J, the bank size (527 AudioSet names in TACO).
        image_dim, audio_dim, projection_dim: D_I, D_A, D_P (768, 768, 1024 in TACO).
        n_objects: rectangular objects over the background (distinct concepts).
        min_side, max_side: range of the objects' heights and widths, in cells of the 24×24 grid.
        image_noise: per-token noise norm relative to a unit-norm image prototype.
        audio_noise: per-coordinate noise relative to a unit-variance audio prototype.
        token_norm: norm of every image token before the clamp.
        image_cone: weight of the shared image direction in the prototypes (how alike all image tokens are).
        ambient: amplitude of the ambient sound under the sounding concept.
        clap_noise: relative perturbation of the CLAP text vectors away from the projected audio prototypes.
        audio_logit_scale: λ, the CLAP logit multiplier.
        bank_seed: seed of the bank and of the concept prototypes.
    """

    n_words: int = 527
    image_dim: int = 768
    audio_dim: int = 768
    projection_dim: int = 1024
    n_objects: int = 3
    min_side: int = 5
    max_side: int = 10
    image_noise: float = 0.5
    audio_noise: float = 0.8
    token_norm: float = 1.5
    image_cone: float = 0.8
    ambient: float = 0.2
    clap_noise: float = 0.25
    audio_logit_scale: float = 30.0
    bank_seed: int = 0

    @classmethod
    def paper(cls, **overrides: object) -> PlantedSpec:
        """TACO's shapes: 576×768 image tokens, 64×768 audio tokens, D_P = 1024, J = 527."""
        return replace(cls(), **overrides)

    @classmethod
    def small(cls, **overrides: object) -> PlantedSpec:
        """Real token counts and dimensions; smaller CLAP space and bank (D_P = 256, J = 64)."""
        return replace(cls(projection_dim=256, n_words=64), **overrides)


class ProjectionLike(nn.Module):
    """The layer structure of msclap's CLAP ``Projection`` (D_A→D_P), with random weights.

    ``layer_norm(e + linear2(gelu(e)))`` with ``e = linear1(x)`` (no biases in the linear maps).
    """

    def __init__(self, d_in: int, d_out: int, generator: torch.Generator) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)
        with torch.no_grad():
            self.linear1.weight.normal_(0.0, 1.0 / math.sqrt(d_in), generator=generator)
            self.linear2.weight.normal_(0.0, 1.0 / math.sqrt(d_out), generator=generator)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        embedded = self.linear1(x)
        return self.layer_norm(embedded + self.linear2(nn.functional.gelu(embedded)))


@dataclass
class PlantedConcepts:
    """The latent vectors of every concept (row j = word j of the bank)."""

    image_prototypes: Tensor  # [J, D_I], unit norm
    audio_prototypes: Tensor  # [J, D_A]


@dataclass
class PlantedProblem:
    """One window: raw tokens, the anchor bank, and the known answer."""

    x_image: Tensor  # [576, D_I], row-major over the 24×24 grid
    x_audio: Tensor  # [64, D_A]
    bank: AnchorBank
    mask: Tensor  # [24, 24] bool, the sounding object's cells (all False for a negative)
    sounding_word: str | None  # the concept heard; None when silent
    visible_words: list[str]  # the concepts in view, background first
    ambient_word: str
    negative: bool  # True when the heard concept is not in view (or nothing is heard)
    # (row, col, height, width) of each object, in grid cells
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _orthogonal_to(x: Tensor, basis: Tensor) -> Tensor:
    """x minus its projection on the span of the orthonormal rows of ``basis``."""
    return x - (x @ basis.T) @ basis


def _layer_norm(x: Tensor) -> Tensor:
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True, unbiased=False)


def _words(n_words: int) -> list[str]:
    words = list(_BASE_WORDS[:n_words])
    return words + [f'Concept {i}' for i in range(len(words), n_words)]


@functools.lru_cache(maxsize=8)
def make_planted_bank(spec: PlantedSpec) -> tuple[AnchorBank, PlantedConcepts]:
    """The anchor bank of ``spec.n_words`` concepts and their latent prototypes (cached per spec)."""
    if spec.n_words < 8:
        raise ValueError('make_planted_bank needs at least 8 words (background, objects, ambient, ...)')
    gen = torch.Generator().manual_seed(10_000 + spec.bank_seed)
    dim = spec.image_dim
    ones = _unit(torch.ones(dim))
    text_cone = _unit(_orthogonal_to(torch.randn(dim, generator=gen), ones.unsqueeze(0)))
    other = _unit(_orthogonal_to(torch.randn(dim, generator=gen), torch.stack([ones, text_cone])))
    image_axis = 0.3 * text_cone + math.sqrt(1 - 0.09) * other  # the modality gap: cos(m_V, m_T) = 0.3
    shared = torch.stack([ones, text_cone, other])
    concept, look, wobble = (_unit(_orthogonal_to(torch.randn(spec.n_words, dim, generator=gen), shared))
                             for _ in range(3))
    text = 0.75 * text_cone + 0.66 * concept + 0.1 * wobble
    image_prototypes = _unit(spec.image_cone * image_axis + 0.5 * concept + 0.65 * look)

    audio_shared = torch.randn(spec.audio_dim, generator=gen)
    audio_prototypes = _layer_norm(
        0.5 * audio_shared + torch.randn(spec.n_words, spec.audio_dim, generator=gen))
    projection = ProjectionLike(spec.audio_dim, spec.projection_dim, gen)
    with torch.no_grad():
        clap_text = projection(audio_prototypes)
        perturbation = _unit(torch.randn(spec.n_words, spec.projection_dim, generator=gen))
        clap_text = clap_text + spec.clap_noise * clap_text.norm(dim=-1, keepdim=True) * perturbation
    bank = AnchorBank(
        words=_words(spec.n_words),
        image=2.0 * text,  # CLIP text features are not unit-norm before the cosine
        audio=clap_text,
        audio_projection=projection,
        audio_logit_scale=spec.audio_logit_scale,
    )
    return bank, PlantedConcepts(image_prototypes, audio_prototypes)


def _place_boxes(gen: torch.Generator, spec: PlantedSpec) -> list[tuple[int, int, int, int]]:
    """Non-overlapping rectangles (row, col, height, width), one free cell between them."""
    boxes: list[tuple[int, int, int, int]] = []
    occupied = torch.zeros(GRID, GRID, dtype=torch.bool)
    while len(boxes) < spec.n_objects:
        for _ in range(1000):
            h, w = (int(v) for v in torch.randint(spec.min_side, spec.max_side + 1, (2,), generator=gen))
            r = int(torch.randint(0, GRID - h + 1, (1,), generator=gen))
            c = int(torch.randint(0, GRID - w + 1, (1,), generator=gen))
            if not occupied[max(r - 1, 0):r + h + 1, max(c - 1, 0):c + w + 1].any():
                occupied[r:r + h, c:c + w] = True
                boxes.append((r, c, h, w))
                break
        else:  # crowded: start the layout again
            boxes, occupied = [], torch.zeros(GRID, GRID, dtype=torch.bool)
    return boxes


@dataclass
class _Scene:
    background: int
    objects: list[int]  # concept index per box
    boxes: list[tuple[int, int, int, int]]
    sounding: int | None
    ambient: int
    off_screen: int  # a concept that is neither visible nor ambient
    active_frames: Tensor  # [32] bool


def _active_frames(gen: torch.Generator) -> Tensor:
    start = int(torch.randint(0, 10, (1,), generator=gen))
    length = int(torch.randint(20, N_FRAMES - start + 1, (1,), generator=gen))
    active = torch.zeros(N_FRAMES, dtype=torch.bool)
    active[start:start + length] = True
    return active


def _draw_scene(gen: torch.Generator, spec: PlantedSpec, words: list[str], negative: bool,
                silent: bool) -> _Scene:
    ambient_choices = [words.index(w) for w in _AMBIENT_WORDS]
    ambient = ambient_choices[int(torch.randint(len(ambient_choices), (1,), generator=gen))]
    pool = [j for j in torch.randperm(spec.n_words, generator=gen).tolist() if j != ambient]
    background, objects, off_screen = pool[0], pool[1:1 + spec.n_objects], pool[1 + spec.n_objects]
    if silent:
        sounding = None
    elif negative:
        sounding = off_screen
    else:
        sounding = objects[int(torch.randint(spec.n_objects, (1,), generator=gen))]
    boxes = _place_boxes(gen, spec)
    return _Scene(background, objects, boxes, sounding, ambient, off_screen, _active_frames(gen))


def _render_image(gen: torch.Generator, scene: _Scene, spec: PlantedSpec,
                  concepts: PlantedConcepts) -> tuple[Tensor, Tensor]:
    labels = torch.full((GRID, GRID), scene.background, dtype=torch.long)
    mask = torch.zeros(GRID, GRID, dtype=torch.bool)
    for concept, (r, c, h, w) in zip(scene.objects, scene.boxes, strict=True):
        labels[r:r + h, c:c + w] = concept
        if concept == scene.sounding:
            mask[r:r + h, c:c + w] = True
    dim = spec.image_dim
    tokens = concepts.image_prototypes[labels.flatten()]
    tokens = tokens + spec.image_noise * torch.randn(GRID * GRID, dim, generator=gen) / math.sqrt(dim)
    return spec.token_norm * _unit(tokens), mask


def _render_audio(gen: torch.Generator, scene: _Scene, spec: PlantedSpec,
                  concepts: PlantedConcepts) -> Tensor:
    ambient = concepts.audio_prototypes[scene.ambient]
    frames = torch.zeros(N_FRAMES, spec.audio_dim)
    if scene.sounding is None:
        frames += 1.5 * spec.ambient * ambient
    else:
        frames += spec.ambient * ambient
        frames[scene.active_frames] += concepts.audio_prototypes[scene.sounding]
    tokens = frames.repeat(N_AUDIO // N_FRAMES, 1)
    tokens = tokens + spec.audio_noise * torch.randn(N_AUDIO, spec.audio_dim, generator=gen)
    return _layer_norm(tokens)


def _problem_from_scene(gen: torch.Generator, scene: _Scene, spec: PlantedSpec) -> PlantedProblem:
    bank, concepts = make_planted_bank(spec)
    x_image, mask = _render_image(gen, scene, spec, concepts)
    x_audio = _render_audio(gen, scene, spec, concepts)
    return PlantedProblem(
        x_image=x_image,
        x_audio=x_audio,
        bank=bank,
        mask=mask,
        sounding_word=None if scene.sounding is None else bank.words[scene.sounding],
        visible_words=[bank.words[j] for j in [scene.background, *scene.objects]],
        ambient_word=bank.words[scene.ambient],
        negative=scene.sounding is None or scene.sounding not in scene.objects,
        boxes=list(scene.boxes),
    )


def make_planted_problem(
    seed: int,
    spec: PlantedSpec | None = None,
    *,
    negative: bool = False,
    silent: bool = False,
) -> PlantedProblem:
    """One planted window, deterministic in ``seed`` and ``spec`` (default: ``PlantedSpec.paper()``).

    ``negative``: the heard concept is not in view; ``silent``: only a faint ambient sound (also a
    negative). The positive and negative problems of one seed show the same concepts.
    """
    spec = spec or PlantedSpec.paper()
    bank, _ = make_planted_bank(spec)
    gen = torch.Generator().manual_seed(seed)
    scene = _draw_scene(gen, spec, bank.words, negative or silent, silent)
    return _problem_from_scene(gen, scene, spec)


def _drift(gen: torch.Generator, boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Move each box by one cell in a random direction, staying inside the grid and off the other boxes."""
    moved = list(boxes)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    for i, (r, c, h, w) in enumerate(boxes):
        for index in torch.randperm(4, generator=gen).tolist():
            dr, dc = steps[index]
            nr, nc = r + dr, c + dc
            if not (0 <= nr <= GRID - h and 0 <= nc <= GRID - w):
                continue
            others = [b for j, b in enumerate(moved) if j != i]
            if all(nr + h < top or top + height < nr or nc + w < left or left + width < nc
                   for top, left, height, width in others):
                moved[i] = (nr, nc, h, w)
                break
    return moved


def make_drifting_sequence(
    seed: int,
    n_windows: int,
    spec: PlantedSpec | None = None,
    *,
    negative: bool = False,
    scene_change_at: int | None = None,
    sound_change_at: int | None = None,
) -> list[PlantedProblem]:
    """Consecutive windows of one scene whose objects move by one cell per window, noise redrawn every window.

    ``scene_change_at=i``: window i onward shows a freshly drawn scene (concepts, layout, sound), the case
    where a warm start would mislead. ``sound_change_at=i``: from window i the same scene keeps drifting but
    another of its objects is heard (or, for a negative sequence, another off-screen concept).
    """
    spec = spec or PlantedSpec.paper()
    bank, _ = make_planted_bank(spec)
    gen = torch.Generator().manual_seed(seed)
    scene = _draw_scene(gen, spec, bank.words, negative, False)
    windows = []
    for index in range(n_windows):
        if index == scene_change_at:
            scene = _draw_scene(gen, spec, bank.words, negative, False)
        elif index > 0:
            scene.boxes = _drift(gen, scene.boxes)
        if index == sound_change_at:
            scene = _switch_sound(gen, scene, negative, bank.words)
        windows.append(_problem_from_scene(gen, scene, spec))
    return windows


def _switch_sound(gen: torch.Generator, scene: _Scene, negative: bool, words: list[str]) -> _Scene:
    if negative:
        taken = {scene.background, scene.ambient, scene.sounding, *scene.objects}
        candidates = [j for j in range(len(words)) if j not in taken]
    else:
        candidates = [j for j in scene.objects if j != scene.sounding]
    sounding = candidates[int(torch.randint(len(candidates), (1,), generator=gen))]
    return replace(scene, sounding=sounding, active_frames=_active_frames(gen))


def activation_iou(image_activations: Tensor, k: int, mask: Tensor, threshold: float = 0.5) -> float:
    """IoU of the min-max normalised map U_I[:, k] (24×24) thresholded at ``threshold`` against ``mask``.

    An empty ground truth with an empty prediction counts as 1 (nothing to find, nothing found).
    """
    values = image_activations[:, k].detach().float().cpu().view(GRID, GRID)
    span = values.max() - values.min()
    normalised = (values - values.min()) / span if span > 0 else torch.zeros_like(values)
    predicted = normalised > threshold
    union = (predicted | mask).sum()
    if union == 0:
        return 1.0
    return float((predicted & mask).sum() / union)
