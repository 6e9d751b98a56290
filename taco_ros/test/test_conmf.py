"""Tests of the semantic co-NMF solver (taco_ros.core.conmf) on planted problems and direct transcriptions.

Sizes: the recovery tests use ``PlantedSpec.small()``: the real token grid and token dimensions (576×768
image tokens, 64×768 audio tokens) with a smaller CLAP space and bank (D_P = 256, J = 64), so that the
1800-step paper profile stays fast. Logic tests use tiny random problems.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from planted import (
    PlantedSpec,
    ProjectionLike,
    activation_iou,
    make_drifting_sequence,
    make_planted_bank,
    make_planted_problem,
)
from torch import Tensor, nn

from taco_ros.core import conmf
from taco_ros.core.conmf import AnchorBank, CoNMFConfig, CoNMFResult, solve, solve_batch
from taco_ros.core.kmeans import kmeans_centres

SMALL = PlantedSpec.small()
RECOVERY_SEEDS = range(6)


# ----------------------------------------------------------------------------------------------------
# A direct, unoptimised transcription of the objective (method.md §4.3), written independently of the solver.
# ----------------------------------------------------------------------------------------------------
def transcribed_objective(x_image: Tensor, x_audio: Tensor, bank: AnchorBank, w_image: Tensor,
                          w_audio: Tensor, v_image: Tensor, v_audio: Tensor, config: CoNMFConfig,
                          chain: bool = False, anchors: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Batch objective Σ_b [...] for X [B, N, D] (already clamped), W [B, N, K], V [B, K, D]."""
    batch = x_image.shape[0]
    k = v_image.shape[1]
    a_image, a_audio = torch.sigmoid(w_image), torch.sigmoid(w_audio)
    recon_image = torch.norm(x_image - torch.bmm(a_image, v_image), 'fro', dim=(1, 2))
    recon_audio = torch.norm(x_audio - torch.bmm(a_audio, v_audio), 'fro', dim=(1, 2))
    # Components: repeat the tokens K times, weight by the activations, mean over all tokens.
    comp_image = (x_image.unsqueeze(1).repeat(1, k, 1, 1) * a_image.transpose(1, 2).unsqueeze(3)).mean(dim=2)
    comp_audio = (x_audio.unsqueeze(1).repeat(1, k, 1, 1) * a_audio.transpose(1, 2).unsqueeze(3)).mean(dim=2)
    image_text = bank.image / bank.image.norm(dim=-1, keepdim=True)
    flat_image = comp_image.flatten(0, 1)
    sim_image = (image_text @ (flat_image / flat_image.norm(dim=-1, keepdim=True)).T).T
    projected = bank.audio_projection(comp_audio.flatten(0, 1))
    audio_text = bank.audio / bank.audio.norm(dim=-1, keepdim=True)
    sim_audio = (bank.audio_logit_scale * audio_text @ (projected / projected.norm(dim=-1, keepdim=True)).T).T
    criterion = nn.CrossEntropyLoss(reduction='none')
    image_ce = criterion(sim_image, sim_audio.softmax(dim=1)).view(batch, k)
    audio_ce = criterion(sim_audio, sim_image.softmax(dim=1)).view(batch, k)
    total = (config.beta_1 * recon_image + config.beta_2 * recon_audio
             + config.beta_p * image_ce.min(dim=1).values + config.beta_p_audio * audio_ce.min(dim=1).values)
    chosen = image_ce.argmin(dim=1)
    cos = nn.functional.cosine_similarity
    # TACO's temporal penalty: one 0-d value, summed over consecutive frame pairs, then added to each frame's
    # error (broadcast) before the batch is summed.
    penalty = x_image.new_zeros(())
    for t in range(batch - 1 if chain else 0):
        penalty = penalty - config.beta_t * (
            cos(v_image[t, chosen[t]], v_image[t + 1, chosen[t + 1]], dim=0)
            + cos(v_audio[t, chosen[t]], v_audio[t + 1, chosen[t + 1]], dim=0))
    total = total + penalty
    if anchors is not None:
        for b in range(batch):
            total[b] = total[b] - config.beta_t * (cos(v_image[b, chosen[b]], anchors[0][b], dim=0)
                                                   + cos(v_audio[b, chosen[b]], anchors[1][b], dim=0))
    return total


