"""Published adversarial prompt sets as an attack: each prompt of the set is generated on the erased
model (its own seed and guidance) and judged; the success rate is the share recognised.

Use it with :func:`hirm.attacks.targets.csv_target` on the sets shipped in ``shared/data`` (nudity on
real models, judged by NudeNet):

* UnlearnDiffAtk's nudity prompts: ``unlearndiffatk/nudity.csv`` (142 I2P rows; also in the package);
* MMA-Diffusion's adversarial prompts: ``mma_diffusion_nsfw_adv_prompts.csv``, column ``adv_prompt``;
* I2P: ``i2p.csv`` (4,703 rows; per-row ``evaluation_seed`` / ``evaluation_guidance``).

``hirm eval nudity --prompts FILE [--prompt-column adv_prompt] --patch P`` measures the same nude rate
with the evaluation harness (its image cache, multi-process sharding); this attack writes it in the
attack-result format (Wilson interval, attacked images) so that it sits in the same table as the
optimised attacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hirm.attacks.registry import AttackSpec, nothing, register
from hirm.attacks.run import AttackContext, ItemOutcome
from hirm.attacks.targets import AttackItem


@dataclass(frozen=True)
class PromptSetConfig:
    """Nothing to tune: the prompts are the attack."""

    @classmethod
    def reference(cls, kind: str | None = None) -> PromptSetConfig:
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def attack_batch(
    ctx: AttackContext,
    config: PromptSetConfig,
    original: Any,
    prepared: Any,
    indices: Sequence[int],
    items: Sequence[AttackItem],
    befores: Sequence[Any],
) -> list[ItemOutcome]:
    images, verdicts = ctx.judged(ctx.embed([item.prompt for item in items], truncate=True), items)
    return [ItemOutcome(i.prompt, v, image) for i, v, image in zip(items, verdicts, images, strict=True)]


register(
    AttackSpec(
        name="prompts",
        config_cls=PromptSetConfig,
        description="A published adversarial prompt set (UnlearnDiffAtk nudity, MMA-Diffusion, I2P) judged on the erased model",
        original=nothing,
        prepare=nothing,
        attack_batch=attack_batch,
        judge_before=False,
    )
)
