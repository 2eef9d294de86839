"""Attack-hardened HiRM (``hirm-adv``): misdirection trained against an attacker.

HiRM misdirects the late read-out of the concept's own prompts. An attacker who controls the input
word embeddings (textual inversion, a searched prompt) can look for *other* inputs whose read-out
through the edited encoder still equals the concept's original read-out. Hardened HiRM alternates:

1. **misdirect**: HiRM's objective (same trainable early-block tensors, reading point, target, AdamW
   settings) over the concept prompts *and every adversarial input found so far*, each sent to its
   concept's target::

       min_theta_early  sum_{x in prompts U adversarial} || h_late(x; theta_early) - t_c(x) ||^2 / (N L D)

2. **attack**: for each concept and prompt, ``attack_tokens`` word embeddings put in the concept's place
   are optimised (Adam, ``attack_steps``) so that the *edited* encoder's read-out of that input comes as
   close as possible to the *original* read-out of the concept prompt (the best recovery of the
   concept's read-out)::

       v* = argmin_v || h_late(prompt with v in place of c; theta_early) - h_late(prompt; theta_early_0) ||^2

   ``attack="embedding"`` keeps the continuous vectors (the strongest, textual-inversion-like
   attacker); ``attack="discrete"`` projects each onto the nearest vocabulary embedding, i.e. a real
   prompt (as UnlearnDiffAtk's prompts are).

``rounds`` misdirect phases with an attack between consecutive ones; the design stays HiRM's: only the
early-block tensors change and the result is a patch. With ``rounds=1`` it is plain HiRM.
The functions of :mod:`hirm.core.hirm` (trainable tensors, read-outs, targets) are reused unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from hirm.core.config import REFERENCE_READ, Concept, HiRMConfig, ReadingPoint, config_from_dict, family_read
from hirm.core.encoder import named_parameters, read_representation, reading_module, tokenize
from hirm.core.hirm import NonFiniteLossError, build_targets, trainable_names, training_prompts
from hirm.core.patch import Patch, make_patch, merge_patches
from hirm.core.registry import MethodSpec, register

logger = logging.getLogger(__name__)

#: HiRM settings that erase on the miniature world (read the final hidden state, 100 steps, lr 5e-4),
#: the same as the comparison's ``hirm-s-tuned`` entry; the reference ones barely move MiniCLIP.
WORLD_HIRM = HiRMConfig(read=ReadingPoint(site="final"), steps=100, lr=5e-4)


@dataclass(frozen=True)
class HardenedHiRMConfig:
    """Hardened HiRM.

    Attributes:
        hirm: HiRM's settings (trainable tensors, reading point, lr, AdamW, templates, preserve); its
            ``steps`` (or the reference value for the concepts) is the number of steps *per round*.
            Hardened HiRM trains in float32 with one MSE over all prompts: ``precision`` must be
            ``auto`` or ``fp32`` and ``concept_weighting`` ``mean`` (others are refused, not ignored).
        rounds: misdirect phases (an attack runs between consecutive ones).
        attack: ``embedding`` (continuous vectors) or ``discrete`` (nearest vocabulary tokens).
        attack_tokens: word embeddings the attacker puts in the concept's place.
        attack_steps, attack_lr: the attacker's Adam steps and learning rate.
        attack_init: ``concept`` (start from the concept's own word embeddings, averaged) or ``random``
            (random vocabulary tokens).
    """

    hirm: HiRMConfig = field(default_factory=HiRMConfig)
    rounds: int = 4
    attack: Literal["embedding", "discrete"] = "embedding"
    attack_tokens: int = 1
    attack_steps: int = 50
    attack_lr: float = 1e-2
    attack_init: Literal["concept", "random"] = "concept"

    def __post_init__(self) -> None:
        if isinstance(self.hirm, dict):  # from JSON (patch metadata, --set): fields over the defaults
            object.__setattr__(self, "hirm", config_from_dict({**asdict(HiRMConfig()), **self.hirm}))
        for name in ("rounds", "attack_tokens", "attack_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not (self.attack_lr > 0 and math.isfinite(self.attack_lr)):
            raise ValueError(f"attack_lr must be a positive finite number, got {self.attack_lr}.")
        if self.attack not in ("embedding", "discrete"):
            raise ValueError(f"attack must be 'embedding' or 'discrete', got {self.attack!r}.")
        if self.attack_init not in ("concept", "random"):
            raise ValueError(f"attack_init must be 'concept' or 'random', got {self.attack_init!r}.")
        if self.hirm.precision not in ("auto", "fp32"):
            raise ValueError(
                f"hirm-adv trains in float32; hirm.precision={self.hirm.precision!r} is not supported "
                "(use 'fp32' or 'auto', or method 'hirm' for reduced precision)."
            )
        if self.hirm.concept_weighting != "mean":
            raise ValueError(
                f"hirm-adv weights every prompt equally; hirm.concept_weighting="
                f"{self.hirm.concept_weighting!r} is not supported (use 'mean', or method 'hirm')."
            )

    @classmethod
    def world(cls, **overrides: Any) -> HardenedHiRMConfig:
        """On the miniature world: :data:`WORLD_HIRM` per round."""
        return replace(cls(hirm=WORLD_HIRM), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Inputs:
    """Encoder inputs that must be misdirected: ids (B, L), optional injected vectors (B, k, D) at mask (B, L)."""

    ids: Tensor
    owners: list[int]
    mask: Tensor | None = None
    vectors: Tensor | None = None

    def read(self, encoder: nn.Module, point: ReadingPoint) -> Tensor:
        from hirm.attacks.text import injected

        if self.mask is None:
            return read_representation(encoder, self.ids, point)
        with injected(encoder, self.mask, self.vectors):
            return read_representation(encoder, self.ids, point)


class _Hardener:
    def __init__(
        self, encoder: nn.Module, tokenizer, concepts: Sequence[Concept], config: HardenedHiRMConfig
    ) -> None:
        self.encoder, self.tokenizer, self.config = encoder, tokenizer, config
        self.concepts = list(concepts)
        self.point = config.hirm.read or REFERENCE_READ  # as erase_encoder (erase() resolves it)
        self.device = next(encoder.parameters()).device
        self.training = training_prompts(self.concepts, config.hirm.templates)
        self.prompts, self.owners = list(self.training.texts), list(self.training.owners)
        self.generator = torch.Generator(device="cpu").manual_seed(config.hirm.seed)

    @torch.no_grad()
    def originals(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """On the unedited encoder: targets (N, L, D), the prompts' read-outs (N, L, D), preserved read-outs."""
        reading_module(self.encoder, self.point)
        ids = tokenize(self.tokenizer, self.prompts, device=self.device)
        # HiRM's own targets: a prompt target read in each training prompt's template, read-out RMS scaling.
        targets = build_targets(self.encoder, self.tokenizer, self.concepts, self.training, ids, self.point)
        reads = read_representation(self.encoder, ids, self.point).float()
        keep = self.config.hirm.preserve
        preserved = (
            read_representation(
                self.encoder, tokenize(self.tokenizer, list(keep), device=self.device), self.point
            ).float()
            if keep
            else None
        )
        return targets, reads, preserved

    def slotted(self) -> tuple[Tensor, Tensor]:
        """Each concept prompt with ``attack_tokens`` slots in the concept's place: ids and mask (N, L)."""
        from hirm.attacks.text import as_batch, slot_id, with_slots

        rows = [
            with_slots(self.tokenizer, prompt.replace(self.concepts[o].text, "\x00"), "\x00",
                       self.config.attack_tokens, slot_id(self.tokenizer))
            for prompt, o in zip(self.prompts, self.owners)
        ]  # fmt: skip
        return as_batch([r[0] for r in rows], self.device), torch.tensor(
            [r[1] for r in rows], device=self.device
        )

    def initial_vectors(self) -> Tensor:
        from hirm.attacks.text import token_embedding, vocabulary_ids, word_ids

        table = token_embedding(self.encoder).weight.detach().float()
        k, n = self.config.attack_tokens, len(self.prompts)
        if self.config.attack_init == "random":
            vocab = vocabulary_ids(self.tokenizer, table.shape[0])
            picks = vocab[torch.randint(len(vocab), (n, k), generator=self.generator)]
            return table[picks.to(self.device)]
        rows = [table[word_ids(self.tokenizer, self.concepts[o].text)].mean(0) for o in self.owners]
        return torch.stack(rows)[:, None].repeat(1, k, 1)

    def attack(self, recovered: Tensor) -> _Inputs:
        """Word embeddings in the concept's place whose edited read-out best matches ``recovered`` (N, L, D)."""
        from hirm.attacks.text import token_embedding, vocabulary_ids

        ids, mask = self.slotted()
        vectors = self.initial_vectors().requires_grad_(True)
        optimizer = torch.optim.Adam([vectors], lr=self.config.attack_lr)
        for _ in range(self.config.attack_steps):
            optimizer.zero_grad(set_to_none=True)
            read = _Inputs(ids, self.owners, mask, vectors).read(self.encoder, self.point).float()
            loss = nn.functional.mse_loss(read, recovered)
            (grad,) = torch.autograd.grad(loss, [vectors])
            vectors.grad = grad
            optimizer.step()
        vectors = vectors.detach()
        if self.config.attack == "embedding":
            return _Inputs(ids, list(self.owners), mask, vectors)
        table = token_embedding(self.encoder).weight.detach().float()
        vocab = vocabulary_ids(self.tokenizer, table.shape[0]).to(self.device)
        nearest = vocab[torch.cdist(vectors.reshape(-1, vectors.shape[-1]), table[vocab]).argmin(dim=1)]
        discrete = ids.clone()
        discrete[mask] = nearest
        return _Inputs(discrete, list(self.owners))


def harden_encoder(
    encoder: nn.Module,
    tokenizer,
    concepts: Sequence[Concept],
    config: HardenedHiRMConfig = HardenedHiRMConfig(),
    *,
    component: str = "text_encoder",
    base: dict | None = None,
    progress: bool = True,
) -> Patch:
    """Hardened HiRM on one CLIP encoder; the encoder is trained in place and restored afterwards."""
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    start = time.perf_counter()
    hirm = config.hirm
    names = trainable_names(encoder, hirm)
    params = named_parameters(encoder)
    saved = {n: params[n].detach().clone() for n in names}
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = encoder.training
    hardener = _Hardener(encoder, tokenizer, concepts, config)
    steps, lr = hirm.resolved_steps(concepts), hirm.resolved_lr(concepts)
    device = next(encoder.parameters()).device
    # Seeded like the HiRM reference, inside a fork: the caller's random stream is left as it was.
    rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    rng.__enter__()
    encoder.eval()
    history: dict[str, list] = {"misdirect": [], "attack": []}
    try:
        targets, recovered, preserved = hardener.originals()
        inputs = [
            _Inputs(tokenize(tokenizer, hardener.prompts, device=hardener.device), list(hardener.owners))
        ]
        encoder.requires_grad_(False)
        for n in names:
            params[n].requires_grad_(True)
        torch.manual_seed(hirm.seed)
        optimizer = torch.optim.AdamW(
            [params[n] for n in names], lr=lr, betas=hirm.betas, eps=hirm.eps, weight_decay=hirm.weight_decay
        )
        keep_ids = tokenize(tokenizer, list(hirm.preserve), device=hardener.device) if hirm.preserve else None
        bar = tqdm(
            total=config.rounds * steps, desc=f"hirm-adv {component}", disable=not progress, leave=False
        )
        for round_ in range(config.rounds):
            if round_:
                found = hardener.attack(recovered)
                with torch.no_grad():
                    gap = nn.functional.mse_loss(
                        found.read(encoder, hardener.point).float(), recovered
                    ).item()
                history["attack"].append(gap)
                inputs.append(found)
            losses = []
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                # Row i of every input (the prompts, each attack's finds) is training prompt i: targets[i].
                loss = sum(
                    nn.functional.mse_loss(x.read(encoder, hardener.point).float(), targets) for x in inputs
                ) / len(inputs)
                if hirm.preserve_weight > 0:
                    keep = read_representation(encoder, keep_ids, hardener.point).float()
                    loss = loss + hirm.preserve_weight * nn.functional.mse_loss(keep, preserved)
                value = loss.item()
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"Loss became {value} in round {round_}; lower the lr. Nothing was saved."
                    )
                loss.backward()
                optimizer.step()
                losses.append(value)
                bar.update(1)
                bar.set_postfix(round=round_, loss=f"{value:.4g}")
            history["misdirect"].append(losses)
        bar.close()
        edited = {f"{component}/{n}": params[n].detach().clone() for n in names}
        if not all(torch.isfinite(v).all() for v in edited.values()):
            raise NonFiniteLossError("Training produced non-finite weights. Nothing was saved.")
    finally:
        with torch.no_grad():
            for n, value in saved.items():
                params[n].copy_(value)
        for n, flag in flags.items():
            params[n].requires_grad_(flag)
        encoder.train(was_training)
        rng.__exit__(None, None, None)
    return make_patch(
        method="hirm-adv",
        originals={f"{component}/{n}": v for n, v in saved.items()},
        edited=edited,
        config=config.to_dict(),
        concepts=[asdict(c) for c in concepts],
        base=dict(base or {}),
        extra={
            "seconds": time.perf_counter() - start,
            "final_loss": {component: history["misdirect"][-1][-1]},
            "losses": {component: [v for round_ in history["misdirect"] for v in round_]},
            "attack_gaps": {component: history["attack"]},
            "steps_per_round": steps,
            "lr": lr,
        },
    )