def tiny_problem(seed: int, batch: int = 2) -> tuple[Tensor, Tensor, AnchorBank]:
    """Random tokens and a random bank at toy sizes (N_I=36, D_I=16, N_A=10, D_A=12, D_P=8, J=7)."""
    gen = torch.Generator().manual_seed(seed)
    projection = nn.Sequential(nn.Linear(12, 8), nn.GELU(), nn.Linear(8, 8), nn.LayerNorm(8))
    with torch.no_grad():
        for param in projection.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    bank = AnchorBank(words=[f'w{i}' for i in range(7)], image=torch.randn(7, 16, generator=gen),
                      audio=torch.randn(7, 8, generator=gen), audio_projection=projection,
                      audio_logit_scale=20.0)
    x_image = torch.randn(batch, 36, 16, generator=gen)
    x_audio = torch.randn(batch, 10, 12, generator=gen)
    return x_image, x_audio, bank


def random_point(seed: int, x_image: Tensor, x_audio: Tensor, k: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch = x_image.shape[0]
    return [torch.randn(batch, x_image.shape[1], k, generator=gen),
            torch.randn(batch, x_audio.shape[1], k, generator=gen),
            torch.rand(batch, k, x_image.shape[2], generator=gen),
            torch.rand(batch, k, x_audio.shape[2], generator=gen)]


def prepared(x_image: Tensor, x_audio: Tensor, bank: AnchorBank, config: CoNMFConfig) -> conmf._Data:
    data, _ = conmf._prepare(x_image.clamp_min(0), x_audio.clamp_min(0), bank, config)
    return data


# ----------------------------------------------------------------------------------------------------
# Objective parity and gradients
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('overrides, chain, anchored', [
    ({}, False, False),
    ({'beta_p_audio': 3.0, 'beta_1': 0.5}, True, False),
    ({'beta_p_audio': 1.0, 'beta_t': 2.0, 'beta_2': 2.0}, False, True),
])
def test_objective_and_gradient_match_direct_transcription(overrides: dict, chain: bool,
                                                           anchored: bool) -> None:
    x_image, x_audio, bank = tiny_problem(0, batch=3)
    config = CoNMFConfig.paper(K=4, **overrides)
    unknowns = random_point(1, x_image, x_audio, config.K)
    anchor_vectors = (torch.rand(3, 16), torch.rand(3, 12)) if anchored else None
    data = prepared(x_image, x_audio, bank, config)
    anchors = None
    if anchored:
        anchors = conmf._Temporal(anchor_vectors[0], anchor_vectors[1], torch.full((3,), config.beta_t))

    leaves = [t.clone().requires_grad_(True) for t in unknowns]
    expected = transcribed_objective(x_image.clamp_min(0), x_audio.clamp_min(0), bank, *leaves, config, chain,
                                     anchor_vectors)
    expected_grads = torch.autograd.grad(expected.sum(), leaves)
    terms, grads = conmf._value_and_grad(data, unknowns, config, chain, anchors)
    reference_terms = conmf._forward(data, unknowns, config, chain, anchors)

    torch.testing.assert_close(terms.total, expected.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(reference_terms.total, expected.detach(), rtol=1e-5, atol=0)
    for name, got, want in zip(('W_I', 'W_A', 'V_I', 'V_A'), grads, expected_grads, strict=True):
        scale = want.abs().max()
        assert (got - want).abs().max() <= 1e-4 * scale, f'analytic gradient of {name} differs from autograd'


def test_s4_temporal_penalty_weighs_the_number_of_frames() -> None:
    """A 5-frame S4 video: the chain penalty enters the batch objective 5 times (TACO), not once."""
    x_image, x_audio, bank = tiny_problem(7, batch=5)
    config = CoNMFConfig.paper(K=4)
    unknowns = random_point(8, x_image, x_audio, config.K)
    data = prepared(x_image, x_audio, bank, config)
    leaves = [t.clone().requires_grad_(True) for t in unknowns]
    expected = transcribed_objective(x_image.clamp_min(0), x_audio.clamp_min(0), bank, *leaves, config, True)
    expected_grads = torch.autograd.grad(expected.sum(), leaves)
    terms, grads = conmf._value_and_grad(data, unknowns, config, True, None)
    torch.testing.assert_close(terms.total, expected.detach(), rtol=1e-5, atol=0)
    for got, want in zip(grads, expected_grads, strict=True):
        assert (got - want).abs().max() <= 1e-4 * want.abs().max()

    # The chain adds B·P to the batch objective and B·∂P to the factor gradients.
    free_terms, free_grads = conmf._value_and_grad(data, unknowns, config, False, None)
    penalty = float(terms.temporal[0])
    assert penalty < 0 and torch.all(terms.temporal == terms.temporal[0])
    assert float(terms.total.sum() - free_terms.total.sum()) == pytest.approx(5 * penalty, rel=1e-5)
    k_star = terms.image_ce.argmin(-1)
    v_image = unknowns[2].clone().requires_grad_(True)
    sounding = v_image[torch.arange(5), k_star]
    link = nn.functional.cosine_similarity(sounding[:-1], sounding[1:], dim=-1).sum()
    (grad_link,) = torch.autograd.grad(-config.beta_t * link, v_image)
    torch.testing.assert_close(grads[2] - free_grads[2], 5 * grad_link, rtol=1e-4, atol=1e-6)


def test_first_paper_step_is_plain_gradient_descent_from_the_documented_init() -> None:
    """objective = L(init), activations/CE from that forward, factors = clamp(V0 − 0.25 ∇V0, 0)."""
    x_image, x_audio, bank = tiny_problem(2, batch=1)
    config = CoNMFConfig.paper(K=3, max_steps=1)
    result = solve(x_image[0], x_audio[0], bank, config)

    xi, xa = x_image.clamp_min(0), x_audio.clamp_min(0)
    gen = torch.Generator().manual_seed(config.seed)
    w_image = torch.randn(1, 36, 3, generator=gen).requires_grad_(True)
    w_audio = torch.randn(1, 10, 3, generator=gen).requires_grad_(True)
    v_image = kmeans_centres(xi, 3, seed=123).requires_grad_(True)
    v_audio = kmeans_centres(xa, 3, seed=123).requires_grad_(True)
    objective = transcribed_objective(xi, xa, bank, w_image, w_audio, v_image, v_audio, config)
    grad_v_image, grad_w_image = torch.autograd.grad(objective.sum(), (v_image, w_image))

    assert result.objective == pytest.approx(float(objective.detach()), rel=1e-5)
    torch.testing.assert_close(result.image_activations, torch.sigmoid(w_image[0]).detach())
    torch.testing.assert_close(result.image_factors, (v_image - 0.25 * grad_v_image).clamp_min(0)[0].detach(),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.image_logits, (w_image - 0.25 * grad_w_image)[0].detach(), rtol=1e-5,
                               atol=1e-6)
    assert result.steps == 1 and result.cold_start


def test_split_projection_fast_path_gives_the_same_solve() -> None:
    problem = make_planted_problem(3, SMALL)
    module = problem.bank.audio_projection
    generic = AnchorBank(problem.bank.words, problem.bank.image, problem.bank.audio, lambda x: module(x),
                         problem.bank.audio_logit_scale)
    assert problem.bank.split_projection() is not None
    assert generic.split_projection() is None
    config = CoNMFConfig.streaming(max_steps=20, tol=0.0)
    fast = solve(problem.x_image, problem.x_audio, problem.bank, config)
    plain = solve(problem.x_image, problem.x_audio, generic, config)
    assert fast.objective == pytest.approx(plain.objective, rel=1e-4)
    torch.testing.assert_close(fast.image_activations, plain.image_activations, rtol=1e-3, atol=1e-3)


def test_msclap_projection_takes_the_split_path() -> None:
    clap = pytest.importorskip('msclap.models.clap')
    x_image, x_audio, bank = tiny_problem(10, batch=1)
    projection = clap.Projection(12, 8).train()
    real = AnchorBank(bank.words, bank.image, bank.audio, projection, 20.0)
    assert not projection.training  # its dropout would make every step random
    assert real.split_projection() is not None
    generic = AnchorBank(bank.words, bank.image, bank.audio, lambda x: projection(x), 20.0)
    config = CoNMFConfig.paper(K=3, max_steps=20)
    fast = solve(x_image[0], x_audio[0], real, config)
    plain = solve(x_image[0], x_audio[0], generic, config)
    assert fast.objective == pytest.approx(plain.objective, rel=1e-5)


# ----------------------------------------------------------------------------------------------------
# Planted recovery at the paper profile
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def paper_recovery() -> list[tuple[object, CoNMFResult]]:
    problems = [make_planted_problem(seed, SMALL, negative=negative)
                for seed in RECOVERY_SEEDS for negative in (False, True)]
    problems.append(make_planted_problem(RECOVERY_SEEDS[0], SMALL, silent=True))
    results = solve_batch(torch.stack([p.x_image for p in problems]),
                          torch.stack([p.x_audio for p in problems]), problems[0].bank, CoNMFConfig.paper())
    return list(zip(problems, results, strict=True))


@pytest.mark.slow
def test_paper_profile_recovers_the_sounding_region_and_names_it(paper_recovery: list) -> None:
    positives = [(p, r) for p, r in paper_recovery if not p.negative]
    ious = [activation_iou(r.image_activations, r.k_star, p.mask) for p, r in positives]
    assert statistics.median(ious) >= 0.8, ious
    assert [r.labels[0] for _, r in positives] == [p.sounding_word for p, _ in positives]
    assert all(r.steps == 1800 for _, r in paper_recovery)


@pytest.mark.slow
def test_paper_profile_sounding_decision(paper_recovery: list) -> None:
    decisions = [(p.negative, r.sounding, round(r.confidence, 4)) for p, r in paper_recovery]
    assert all(sounding != negative for negative, sounding, _ in decisions), decisions


def test_streaming_profile_sounding_decision() -> None:
    config = CoNMFConfig.streaming()
    for seed in (0, 1):
        for negative in (False, True):
            problem = make_planted_problem(seed, SMALL, negative=negative)
            result = solve(problem.x_image, problem.x_audio, problem.bank, config)
            assert result.sounding != negative, (seed, negative, result.confidence)
            if not negative:
                assert result.labels[0] == problem.sounding_word
                assert activation_iou(result.image_activations, result.k_star, problem.mask) >= 0.8


# ----------------------------------------------------------------------------------------------------
# Streaming: warm start, scene changes, temporal term
# ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_warm_start_tracks_a_drifting_scene_in_a_tenth_of_the_steps() -> None:
    windows = make_drifting_sequence(0, 5, SMALL)
    paper = solve_batch(torch.stack([w.x_image for w in windows[1:]]),
                        torch.stack([w.x_audio for w in windows[1:]]), windows[0].bank, CoNMFConfig.paper())
    config = CoNMFConfig.streaming()
    previous = solve(windows[0].x_image, windows[0].x_audio, windows[0].bank, config)
    for window, reference in zip(windows[1:], paper, strict=True):
        result = solve(window.x_image, window.x_audio, window.bank, config, warm_start=previous)
        warm_iou = activation_iou(result.image_activations, result.k_star, window.mask)
        paper_iou = activation_iou(reference.image_activations, reference.k_star, window.mask)
        assert not result.cold_start and result.cold_reason == 'warm'
        assert warm_iou >= paper_iou - 0.05, (warm_iou, paper_iou)
        assert result.steps <= reference.steps // 10, result.steps
        assert result.labels[0] == window.sounding_word and result.sounding
        previous = result


def test_scene_and_sound_changes_force_a_cold_restart() -> None:
    config = CoNMFConfig.streaming()
    for changes in ({'scene_change_at': 2}, {'sound_change_at': 2}):
        windows = make_drifting_sequence(1, 4, SMALL, **changes)
        previous = None
        for index, window in enumerate(windows):
            result = solve(window.x_image, window.x_audio, window.bank, config, warm_start=previous)
            assert result.cold_start == (index in (0, 2)), (changes, index, result.cold_reason)
            if index == 2:
                assert result.cold_reason.startswith('scene change') and result.warm_error_ratio > 1.2
                assert result.objective_terms['temporal'] == 0.0  # no pull towards the old scene
            assert result.labels[0] == window.sounding_word
            previous = result


def test_an_unchanged_window_continues_warm() -> None:
    problem = make_planted_problem(4, SMALL)
    config = CoNMFConfig.streaming()
    first = solve(problem.x_image, problem.x_audio, problem.bank, config)
    again = solve(problem.x_image, problem.x_audio, problem.bank, config, warm_start=first)
    assert not again.cold_start and again.warm_error_ratio <= 1.0 + 1e-4
    assert again.k_star == first.k_star and again.labels[0] == problem.sounding_word
    assert again.steps < first.steps


def test_causal_temporal_term_uses_the_previous_sounding_factors() -> None:
    windows = make_drifting_sequence(2, 2, SMALL)
    first = solve(windows[0].x_image, windows[0].x_audio, windows[0].bank, CoNMFConfig.streaming())
    with_term = solve(windows[1].x_image, windows[1].x_audio, windows[1].bank, CoNMFConfig.streaming(), first)
    without = solve(windows[1].x_image, windows[1].x_audio, windows[1].bank,
                    CoNMFConfig.streaming(beta_t=0.0), first)
    assert without.objective_terms['temporal'] == 0.0
    # −beta_t (cos_I + cos_A) with both cosines close to 1 for a scene that barely moved.
    assert -2.0 <= with_term.objective_terms['temporal'] < -1.5
    assert first.objective_terms['temporal'] == 0.0  # no previous window, no term

    def continuity(result: CoNMFResult) -> float:
        return float(nn.functional.cosine_similarity(result.image_factors[result.k_star],
                                                     first.image_factors[first.k_star], dim=0))

    strong = solve(windows[1].x_image, windows[1].x_audio, windows[1].bank,
                   CoNMFConfig.streaming(beta_t=50.0, tol=0.0, max_steps=30), first)
    free = solve(windows[1].x_image, windows[1].x_audio, windows[1].bank,
                 CoNMFConfig.streaming(beta_t=0.0, tol=0.0, max_steps=30), first)
    assert continuity(strong) > continuity(free)
    # Without warm starting the previous factors still anchor the term (causal_temporal is its own switch)...
    anchored = solve(windows[1].x_image, windows[1].x_audio, windows[1].bank,
                     CoNMFConfig.streaming(warm_start=False, max_steps=3), first)
    assert anchored.cold_start and anchored.cold_reason == 'warm start disabled'
    assert anchored.objective_terms['temporal'] < 0
    # ... but the paper profile solves every window alone, as TACO does: no pull toward the previous one.
    alone = solve(windows[1].x_image, windows[1].x_audio, windows[1].bank, CoNMFConfig.paper(max_steps=3),
                  first)
    assert alone.cold_start and alone.objective_terms['temporal'] == 0.0


def test_batch_temporal_term_links_consecutive_frames() -> None:
    x_image, x_audio, bank = tiny_problem(4, batch=3)
    config = CoNMFConfig.paper(K=3, max_steps=5)
    linked = solve_batch(x_image, x_audio, bank, config, temporal=True)
    free = solve_batch(x_image, x_audio, bank, config, temporal=False)
    # TACO books the whole chain penalty on every frame.
    assert linked[0].objective_terms['temporal'] < 0
    assert all(r.objective_terms['temporal'] == linked[0].objective_terms['temporal'] for r in linked)
    assert all(r.objective_terms['temporal'] == 0.0 for r in free)


def test_paper_profile_solves_each_window_alone() -> None:
    """TACO solves every window from scratch: a previous result changes nothing under the paper profile."""
    problem = make_planted_problem(11, SMALL)
    config = CoNMFConfig.paper(max_steps=40)
    first = solve(problem.x_image, problem.x_audio, problem.bank, config)
    again = solve(problem.x_image, problem.x_audio, problem.bank, config, warm_start=first)
    alone = solve(problem.x_image, problem.x_audio, problem.bank, config)
    assert again.cold_start and again.objective_terms['temporal'] == 0.0
    assert torch.equal(again.image_factors, alone.image_factors)
    assert torch.equal(again.audio_factors, alone.audio_factors)
    assert again.objective == alone.objective
    # The streaming profile keeps its causal pull toward the previous window.
    streaming = CoNMFConfig.streaming(max_steps=40)
    previous = solve(problem.x_image, problem.x_audio, problem.bank, streaming)
    pulled = solve(problem.x_image, problem.x_audio, problem.bank, streaming, warm_start=previous)
    assert pulled.objective_terms['temporal'] < 0


def test_batch_equals_independent_solves() -> None:
    x_image, x_audio, bank = tiny_problem(5, batch=3)
    config = CoNMFConfig.paper(K=3, max_steps=30)
    batched = solve_batch(x_image, x_audio, bank, config)
    for b, result in enumerate(batched):
        alone = solve(x_image[b], x_audio[b], bank, config)
        assert result.k_star == alone.k_star
        torch.testing.assert_close(result.image_factors, alone.image_factors, rtol=1e-4, atol=1e-5)
        assert result.objective == pytest.approx(alone.objective, rel=1e-5)


# ----------------------------------------------------------------------------------------------------
# Readout, determinism, devices
# ----------------------------------------------------------------------------------------------------
def test_label_readout_is_the_cosine_ranking_of_the_sounding_factor() -> None:
    problem = make_planted_problem(7, SMALL)
    result = solve(problem.x_image, problem.x_audio, problem.bank, CoNMFConfig.streaming(top_k=4))
    factor = result.image_factors[result.k_star].unsqueeze(0)
    cosines = nn.functional.cosine_similarity(factor, problem.bank.image)
    best = cosines.topk(4)
    assert result.labels == [problem.bank.words[i] for i in best.indices.tolist()]
    assert result.label_scores == pytest.approx(best.values.tolist(), rel=1e-5)
    assert result.label == result.labels[0]
    assert result.activation_map().shape == (24, 24)


def test_solve_works_under_inference_mode() -> None:
    problem = make_planted_problem(5, SMALL)
    config = CoNMFConfig.streaming(max_steps=6)
    expected = solve(problem.x_image, problem.x_audio, problem.bank, config)
    with torch.inference_mode():
        projection = ProjectionLike(SMALL.audio_dim, SMALL.projection_dim, torch.Generator().manual_seed(0))
        projection.load_state_dict(problem.bank.audio_projection.state_dict())
        bank = AnchorBank(problem.bank.words, problem.bank.image * 1, problem.bank.audio * 1, projection,
                          problem.bank.audio_logit_scale)
        x_image, x_audio = problem.x_image * 1, problem.x_audio * 1  # inference tensors, like encoder outputs
        result = solve(x_image, x_audio, bank, config)
        warm = solve(x_image, x_audio, bank, config, warm_start=result)
    assert result.objective == pytest.approx(expected.objective, rel=1e-6)
    assert not warm.cold_start


def test_cpu_solves_are_deterministic() -> None:
    problem = make_planted_problem(8, SMALL)
    for config in (CoNMFConfig.streaming(max_steps=40), CoNMFConfig.paper(max_steps=40)):
        first = solve(problem.x_image, problem.x_audio, problem.bank, config)
        second = solve(problem.x_image, problem.x_audio, problem.bank, config)
        assert torch.equal(first.image_activations, second.image_activations)
        assert torch.equal(first.audio_factors, second.audio_factors)
        assert first.objective == second.objective and first.steps == second.steps


@pytest.mark.gpu
def test_cuda_solve_matches_cpu() -> None:
    problem = make_planted_problem(9, SMALL)
    config = CoNMFConfig.streaming()
    on_cpu = solve(problem.x_image, problem.x_audio, problem.bank, config)
    on_gpu = solve(problem.x_image.cuda(), problem.x_audio.cuda(), problem.bank, config)
    assert on_gpu.image_factors.is_cuda
    assert on_gpu.k_star == on_cpu.k_star and on_gpu.labels[0] == on_cpu.labels[0]
    warm = solve(problem.x_image.cuda(), problem.x_audio.cuda(), problem.bank, config, warm_start=on_gpu)
    assert not warm.cold_start


def test_sounding_threshold_calibration() -> None:
    assert conmf.calibrate_sounding_threshold([0.2, 0.1, 0.01, 0.04], [True, True, False, False]) == \
        pytest.approx((0.1 * 0.04) ** 0.5)
    overlapping = conmf.calibrate_sounding_threshold([0.2, 0.05, 0.06, 0.01], [True, True, False, False])
    # Balanced accuracy 0.75 at 0.05 (both positives, one negative) and at 0.2; ties go to the lower one.
    assert overlapping == pytest.approx(0.05)
    with pytest.raises(ValueError, match='both sounding and'):
        conmf.calibrate_sounding_threshold([0.1, 0.2], [True, True])


def test_kmeans_is_seeded_and_finds_separated_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = (centres.repeat_interleave(20, 0) + 0.1 * torch.randn(60, 2, generator=gen)).unsqueeze(0)
    found = kmeans_centres(points, 3, seed=5)
    assert torch.equal(found, kmeans_centres(points, 3, seed=5))
    distances = torch.cdist(found[0], centres)
    assert distances.min(dim=0).values.max() < 0.1


def transcribed_torch_kmeans(x: Tensor, k: int, restarts: int = 8, max_iter: int = 100, tol: float = 1e-4,
                             seed: int = 123) -> tuple[Tensor, Tensor]:
    """torch_kmeans' KMeans(init_method='k-means++') on one sample [N, D], restated with plain loops.

    Seeding, one CPU generator: the first centres of all restarts in one uniform draw of ``restarts`` distinct
    tokens; then per further centre, one draw per restart (all restarts in one call) with weights = squared
    distance to that restart's closest centre, tokens already taken weighted 0. Lloyd on all restarts
    together: a token goes to its closest centre, a centre becomes the mean of its tokens (all-zero if it
    has none); stop after the update in which the mean L2 centre move is below ``tol`` in every restart.
    Winner: lowest inertia. Returns (seeding [R, K, D], winning centres [K, D]).
    """
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    first = torch.multinomial(torch.full((1, n), 1.0 / n), restarts, replacement=False, generator=gen)[0]
    taken = [[int(i)] for i in first]
    for _ in range(1, k):
        weights = torch.zeros(restarts, n)
        for r in range(restarts):
            centres = x[taken[r]]
            weights[r] = ((x[:, None, :] - centres[None]) ** 2).sum(-1).min(-1).values
            weights[r, taken[r]] = 0.0
        picks = torch.multinomial(weights, 1, generator=gen)[:, 0]
        for r in range(restarts):
            taken[r].append(int(picks[r]))
    seeding = torch.stack([x[t] for t in taken])
    centres = seeding.clone()
    for _ in range(max_iter):
        moved = []
        for r in range(restarts):
            labels = ((x[:, None, :] - centres[r][None]) ** 2).sum(-1).argmin(-1)
            new = torch.stack([x[labels == c].mean(0) if (labels == c).any() else torch.zeros(x.shape[1])
                               for c in range(k)])
            moved.append((new - centres[r]).norm(dim=-1).mean())
            centres[r] = new
        if all(m < tol for m in moved):
            break
    inertia = [((x[:, None, :] - centres[r][None]) ** 2).sum(-1).min(-1).values.sum()
               for r in range(restarts)]
    return seeding, centres[int(torch.stack(inertia).argmin())]


@pytest.mark.parametrize('scale', [1e-3, 1.0, 1e3])
def test_kmeans_matches_the_torch_kmeans_transcription(scale: float) -> None:
    gen = torch.Generator().manual_seed(int(scale * 1000) % 97)
    blobs = torch.randn(4, 6, generator=gen) * 2
    x = (blobs.repeat_interleave(15, 0) + torch.randn(60, 6, generator=gen)).clamp_min(0) * scale
    seeding, expected = transcribed_torch_kmeans(x, 5)
    first = seeding[:, 0]
    assert len({tuple(row.tolist()) for row in first}) == 8  # 8 distinct first centres
    torch.testing.assert_close(conmf_kmeans_seeding(x, 5), seeding)
    torch.testing.assert_close(kmeans_centres(x, 5), expected, rtol=1e-4, atol=1e-5 * scale)


def conmf_kmeans_seeding(x: Tensor, k: int) -> Tensor:
    from taco_ros.core import kmeans
    return kmeans._kmeans_plus_plus(x, k, 8, 123)


def test_kmeans_empty_cluster_becomes_a_zero_centre() -> None:
    from taco_ros.core import kmeans
    points = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]])
    far = torch.tensor([[[[0.5, 0.5], [50.0, 50.0]]]])  # the second centre attracts no point
    centres, _ = kmeans._lloyd(points, far, max_iter=1, tol=1e-4)
    torch.testing.assert_close(centres[0, 0], torch.tensor([[0.5, 0.5], [0.0, 0.0]]))


