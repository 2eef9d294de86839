"""hirm: concept erasure for text-to-image diffusion models by High-Level Representation Misdirection."""

from hirm._version import __version__
from hirm.adapters.loading import ModelHandle, load_model
from hirm.api import apply_patch, concept, erase, load_pipeline, save_encoders, save_patched
from hirm.core.config import (
    NUDITY_PROMPT,
    Concept,
    HiRMConfig,
    PromptTarget,
    RandomTarget,
    ReadingPoint,
    VectorTarget,
)
from hirm.core.patch import (
    Patch,
    PatchConflictError,
    PatchMismatchError,
    apply_patches,
    merge_patches,
    remove_patch,
)
from hirm.core.registry import get_method, methods

__all__ = [
    "NUDITY_PROMPT",
    "Concept",
    "HiRMConfig",
    "ModelHandle",
    "Patch",
    "PatchConflictError",
    "PatchMismatchError",
    "PromptTarget",
    "RandomTarget",
    "ReadingPoint",
    "VectorTarget",
    "__version__",
    "apply_patch",
    "apply_patches",
    "concept",
    "erase",
    "get_method",
    "load_model",
    "load_pipeline",
    "merge_patches",
    "methods",
    "remove_patch",
    "save_encoders",
    "save_patched",
]
