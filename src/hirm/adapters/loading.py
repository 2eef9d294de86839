"""Resolve what the user names as ``--model`` and load its components with the real loaders.

Accepted: ``minicanvas`` (the embedded miniature world, the default), a local diffusers pipeline
directory, a local text-encoder directory (``config.json`` of a CLIP text model), or a hub id
(read from the local cache; downloaded only when the hub is reachable and ``HF_HUB_OFFLINE`` is unset).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hirm.adapters.families import (
    SUPPORTED,
    Family,
    UnsupportedModelError,
    family_for_pipeline,
    text_encoder_family,
)
from hirm.io import read_json

EMBEDDED = "minicanvas"
_CLIP_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")


class ModelNotFoundError(FileNotFoundError):
    """The model could not be found locally or on the hub."""


def embedded_pipeline_dir() -> Path:
    """The miniature world's pipeline directory shipped with the package."""
    try:
        from hirm.world import pipeline_dir
    except ImportError as err:  # pragma: no cover - only before the world is built
        raise ModelNotFoundError(
            "The embedded model 'minicanvas' is not available in this installation; pass --model with a "
            "local diffusers pipeline, a text-encoder directory or a hub id."
        ) from err
    return pipeline_dir()


def resolve_path(source: str | os.PathLike, *, components: tuple[str, ...] | None = None) -> Path:
    """Local directory for ``source``; hub ids come from the cache (or the hub when online).

    ``components``: for hub ids, only these sub-folders (plus ``model_index.json``) are fetched.
    """
    text = str(source)
    if text == EMBEDDED:
        return embedded_pipeline_dir()
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is a file; --model takes a pipeline or text-encoder directory.")
        return path
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise ModelNotFoundError(
            f"No model at {text!r}: not a directory, not 'minicanvas', not a hub id (owner/name)."
        )
    return _from_hub(text, components)


def _from_hub(repo_id: str, components: tuple[str, ...] | None) -> Path:
    from huggingface_hub import snapshot_download

    patterns = None if components is None else ["model_index.json", *[f"{c}/*" for c in components]]
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=offline))
    except Exception as err:
        where = "the local cache (HF_HUB_OFFLINE is set)" if offline else "the local cache or the hub"
        raise ModelNotFoundError(
            f"Could not find {repo_id!r} in {where}: {type(err).__name__}. Download it where the hub is "
            "reachable (huggingface-cli download ...) or pass a local directory."
        ) from err


def load_kwargs(dtype: torch.dtype | None, library: str = "transformers") -> dict[str, Any]:
    """Always name the dtype: transformers 5 otherwise loads in the *stored* dtype (fp16 on most
    published checkpoints). Weights load from safetensors only, never from pickles."""
    kwargs: dict[str, Any] = {"use_safetensors": True}
    if dtype is not None:
        kwargs[_dtype_keyword(library)] = dtype
    return kwargs


def _dtype_keyword(library: str) -> str:
    """``dtype`` where the library takes it (transformers >= 4.56, diffusers with ``_resolve_dtype``),
    else the older ``torch_dtype`` (which the newer versions deprecate)."""
    from importlib import import_module, metadata

    from packaging.version import Version

    if library == "transformers":
        return "dtype" if Version(metadata.version("transformers")) >= Version("4.56") else "torch_dtype"
    utils = import_module("diffusers.utils.deprecation_utils")
    return "dtype" if hasattr(utils, "_resolve_dtype") else "torch_dtype"


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weights of a component folder; a folder holding only pickles is refused."""
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UnsupportedModelError(
                f"{folder} holds only pickle weights ({', '.join(pickles[:3])}); hirm never loads pickles. "
                "Convert them to safetensors first (e.g. load once in a trusted environment and "
                "save_pretrained(..., safe_serialization=True))."
            )
        raise ModelNotFoundError(f"{folder} holds no weights (*.safetensors).")
    return found


def stored_dtypes(folder: Path) -> dict[str, torch.dtype]:
    """Each floating tensor's dtype on disk (read from the safetensors headers, no weights loaded)."""
    from safetensors import safe_open

    dtypes: dict[str, torch.dtype] = {}
    for file in weight_files(folder):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                dtype = handle.get_slice(key).get_dtype()
                torch_dtype = _SAFETENSORS_DTYPES.get(dtype)
                if torch_dtype is not None:
                    dtypes[key] = torch_dtype
    return dtypes


_SAFETENSORS_DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}