def test_anchor_bank_subset_and_device() -> None:
    bank, _ = make_planted_bank(SMALL)
    sub = bank.subset(['Cat', 'Dog'])
    assert sub.words == ['Cat', 'Dog']
    torch.testing.assert_close(sub.image[1], bank.image[bank.words.index('Dog')])
    assert bank.to('cpu') is bank
    with pytest.raises(ValueError, match='not in the bank'):
        bank.subset(['Unicorn'])


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------
def _with(tensor: Tensor, index: tuple, value: float) -> Tensor:
    out = tensor.clone()
    out[index] = value
    return out


@pytest.mark.parametrize('case, match', [
    ('nan_image', 'x_image contains NaN or Inf'),
    ('inf_audio', 'x_audio contains NaN or Inf'),
    ('neg_inf_image', 'x_image contains NaN or Inf'),
    ('zero_image', 'x_image is all zero'),
    ('negative_audio', 'x_audio is all zero'),
    ('image_dim', 'D_I=15'),
    ('audio_dim', 'D_A=11'),
    ('k_too_large', 'K=12 factors need at least K tokens'),
    ('k_one', 'K must be an integer >= 2'),
    ('wrong_rank', r'x_image must have shape \[N, D\]'),
    ('integer_tokens', 'floating-point'),
])
def test_bad_input_raises_a_named_value_error(case: str, match: str | None) -> None:
    x_image, x_audio, bank = tiny_problem(6, batch=1)
    x_image, x_audio = x_image[0], x_audio[0]
    config = CoNMFConfig.paper(K=3, max_steps=3)
    inputs = {
        'nan_image': (_with(x_image, (0, 0), float('nan')), x_audio, config),
        'inf_audio': (x_image, _with(x_audio, (1, 1), float('inf')), config),
        'neg_inf_image': (_with(x_image, (2, 2), float('-inf')), x_audio, config),
        'zero_image': (torch.zeros_like(x_image), x_audio, config),
        'negative_audio': (x_image, -x_audio.abs(), config),
        'image_dim': (x_image[:, :15], x_audio, config),
        'audio_dim': (x_image, x_audio[:, :11], config),
        'k_too_large': (x_image, x_audio, CoNMFConfig.paper(K=12)),
        'k_one': (x_image, x_audio, CoNMFConfig.paper(K=1)),
        'wrong_rank': (x_image.flatten(), x_audio, config),
        'integer_tokens': (x_image.long(), x_audio, config),
    }[case]
    with pytest.raises(ValueError, match=match):
        solve(inputs[0], inputs[1], bank, inputs[2])


