"""The judge protocol: an image classifier that the UnlearnCanvas metrics read.

A judge is any object with

* ``classes``: a sequence of class names (any spelling: ``"Van Gogh"`` and ``"Van_Gogh"`` are the same
  class, see :func:`hirm.evaluation.common.concept_key`), and
* ``__call__(images) -> probabilities``: ``images`` is a float tensor (N, 3, H, W) with values in
  [0, 1] (RGB, the generated images quantised to 8 bits); the result is a tensor (N, C) of class
  probabilities (or any scores: only the arg-max is used), C = ``len(classes)``.

The miniature world's judges (``hirm.world.load_judges()``) satisfy it. For another pipeline, wrap its
classifiers, e.g. UnlearnCanvas's ViT-Large style/object classifiers::

    class UnlearnCanvasJudge:
        def __init__(self, model, classes, size=224):
            self.model, self.classes, self.size = model.eval(), tuple(classes), size

        @torch.no_grad()
        def __call__(self, images):                      # (N, 3, H, W) in [0, 1]
            x = torch.nn.functional.interpolate(images, size=self.size, mode="bilinear")
            return self.model(normalize(x)).softmax(-1)  # (N, C)

Judges should be resolution-agnostic (resize inside ``__call__`` if needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from hirm.evaluation.common import EvaluationInputError, concept_key


@runtime_checkable
class Judge(Protocol):
    """Image batch in, class probabilities out (see the module docstring)."""

    classes: Sequence[str]

    def __call__(self, images: Tensor) -> Tensor: ...


class JudgeMismatchError(EvaluationInputError):
    """A judge's classes do not match the concepts it has to recognise."""


def class_columns(judge: Judge, names: Sequence[str], *, role: str = "judge") -> list[int]:
    """For each concept in ``names``, the column of ``judge``'s output holding it.

    Names are matched by :func:`concept_key`, so spacing/underscores/case do not matter.

    Raises:
        JudgeMismatchError: a concept has no class, or two classes collapse to the same key.
    """
    classes = [str(c) for c in getattr(judge, "classes", ())]
    if not classes:
        raise JudgeMismatchError(f"The {role} has no `classes` attribute (a sequence of class names).")
    keys = [concept_key(c) for c in classes]
    if len(set(keys)) != len(keys):
        raise JudgeMismatchError(
            f"The {role}'s classes {classes} contain duplicates once spelling is normalised."
        )
    index = {k: i for i, k in enumerate(keys)}
    missing = [n for n in names if concept_key(n) not in index]
    if missing:
        raise JudgeMismatchError(
            f"The {role} cannot recognise {missing}: its classes are {classes}. Use a judge trained on the "
            "same concepts, or restrict the evaluated concepts."
        )
    return [index[concept_key(n)] for n in names]


def to_float_images(images: np.ndarray) -> Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def judge_probabilities(
    judge: Judge, images: np.ndarray, *, batch_size: int = 256, role: str = "judge"
) -> np.ndarray:
    """Run ``judge`` on uint8 images (N, H, W, 3) in batches -> float32 probabilities (N, C)."""
    out = []
    for start in range(0, len(images), batch_size):
        probs = judge(to_float_images(images[start : start + batch_size]))
        probs = torch.as_tensor(probs).detach().float().cpu()
        expected = (min(batch_size, len(images) - start), len(judge.classes))
        if tuple(probs.shape) != expected:
            raise JudgeMismatchError(
                f"The {role} returned shape {tuple(probs.shape)} for {expected[0]} images; expected {expected} "
                f"(one column per class in `classes`)."
            )
        out.append(probs.numpy())
    return np.concatenate(out) if out else np.zeros((0, len(judge.classes)), np.float32)


class FunctionJudge:
    """A judge from a plain function ``fn(images) -> (N, C) scores``; handy for tests and for wrapping."""

    def __init__(self, classes: Sequence[str], fn) -> None:
        self.classes = tuple(classes)
        self.fn = fn

    def __call__(self, images: Tensor) -> Tensor:
        return self.fn(images)
