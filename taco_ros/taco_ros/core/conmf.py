"""Semantic audio-visual co-factorisation (TACO's ``conmf_txt``), warm-started for a robot's stream.

Notation (Malard et al., arXiv 2412.01488; method.md §4). For one window:

* X_I ∈ R^{N_I×D_I}: image tokens (576×768, CLIP joint space); X_A ∈ R^{N_A×D_A}: audio tokens (64×768,
  HTS-AT space). Both are clamped at 0 before use.
* W_I ∈ R^{N_I×K}, W_A ∈ R^{N_A×K}: unconstrained logits; the activations are U = sigmoid(W) ∈ (0, 1).
* V_I ∈ R^{K×D_I}, V_A ∈ R^{K×D_A}: factors, projected onto V ≥ 0 after every step.
* Anchor bank of J words: CLIP text vectors T_I ∈ R^{J×D_I}, CLAP text vectors T_A ∈ R^{J×D_P}, the CLAP
  audio projection Proj: R^{D_A} → R^{D_P} and the CLAP logit multiplier λ = exp(logit_scale).

Objective, summed over the windows of a batch::

    L = beta_1 ‖X_I − U_I V_I‖_F + beta_2 ‖X_A − U_A V_A‖_F          (unsquared Frobenius norms)
        + beta_p min_k CE_I[k] + beta_p_audio min_k CE_A[k]          ("closest factor" penalty)
        + temporal term

    c_k^I = (1/N_I) Σ_n U_I[n,k] X_I[n,:]      c_k^A = (1/N_A) Σ_n U_A[n,k] X_A[n,:]   (components)
    s_k^I = cos(c_k^I, T_I)  (no temperature)      s_k^A = λ cos(Proj(c_k^A), T_A)
    CE_I[k] = −Σ_j softmax(s_k^A)_j log softmax(s_k^I)_j
    CE_A[k] = −Σ_j softmax(s_k^I)_j log softmax(s_k^A)_j

The soft targets are *not* detached (gradients flow through both softmaxes). k* = argmin_k CE_I[k] is the
factor shared by sound and image. TACO's weights: beta_1 = beta_2 = 1, beta_p = 125, beta_p_audio = 0, K = 8.

Temporal terms (paper eq. 7). In a batch of consecutive frames of one video (``solve_batch(temporal=True)``,
the S4 benchmark): the chain penalty P = −beta_t Σ_t [cos(V_I[t,k*_t], V_I[t+1,k*_{t+1}]) + cos(V_A[t,k*_t],
V_A[t+1,k*_{t+1}])]. TACO's ``conmf_txt`` adds this one scalar to *each* of the B per-frame errors before it
sums the batch, so the batch objective holds B·P: the effective weight is B·beta_t (5 for a 5-frame S4 video),
not beta_t. This solver books it the same way (every window's objective carries P). In streaming
(``CoNMFConfig.streaming()``) the term is made causal: −beta_t [cos(V_I[k*], V̄_I) + cos(V_A[k*], V̄_A)], with V̄
the previous window's sounding factors held fixed. The paper profile solves a single window exactly as TACO
does, without any pull toward the previous window. Inside either term, k* is the argmin of the current step's
CE_I (not differentiated).

Reference solver (``CoNMFConfig.paper()``): V from seeded k-means (8 restarts), W ~ N(0, 1), plain gradient
descent p ← p − lr ∇p with lr = 0.25 halved every 500 steps, 1800 steps. Activations, CE profile and k* come
from the last forward pass; the factors are those after the last update (TACO's convention).

Streaming solver (``CoNMFConfig.streaming()``): warm start from the previous window (factors, and logits
refitted to the new tokens), Adam with early stopping on the relative change of L, a cold restart when the
warm start's reconstruction error says the scene changed, and the causal temporal term.

Decision and readout. confidence = median_k CE_I[k] − min_k CE_I[k] (nats: a clear minimum versus a flat
profile); a window is ``sounding`` when confidence ≥ ``config.sounding_threshold`` (chosen on data, see
``CoNMFConfig``), so silence or an off-screen source yields no object rather than the least-bad factor. The
label readout is the top-k words of cos(V_I[k*], T_I).

Computation. ‖X − UV‖_F² is expanded as ‖X‖² − 2⟨UᵀX, V⟩ + ⟨UᵀU, VVᵀ⟩, so the N×D residual is never formed and
UᵀX is shared with the components. The gradient is written out by hand (``_value_and_grad``; a test checks it
against autograd of a direct transcription); only the bank's audio projection is differentiated by autograd.
When that projection is msclap's (a bias-free first linear map W1), W1 is applied once per window to the
tokens instead of twice per step to the components (``AnchorBank.split_projection``).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from taco_ros.core.kmeans import kmeans_centres

__all__ = [
    'AnchorBank',
    'CoNMFConfig',
    'CoNMFResult',
    'calibrate_sounding_threshold',
    'factor_labels',
    'solve',
    'solve_batch',
    'sounding_confidence',
]

OPTIMIZERS = ('gd', 'nesterov', 'adam')
INIT_MODES = ('kmeans', 'kmeans++')
WARM_LOGITS = ('previous', 'refit')
_EPS = 1e-8  # norm floor of the temporal cosines (as torch.nn.functional.cosine_similarity)
_SCENE_CHANGE = 'scene change'


# ----------------------------------------------------------------------------------------------------
# Anchor bank
# ----------------------------------------------------------------------------------------------------
@dataclass
class AnchorBank:
    """The J anchor words and their vectors in both joint spaces. Treat it as immutable (it caches).

    Attributes:
        words: the J words (e.g. the 527 AudioSet names).
        image: [J, D_I] CLIP text vectors of "A photo of a {word}", unnormalised.
        audio: [J, D_P] CLAP text vectors of "This is a sound of {word}", unnormalised.
        audio_projection: CLAP's audio projection D_A → D_P (msclap ``Projection``), applied to [M, D_A].
            An ``nn.Module`` is put in eval mode here (msclap's has a dropout layer); one built under
            ``torch.inference_mode`` is replaced by a copy, since the solver differentiates through it.
        audio_logit_scale: λ = exp(CLAP logit_scale), the multiplier of the audio-side cosines.
    """

    words: list[str]
    image: Tensor
    audio: Tensor
    audio_projection: Callable[[Tensor], Tensor]
    audio_logit_scale: float
    _unit_cache: tuple[Tensor, Tensor] | None = field(default=None, init=False, repr=False, compare=False)
    _checked_audio_dim: int | None = field(default=None, init=False, repr=False, compare=False)
    _split_cache: tuple[Tensor, Callable[[Tensor], Tensor]] | bool | None = field(
        default=None, init=False, repr=False, compare=False)
    _moved: dict[str, AnchorBank] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.words = list(self.words)
        if len(self.words) == 0:
            raise ValueError('AnchorBank: the word list is empty (need at least one anchor word)')
        for name in ('image', 'audio'):
            _check_bank_matrix(name, getattr(self, name), len(self.words))
        if not callable(self.audio_projection):
            raise ValueError('AnchorBank.audio_projection must be callable (the CLAP audio projection)')
        scale = float(self.audio_logit_scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f'AnchorBank.audio_logit_scale must be positive and finite, got {scale}')
        self.audio_logit_scale = scale
        projection = self.audio_projection
        if isinstance(projection, nn.Module):
            if any(t.is_inference() for t in (*projection.parameters(), *projection.buffers())):
                # Built under torch.inference_mode: autograd cannot go through it; use a normal-tensor copy.
                with torch.inference_mode(False):
                    self.audio_projection = projection = copy.deepcopy(projection)
            projection.eval()

    @property
    def device(self) -> torch.device:
        return self.image.device

    def to(self, device: torch.device | str) -> AnchorBank:
        """This bank on ``device``: self when already there, else a copy made once and kept (a projection
        module is copied, not moved)."""
        device = torch.device(device)
        if _same_device(self.image.device, device) and _module_on(self.audio_projection, device):
            return self
        if str(device) not in self._moved:
            projection = self.audio_projection
            if isinstance(projection, nn.Module) and not _module_on(projection, device):
                projection = copy.deepcopy(projection).to(device)
            self._moved[str(device)] = AnchorBank(list(self.words), self.image.to(device),
                                                  self.audio.to(device), projection, self.audio_logit_scale)
        return self._moved[str(device)]

    def subset(self, words: Sequence[str]) -> AnchorBank:
        """A bank with only ``words``, in that order; unknown words raise ValueError."""
        index = {word: i for i, word in enumerate(self.words)}
        missing = [word for word in words if word not in index]
        if missing:
            raise ValueError(f'AnchorBank.subset: words not in the bank: {missing}')
        rows = torch.tensor([index[word] for word in words], dtype=torch.long, device=self.image.device)
        return AnchorBank(list(words), self.image[rows], self.audio[rows], self.audio_projection,
                          self.audio_logit_scale)

    def unit_vectors(self) -> tuple[Tensor, Tensor]:
        """(T_I / ‖T_I‖, T_A / ‖T_A‖) in float32, computed once."""
        if self._unit_cache is None:
            image, audio = self.image.float(), self.audio.float()
            self._unit_cache = (image / image.norm(dim=1, keepdim=True),
                                audio / audio.norm(dim=1, keepdim=True))
        return self._unit_cache

    def split_projection(self) -> tuple[Tensor, Callable[[Tensor], Tensor]] | None:
        """(W1, rest) with Proj(x) = rest(x W1ᵀ) when Proj is shaped like msclap's ``Projection``, else None.

        msclap's projection is ``layer_norm(e + linear2(gelu(e)))`` with e = linear1(x), linear1 bias-free.
        The audio components are linear in the tokens, so W1 c_k^A = U_A[:, k]ᵀ (X_A W1ᵀ) / N_A: the solver
        applies W1 to the tokens once per window instead of twice per step. The split is only used when it
        reproduces the module's output on a random probe.
        """
        if self._split_cache is None:
            self._split_cache = _split_msclap_projection(self.audio_projection) or False
        return self._split_cache or None

    def check_audio_dim(self, audio_dim: int) -> None:
        """Raise ValueError unless Proj maps [M, audio_dim] to [M, D_P] (checked once per dimension)."""
        if self._checked_audio_dim == audio_dim:
            return
        probe = torch.zeros(2, audio_dim, device=self.image.device)
        try:
            with torch.no_grad():
                out = self.audio_projection(probe)
        except Exception as exc:
            raise ValueError(f'the audio projection does not accept audio tokens of dimension '
                             f'D_A={audio_dim}: {type(exc).__name__}: {exc}') from exc
        if not isinstance(out, Tensor) or tuple(out.shape) != (2, self.audio.shape[1]):
            raise ValueError(f'the audio projection maps D_A={audio_dim} to {_describe(out)}, but the CLAP '
                             f'bank vectors have D_P={self.audio.shape[1]}')
        self._checked_audio_dim = audio_dim


def _check_bank_matrix(name: str, value: object, n_words: int) -> None:
    if not isinstance(value, Tensor) or value.dim() != 2:
        raise ValueError(f'AnchorBank.{name} must be a 2-D tensor [J, D], got {_describe(value)}')
    if value.shape[0] != n_words:
        raise ValueError(f'AnchorBank.{name} has {value.shape[0]} rows but there are {n_words} words')
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f'AnchorBank.{name} contains NaN or Inf')
    if bool((value.norm(dim=1) == 0).any()):
        raise ValueError(f'AnchorBank.{name} has an all-zero row (its cosine is undefined)')


def _split_msclap_projection(projection: object) -> tuple[Tensor, Callable[[Tensor], Tensor]] | None:
    if not isinstance(projection, nn.Module):
        return None
    first, second, norm = (getattr(projection, name, None) for name in ('linear1', 'linear2', 'layer_norm'))
    if not (isinstance(first, nn.Linear) and first.bias is None and isinstance(second, nn.Linear)
            and isinstance(norm, nn.LayerNorm)):
        return None

    def rest(embedded: Tensor) -> Tensor:
        return norm(embedded + second(nn.functional.gelu(embedded)))

    weight = first.weight.detach()
    generator = torch.Generator(device='cpu').manual_seed(0)
    probe = torch.rand(4, weight.shape[1], generator=generator).to(weight.device, weight.dtype)
    with torch.no_grad():
        expected, split = projection(probe), rest(probe @ weight.T)
    if expected.shape != split.shape or not torch.allclose(expected, split, rtol=1e-4, atol=1e-5):
        return None
    return weight, rest


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f'a tensor of shape {tuple(value.shape)}'
    return type(value).__name__


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == 'cuda':
        index_a = a.index if a.index is not None else torch.cuda.current_device()
        index_b = b.index if b.index is not None else torch.cuda.current_device()
        return index_a == index_b
    return True


def _module_on(projection: object, device: torch.device) -> bool:
    if not isinstance(projection, nn.Module):
        return True
    tensors = list(projection.parameters()) + list(projection.buffers())
    return all(_same_device(t.device, device) for t in tensors)


# ----------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------
@dataclass
class CoNMFConfig:
    """Weights, solver and decision settings. Use ``paper()`` (reference) or ``streaming()`` (robot).

    Objective (names as in the paper and TACO's code):
        K: number of factors per modality (paper: 8).
        beta_1, beta_2: weights of the image / audio reconstruction norms (paper: 1, 1).
        beta_p: weight of the image-side closest-factor CE, min_k CE_I[k] (paper: 125).
        beta_p_audio: weight of the audio-side closest-factor CE, min_k CE_A[k] (TACO's code: 0).
        beta_t: nominal weight of the temporal cosine term (paper: 1; 0 disables it, as the paper does for
            multi-source scenes). In ``solve_batch(temporal=True)`` every one of the B windows carries the
            whole chain penalty, as in TACO's code, so its effective weight in the batch objective is
            B·beta_t (an earlier note of this project said "weight 1": that was wrong).
        causal_temporal: whether ``solve`` given a previous result adds the causal temporal term (a pull of
            the sounding factors toward the previous window's). Streaming only: the paper profile solves
            each window on its own, as TACO does.

    Solver:
        optimizer: 'gd' (plain gradient descent, the reference), 'nesterov' (momentum) or 'adam'.
        lr: initial step size. Adam moves every coordinate by about lr, so its factor steps are scaled by the
            RMS of that modality's clamped tokens (the solver is then invariant to the feature scale).
        lr_decay, lr_decay_every: lr ← lr × lr_decay every lr_decay_every steps (paper: 0.5 every 500).
        momentum: Nesterov momentum. adam_beta1, adam_beta2, adam_eps: Adam's moment settings.
        max_steps: step cap (paper: 1800, always all of them).
        tol: stop early when |ΔL| / |L| < tol for ``patience`` consecutive steps (0 = never).
        cold_tol: the tolerance of cold starts (None = ``tol``). A cold start must find the sound-image
            pairing from scratch and later windows inherit it, so it gets a tighter tolerance.
        min_steps: no early stop before this many steps.
        init: cold-start factors: 'kmeans' (k-means++ seeding + Lloyd, best of kmeans_restarts; the paper)
            or 'kmeans++' (seeding only, one restart).
        seed: seed of the N(0, 1) logits (a CPU generator reseeded per window: same draws on any device and
            in any batch).
        kmeans_seed, kmeans_restarts, kmeans_max_iter, kmeans_tol: k-means settings (TACO: 123, 8, 100, 1e-4).
        warm_start: whether a previous result passed to ``solve`` initialises the unknowns.
        warm_logits: how a warm start sets the logits: 'previous' (the previous window's W) or 'refit' (logits
            of the least-squares activations of the new tokens on the previous factors, clipped to
            [0.02, 0.98]; this follows objects that moved and audio that slid in time).
        cold_restart_ratio: scene-change rule. The warm start is discarded (cold start) when, in either
            modality, it reconstructs the new tokens with a relative error ‖X − UV‖/‖X‖ more than this many
            times the relative error of the previous window's solution. Chosen on planted sequences at paper
            shapes (seeds 0-3, refitted logits): drifting windows 1.00-1.09; a new scene 1.77 (image) and
            1.35-1.46 (audio); a new sound in the same scene 1.33-1.44 (audio) → 1.2.

    Decision:
        sounding_threshold: a result is ``sounding`` when its confidence (``sounding_confidence``, nats) is
            at least this. Chosen on data: the geometric midpoint of the gap between planted positives and
            negatives (an off-screen sound, or only ambient sound) at paper shapes, seeds 100-119, for each
            profile (``bench/bench_conmf.py --calibrate``). Paper profile: positives 0.052-0.165, negatives
            ≤ 0.019 → 0.031. Streaming profile (better converged, deeper minima): positives 0.159-0.226,
            negatives ≤ 0.038 → 0.078. Real CLIP/CLAP features should be re-calibrated
            (``calibrate_sounding_threshold``).
        top_k: number of words in the label readout.
    """

    K: int = 8
    beta_1: float = 1.0
    beta_2: float = 1.0
    beta_p: float = 125.0
    beta_p_audio: float = 0.0
    beta_t: float = 1.0
    optimizer: str = 'gd'
    lr: float = 0.25
    lr_decay: float = 0.5
    lr_decay_every: int = 500
    momentum: float = 0.9
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_steps: int = 1800
    tol: float = 0.0
    cold_tol: float | None = None
    patience: int = 3
    min_steps: int = 0
    init: str = 'kmeans'
    seed: int = 0
    kmeans_seed: int = 123
    kmeans_restarts: int = 8
    kmeans_max_iter: int = 100
    kmeans_tol: float = 1e-4
    warm_start: bool = False
    causal_temporal: bool = False
    warm_logits: str = 'previous'
    cold_restart_ratio: float = 1.2
    sounding_threshold: float = 0.031
    top_k: int = 5

    @classmethod
    def paper(cls, **overrides: object) -> CoNMFConfig:
        """TACO's reference setting: k-means init, plain GD, lr 0.25 halved every 500 steps, 1800 steps; every
        window is solved on its own (no warm start, no pull toward the previous window)."""
        return replace(cls(), **overrides)

    @classmethod
    def streaming(cls, **overrides: object) -> CoNMFConfig:
        """Robot defaults: warm start with refitted logits, Adam with early stopping, causal temporal term."""
        base = cls(optimizer='adam', lr=0.1, lr_decay=1.0, lr_decay_every=1_000_000, max_steps=400,
                   tol=5e-4, cold_tol=1e-4, patience=3, min_steps=5, warm_start=True, causal_temporal=True,
                   warm_logits='refit', sounding_threshold=0.078)
        return replace(base, **overrides)

    def validate(self) -> None:
        """Raise ValueError on a setting the solver cannot run."""
        if int(self.K) != self.K or self.K < 2:
            raise ValueError(f'CoNMFConfig.K must be an integer >= 2 (the penalty takes a min over '
                             f'factors), got {self.K}')
        for name in ('beta_1', 'beta_2', 'beta_p', 'beta_p_audio', 'beta_t', 'tol', 'momentum'):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f'CoNMFConfig.{name} must be finite and >= 0, got {value}')
        if self.cold_tol is not None and not (math.isfinite(self.cold_tol) and self.cold_tol >= 0):
            raise ValueError(f'CoNMFConfig.cold_tol must be None or finite and >= 0, got {self.cold_tol}')
        for name, allowed in (('optimizer', OPTIMIZERS), ('init', INIT_MODES), ('warm_logits', WARM_LOGITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f'CoNMFConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}')
        lr_ok = math.isfinite(self.lr) and self.lr > 0
        if not lr_ok or not 0 < self.lr_decay <= 1 or self.lr_decay_every < 1:
            raise ValueError('CoNMFConfig: lr must be > 0, lr_decay in (0, 1] and lr_decay_every >= 1')
        if self.max_steps < 1 or self.min_steps < 0 or self.patience < 1:
            raise ValueError('CoNMFConfig: max_steps >= 1, min_steps >= 0 and patience >= 1 are required')
        if self.top_k < 1 or self.kmeans_restarts < 1 or self.kmeans_max_iter < 0:
            raise ValueError('CoNMFConfig: top_k >= 1, kmeans_restarts >= 1, kmeans_max_iter >= 0 required')
        if not self.cold_restart_ratio > 1:
            raise ValueError('CoNMFConfig.cold_restart_ratio must be > 1')


# ----------------------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------------------
@dataclass
class CoNMFResult:
    """One window's factorisation (per-window shapes, no batch axis).

    image_activations [N_I, K], audio_activations [N_A, K]: U = sigmoid(W) of the last forward pass.
    image_logits, audio_logits: W after the last update (what a warm start continues from).
    image_factors [K, D_I], audio_factors [K, D_A]: V after the last update and the clamp at 0.
    image_ce, audio_ce [K]: the CE profiles of the last forward pass; k_star = argmin image_ce.
    confidence: ``sounding_confidence`` of image_ce; sounding: confidence ≥ the config's threshold.
    labels, label_scores: the top-k words of cos(V_I[k*], T_I) and their cosines (best first).
    objective: L of the last forward pass; objective_terms: its unweighted parts (reconstruction norms,
        min CE per side, temporal term).
    image_fit, audio_fit: relative reconstruction errors ‖X − UV‖_F / ‖X‖_F.
    cold_start, cold_reason, warm_error_ratio: how the unknowns were initialised (the ratio is the
        scene-change statistic, None when no warm start was tried).
    steps, converged: steps taken and whether early stopping ended the run; time_s: wall time of the solve.
    lr_backoffs: how often a non-finite objective was undone and the step size divided by LR_BACKOFF.
    """

    image_activations: Tensor
    image_factors: Tensor
    audio_activations: Tensor
    audio_factors: Tensor
    image_logits: Tensor
    audio_logits: Tensor
    k_star: int
    image_ce: Tensor
    audio_ce: Tensor
    confidence: float
    sounding: bool
    labels: list[str]
    label_scores: list[float]
    steps: int
    objective: float
    objective_terms: dict[str, float]
    cold_start: bool
    cold_reason: str
    converged: bool
    image_fit: float
    audio_fit: float
    warm_error_ratio: float | None = None
    time_s: float = 0.0
    lr_backoffs: int = 0

    @property
    def label(self) -> str:
        """The best word for the sounding factor."""
        return self.labels[0]

    def activation_map(self, k: int | None = None) -> Tensor:
        """U_I[:, k] (default k*) on the square token grid (24×24 for FC-CLIP tokens)."""
        column = self.image_activations[:, self.k_star if k is None else k]
        side = math.isqrt(column.numel())
        if side * side != column.numel():
            raise ValueError(f'{column.numel()} image tokens do not form a square grid')
        return column.view(side, side)


# ----------------------------------------------------------------------------------------------------
# Objective as written (the reference the hand-written gradient is tested against)
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Data:
    """The clamped tokens of a batch and the bank quantities every step uses."""

    x_image: Tensor  # [B, N_I, D_I]
    x_audio: Tensor  # [B, N_A, D_A]
    sq_image: Tensor  # [B] ‖X_I‖², float64
    sq_audio: Tensor  # [B]
    text_image: Tensor  # [J, D_I] unit rows
    text_audio: Tensor  # [J, D_P] unit rows
    projection: Callable[[Tensor], Tensor]
    logit_scale: float
    audio_lift: Tensor | None = None  # X_A W1ᵀ [B, N_A, D_P] when the projection is split
    projection_rest: Callable[[Tensor], Tensor] | None = None


@dataclass
class _Temporal:
    """Causal temporal anchors: previous sounding factors [B, D] and per-window weights [B]."""

    image: Tensor
    audio: Tensor
    weight: Tensor


@dataclass
class _Terms:
    total: Tensor  # [B]
    recon_image: Tensor  # [B]
    recon_audio: Tensor  # [B]
    image_ce: Tensor  # [B, K]
    audio_ce: Tensor  # [B, K]
    temporal: Tensor  # [B]
    u_image: Tensor  # [B, N_I, K]
    u_audio: Tensor  # [B, N_A, K]


@dataclass
class _Fit:
    """‖X − UV‖_F [B] and the products it is computed from."""

    norm: Tensor  # [B]
    utx: Tensor  # UᵀX [B, K, D]
    gram_u: Tensor  # UᵀU [B, K, K]
    gram_v: Tensor  # VVᵀ [B, K, K]


def _fit(x: Tensor, sq_x: Tensor, u: Tensor, v: Tensor) -> _Fit:
    """‖X − UV‖_F per window from ‖X‖² − 2⟨UᵀX, V⟩ + ⟨UᵀU, VVᵀ⟩ (the N×D residual is never formed)."""
    ut = u.transpose(1, 2)
    utx = ut @ x
    gram_u = ut @ u
    gram_v = v @ v.transpose(1, 2)
    cross = (utx * v).sum((1, 2)).double()
    quad = (gram_u * gram_v).sum((1, 2)).double()
    squared = sq_x - 2.0 * cross + quad
    # Rounding could push an exact fit (unreachable with sigmoid activations) below 0; keep sqrt finite.
    norm = squared.clamp_min(1e-12 * sq_x).sqrt().to(x.dtype)
    return _Fit(norm, utx, gram_u, gram_v)


def _cosines(vectors: Tensor, unit_rows: Tensor) -> Tensor:
    """cos(vectors[..., :], unit_rows[j]) for every j -> [..., J]."""
    return (vectors / vectors.norm(dim=-1, keepdim=True)) @ unit_rows.T


def _pair_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise a·b / (max(‖a‖, ε) max(‖b‖, ε)); an all-zero factor has cosine 0."""
    return (a * b).sum(-1) / (a.norm(dim=-1).clamp_min(_EPS) * b.norm(dim=-1).clamp_min(_EPS))


def _forward(data: _Data, unknowns: Sequence[Tensor], config: CoNMFConfig, chain: bool,
             anchors: _Temporal | None) -> _Terms:
    """The objective of the module docstring, in differentiable torch ops."""
    w_image, w_audio, v_image, v_audio = unknowns
    batch, n_factors = v_image.shape[0], v_image.shape[1]
    u_image, u_audio = torch.sigmoid(w_image), torch.sigmoid(w_audio)
    fit_image = _fit(data.x_image, data.sq_image, u_image, v_image)
    fit_audio = _fit(data.x_audio, data.sq_audio, u_audio, v_audio)
    sim_image = _cosines(fit_image.utx / data.x_image.shape[1], data.text_image)
    comp_audio = fit_audio.utx / data.x_audio.shape[1]
    projected = data.projection(comp_audio.reshape(batch * n_factors, -1)).view(batch, n_factors, -1)
    sim_audio = data.logit_scale * _cosines(projected, data.text_audio)
    log_p_image, log_p_audio = torch.log_softmax(sim_image, dim=-1), torch.log_softmax(sim_audio, dim=-1)
    image_ce = -(log_p_audio.exp() * log_p_image).sum(-1)
    audio_ce = -(log_p_image.exp() * log_p_audio).sum(-1)

    k_star = image_ce.detach().argmin(-1)
    rows = torch.arange(batch, device=k_star.device)
    sounding_image, sounding_audio = v_image[rows, k_star], v_audio[rows, k_star]
    temporal = v_image.new_zeros(batch)
    if chain and config.beta_t > 0 and batch > 1:
        link = (_pair_cosine(sounding_image[:-1], sounding_image[1:])
                + _pair_cosine(sounding_audio[:-1], sounding_audio[1:]))
        temporal = temporal - config.beta_t * link.sum()  # one scalar, booked on every window (TACO)
    if anchors is not None:
        link = _pair_cosine(sounding_image, anchors.image) + _pair_cosine(sounding_audio, anchors.audio)
        temporal = temporal - anchors.weight * link
    total = (config.beta_1 * fit_image.norm + config.beta_2 * fit_audio.norm
             + config.beta_p * image_ce.min(-1).values + config.beta_p_audio * audio_ce.min(-1).values
             + temporal)
    return _Terms(total, fit_image.norm, fit_audio.norm, image_ce, audio_ce, temporal, u_image, u_audio)


# ----------------------------------------------------------------------------------------------------
# Objective and gradient in one pass (the solver's hot loop)
# ----------------------------------------------------------------------------------------------------
# Same value as _forward. With ℓ = log softmax(s), p = softmax(s) and the one-hot selectors
# a = beta_p [k = argmin CE_I], b = beta_p_audio [k = argmin CE_A]:
#   ∂L/∂s_I = a (p_I − p_A) − b p_I ⊙ (ℓ_A − ⟨p_I, ℓ_A⟩)
#   ∂L/∂s_A = b (p_A − p_I) − a p_A ⊙ (ℓ_I − ⟨p_A, ℓ_I⟩)
#   through x ↦ x/‖x‖:  g ↦ (g − x̂⟨x̂, g⟩) / ‖x‖
#   ∂L/∂(UᵀX) = (∂L/∂c) / N − beta V / R             ∂L/∂V = beta (UᵀU V − UᵀX) / R  (+ temporal)
#   ∂L/∂U = X (∂L/∂(UᵀX))ᵀ + beta U VVᵀ / R          ∂L/∂W = ∂L/∂U ⊙ U (1 − U)
def _unit_grad(unit: Tensor, norm: Tensor, grad_unit: Tensor) -> Tensor:
    """Gradient through x ↦ x/‖x‖, given x/‖x‖, ‖x‖ [..., 1] and the gradient w.r.t. x/‖x‖."""
    return (grad_unit - unit * (unit * grad_unit).sum(-1, keepdim=True)) / norm


def _cosine_grad(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row-wise cos(a, b) (as _pair_cosine) and its gradients w.r.t. a and b."""
    norm_a = a.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    norm_b = b.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    cos = (a * b).sum(-1, keepdim=True) / (norm_a * norm_b)
    grad_a = b / (norm_a * norm_b) - cos * a / norm_a ** 2
    grad_b = a / (norm_a * norm_b) - cos * b / norm_b ** 2
    return cos.squeeze(-1), grad_a, grad_b


def _temporal_value_and_grad(factors: Sequence[Tensor], k_star: Tensor, beta_t: float, chain: bool,
                             anchors: _Temporal | None) -> tuple[Tensor, list[Tensor]]:
    """Temporal term [B] and its gradients w.r.t. (V_I, V_A), non-zero only in the rows k*."""
    batch = k_star.shape[0]
    rows = torch.arange(batch, device=k_star.device)
    value = factors[0].new_zeros(batch)
    grads = [torch.zeros_like(v) for v in factors]
    for index, v in enumerate(factors):
        sounding = v[rows, k_star]
        if chain and beta_t > 0 and batch > 1:
            cos, grad_prev, grad_next = _cosine_grad(sounding[:-1], sounding[1:])
            value = value - beta_t * cos.sum()
            # The scalar is in each of the B window objectives: the batch sum holds it B times.
            weight = beta_t * batch
            grads[index].index_put_((rows[:-1], k_star[:-1]), -weight * grad_prev, accumulate=True)
            grads[index].index_put_((rows[1:], k_star[1:]), -weight * grad_next, accumulate=True)
        if anchors is not None:
            cos, grad_row, _ = _cosine_grad(sounding, anchors.image if index == 0 else anchors.audio)
            value = value - anchors.weight * cos
            grads[index].index_put_((rows, k_star), -anchors.weight.unsqueeze(-1) * grad_row, accumulate=True)
    return value, grads


def _audio_similarities(data: _Data, u_audio: Tensor, fit_audio: _Fit) -> tuple[Tensor, Tensor, Tensor]:
    """(input of the projection as a grad-enabled leaf, its projection [B, K, D_P], the graph's output)."""
    batch, n_factors = u_audio.shape[0], u_audio.shape[2]
    if data.audio_lift is None:
        audio_input, projection = fit_audio.utx / data.x_audio.shape[1], data.projection
    else:
        audio_input = u_audio.transpose(1, 2) @ data.audio_lift / data.x_audio.shape[1]
        projection = data.projection_rest
    audio_input.requires_grad_(True)
    with torch.enable_grad():
        projected = projection(audio_input.reshape(batch * n_factors, -1)).view(batch, n_factors, -1)
    return audio_input, projected, projected.detach()


def _value_and_grad(data: _Data, unknowns: Sequence[Tensor], config: CoNMFConfig, chain: bool,
                    anchors: _Temporal | None) -> tuple[_Terms, list[Tensor]]:
    """The objective terms (as _forward) and ∂L/∂(W_I, W_A, V_I, V_A) of the batch objective."""
    with torch.no_grad():
        w_image, w_audio, v_image, v_audio = unknowns
        n_image, n_audio, n_factors = data.x_image.shape[1], data.x_audio.shape[1], v_image.shape[1]
        u_image, u_audio = torch.sigmoid(w_image), torch.sigmoid(w_audio)
        fit_image = _fit(data.x_image, data.sq_image, u_image, v_image)
        fit_audio = _fit(data.x_audio, data.sq_audio, u_audio, v_audio)
        comp_image = fit_image.utx / n_image
        norm_image = comp_image.norm(dim=-1, keepdim=True)
        unit_image = comp_image / norm_image
        log_p_image = torch.log_softmax(unit_image @ data.text_image.T, dim=-1)
    audio_input, projected_graph, projected = _audio_similarities(data, u_audio, fit_audio)
    with torch.no_grad():
        norm_proj = projected.norm(dim=-1, keepdim=True)
        unit_proj = projected / norm_proj
        log_p_audio = torch.log_softmax(data.logit_scale * (unit_proj @ data.text_audio.T), dim=-1)
        p_image, p_audio = log_p_image.exp(), log_p_audio.exp()
        image_ce = -(p_audio * log_p_image).sum(-1)
        audio_ce = -(p_image * log_p_audio).sum(-1)
        k_star = image_ce.argmin(-1)
        select_image = config.beta_p * nn.functional.one_hot(k_star, n_factors).to(p_image).unsqueeze(-1)
        select_audio = config.beta_p_audio * nn.functional.one_hot(audio_ce.argmin(-1), n_factors).to(
            p_image).unsqueeze(-1)
        centred_image = log_p_image - (p_audio * log_p_image).sum(-1, keepdim=True)
        centred_audio = log_p_audio - (p_image * log_p_audio).sum(-1, keepdim=True)
        grad_sim_image = select_image * (p_image - p_audio) - select_audio * p_image * centred_audio
        grad_sim_audio = select_audio * (p_audio - p_image) - select_image * p_audio * centred_image
        grad_comp_image = _unit_grad(unit_image, norm_image, grad_sim_image @ data.text_image)
        grad_proj = _unit_grad(unit_proj, norm_proj, data.logit_scale * (grad_sim_audio @ data.text_audio))
    (grad_audio_input,) = torch.autograd.grad(projected_graph, audio_input, grad_proj)
    with torch.no_grad():
        temporal, grad_temporal = _temporal_value_and_grad((v_image, v_audio), k_star, config.beta_t, chain,
                                                           anchors)
        # With a split projection the semantic gradient reaches U_A through X_A W1ᵀ instead of X_A.
        lifted = data.audio_lift is not None
        grad_comp_audio = torch.zeros_like(v_audio) if lifted else grad_audio_input
        grads_w, grads_v = [], []
        for beta, x, u, v, fit, grad_comp, n in (
                (config.beta_1, data.x_image, u_image, v_image, fit_image, grad_comp_image, n_image),
                (config.beta_2, data.x_audio, u_audio, v_audio, fit_audio, grad_comp_audio, n_audio)):
            scale = (beta / fit.norm).view(-1, 1, 1)
            grad_u = x @ (grad_comp / n - scale * v).transpose(1, 2) + scale * (u @ fit.gram_v)
            grads_w.append(grad_u)
            grads_v.append(scale * (fit.gram_u @ v - fit.utx))
        if lifted:
            grads_w[1] = grads_w[1] + data.audio_lift @ (grad_audio_input / n_audio).transpose(1, 2)
        grads_w = [g * u * (1 - u) for g, u in zip(grads_w, (u_image, u_audio), strict=True)]
        total = (config.beta_1 * fit_image.norm + config.beta_2 * fit_audio.norm
                 + config.beta_p * image_ce.min(-1).values + config.beta_p_audio * audio_ce.min(-1).values
                 + temporal)
    terms = _Terms(total, fit_image.norm, fit_audio.norm, image_ce, audio_ce, temporal, u_image, u_audio)
    return terms, [grads_w[0], grads_w[1], grads_v[0] + grad_temporal[0], grads_v[1] + grad_temporal[1]]


# ----------------------------------------------------------------------------------------------------
# Optimisers (in place on the four unknowns; V is projected onto V >= 0 after every step)
# ----------------------------------------------------------------------------------------------------
class _Optimizer:
    def __init__(self, config: CoNMFConfig, unknowns: Sequence[Tensor],
                 factor_scales: Sequence[Tensor]) -> None:
        self.config = config
        self.unknowns = unknowns
        ones = unknowns[0].new_ones(())
        self.scales = [ones, ones, *factor_scales] if config.optimizer == 'adam' else [ones] * 4
        self.first = [torch.zeros_like(p) for p in unknowns] if config.optimizer != 'gd' else []
        self.second = [torch.zeros_like(p) for p in unknowns] if config.optimizer == 'adam' else []
        self.count = 0

    def step(self, grads: Sequence[Tensor], lr: float) -> None:
        self.count += 1
        kind = self.config.optimizer
        with torch.no_grad():
            for i, (param, grad) in enumerate(zip(self.unknowns, grads, strict=True)):
                if kind == 'gd':
                    param.sub_(grad, alpha=lr)
                elif kind == 'nesterov':
                    buffer = self.first[i].mul_(self.config.momentum).add_(grad)
                    param.sub_(grad.add(buffer, alpha=self.config.momentum), alpha=lr)
                else:
                    self._adam(i, param, grad, lr)
            self.unknowns[2].clamp_(min=0)
            self.unknowns[3].clamp_(min=0)

    def _adam(self, i: int, param: Tensor, grad: Tensor, lr: float) -> None:
        beta1, beta2 = self.config.adam_beta1, self.config.adam_beta2
        first = self.first[i].mul_(beta1).add_(grad, alpha=1 - beta1)
        second = self.second[i].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (second / (1 - beta2 ** self.count)).sqrt_().add_(self.config.adam_eps)
        param.sub_(self.scales[i] * (lr / (1 - beta1 ** self.count)) * first / denom)


# A step that makes L non-finite (too large a step for this window: very large vocabularies make the CE
# terms steep) is undone: the unknowns go back to the last finite point, the optimiser's moments restart and
# the step size is divided by LR_BACKOFF. After MAX_BACKOFFS such recoveries the window fails.
LR_BACKOFF = 10.0
MAX_BACKOFFS = 6


def _run(data: _Data, unknowns: list[Tensor], config: CoNMFConfig, chain: bool,
         anchors: _Temporal | None) -> tuple[_Terms, int, bool, int]:
    """Optimise in place; returns the last forward's terms, the steps taken, whether it stopped early
    and how many times the step size was backed off after a non-finite objective."""
    scales = [_rms(data.x_image, data.sq_image), _rms(data.x_audio, data.sq_audio)]
    optimizer = _Optimizer(config, unknowns, scales)
    finite = [u.detach().clone() for u in unknowns]     # the last point where L was finite
    previous: Tensor | None = None
    calm = backoffs = 0
    terms: _Terms | None = None
    for step in range(config.max_steps):
        lr = config.lr * config.lr_decay ** (step // config.lr_decay_every) / LR_BACKOFF ** backoffs
        terms, grads = _value_and_grad(data, unknowns, config, chain, anchors)
        flags = [torch.isfinite(terms.total).all()]
        if previous is not None and config.tol > 0:
            change = (terms.total - previous).abs() / terms.total.abs().clamp_min(1e-12)
            flags.append((change < config.tol).all())
        flags = torch.stack(flags).tolist()  # one host sync per step
        if not flags[0]:
            if step == 0 or backoffs == MAX_BACKOFFS:
                raise RuntimeError(f'co-NMF objective became non-finite at step {step} (lr={lr:g}, '
                                   f'{backoffs} back-off(s)); lower the lr')
            backoffs += 1
            with torch.no_grad():
                for unknown, saved in zip(unknowns, finite, strict=True):
                    unknown.copy_(saved)
            optimizer = _Optimizer(config, unknowns, scales)
            previous, calm = None, 0
            continue
        if len(flags) > 1:
            calm = calm + 1 if flags[1] else 0
        previous = terms.total
        with torch.no_grad():
            for unknown, saved in zip(unknowns, finite, strict=True):
                saved.copy_(unknown)
        optimizer.step(grads, lr)
        if config.tol > 0 and calm >= config.patience and step + 1 >= config.min_steps:
            _undo_a_non_finite_update(unknowns, finite)
            return terms, step + 1, True, backoffs
    assert terms is not None
    if backoffs and not bool(torch.isfinite(terms.total).all()):
        raise RuntimeError(f'co-NMF objective was non-finite at the last step ({backoffs} back-off(s))')
    _undo_a_non_finite_update(unknowns, finite)
    return terms, config.max_steps, False, backoffs


def _undo_a_non_finite_update(unknowns: list[Tensor], finite: list[Tensor]) -> None:
    """No forward pass checks the last update: undo it if it left a non-finite unknown (the returned
    terms were computed at the point it started from, the one ``finite`` holds)."""
    with torch.no_grad():
        if not bool(torch.stack([torch.isfinite(u).all() for u in unknowns]).all()):
            for unknown, saved in zip(unknowns, finite, strict=True):
                unknown.copy_(saved)


def _rms(x: Tensor, squared_norms: Tensor) -> Tensor:
    """Root-mean-square of each window's tokens, shaped [B, 1, 1]."""
    return (squared_norms / (x.shape[1] * x.shape[2])).sqrt().to(x.dtype).view(-1, 1, 1)


# ----------------------------------------------------------------------------------------------------
# Confidence, calibration and label readout
# ----------------------------------------------------------------------------------------------------
def sounding_confidence(image_ce: Tensor) -> Tensor:
    """Confidence that factor k* is a visible sound source, from the CE profile [..., K] -> [...].

    The depth of the profile's minimum below its median, in nats: median_k CE_I[k] − min_k CE_I[k]. A factor
    that covers the sounding object pulls its CE clearly below the others (a clear minimum). When the heard
    concept is not in view, the closest-factor penalty can only fit noise or a loosely related region and the
    profile stays flat. The median (mean of the two middle values) is not moved by a second factor that
    shares the object.
    """
    ordered = image_ce.sort(dim=-1).values
    k = ordered.shape[-1]
    median = 0.5 * (ordered[..., (k - 1) // 2] + ordered[..., k // 2])
    return median - ordered[..., 0]


def calibrate_sounding_threshold(confidences: Sequence[float], sounding: Sequence[bool]) -> float:
    """A ``sounding_threshold`` from labelled confidences (windows with and without a visible source).

    When the groups are separated: the geometric midpoint of the gap (the confidences are positive depths that
    scale with the features). Otherwise: the observed confidence that, as a threshold, gives the best balanced
    accuracy (the lowest one on ties).
    """
    values = torch.tensor([float(c) for c in confidences], dtype=torch.float64)
    labels = torch.tensor([bool(s) for s in sounding], dtype=torch.bool)
    if values.numel() != labels.numel() or bool(labels.all()) or not bool(labels.any()):
        raise ValueError('calibrate_sounding_threshold needs equally long lists with both sounding and '
                         'not-sounding examples')
    lowest_positive, highest_negative = values[labels].min(), values[~labels].max()
    if lowest_positive > highest_negative:
        return float((lowest_positive * highest_negative.clamp_min(1e-12)).sqrt())
    candidates = values.sort().values
    accuracy = torch.stack([(values[labels] >= c).double().mean() + (values[~labels] < c).double().mean()
                            for c in candidates])
    return float(candidates[accuracy.argmax()])


def factor_labels(factor: Tensor, bank: AnchorBank, top_k: int) -> tuple[list[str], list[float]]:
    """The label readout of one image factor V_I[k] [D_I]: its top-k words of cos(V_I[k], T_I) and their
    cosines, best first (method.md §5.3: the factor, not the component). ``bank`` is moved to the
    factor's device when it is elsewhere."""
    unit_image, _ = bank.to(factor.device).unit_vectors()
    best = _cosines(factor.float(), unit_image).topk(min(top_k, len(bank.words)))
    return [bank.words[i] for i in best.indices.tolist()], best.values.tolist()


# ----------------------------------------------------------------------------------------------------
# Input checks and initialisation
# ----------------------------------------------------------------------------------------------------
def _check_tokens(name: str, x: object, dims: int) -> Tensor:
    """Validated tokens, clamped at 0, as float32."""
    if not isinstance(x, Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(x).__name__}')
    if x.dim() != dims:
        shape = '[N, D]' if dims == 2 else '[B, N, D]'
        raise ValueError(f'{name} must have shape {shape}, got {tuple(x.shape)}')
    if not x.is_floating_point():
        raise ValueError(f'{name} must be a floating-point tensor, got {x.dtype}')
    if x.numel() == 0:
        raise ValueError(f'{name} is empty (shape {tuple(x.shape)})')
    # One reduction instead of an elementwise test: any NaN or ±Inf makes the sum non-finite.
    if not bool(torch.isfinite(torch.sum(x.detach(), dtype=torch.float32))):
        raise ValueError(f'{name} contains NaN or Inf (or values so large that their sum overflows)')
    return x.detach().float().clamp_min(0)


def _squared_norms(name: str, x: Tensor) -> Tensor:
    """‖X‖_F² of each window [B] (float64); an all-zero window (after the clamp) is a ValueError."""
    squared = (x * x).sum((1, 2))
    empty = (squared == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f'{name} is all zero after clamping at 0 (windows {empty}): the activation-weighted '
                         'components would be zero and their cosines undefined')
    return squared.double()


def _prepare(x_image: Tensor, x_audio: Tensor, bank: AnchorBank,
             config: CoNMFConfig) -> tuple[_Data, AnchorBank]:
    config.validate()
    if not isinstance(bank, AnchorBank):
        raise ValueError(f'bank must be an AnchorBank, got {type(bank).__name__}')
    if x_image.device != x_audio.device:
        raise ValueError(f'x_image is on {x_image.device} but x_audio is on {x_audio.device}')
    if x_image.shape[0] != x_audio.shape[0]:
        raise ValueError(f'x_image has {x_image.shape[0]} windows but x_audio has {x_audio.shape[0]}')
    _, n_image, d_image = x_image.shape
    _, n_audio, d_audio = x_audio.shape
    if d_image != bank.image.shape[1]:
        raise ValueError(f'image tokens have D_I={d_image} but the CLIP bank vectors have '
                         f'{bank.image.shape[1]}')
    if config.K > n_image or config.K > n_audio:
        raise ValueError(f'K={config.K} factors need at least K tokens per modality; got N_I={n_image}, '
                         f'N_A={n_audio}')
    bank = bank.to(x_image.device)
    bank.check_audio_dim(d_audio)
    text_image, text_audio = bank.unit_vectors()
    data = _Data(x_image, x_audio, _squared_norms('x_image', x_image), _squared_norms('x_audio', x_audio),
                 text_image, text_audio, bank.audio_projection, bank.audio_logit_scale)
    split = bank.split_projection()
    if split is not None:
        weight, data.projection_rest = split
        data.audio_lift = x_audio @ weight.T.to(x_audio.dtype)
    return data, bank


def _cold_unknowns(data: _Data, config: CoNMFConfig) -> list[Tensor]:
    """W ~ N(0, 1) from a CPU generator reseeded per window; V = k-means centres of each window's tokens."""
    batch, n_image, _ = data.x_image.shape
    n_audio = data.x_audio.shape[1]
    generator = torch.Generator(device='cpu')
    image_logits, audio_logits = [], []
    for _ in range(batch):
        generator.manual_seed(config.seed)
        image_logits.append(torch.randn(n_image, config.K, generator=generator))
        audio_logits.append(torch.randn(n_audio, config.K, generator=generator))
    device = data.x_image.device
    restarts, max_iter = config.kmeans_restarts, config.kmeans_max_iter
    if config.init == 'kmeans++':  # seeding only
        restarts, max_iter = 1, 0
    centres = [kmeans_centres(x, config.K, n_restarts=restarts, max_iter=max_iter, tol=config.kmeans_tol,
                              seed=config.kmeans_seed) for x in (data.x_image, data.x_audio)]
    return [torch.stack(image_logits).to(device), torch.stack(audio_logits).to(device), *centres]


def _warm_unknowns(data: _Data, previous: Sequence[CoNMFResult], n_factors: int) -> list[Tensor] | None:
    """Copies of the previous windows' logits and factors, or None when their shapes do not fit."""
    device = data.x_image.device
    stacked = [torch.stack([getattr(r, name).detach().float() for r in previous]).to(device)
               for name in ('image_logits', 'audio_logits', 'image_factors', 'audio_factors')]
    expected = [(data.x_image.shape[1], n_factors), (data.x_audio.shape[1], n_factors),
                (n_factors, data.x_image.shape[2]), (n_factors, data.x_audio.shape[2])]
    if any(tuple(t.shape[1:]) != shape for t, shape in zip(stacked, expected, strict=True)):
        return None
    return stacked


def _refit_logits(x: Tensor, v: Tensor) -> Tensor:
    """Logits of the least-squares activations of the tokens on the factors, clipped to [0.02, 0.98]."""
    gram = v @ v.transpose(1, 2)
    ridge = 1e-6 * gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
    gram = gram + ridge.view(-1, 1, 1) * torch.eye(gram.shape[-1], device=v.device, dtype=v.dtype)
    activations = torch.linalg.solve(gram, v @ x.transpose(1, 2)).transpose(1, 2)
    return torch.logit(activations.clamp(0.02, 0.98))


def _warm_error_ratio(data: _Data, unknowns: Sequence[Tensor], previous: Sequence[CoNMFResult]) -> Tensor:
    """Per window: max over modalities of (relative error of the warm start) / (previous relative error)."""
    ratios = []
    with torch.no_grad():
        for x, sq, w, v, attribute in ((data.x_image, data.sq_image, unknowns[0], unknowns[2], 'image_fit'),
                                       (data.x_audio, data.sq_audio, unknowns[1], unknowns[3], 'audio_fit')):
            error = _fit(x, sq, torch.sigmoid(w), v).norm.double() / sq.sqrt()
            before = torch.tensor([getattr(r, attribute) for r in previous], dtype=torch.float64,
                                  device=sq.device)
            ratios.append(error / before.clamp_min(1e-12))
    return torch.maximum(ratios[0], ratios[1])


def _initial_unknowns(data: _Data, config: CoNMFConfig, previous: list[CoNMFResult] | None
                      ) -> tuple[list[Tensor], bool, str, float | None]:
    """Warm or cold unknowns, whether the start is cold, why, and the scene-change ratio (None: not tried)."""
    if previous is None:
        return _cold_unknowns(data, config), True, 'no previous window', None
    if not config.warm_start:
        return _cold_unknowns(data, config), True, 'warm start disabled', None
    warm = _warm_unknowns(data, previous, config.K)
    if warm is None:
        return _cold_unknowns(data, config), True, 'previous window has other shapes', None
    if config.warm_logits == 'refit':
        # Per window and modality, keep whichever logits reconstruct the new tokens better: the refit
        # follows objects that moved, the previous logits are already right when nothing did (the
        # clipped least-squares refit can be worse than them, which would fake a scene change).
        for i, (x, sq) in enumerate(((data.x_image, data.sq_image), (data.x_audio, data.sq_audio))):
            refit = _refit_logits(x, warm[2 + i])
            with torch.no_grad():
                keep = (_fit(x, sq, torch.sigmoid(warm[i]), warm[2 + i]).norm
                        <= _fit(x, sq, torch.sigmoid(refit), warm[2 + i]).norm)
            warm[i] = torch.where(keep.view(-1, 1, 1), warm[i], refit)
    ratio = float(_warm_error_ratio(data, warm, previous).max())
    if ratio > config.cold_restart_ratio:
        reason = f'{_SCENE_CHANGE}: warm-start error ratio {ratio:.2f} > {config.cold_restart_ratio:.2f}'
        return _cold_unknowns(data, config), True, reason, ratio
    return warm, False, 'warm', ratio


# ----------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------
def solve(
    x_image: Tensor,
    x_audio: Tensor,
    bank: AnchorBank,
    config: CoNMFConfig | None = None,
    warm_start: CoNMFResult | None = None,
) -> CoNMFResult:
    """Co-factorise one window: x_image [N_I, D_I], x_audio [N_A, D_A] (raw tokens; clamped at 0 here).

    ``config`` defaults to ``CoNMFConfig.streaming()``. ``warm_start`` is the previous window's result: with
    ``config.warm_start`` it initialises the unknowns unless the scene-change rule asks for a cold start, and
    with ``config.causal_temporal`` and ``config.beta_t > 0`` its sounding factors anchor the causal temporal
    term (not after a scene-change restart, when they describe another scene). The paper profile has neither:
    the previous result is ignored and the window is solved as TACO solves it. Runs on the inputs' device; the
    bank is copied there.
    """
    config = config or CoNMFConfig.streaming()
    with _autograd_allowed():
        x_image = _check_tokens('x_image', x_image, 2)
        x_audio = _check_tokens('x_audio', x_audio, 2)
        previous = None if warm_start is None else [warm_start]
        return _solve(x_image.unsqueeze(0), x_audio.unsqueeze(0), bank, config, previous, chain=False)[0]


def solve_batch(
    x_image: Tensor,
    x_audio: Tensor,
    bank: AnchorBank,
    config: CoNMFConfig | None = None,
    temporal: bool = False,
) -> list[CoNMFResult]:
    """Co-factorise B windows at once (cold starts): x_image [B, N_I, D_I], x_audio [B, N_A, D_A].

    ``config`` defaults to ``CoNMFConfig.paper()``. With ``temporal=True`` the windows are consecutive frames
    of one video and the paper's batch temporal term links the sounding factors of frames t and t+1. As in
    TACO's ``conmf_txt`` the chain penalty is added to each window's objective, so it weighs B·``beta_t``
    in the batch objective (S4: 5 frames, weight 5). Otherwise the windows are independent and each result
    equals a separate ``solve`` (with early stopping, the batch stops when every window has met the
    tolerance).
    """
    config = config or CoNMFConfig.paper()
    with _autograd_allowed():
        x_image = _check_tokens('x_image', x_image, 3)
        x_audio = _check_tokens('x_audio', x_audio, 3)
        return _solve(x_image, x_audio, bank, config, None, chain=temporal)


@contextlib.contextmanager
def _autograd_allowed() -> Iterator[None]:
    """The solver differentiates the bank's projection: leave inference mode and no_grad for its duration."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _solve(x_image: Tensor, x_audio: Tensor, bank: AnchorBank, config: CoNMFConfig,
           previous: list[CoNMFResult] | None, chain: bool) -> list[CoNMFResult]:
    started = time.perf_counter()
    data, bank = _prepare(x_image, x_audio, bank, config)
    unknowns, cold, reason, ratio = _initial_unknowns(data, config, previous)
    anchors = _temporal_anchors(data, config, previous, reason)
    run_config = replace(config, tol=config.cold_tol) if cold and config.cold_tol is not None else config
    terms, steps, converged, backoffs = _run(data, unknowns, run_config, chain, anchors)
    if data.x_image.is_cuda:
        torch.cuda.synchronize(data.x_image.device)
    elapsed = time.perf_counter() - started
    start = (cold, reason, ratio)
    return _results(data, bank, config, unknowns, terms, (steps, converged, elapsed, backoffs), start)


def _temporal_anchors(data: _Data, config: CoNMFConfig, previous: list[CoNMFResult] | None,
                      reason: str) -> _Temporal | None:
    """The previous windows' sounding factors for the causal term; None without them, without
    ``causal_temporal`` (paper profile), with beta_t = 0, with other factor dimensions, or after a scene
    change (they would pull towards another scene)."""
    if (previous is None or not config.causal_temporal or config.beta_t == 0
            or reason.startswith(_SCENE_CHANGE)):
        return None
    device = data.x_image.device
    image = torch.stack([r.image_factors[r.k_star].detach().float() for r in previous]).to(device)
    audio = torch.stack([r.audio_factors[r.k_star].detach().float() for r in previous]).to(device)
    if image.shape[-1] != data.x_image.shape[2] or audio.shape[-1] != data.x_audio.shape[2]:
        return None
    return _Temporal(image, audio, torch.full((len(previous),), config.beta_t, device=device))


def _results(data: _Data, bank: AnchorBank, config: CoNMFConfig, unknowns: list[Tensor], terms: _Terms,
             run: tuple[int, bool, float, int], start: tuple[bool, str, float | None]
             ) -> list[CoNMFResult]:
    steps, converged, elapsed, backoffs = run
    cold, reason, ratio = start
    w_image, w_audio, v_image, v_audio = unknowns
    confidence = sounding_confidence(terms.image_ce).tolist()
    k_star = terms.image_ce.argmin(-1).tolist()
    fit_image = (terms.recon_image.double() / data.sq_image.sqrt()).tolist()
    fit_audio = (terms.recon_audio.double() / data.sq_audio.sqrt()).tolist()
    results = []
    for b in range(w_image.shape[0]):
        labels, scores = factor_labels(v_image[b, k_star[b]], bank, config.top_k)
        parts = {
            'recon_image': float(terms.recon_image[b]),
            'recon_audio': float(terms.recon_audio[b]),
            'penalty_image': float(terms.image_ce[b].min()),
            'penalty_audio': float(terms.audio_ce[b].min()),
            'temporal': float(terms.temporal[b]),
        }
        results.append(CoNMFResult(
            image_activations=terms.u_image[b], image_factors=v_image[b],
            audio_activations=terms.u_audio[b], audio_factors=v_audio[b],
            image_logits=w_image[b], audio_logits=w_audio[b], k_star=k_star[b],
            image_ce=terms.image_ce[b], audio_ce=terms.audio_ce[b], confidence=confidence[b],
            sounding=confidence[b] >= config.sounding_threshold, labels=labels, label_scores=scores,
            steps=steps, objective=float(terms.total[b]), objective_terms=parts, cold_start=cold,
            cold_reason=reason, converged=converged, image_fit=fit_image[b], audio_fit=fit_audio[b],
            warm_error_ratio=ratio, time_s=elapsed, lr_backoffs=backoffs))
    return results
