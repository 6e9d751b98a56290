"""Planted co-NMF problems with several simultaneous sound sources, silent distractors and negatives.

A multi-source extension of ``planted.py``: the same anchor bank and concept prototypes
(``make_planted_bank``), the same 24×24 image grid of rectangular objects over a background concept and the
same 64 audio tokens (2 bands × 32 frames) over a faint ambient concept. What changes:

* **Sources.** ``n_sources`` visible objects sound at once. Each plays on its own run of frames (drawn as in
  ``planted.py``: a start in the first 10 frames, 20 frames or more), so the runs overlap partly; every
  sounding frame holds the sum of the prototypes playing in it before the per-token normalisation.
* **Distractors.** ``n_distractors`` further objects are visible but silent.
* **Off-screen sources.** ``n_off_screen`` concepts that are not in view sound too. With ``n_sources = 0``
  and ``n_off_screen >= 1`` the window is a negative (a sound from outside the camera's view); mixed with
  visible sources it checks that only the visible ones are reported.
* **Silence.** ``n_sources = n_off_screen = 0``: nothing but the ambient sound, fainter (as ``silent=True``
  in ``planted.py``).

Objects are smaller than in ``planted.py`` by default (5 to 8 cells a side) so that up to five fit on the grid
with one free cell between them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from planted import GRID, N_AUDIO, PlantedSpec, activation_iou, make_planted_bank
from torch import Tensor

from taco_ros.core.conmf import AnchorBank

__all__ = [
    'MultiProblem',
    'MultiScene',
    'MultiScore',
    'activation_iou',
    'make_multi_problem',
    'make_multi_sequence',
    'object_iou',
    'score_objects',
]

BANDS = 2  # audio tokens are 2 frequency bands × 32 frames, band-major (as planted.py)
N_FRAMES = N_AUDIO // BANDS
_AMBIENT_WORDS = ('Wind', 'Rain', 'Water', 'Engine')


@dataclass(frozen=True)
class MultiScene:
    """What a multi-source window shows and plays (counts of each kind of object or sound)."""

    n_sources: int = 2
    n_distractors: int = 1
    n_off_screen: int = 0
    min_side: int = 5
    max_side: int = 8

    @property
    def n_objects(self) -> int:
        return self.n_sources + self.n_distractors

    @property
    def negative(self) -> bool:
        return self.n_sources == 0

    @property
    def silent(self) -> bool:
        return self.n_sources == 0 and self.n_off_screen == 0


@dataclass
class MultiProblem:
    """One window: raw tokens, the bank, and the known answer per visible source."""

    x_image: Tensor  # [576, D_I], row-major over the 24×24 grid
    x_audio: Tensor  # [64, D_A]
    bank: AnchorBank
    source_words: list[str]  # visible sounding concepts
    source_masks: list[Tensor]  # [24, 24] bool per visible source, same order
    off_screen_words: list[str]  # heard but not in view
    distractor_words: list[str]  # in view but silent
    background_word: str
    ambient_word: str
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # (row, col, h, w) per object

    @property
    def negative(self) -> bool:
        return not self.source_words

    def mask_of(self, word: str) -> Tensor:
        return self.source_masks[self.source_words.index(word)]


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _layer_norm(x: Tensor) -> Tensor:
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True, unbiased=False)


def _place_boxes(gen: torch.Generator, scene: MultiScene) -> list[tuple[int, int, int, int]]:
    """Non-overlapping rectangles (row, col, height, width) with one free cell between them."""
    for _ in range(1000):
        boxes: list[tuple[int, int, int, int]] = []
        occupied = torch.zeros(GRID + 2, GRID + 2, dtype=torch.bool)  # one cell of margin each side
        for _ in range(200 * max(scene.n_objects, 1)):
            if len(boxes) == scene.n_objects:
                return boxes
            h, w = (int(v) for v in torch.randint(scene.min_side, scene.max_side + 1, (2,), generator=gen))
            r = int(torch.randint(0, GRID - h + 1, (1,), generator=gen))
            c = int(torch.randint(0, GRID - w + 1, (1,), generator=gen))
            if not occupied[r:r + h + 2, c:c + w + 2].any():
                occupied[r + 1:r + h + 1, c + 1:c + w + 1] = True
                boxes.append((r, c, h, w))
        if len(boxes) == scene.n_objects:
            return boxes
    raise ValueError(f'cannot place {scene.n_objects} objects of {scene.min_side}-{scene.max_side} cells '
                     f'on a {GRID}×{GRID} grid')


def _active_frames(gen: torch.Generator) -> Tensor:
    start = int(torch.randint(0, 10, (1,), generator=gen))
    length = int(torch.randint(20, N_FRAMES - start + 1, (1,), generator=gen))
    active = torch.zeros(N_FRAMES, dtype=torch.bool)
    active[start:start + length] = True
    return active


@dataclass
class _Layout:
    """What a scene shows and which concepts can sound (concept indices into the bank)."""

    background: int
    objects: list[int]
    boxes: list[tuple[int, int, int, int]]
    sources: list[int]
    off_screen: list[int]
    ambient: int


def _draw_layout(gen: torch.Generator, scene: MultiScene, words: list[str]) -> _Layout:
    if min(scene.n_sources, scene.n_distractors, scene.n_off_screen) < 0:
        raise ValueError(f'MultiScene counts must be >= 0, got {scene}')
    ambient_choices = [words.index(w) for w in _AMBIENT_WORDS]
    ambient = ambient_choices[int(torch.randint(len(ambient_choices), (1,), generator=gen))]
    pool = [j for j in torch.randperm(len(words), generator=gen).tolist() if j != ambient]
    needed = 1 + scene.n_objects + scene.n_off_screen
    if needed > len(pool):
        raise ValueError(f'the bank has {len(words)} words, the scene needs {needed + 1}')
    objects = pool[1:1 + scene.n_objects]
    return _Layout(background=pool[0], objects=objects, boxes=_place_boxes(gen, scene),
                   sources=objects[:scene.n_sources], off_screen=pool[1 + scene.n_objects:needed],
                   ambient=ambient)


def _render(gen: torch.Generator, layout: _Layout, heard: list[int], spec: PlantedSpec) -> MultiProblem:
    """Tokens of one window of ``layout`` in which the concepts ``heard`` sound (visible or not)."""
    bank, concepts = make_planted_bank(spec)
    words = bank.words
    labels = torch.full((GRID, GRID), layout.background, dtype=torch.long)
    masks = {}
    for concept, (r, c, h, w) in zip(layout.objects, layout.boxes, strict=True):
        labels[r:r + h, c:c + w] = concept
        masks[concept] = torch.zeros(GRID, GRID, dtype=torch.bool)
        masks[concept][r:r + h, c:c + w] = True
    dim = spec.image_dim
    tokens = concepts.image_prototypes[labels.flatten()]
    tokens = tokens + spec.image_noise * torch.randn(GRID * GRID, dim, generator=gen) / math.sqrt(dim)
    x_image = spec.token_norm * _unit(tokens)

    frames = torch.zeros(N_FRAMES, spec.audio_dim)
    frames += (1.0 if heard else 1.5) * spec.ambient * concepts.audio_prototypes[layout.ambient]
    for concept in heard:
        frames[_active_frames(gen)] += concepts.audio_prototypes[concept]
    x_audio = frames.repeat(BANDS, 1)
    x_audio = _layer_norm(x_audio + spec.audio_noise * torch.randn(N_AUDIO, spec.audio_dim, generator=gen))

    visible_sources = [j for j in layout.objects if j in heard]
    return MultiProblem(
        x_image=x_image, x_audio=x_audio, bank=bank,
        source_words=[words[j] for j in visible_sources], source_masks=[masks[j] for j in visible_sources],
        off_screen_words=[words[j] for j in heard if j not in layout.objects],
        distractor_words=[words[j] for j in layout.objects if j not in heard],
        background_word=words[layout.background], ambient_word=words[layout.ambient],
        boxes={words[j]: box for j, box in zip(layout.objects, layout.boxes, strict=True)},
    )


def make_multi_problem(seed: int, scene: MultiScene | None = None,
                       spec: PlantedSpec | None = None) -> MultiProblem:
    """One window of ``scene`` (default: 2 sources, 1 distractor), deterministic in ``seed``.

    ``spec`` gives the shapes, noise levels and bank (default ``PlantedSpec.small()``); its ``n_objects``,
    ``min_side`` and ``max_side`` are ignored in favour of ``scene``'s.
    """
    scene = scene or MultiScene()
    spec = spec or PlantedSpec.small()
    bank, _ = make_planted_bank(spec)
    gen = torch.Generator().manual_seed(seed)
    layout = _draw_layout(gen, scene, bank.words)
    return _render(gen, layout, layout.sources + layout.off_screen, spec)


def make_multi_sequence(seed: int, n_windows: int, scene: MultiScene | None = None,
                        spec: PlantedSpec | None = None,
                        playing: Sequence[Sequence[int]] | None = None) -> list[MultiProblem]:
    """Consecutive windows of one scene whose objects drift by one cell per window (noise and sound runs
    redrawn every window).

    ``playing[t]``: the positions (0 .. n_sources − 1) of the scene's sources that sound in window t; the
    others are silent there (default: all of them in every window). Off-screen sounds play throughout.
    """
    scene = scene or MultiScene()
    spec = spec or PlantedSpec.small()
    if playing is not None and len(playing) != n_windows:
        raise ValueError(f'playing has {len(playing)} entries for {n_windows} windows')
    bank, _ = make_planted_bank(spec)
    gen = torch.Generator().manual_seed(seed)
    layout = _draw_layout(gen, scene, bank.words)
    windows = []
    for t in range(n_windows):
        if t > 0:
            layout.boxes = _drift(gen, layout.boxes)
        positions = range(scene.n_sources) if playing is None else playing[t]
        heard = [layout.sources[i] for i in positions] + layout.off_screen
        windows.append(_render(gen, layout, heard, spec))
    return windows


def _drift(gen: torch.Generator, boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Each box moved by one cell in a random direction, inside the grid and one free cell off the others."""
    moved = list(boxes)
    for i, (r, c, h, w) in enumerate(boxes):
        for index in torch.randperm(4, generator=gen).tolist():
            nr, nc = r + (-1, 1, 0, 0)[index], c + (0, 0, -1, 1)[index]
            inside = 0 <= nr <= GRID - h and 0 <= nc <= GRID - w
            if inside and all(_apart((nr, nc, h, w), b) for j, b in enumerate(moved) if j != i):
                moved[i] = (nr, nc, h, w)
                break
    return moved


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether two boxes leave at least one free cell between them."""
    return a[0] + a[2] < b[0] or b[0] + b[2] < a[0] or a[1] + a[3] < b[1] or b[1] + b[3] < a[1]


# ----------------------------------------------------------------------------------------------------
# Scoring reported objects against the known answer
# ----------------------------------------------------------------------------------------------------
@dataclass
class MultiScore:
    """How the objects reported for one window compare with its visible sources.

    sources: visible sources; objects: objects reported; found: sources named by an object (each at most
    once); ious: activation IoU of each found source's object; wrong: objects naming no visible source, or
    naming one already found (a duplicate).
    """

    sources: int
    objects: int
    found: int
    wrong: int
    ious: list[float]


def object_iou(image_activations: Tensor, factor_indices: Sequence[int], mask: Tensor) -> float:
    """activation_iou of an object's map: the element-wise max of its factors' activations."""
    column = image_activations[:, list(factor_indices)].max(dim=1, keepdim=True).values
    return activation_iou(column, 0, mask)


def score_objects(problem: MultiProblem, objects: Sequence[object], image_activations: Tensor) -> MultiScore:
    """Score objects with ``label``, ``factor_index`` and ``merged`` (core.sounding.SoundingFactor)."""
    found: dict[str, float] = {}
    wrong = 0
    for obj in objects:
        if obj.label in problem.source_words and obj.label not in found:
            factors = [obj.factor_index, *obj.merged]
            found[obj.label] = object_iou(image_activations, factors, problem.mask_of(obj.label))
        else:
            wrong += 1
    return MultiScore(sources=len(problem.source_words), objects=len(objects), found=len(found), wrong=wrong,
                      ious=list(found.values()))