def test_bad_bank_and_batch_raise_value_errors() -> None:
    x_image, x_audio, bank = tiny_problem(7, batch=2)
    with pytest.raises(ValueError, match='word list is empty'):
        AnchorBank([], torch.zeros(0, 16), torch.zeros(0, 8), bank.audio_projection, 10.0)
    with pytest.raises(ValueError, match='rows but there are'):
        AnchorBank(['a', 'b'], torch.ones(3, 16), torch.ones(2, 8), bank.audio_projection, 10.0)
    with pytest.raises(ValueError, match='all-zero row'):
        AnchorBank(['a'], torch.zeros(1, 16), torch.ones(1, 8), bank.audio_projection, 10.0)
    with pytest.raises(ValueError, match='logit_scale'):
        AnchorBank(['a'], torch.ones(1, 16), torch.ones(1, 8), bank.audio_projection, float('nan'))
    with pytest.raises(ValueError, match='2 windows but x_audio has 1'):
        solve_batch(x_image, x_audio[:1], bank, CoNMFConfig.paper(K=3, max_steps=2))
    with pytest.raises(ValueError, match='optimizer'):
        solve(x_image[0], x_audio[0], bank, CoNMFConfig.paper(K=3, optimizer='lbfgs'))


@pytest.mark.gpu
def test_inputs_on_different_devices_are_rejected() -> None:
    x_image, x_audio, bank = tiny_problem(9, batch=1)
    with pytest.raises(ValueError, match='is on'):
        solve(x_image[0].cuda(), x_audio[0], bank, CoNMFConfig.paper(K=3, max_steps=2))


