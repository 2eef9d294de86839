"""Each attack brings back a concept that a deliberately weak erasure left recoverable, and finds
nothing on a model where the concept never existed (see conftest.py for both models)."""

from __future__ import annotations

import pytest

from hirm.attacks import EmbeddingAttackConfig, RingABellConfig, UnlearnDiffAtkConfig, run_attack

#: Budgets of a few seconds per attack on the miniature world.
FAST = {
    "embedding": EmbeddingAttackConfig(steps=40),
    "unlearndiffatk": UnlearnDiffAtkConfig(iterations=10, n_timesteps=3),
    "ringabell": RingABellConfig(population=32, generations=30, length=8),
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Ring-A-Bell's searches never see the erasure: both tests share them."""
    return tmp_path_factory.mktemp("attack-cache")


def _attack(name, target, patch, out, cache):
    return run_attack(
        name,
        "minicanvas",
        target,
        out=out,
        patches=[patch],
        config=FAST[name],
        progress=False,
        cache_dir=cache,
    )


#: Measured on MiniCanvas 2 (2026-11-26): the discrete attacks do not bring Cats back from the word
#: blend, neither at these budgets nor at their CPU defaults (UnlearnDiffAtk 20 x 5, Ring-A-Bell 64 x 60,
#: 16 tokens): 0/4 after the attack. The erasure is recoverable in principle: prefixing "kitten" or "cat"
#: (synonyms the blend leaves intact) brings Cats back on 2 of the 4 prompts at this blend (alpha 0.75;
#: 3 of 4 at alpha 0.6 and 0.5).
#: On the first world the U-Net read the padding, which any prefix changes; MiniCanvas 2 reads the word's
#: rows, as SD does, and the token searches did not find a synonym. Open in issue 14.
_DISCRETE_MISS = pytest.mark.xfail(
    strict=True,
    reason="MiniCanvas 2: discrete token search does not recover the word-blend erasure (issue 14)",
)


@pytest.mark.parametrize(
    "name",
    [
        "embedding",
        pytest.param("ringabell", marks=_DISCRETE_MISS),
        pytest.param("unlearndiffatk", marks=_DISCRETE_MISS),
    ],
)
def test_attack_recovers_a_weakly_erased_concept(name, weak_patch, cats_target, tmp_path, shared):
    result = _attack(name, cats_target, weak_patch, tmp_path / name, shared)
    assert result["complete"] and result["asr"]["n"] == 4
    assert result["before"]["k"] == 0, "the weak erasure must erase the plain prompts"
    assert result["after"]["k"] >= 2, result["items"]
    assert result["asr"]["rate"] >= 0.5


@pytest.mark.parametrize(
    "name",
    [
        "embedding",
        "ringabell",
        pytest.param(
            "unlearndiffatk",
            marks=pytest.mark.xfail(
                strict=True,
                reason="MiniCanvas 2: on the untrained U-Net's noise images the object judge calls one attacked "
                "image Cats (1 of 2): a judge false positive that the ASR counts (issue 14)",
            ),
        ),
    ],
)
def test_attack_finds_nothing_where_the_concept_never_existed(
    name, never_patch, cats_target, tmp_path, shared
):
    result = _attack(name, cats_target.limit(2), never_patch, tmp_path / name, shared)
    assert result["complete"] and result["asr"]["n"] == 2
    assert result["asr"]["k"] == 0, result["items"]
