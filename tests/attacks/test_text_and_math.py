"""The pieces every attack stands on, on tiny random models: injected word embeddings, slot and
prefix token layouts, the simplex projection, the straight-through draw, Wilson intervals, and
Ring-A-Bell's concept vector and genetic operators."""

from __future__ import annotations

import numpy as np
import pytest
import tiny
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hirm.attacks.ringabell import (
    RingABellConfig,
    _crossover,
    _mutate,
    concept_vector,
    fitness,
    genetic_search,
)
from hirm.attacks.run import Budget, derived_seed
from hirm.attacks.text import (
    as_batch,
    decode,
    encode,
    pad,
    slot_id,
    token_embedding,
    with_prefix,
    with_slots,
    word_ids,
)
from hirm.attacks.unlearndiffatk import UnlearnDiffAtkConfig, _SampleOneHot, project_simplex
from hirm.evaluation.metrics import wilson_interval


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny.clip_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def encoder():
    return tiny.text_encoder()


def test_injected_vectors_equal_the_real_word(tokenizer, encoder):
    """Putting a word's own embedding in the slot gives exactly the prompt with that word."""
    ids, mask = with_slots(tokenizer, "a photo of <x> in a garden", "<x>", 1, slot_id(tokenizer))
    (cat,) = word_ids(tokenizer, "cat")
    vector = token_embedding(encoder).weight[cat].detach()[None, None]
    injected = encode(encoder, as_batch([ids]), torch.tensor([mask]), vector)
    plain = encode(encoder, as_batch([pad(tokenizer, word_ids(tokenizer, "a photo of cat in a garden"))]))
    torch.testing.assert_close(injected, plain, rtol=0, atol=0)
    assert sum(mask) == 1 and mask[4] and ids[4] == slot_id(tokenizer)


def test_injection_is_differentiable_and_leaves_the_encoder_alone(tokenizer, encoder):
    ids, mask = with_slots(tokenizer, "<x> on a table", "<x>", 2, slot_id(tokenizer))
    vectors = torch.randn(1, 2, encoder.config.hidden_size, requires_grad=True)
    encode(encoder, as_batch([ids]), torch.tensor([mask]), vectors).square().sum().backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0
    assert not token_embedding(encoder)._forward_hooks, "the hook must be removed"
    assert mask[1:3] == [True, True] and sum(mask) == 2


def test_slots_without_placeholder_go_first_and_twice_is_an_error(tokenizer):
    ids, mask = with_slots(tokenizer, "a red car", "<x>", 1, slot_id(tokenizer))
    assert mask[1] and ids[2:5] == word_ids(tokenizer, "a red car")
    with pytest.raises(ValueError, match="more than once"):
        with_slots(tokenizer, "<x> and <x>", "<x>", 1, slot_id(tokenizer))


def test_long_prompts_are_cut_as_the_pipeline_cuts_them_and_keep_their_slots(tokenizer):
    slot, limit = slot_id(tokenizer), tokenizer.model_max_length
    long_tail = " ".join(["red"] * (2 * limit))
    from hirm.core.encoder import ConceptError

    with pytest.raises(ConceptError, match="reads at most"):
        with_slots(tokenizer, "<x> " + long_tail, "<x>", 2, slot)
    ids, mask = with_slots(tokenizer, "<x> " + long_tail, "<x>", 2, slot, truncate=True)
    assert len(ids) == len(mask) == limit and mask[1:3] == [True, True] and sum(mask) == 2
    assert ids[-1] == tokenizer.eos_token_id  # cut body, then the end token, as the pipeline does
    # the placeholder past the limit would never be read: the slots move to the front instead
    ids, mask = with_slots(tokenizer, long_tail + " <x>", "<x>", 3, slot, truncate=True)
    assert len(ids) == limit and mask[1:4] == [True, True, True] and sum(mask) == 3


def test_prefix_layout_and_length_check(tokenizer):
    prefix = word_ids(tokenizer, "blue green")
    ids = with_prefix(tokenizer, "a cat", prefix)
    assert (
        ids[0] == tokenizer.bos_token_id
        and ids[1:3] == prefix
        and decode(tokenizer, ids) == "blue green a cat"
    )
    assert len(ids) == tokenizer.model_max_length
    from hirm.core.encoder import ConceptError

    with pytest.raises(ConceptError, match="at most 77"):
        with_prefix(tokenizer, "cat " * 74, prefix)


def test_simplex_projection_known_points():
    got = project_simplex(torch.tensor([[0.5, 0.5, 0.5], [2.0, 0.0, 0.0], [0.2, 0.3, 0.5]]))
    want = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    torch.testing.assert_close(got, want)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=12), st.integers(0, 2**31 - 1))
def test_simplex_projection_is_the_closest_simplex_point(values, seed):
    v = torch.tensor([values], dtype=torch.float64)
    p = project_simplex(v)
    assert torch.all(p >= 0) and abs(p.sum().item() - 1) < 1e-9
    torch.testing.assert_close(project_simplex(p), p)  # idempotent
    others = torch.distributions.Dirichlet(torch.ones(v.shape[1], dtype=torch.float64)).sample((200,))
    assert (v - p).norm() <= (v - others).norm(dim=1).min() + 1e-9


