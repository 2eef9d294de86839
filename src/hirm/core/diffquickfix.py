"""DiffQuickFix (Basu, Zhao, Morariu, Feizi, Manjunatha, ICLR 2024, "Localizing and Editing Knowledge
in Text-to-Image Generative Models").

Causal tracing localises visual attributes in SD's CLIP text encoder to one state: block 0's
self-attention output at the concept's last token. DiffQuickFix edits only that block's output
projection ``W`` (``encoder.layers.0.self_attn.out_proj.weight``, shape (D, D)) in closed form so that
the concept's keys are sent to a guide prompt's values::

    min_W'  sum_i ||W' k_i - v_i||^2 + lam ||W' - W||_F^2   =>   W' = (lam W + sum_i v_i k_i^T)(lam I + sum_i k_i k_i^T)^-1

``k_i`` = inputs of ``out_proj`` (the attention-mixed values) on a concept prompt, ``v_i`` = outputs of
``out_proj`` on the matching guide prompt, both on the unedited encoder; ``lam`` = 0.01.

Defaults follow the authors' notebook (adobe-research/DiffQuickFixRelease,
``causal_trace_model_edit.ipynb``, ``use_eos = 1``, augmentations on):

* prompts: the concept ``X`` and "A photo of X", "An image of X", "A picture of X"; the guide ``G`` in
  the same four templates (the notebook lower-cases a leading "A" of X; CLIP's tokenizer lower-cases
  everything, so the tokens are the same);
* positions: keys from the concept's last token (the token before the first end token in the notebook,
  which is the concept's last token in these templates) through the end token and all the padding
  (77 - i_X pairs per prompt); values from the guide's last token onwards, aligned at that token, and
  where the guide runs out first, position 76 repeated (the notebook's padding of the value indices).
  An empty guide's last token is the start token (index 0), as in the notebook.
* values: the output of ``out_proj`` *including its bias* (the notebook hooks the layer's output). The
  edit changes only the weight, so at inference the bias is added once more: ``value="bias-free"``
  leaves it out of ``v`` (``v_i = W k*_i``), our correction.
* ``use_eos=False`` is the notebook's ``use_eos = 0``: one pair per prompt, the last tokens only.

Templates may put text after ``{concept}``; keys then start at the concept's last token (not the
prompt's) and run to the end as above.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from hirm.core.config import (
    Concept,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_prompt,
    check_templates,
)
from hirm.core.encoder import ConceptError, layers, resolve_layer
from hirm.core.patch import Patch, make_patch, merge_patches
from hirm.core.registry import MethodSpec, register
from hirm.core.uce import prompt_ids

logger = logging.getLogger(__name__)

_SLOT = "{concept}"
DqfValue = Literal["notebook", "bias-free"]

#: The notebook's prompts: the bare concept and its three augmentations.
NOTEBOOK_TEMPLATES: tuple[str, ...] = (
    "{concept}",
    "A photo of {concept}",
    "An image of {concept}",
    "A picture of {concept}",
)


@dataclass(frozen=True)
class DiffQuickFixConfig:
    """DiffQuickFix settings; defaults follow the authors' notebook (see the module docstring).

    Attributes:
        guide: prompt the concept is mapped to (the notebook's example maps "van gogh" -> "painting");
            default the empty prompt ``""``.
        templates: prompts with ``{concept}`` (exactly once); each gives key/value pairs per concept,
            the concept and the guide put in the slot. Default: the notebook's four.
        use_eos: ``True`` = pairs from the last token through the end token and padding (notebook,
            ``use_eos = 1``); ``False`` = one pair per prompt at the last tokens.
        value: ``notebook`` = ``out_proj``'s output with its bias (as the notebook); ``bias-free`` =
            ``W k*`` (the bias is not edited, so it is not counted twice).
        lam: weight of ``||W' - W||^2``; must be > 0 (notebook: 0.01).
        layer: block whose self-attention ``out_proj`` is edited (0 = the paper's causal state).
    """

    guide: str = ""
    templates: tuple[str, ...] = NOTEBOOK_TEMPLATES
    use_eos: bool = True
    value: DqfValue = "notebook"
    lam: float = 0.01
    layer: int = 0

    def __post_init__(self) -> None:
        owner = "DiffQuickFixConfig"
        check_prompt(owner, "guide", self.guide, empty=True)
        check_templates(owner, "templates", self.templates)
        if not self.templates:
            raise ValueError(f"{owner}.templates must hold at least one template; got ().")
        for i, template in enumerate(self.templates):
            if template.count(_SLOT) != 1:
                raise ValueError(
                    f"{owner}.templates[{i}] must contain '{{concept}}' exactly once; got {template!r}."
                )
        check_bool(owner, "use_eos", self.use_eos)
        check_choice(owner, "value", self.value, get_args(DqfValue))
        check_float(owner, "lam", self.lam, positive=True)
        check_int(owner, "layer", self.layer)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def slot_position(tokenizer, template: str, text: str) -> int:
    """Index (in the padded ids, start token = 0) of the last token of ``text`` placed in ``template``:
    the last token of everything up to and including ``text`` (the start token if that is empty)."""
    prefix = template[: template.index(_SLOT)] + text
    prefix_ids = tokenizer(prefix)["input_ids"]  # [start, tokens..., end]
    full_ids = tokenizer(template.replace(_SLOT, text))["input_ids"]
    index = len(prefix_ids) - 2
    if full_ids[: index + 1] != prefix_ids[: index + 1]:
        raise ConceptError(
            f"In {template.replace(_SLOT, text)!r} the tokens of {text!r} merge with the text after it; "
            "put a space or punctuation after '{concept}' in the template."
        )
    return index


def pair_positions(
    concept_last: int, guide_last: int, seq_len: int, use_eos: bool
) -> tuple[list[int], list[int]]:
    """Key positions on the concept prompt and value positions on the guide prompt, pairwise.

    ``use_eos``: keys ``i_c .. L-1``; values ``i_g + j`` capped at ``L - 1`` (the notebook pads with 76).
    Otherwise one pair ``(i_c, i_g)``.
    """
    if not use_eos:
        return [concept_last], [guide_last]
    keys = list(range(concept_last, seq_len))
    return keys, [min(guide_last + j, seq_len - 1) for j in range(len(keys))]


@torch.no_grad()
def out_proj_io(encoder: nn.Module, tokenizer, prompts: Sequence[str], layer: int) -> tuple[Tensor, Tensor]:
    """Input and output of block ``layer``'s self-attention ``out_proj`` for ``prompts``, (B, L, D) each."""
    module = layers(encoder)[layer].self_attn.out_proj
    store: dict[str, Tensor] = {}

    def hook(_module: nn.Module, inputs: tuple, output: Tensor) -> None:
        store["in"], store["out"] = inputs[0].detach(), output.detach()

    device = next(encoder.parameters()).device
    ids, _ = prompt_ids(tokenizer, prompts, device=device)
    handle = module.register_forward_hook(hook)
    try:
        encoder(input_ids=ids)
    finally:
        handle.remove()
    return store["in"], store["out"]


def out_proj_inputs(encoder: nn.Module, tokenizer, prompts: Sequence[str], layer: int) -> Tensor:
    """The input of block ``layer``'s self-attention ``out_proj`` for ``prompts``, (B, L, D)."""
    return out_proj_io(encoder, tokenizer, prompts, layer)[0]


def quickfix_weight(weight: Tensor, keys: Tensor, values: Tensor, lam: float) -> Tensor:
    """``W' = (lam W + V^T K)(lam I + K^T K)^-1`` in float64 (keys, values: (n, D) rows ``k_i``, ``v_i``).

    The right factor is symmetric, so ``W'^T = solve(lam I + K^T K, (lam W + V^T K)^T)``.
    """
    w, k, v = (x.detach().to(torch.float64) for x in (weight, keys, values))
    m = lam * torch.eye(k.shape[1], dtype=torch.float64, device=k.device) + k.T @ k
    return torch.linalg.solve(m, (lam * w + v.T @ k).T).T


def pairs(
    encoder: nn.Module, tokenizer, concepts: Sequence[Concept], config: DiffQuickFixConfig
) -> tuple[Tensor, Tensor]:
    """Keys (n, D) and values (n, D) for every concept x template x position, from the unedited ``encoder``."""
    layer = resolve_layer(encoder, config.layer)
    concept_prompts, guide_prompts, concept_last, guide_last = [], [], [], []
    for concept in concepts:
        for template in config.templates:
            concept_prompts.append(template.replace(_SLOT, concept.text))
            guide_prompts.append(template.replace(_SLOT, config.guide))
            concept_last.append(slot_position(tokenizer, template, concept.text))
            guide_last.append(slot_position(tokenizer, template, config.guide))
    inputs, outputs = out_proj_io(encoder, tokenizer, concept_prompts + guide_prompts, layer)  # (2n, L, D)
    n, seq_len = len(concept_prompts), inputs.shape[1]
    if config.value == "bias-free":
        weight = layers(encoder)[layer].self_attn.out_proj.weight.detach()
        outputs = inputs @ weight.T  # W k, without the bias
    keys, values = [], []
    for i in range(n):
        key_pos, value_pos = pair_positions(concept_last[i], guide_last[i], seq_len, config.use_eos)
        keys.append(inputs[i, key_pos])
        values.append(outputs[n + i, value_pos])
    return torch.cat(keys), torch.cat(values)


def erase_encoder(
    encoder: nn.Module,
    tokenizer,
    concepts: Sequence[Concept],
    config: DiffQuickFixConfig,
    *,
    component: str,
    base: dict,
) -> Patch:
    """DiffQuickFix on one CLIP text encoder; returns a patch with its edited ``out_proj.weight``."""
    start = time.perf_counter()
    layer = resolve_layer(encoder, config.layer)
    name = f"encoder.layers.{layer}.self_attn.out_proj.weight"
    weight = layers(encoder)[layer].self_attn.out_proj.weight
    keys, values = pairs(encoder, tokenizer, concepts, config)
    edited = quickfix_weight(weight, keys, values, config.lam).to(weight.dtype)
    if not torch.isfinite(edited).all():
        raise FloatingPointError("DiffQuickFix produced non-finite weights; raise lam. Nothing was saved.")
    logger.info("DiffQuickFix edits %s/%s from %d key/value pairs.", component, name, keys.shape[0])
    return make_patch(
        method="diffquickfix",
        originals={f"{component}/{name}": weight.detach().clone()},
        edited={f"{component}/{name}": edited},
        config=config.to_dict(),
        concepts=[c.record(target=False) for c in concepts],
        base={"component": component, **base},
        extra={"seconds": time.perf_counter() - start, "num_pairs": int(keys.shape[0])},
    )


def erase(
    model,
    concepts: Sequence[Concept],
    config: DiffQuickFixConfig = DiffQuickFixConfig(),
    *,
    components: Sequence[str] | None = None,
    progress: bool = True,
) -> Patch:
    """DiffQuickFix on every CLIP text encoder of ``model`` (a ``ModelHandle``), or only ``components``.

    Nothing is modified in place. ``progress`` is accepted for the common interface (closed form).
    """
    start = time.perf_counter()
    concepts = list(concepts)
    if not concepts:
        raise ValueError("Give at least one concept to erase.")
    selected = model.selected_encoders(components)
    patches = [
        erase_encoder(
            model.text_encoder(name),
            model.tokenizer(name),
            concepts,
            config,
            component=name,
            base=model.base_info(),
        )
        for name in selected
    ]
    patch = merge_patches(patches)
    patch.metadata["seconds"] = time.perf_counter() - start
    return patch


register(
    MethodSpec(
        name="diffquickfix",
        config_cls=DiffQuickFixConfig,
        erase=erase,
        edits="CLIP text encoder block 0 self-attention out_proj weight, closed form",
        description="DiffQuickFix: Localizing and Editing Knowledge in Text-to-Image Models (Basu et al., ICLR 2024)",
        follows="adobe-research/DiffQuickFixRelease causal_trace_model_edit.ipynb (use_eos = 1)",
    )
)