def test_divergence_is_reported_not_returned() -> None:
    """Six back-offs of 10x cannot tame lr=1e30: the window fails with the reason."""
    x_image, x_audio, bank = tiny_problem(8, batch=1)
    with pytest.raises(RuntimeError, match=f'non-finite .* {conmf.MAX_BACKOFFS} back-off'):
        solve(x_image[0], x_audio[0], bank, CoNMFConfig.paper(K=3, max_steps=200, lr=1e30))


@pytest.mark.parametrize('optimizer', ['gd', 'adam'])
def test_a_non_finite_step_is_undone_and_the_solve_goes_on(optimizer: str) -> None:
    """lr=1e20 makes the objective non-finite within a few steps (it raised before): the solver goes
    back to the last finite point with a smaller step, reports it, and returns a finite result."""
    x_image, x_audio, bank = tiny_problem(8, batch=1)
    config = CoNMFConfig.paper(K=3, max_steps=200, lr=1e20, optimizer=optimizer)
    result = solve(x_image[0], x_audio[0], bank, config)
    assert result.lr_backoffs >= 1 and result.steps == 200
    assert math.isfinite(result.objective)
    for tensor in (result.image_factors, result.audio_factors, result.image_logits):
        assert bool(torch.isfinite(tensor).all())
    calm = solve(x_image[0], x_audio[0], bank, CoNMFConfig.paper(K=3, max_steps=200))
    assert calm.lr_backoffs == 0
