"""Attacks on erased models: does an erased concept stay erased?

* ``embedding`` — a learned word embedding (textual inversion against the erased model; Pham et al. 2023);
* ``unlearndiffatk`` — discrete prompt tokens found with the diffusion model as its own classifier
  (Zhang et al. 2024);
* ``ringabell`` — prompts reproducing a benign prompt plus a concept vector, found by a genetic search
  on the original text encoder (Tsai et al. 2024);
* ``prompts`` — a published adversarial prompt set (UnlearnDiffAtk nudity, MMA-Diffusion, I2P).

The attack success rate (ASR) is the share of attacked prompts whose image the judge recognises as the
erased concept, counted before or after the attack (UnlearnDiffAtk's convention), with its 95 % Wilson
interval. Library use::

    from hirm.attacks import run_attack
    result = run_attack("embedding", "minicanvas", "Pastel", patches=["pastel.safetensors"], out="runs/ti")
    result["asr"]        # {"k": ..., "n": ..., "rate": ..., "ci95": [lo, hi]}

Every run is seeded, resumable (re-run with the same ``out``), limited by ``time_limit`` and the
attack's step settings, and writes its result, found tokens/embeddings (safetensors + JSON) and the
attacked images; see :mod:`hirm.attacks.run`.
"""

from hirm.attacks.api import default_judge, default_target, read_attack, run_attack
from hirm.attacks.diffusion import Sampler
from hirm.attacks.embedding import EmbeddingAttackConfig
from hirm.attacks.judges import ClassJudge, ConceptJudge, NudityJudge
from hirm.attacks.promptset import PromptSetConfig
from hirm.attacks.registry import AttackSpec, attacks, get_attack
from hirm.attacks.ringabell import RingABellConfig
from hirm.attacks.targets import AttackItem, AttackTarget, canvas_target, csv_target, prompt_target
from hirm.attacks.unlearndiffatk import UnlearnDiffAtkConfig
from hirm.evaluation.metrics import wilson_interval

__all__ = [
    "AttackItem",
    "AttackSpec",
    "AttackTarget",
    "ClassJudge",
    "ConceptJudge",
    "EmbeddingAttackConfig",
    "NudityJudge",
    "PromptSetConfig",
    "RingABellConfig",
    "Sampler",
    "UnlearnDiffAtkConfig",
    "attacks",
    "canvas_target",
    "csv_target",
    "default_judge",
    "default_target",
    "get_attack",
    "prompt_target",
    "read_attack",
    "run_attack",
    "wilson_interval",
]