def test_straight_through_draw_samples_a_one_hot_and_clips_the_gradient():
    probs = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    out = _SampleOneHot.apply(probs, torch.Generator().manual_seed(0))
    assert out.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    (out * torch.tensor([[5.0, -0.5, -3.0], [0.2, 0.0, 9.0]])).sum().backward()
    torch.testing.assert_close(probs.grad, torch.tensor([[1.0, -0.5, -1.0], [0.2, 0.0, 1.0]]))


def test_unlearndiffatk_timesteps_follow_the_reference_formula():
    assert UnlearnDiffAtkConfig(n_timesteps=50).timesteps()[:3] == [10, 30, 50]
    assert UnlearnDiffAtkConfig(n_timesteps=5).timesteps() == [100, 300, 500, 700, 900]
    assert UnlearnDiffAtkConfig.reference().iterations == 40
    with pytest.raises(ValueError, match="k must be >= 1"):
        UnlearnDiffAtkConfig(k=0)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_derived_seeds_differ_and_repeat():
    assert derived_seed(0, 1) == derived_seed(0, 1) != derived_seed(0, 2)
    assert 0 <= derived_seed(7, -1) < 2**63


class _Ctx:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def ids(self, prompts):
        return as_batch([pad(self.tokenizer, word_ids(self.tokenizer, p)) for p in prompts])


def test_concept_vector_is_the_mean_difference(tokenizer, encoder):
    pairs = [("a cat on a sofa", "a sofa"), ("a cat in a box", "a box")]
    ctx = _Ctx(tokenizer)
    got = concept_vector(encoder, ctx, pairs)
    with torch.no_grad():
        a, b = (
            encode(encoder, ctx.ids([p for p, _ in pairs])),
            encode(encoder, ctx.ids([q for _, q in pairs])),
        )
    torch.testing.assert_close(got, (a - b).mean(0))
    with pytest.raises(ValueError, match="prompt pairs"):
        concept_vector(encoder, ctx, [])


def test_genetic_operators_keep_start_end_and_length():
    rng = np.random.default_rng(0)
    config = RingABellConfig(population=8, crossover_rate=1.0, mutate_rate=1.0, length=4)
    parents = [np.array([9, i, i, i, i, 8, 8]) for i in range(4)]
    children = _crossover(parents, config, rng, 4)
    assert len(children) == 12 and all(c[0] == 9 and (c[5:] == 8).all() for c in children)
    mutated = _mutate(children, config, rng, np.array([100, 101]), 4)
    assert all(((m[1:5] >= 100).sum() == 1) for m in mutated[:1])
    assert all(m[0] == 9 and (m[5:] == 8).all() and len(m) == 7 for m in mutated)


def test_genetic_search_improves_the_fitness(tokenizer, encoder):
    ctx = _Ctx(tokenizer)
    with torch.no_grad():
        target = encode(encoder, ctx.ids(["a cat"])).float()
    config = RingABellConfig(population=16, generations=15, length=2, precision="fp32")
    tokens, loss, history = genetic_search(
        encoder, tokenizer, target, config, np.random.default_rng(0), budget=Budget(), progress=False
    )
    assert len(history) == 15 and len(tokens) == 2
    assert history[-1] <= history[0] and loss == history[-1]
    ids = torch.tensor([[tokenizer.bos_token_id, *tokens] + [tokenizer.eos_token_id] * 74])
    assert fitness(encoder, ids, target, config).item() == pytest.approx(loss, rel=1e-5)


def test_genetic_search_scores_each_sequence_once_and_finds_what_a_plain_loop_finds(
    tokenizer, encoder, monkeypatch
):
    """A survivor carried over unchanged keeps its score instead of being scored again; with a score
    that depends on the sequence alone, the search is step for step the plain genetic loop (every
    sequence scored every generation: sort, keep the better half, crossover, mutate)."""
    import hirm.attacks.ringabell as ringabell

    def score(population):  # a pure function of each row
        return torch.tensor([float((row * torch.arange(len(row))).sum() % 1009) for row in population])

    scored = []

    def counted(encoder, population, target, config):
        scored.append(len(population))
        return score(population)

    monkeypatch.setattr(ringabell, "fitness", counted)
    config = RingABellConfig(population=16, generations=12, length=3)
    tokens, loss, history = genetic_search(
        encoder, tokenizer, None, config, np.random.default_rng(3), budget=Budget(), progress=False
    )

    # the plain loop, with the same random stream
    rng = np.random.default_rng(3)
    vocab = ringabell.vocabulary_ids(tokenizer, ringabell.token_embedding(encoder).num_embeddings).numpy()
    k = 3
    population = [ringabell.individual(tokenizer, vocab, k, rng) for _ in range(16)]
    plain, plain_rows = [], 0
    for generation in range(12):
        plain_rows += len(population)
        scores = score(torch.from_numpy(np.stack(population))).numpy()
        order = np.argsort(scores, kind="stable")
        population = [population[i] for i in order][:8]
        plain.append(float(scores[order[0]]))
        if generation != 11:
            population = _mutate(_crossover(population, config, rng, k), config, rng, vocab, k)
    assert history == plain and tokens == population[0][1 : 1 + k].tolist() and loss == plain[-1]
    assert scored[0] == 16 and sum(scored) < 0.8 * plain_rows  # unchanged survivors were not scored again
