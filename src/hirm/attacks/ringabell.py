"""Concept-vector prompts: Ring-A-Bell (Tsai, Hsu, Xie, Lin, Chen, Li, Chen, Yu, Huang, ICLR 2024,
"Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion Models?", arXiv 2310.10012;
code: chiayi-hsu/Ring-A-Bell, ``Get_Concept_Vector.ipynb`` and ``InversePrompt.ipynb``).

Model-agnostic: everything is computed with the *original* text encoder ``E`` and only the final
prompts are judged on the erased model.

1. Concept vector: the mean over prompt pairs of ``E(with the concept) - E(without it)``, the whole
   (L, D) output (``last_hidden_state``).
2. For each benign prompt (the attacked prompt without the concept): target ``E(benign) + eta * c``.
3. A genetic algorithm over token sequences ``[start] + K tokens + [end] * (L - 1 - K)`` minimises
   ``sum ||E(tokens) - target||^2``: each generation keeps the best half, every parent is copied and,
   with probability ``crossover_rate``, crossed at a random point with a random parent (both children
   kept); then every individual mutates one random position to a random token with probability
   ``mutate_rate``. The best sequence, decoded to text, is the attacked prompt.

Reference settings (``InversePrompt.ipynb``): population 200, 3000 generations, mutation 0.25,
crossover 0.5, K = 16 (or 77), eta (``cof``) 3 for nudity, 5-5.5 for violence. The CPU-budget
defaults use a population of 64 and 60 generations. Departure, named: ``precision="auto"`` scores the
population under bfloat16 autocast where the CPU/GPU has native bf16 (the ranking only); ``fp32`` is
the reference arithmetic.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hirm.attacks.registry import AttackSpec, nothing, register
from hirm.attacks.run import AttackContext, Interrupted, ItemOutcome, replace_into
from hirm.attacks.targets import AttackItem
from hirm.attacks.text import decode, encode, token_embedding, vocabulary_ids


@dataclass(frozen=True)
class RingABellConfig:
    """Ring-A-Bell's concept vector and genetic search.

    Attributes:
        eta: strength of the concept vector added to the benign prompt (reference ``cof`` = 3 for nudity).
        length: K, the number of searched tokens (reference 16).
        population, generations: genetic-algorithm size (reference 200, 3000).
        mutate_rate, crossover_rate: reference 0.25, 0.5.
        precision: ``fp32`` (reference) or ``auto`` (bf16 autocast for the fitness where native).
        batch_size: sequences scored per text-encoder call.
    """

    eta: float = 3.0
    length: int = 16
    population: int = 64
    generations: int = 60
    mutate_rate: float = 0.25
    crossover_rate: float = 0.5
    precision: Literal["fp32", "auto"] = "auto"
    batch_size: int = 256

    def __post_init__(self) -> None:
        if not math.isfinite(self.eta):
            raise ValueError(f"eta must be finite, got {self.eta}.")
        for name in ("length", "generations", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.population < 2:
            raise ValueError(f"population must be >= 2, got {self.population}.")
        for name in ("mutate_rate", "crossover_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if self.precision not in ("fp32", "auto"):
            raise ValueError(f"precision must be 'fp32' or 'auto', got {self.precision!r}.")

    @classmethod
    def reference(cls, kind: str | None = None, **overrides: Any) -> RingABellConfig:
        """The authors' settings (population 200, 3000 generations, K 16, eta 3, fp32)."""
        return replace(cls(population=200, generations=3000, precision="fp32"), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def concept_vector(encoder: nn.Module, ctx: AttackContext, pairs) -> Tensor:
    """Mean over pairs of ``E(with) - E(without)``: (L, D)."""
    if not pairs:
        raise ValueError(
            "Ring-A-Bell needs prompt pairs with and without the concept to extract the concept vector; "
            "this target has none (give pairs, e.g. a canvas concept or prompts naming the concept)."
        )
    with_c = encode(encoder, ctx.ids([a for a, _ in pairs])).float()
    without = encode(encoder, ctx.ids([b for _, b in pairs])).float()
    return (with_c - without).mean(dim=0)


def original(ctx: AttackContext, config: RingABellConfig) -> dict[str, Any]:
    """A frozen copy of the original text encoder, the concept vector (L, D) and the encoder's fingerprint."""
    from hirm.core.patch import component_parameters, fingerprint

    encoder = copy.deepcopy(ctx.encoder).eval().requires_grad_(False)
    vector = concept_vector(encoder, ctx, ctx.target.pairs)
    digest = fingerprint(component_parameters(encoder))[:16]
    pairs = hashlib.sha256(json.dumps(ctx.target.pairs).encode()).hexdigest()[:8]
    return {"encoder": encoder, "vector": vector, "fingerprint": f"{digest}-{pairs}"}


def _autocast_dtype(config: RingABellConfig, device: torch.device) -> torch.dtype | None:
    if config.precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return None


@torch.no_grad()
def fitness(encoder: nn.Module, population: Tensor, target: Tensor, config: RingABellConfig) -> Tensor:
    """``sum ||E(tokens) - target||^2`` per sequence: population (P, L) -> (P,)."""
    device = next(encoder.parameters()).device
    dtype = _autocast_dtype(config, device)
    scores = []
    for start in range(0, len(population), config.batch_size):
        chunk = population[start : start + config.batch_size].to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            hidden = encode(encoder, chunk)
        scores.append((hidden.float() - target).square().sum(dim=(1, 2)).cpu())
    return torch.cat(scores)


def genetic_search(
    encoder: nn.Module,
    tokenizer,
    target: Tensor,
    config: RingABellConfig,
    rng: np.random.Generator,
    *,
    budget,
    progress: bool,
    state: dict[str, Any] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[int], float, list[float]]:
    """The best token sequence's K tokens, its fitness, and the best fitness per generation.

    ``state`` (population, generation, history, random state) continues an interrupted search; when
    the budget runs out the current state is handed to ``checkpoint`` before :class:`Interrupted`.
    """
    vocab = vocabulary_ids(tokenizer, token_embedding(encoder).num_embeddings).numpy()
    length, k = tokenizer.model_max_length, config.length
    if k + 2 > length:
        raise ValueError(f"length K={k} does not fit the text encoder's {length} positions.")

    # Scores of the previous generation's sequences: a survivor that was neither mutated nor replaced
    # by a crossover is not scored again (about a third of each generation at the default rates).
    known: dict[bytes, float] = {}
    if state is None:
        population = [individual(tokenizer, vocab, k, rng) for _ in range(config.population)]
        history, first = [], 0
    else:
        rng.bit_generator.state = state["rng"]
        population = [np.asarray(row, dtype=np.int64) for row in state["population"]]
        history, first = list(state["history"]), int(state["generation"])
        known = {np.asarray(row, dtype=np.int64).tobytes(): score for row, score in state.get("known", [])}
    bar = tqdm(range(first, config.generations), desc="Ring-A-Bell search", disable=not progress, leave=False)
    for generation in bar:
        if budget.expired():
            bar.close()
            if checkpoint is not None:
                checkpoint({
                    "generation": generation,
                    "history": history,
                    "population": [row.tolist() for row in population],
                    "known": [[np.frombuffer(key, dtype=np.int64).tolist(), score] for key, score in known.items()],
                    "rng": rng.bit_generator.state,
                })  # fmt: skip
            raise Interrupted(f"time limit reached at Ring-A-Bell generation {generation}")
        keys = [row.tobytes() for row in population]
        new = [i for i, key in enumerate(keys) if key not in known]
        if new:
            fresh = fitness(encoder, torch.from_numpy(np.stack([population[i] for i in new])), target, config)
            known.update({keys[i]: float(score) for i, score in zip(new, fresh.tolist(), strict=True)})
        scores = np.array([known[key] for key in keys], dtype=np.float64)
        known = {key: known[key] for key in keys}  # only this generation's scores carry over
        order = np.argsort(scores, kind="stable")
        population = [population[i] for i in order][: config.population // 2]
        history.append(float(scores[order[0]]))
        bar.set_postfix(loss=f"{history[-1]:.4g}")
        if generation != config.generations - 1:
            population = _mutate(_crossover(population, config, rng, k), config, rng, vocab, k)
    return population[0][1 : 1 + k].tolist(), history[-1], history


def individual(tokenizer, vocab: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """A random sequence of the search: start token, ``k`` vocabulary tokens, end token, padding."""
    row = np.full(tokenizer.model_max_length, tokenizer.eos_token_id, dtype=np.int64)
    row[0] = tokenizer.bos_token_id
    row[1 : 1 + k] = rng.choice(vocab, size=k)
    if tokenizer.pad_token_id != tokenizer.eos_token_id:
        row[2 + k :] = tokenizer.pad_token_id
    return row


def _crossover(parents: list[np.ndarray], config: RingABellConfig, rng: np.random.Generator, k: int):
    children = []
    for parent in parents:
        children.append(parent)
        if rng.random() < config.crossover_rate:
            other = parents[int(rng.integers(len(parents)))]
            point = int(rng.integers(1, k + 1))
            children.append(np.concatenate([parent[:point], other[point:]]))
            children.append(np.concatenate([other[:point], parent[point:]]))
    return children


def _mutate(population: list[np.ndarray], config: RingABellConfig, rng: np.random.Generator, vocab, k: int):
    out = []
    for row in population:
        if rng.random() < config.mutate_rate:
            row = row.copy()
            row[int(rng.integers(1, k + 1))] = int(rng.choice(vocab))
        out.append(row)
    return out


def search(
    ctx: AttackContext, config: RingABellConfig, original: dict[str, Any], benign: str
) -> dict[str, Any]:
    """The genetic search for one benign prompt, cached in the run directory (``search/<hash>.json``).

    The search sees only the original text encoder, never the erasure, so with a shared cache
    (``run_attack(cache_dir=...)``) one search serves every erased model of the same base model.
    """
    key = hashlib.sha256(benign.encode()).hexdigest()[:16]
    name = f"search/{key}.json"
    found = ctx.run.load_json(name)
    shared = None
    if found is None and ctx.cache_dir is not None:
        shared = (
            ctx.cache_dir
            / "ringabell"
            / original["fingerprint"]
            / _config_key(config, ctx.seed)
            / f"{key}.json"
        )
        if shared.is_file():
            found = json.loads(shared.read_text(encoding="utf-8"))
    if found is None:
        encoder = original["encoder"]
        with torch.no_grad():
            target = encode(encoder, ctx.ids([benign])).float() + config.eta * original["vector"]
        rng = np.random.default_rng(ctx.item_seed(int(key, 16) & 0x7FFFFFFF, 1))
        partial = f"search/{key}.partial.json"
        tokens, loss, history = genetic_search(
            encoder, ctx.tokenizer, target, config, rng, budget=ctx.budget, progress=ctx.progress,
            state=ctx.run.load_json(partial), checkpoint=lambda state: ctx.run.save_json(partial, state),
        )  # fmt: skip
        ctx.run.remove(partial)
        found = {
            "benign": benign,
            "tokens": tokens,
            "prompt": decode(ctx.tokenizer, tokens),
            "loss": loss,
            "history": history,
        }
        if shared is not None:
            # a shared search cache (cache_dir): one file per search key, replaced atomically
            replace_into(shared, lambda tmp: tmp.write_text(json.dumps(found), encoding="utf-8"))
    ctx.run.save_json(name, found)
    return found


def _config_key(config: RingABellConfig, seed: int) -> str:
    """The search's settings (batch size and precision aside, which do not change what is searched for)."""
    fields = {k: v for k, v in config.to_dict().items() if k != "batch_size"}
    return hashlib.sha256(json.dumps([fields, seed], sort_keys=True).encode()).hexdigest()[:16]


def benign_prompt(item: AttackItem, concept: str) -> str:
    """The item's benign prompt (given, or the prompt with the concept's name left out)."""
    if item.benign is not None:
        return item.benign
    return " ".join(item.prompt.replace(concept, " ").split())


def attack_batch(
    ctx: AttackContext,
    config: RingABellConfig,
    original: dict[str, Any],
    prepared: Any,
    indices: Sequence[int],
    items: Sequence[AttackItem],
    befores: Sequence[Any],
) -> list[ItemOutcome]:
    """Search each distinct benign prompt once, then judge the found prompts on the erased model."""
    found = [search(ctx, config, original, benign_prompt(item, ctx.target.concept)) for item in items]
    # The decoded prompt is judged as text (as the reference does); re-tokenized byte pieces can make it
    # longer than the search's K tokens, so it is cut where the pipeline would cut it.
    images, verdicts = ctx.judged(ctx.embed([f["prompt"] for f in found], truncate=True), items)
    return [
        ItemOutcome(
            attacked_prompt=f["prompt"],
            success=v,
            image=image,
            tensors={"tokens": torch.tensor(f["tokens"], dtype=torch.long)},
            info={"tokens": f["tokens"], "search_loss": f["loss"]},
        )
        for f, v, image in zip(found, verdicts, images, strict=True)
    ]


register(
    AttackSpec(
        name="ringabell",
        config_cls=RingABellConfig,
        description="Concept-vector prompts found by a genetic search on the original encoder (Ring-A-Bell, Tsai et al. 2024, arXiv 2310.10012)",
        original=original,
        prepare=nothing,
        attack_batch=attack_batch,
    )
)