@dataclass
class ModelHandle:
    """A model to erase from: its directory, its family, and its components loaded on demand."""

    source: str
    path: Path
    family: Family
    index: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    _loaded: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_pipeline(self) -> bool:
        return self.family.name != "text-encoder"

    def base_info(self) -> dict[str, Any]:
        return {"source": self.source, "family": self.family.name}

    def folder(self, name: str) -> Path:
        """The directory holding component ``name`` (the handle's own directory for a bare encoder)."""
        return self.path if not self.is_pipeline else self.path / name

    def component(self, name: str) -> Any:
        """Load (once) a component with the class ``model_index.json`` names for it."""
        if name not in self._loaded:
            self._loaded[name] = self._load(name)
        return self._loaded[name]

    def text_encoder(self, name: str = "text_encoder") -> nn.Module:
        return self.component(name)

    def selected_encoders(self, components: Sequence[str] | None = None) -> list[str]:
        """``components`` (default: every CLIP text encoder of the family), each checked to be one."""
        selected = list(components or self.family.encoders)
        unknown = [c for c in selected if c not in self.family.encoders]
        if unknown:
            raise ValueError(
                f"{unknown} are not CLIP text encoders of this {self.family.name} model: {self.family.encoders}."
            )
        return selected

    def tokenizer(self, encoder: str = "text_encoder"):
        return self.component(self.family.tokenizer_for(encoder))

    def _load(self, name: str) -> Any:
        if not self.is_pipeline:
            return self._load_bare(name)
        entry = self.index.get(name)
        if not entry or entry[0] is None or entry[1] is None:
            raise UnsupportedModelError(f"{self.path} has no component {name!r} (model_index.json).")
        library, class_name = entry
        module = __import__(library, fromlist=[class_name])
        cls = getattr(module, class_name)
        folder = self.path / name
        if not folder.is_dir():
            raise ModelNotFoundError(f"{folder} is missing (model_index.json lists {name!r}).")
        is_model = isinstance(cls, type) and issubclass(cls, nn.Module)
        if not is_model:
            return cls.from_pretrained(str(folder))
        weight_files(folder)
        library = "transformers" if cls.__module__.startswith("transformers") else "diffusers"
        return cls.from_pretrained(str(folder), **load_kwargs(self.dtype, library)).to(self.device)

    def _load_bare(self, name: str) -> Any:
        encoder_name, tokenizer_name = self.family.clip[0]
        if name == encoder_name:
            import transformers

            config = read_json(self.path / "config.json")
            cls = getattr(transformers, config["architectures"][0])
            weight_files(self.path)
            return cls.from_pretrained(str(self.path), **load_kwargs(self.dtype)).to(self.device)
        if name == tokenizer_name:
            from transformers import CLIPTokenizer

            for candidate in (self.path, self.path.parent / tokenizer_name, self.path.parent / "tokenizer"):
                if any(
                    (candidate / f).is_file()
                    for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")
                ):
                    return CLIPTokenizer.from_pretrained(str(candidate))
            raise ModelNotFoundError(
                f"No tokenizer next to the text encoder at {self.path}: expected tokenizer files (tokenizer.json or vocab.json + merges.txt) there or "
                f"in {self.path.parent / tokenizer_name}."
            )
        raise UnsupportedModelError(f"A bare text-encoder directory has no component {name!r}.")

    def pipeline(self):
        """The whole diffusers pipeline (for generation), on this handle's device and dtype."""
        if not self.is_pipeline:
            raise UnsupportedModelError(
                f"{self.source} is a bare text encoder; generation needs a whole pipeline."
            )
        from diffusers import DiffusionPipeline

        for name in self.index:
            folder = self.path / name
            if not name.startswith("_") and folder.is_dir() and not any(folder.glob("*.safetensors")):
                if any(p.suffix in PICKLE_SUFFIXES for p in folder.iterdir()):
                    weight_files(folder)  # refuses pickle-only components with a clear message
        # Components saved as [null, null] (e.g. SD3 without its T5) must be passed as None explicitly.
        absent = {n: None for n, e in self.index.items() if isinstance(e, list) and e[:1] == [None]}
        kwargs = load_kwargs(self.dtype, "diffusers")
        pipe = DiffusionPipeline.from_pretrained(str(self.path), **absent, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)


def load_model(
    source: str | os.PathLike = EMBEDDED,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    components: tuple[str, ...] | None = None,
) -> ModelHandle:
    """Resolve ``source`` and detect its family. Components load lazily (see :class:`ModelHandle`)."""
    from hirm.checks import check_device

    device = check_device(device)
    path = resolve_path(source, components=components)
    index_file, config_file = path / "model_index.json", path / "config.json"
    if index_file.is_file():
        index = read_json(index_file, "the pipeline's component index")
        if not isinstance(index, dict):
            raise UnsupportedModelError(f"{index_file} is not a diffusers model index (a JSON object).")
        family = family_for_pipeline(str(index.get("_class_name", "")))
        for encoder in family.encoders:
            entry = index.get(encoder)
            if not entry or entry[1] not in _CLIP_CLASSES:
                raise UnsupportedModelError(
                    f"{path}: component {encoder!r} is {entry!r}, not a CLIP text encoder; hirm supports {SUPPORTED}."
                )
        handle = ModelHandle(str(source), path, family, index, torch.device(device), dtype)
    elif config_file.is_file():
        config = read_json(config_file, "a model config")
        arch = ((config.get("architectures") if isinstance(config, dict) else None) or [""])[0]
        if arch not in _CLIP_CLASSES:
            raise UnsupportedModelError(
                f"{path} holds a {arch or 'unknown'} model; hirm supports {SUPPORTED}."
            )
        component = path.name if path.name.startswith("text_encoder") else "text_encoder"
        handle = ModelHandle(
            str(source), path, text_encoder_family(component), {}, torch.device(device), dtype
        )
    else:
        raise UnsupportedModelError(
            f"{path} has neither model_index.json nor config.json; hirm supports {SUPPORTED}."
        )
    return handle