def erase(
    model: Any,
    concepts: Sequence[Concept],
    config: HardenedHiRMConfig = HardenedHiRMConfig(),
    *,
    components: Sequence[str] | None = None,
    progress: bool = True,
) -> Patch:
    """Hardened HiRM on every CLIP text encoder of ``model`` (or only ``components``); one patch.
    ``config.hirm.read=None`` takes the family's reading point, as :func:`hirm.core.hirm.erase` does."""
    if config.hirm.read is None:
        config = replace(config, hirm=replace(config.hirm, read=family_read(model.family.name)))
    selected = model.selected_encoders(components)
    patches = [
        harden_encoder(
            model.text_encoder(name), model.tokenizer(name), concepts, config, component=name,
            base=model.base_info(), progress=progress,
        )
        for name in selected
    ]  # fmt: skip
    return merge_patches(patches)


register(
    MethodSpec(
        name="hirm-adv",
        config_cls=HardenedHiRMConfig,
        erase=erase,
        edits="CLIP text encoder, early blocks (as HiRM), misdirection trained against an embedding/prompt attacker",
        description="Attack-hardened HiRM: HiRM alternated with an attacker recovering the concept's read-out",
        follows="ours: HiRM (authors' train.py) alternated with a read-out-recovering attacker",
        uses_target=True,
    )
)
