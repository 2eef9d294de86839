"""Running an attack: the output directory (resumable), the time budget, judging, and the result.

Output directory of one run::

    attack.json                what runs: attack, config, model, patches, target, sampler, judge (+ its key)
    original.safetensors       what the attack took from the original model (target latents, embeddings)
    checkpoint.safetensors     an interrupted search (textual inversion), with checkpoint.json
    items/00003.json           one finished attacked prompt: before/after judgement, found prompt, loss
    items/00003.safetensors    what was found for it (token ids, embeddings)
    images/before/00003.png    the erased model on the plain prompt (same seed)
    images/after/00003.png     the erased model on the attacked prompt
    found.safetensors          every found embedding / token sequence, found.json their readable form
    result.json                ASR with its 95 % Wilson interval, rates, timing (``complete`` false while partial)
    grid.png                   before (top) / after (bottom) rows of the attacked prompts

Re-running the same command resumes: finished items are kept, an interrupted search continues from its
checkpoint. A directory holding a *different* run (another attack, model, patch, target, config or
seed) is refused unless ``overwrite``, which only ever deletes a directory this module wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

from hirm.attacks.diffusion import Sampler, decode_latents, sample_latents
from hirm.attacks.judges import ConceptJudge
from hirm.attacks.targets import AttackItem, AttackTarget
from hirm.attacks.text import as_batch, encode, pad, word_ids
from hirm.evaluation.common import dump_json, now_iso, patch_info, run_metadata
from hirm.evaluation.generation import model_fingerprint
from hirm.evaluation.metrics import proportion
from hirm.io import OutputExistsError, check_replaceable, write_marker

MANIFEST = "attack.json"
RESULT = "result.json"
CHECKPOINT, CHECKPOINT_META = "checkpoint.safetensors", "checkpoint.json"


def rate(flags: Sequence[bool]) -> dict[str, Any]:
    """``{"k", "n", "rate", "ci95"}`` of a list of yes/no outcomes (``metrics.proportion`` under the
    attack results' field name)."""
    p = proportion(list(flags))
    return {"k": p["k"], "n": p["n"], "rate": p["value"], "ci95": p["ci95"]}


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (the run's seed, an item's index, ...), independent of order of runs."""
    return int(
        np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1
    )


@dataclass
class Budget:
    """A wall-clock limit for the whole run (``None`` = none); attacks check it between steps."""

    time_limit: float | None = None
    start: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"--time-limit must be > 0 seconds, got {self.time_limit}.")

    def expired(self) -> bool:
        return self.time_limit is not None and time.perf_counter() - self.start >= self.time_limit

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class Interrupted(Exception):
    """The time budget ran out in the middle of a search; its checkpoint (if any) was saved."""


# ----------------------------------------------------------------------------------- output dir


def replace_into(path: Path, writer: Callable[[Path], None]) -> None:
    """Write a file of a run directory atomically (temporary file + rename), replacing the run's own
    earlier version. Only for files inside a directory this run owns (checked when it was opened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_png(path: Path, image: np.ndarray) -> None:
    replace_into(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def _write_tensors(path: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, str] | None = None) -> None:
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    replace_into(path, lambda tmp: save_file(data, str(tmp), metadata=dict(meta or {})))


def _write_json(path: Path, data: Any) -> None:
    text = dump_json(data)
    replace_into(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class AttackRun:
    """The output directory of one attack run (see the module docstring)."""

    def __init__(
        self, out: str | os.PathLike, manifest: Mapping[str, Any], *, overwrite: bool = False
    ) -> None:
        self.out = Path(out)
        self.key = hashlib.sha256(
            json.dumps(manifest["key_fields"], sort_keys=True, default=str).encode()
        ).hexdigest()
        self._open(manifest, overwrite)

    def _open(self, manifest: Mapping[str, Any], overwrite: bool) -> None:
        existing = self.out / MANIFEST
        if self.out.exists() and not self.out.is_dir():
            raise NotADirectoryError(f"{self.out} is a file; --out takes a directory.")
        if existing.is_file():
            old = json.loads(existing.read_text(encoding="utf-8"))
            if old.get("key") == self.key:
                return
            if not overwrite:
                raise OutputExistsError(
                    f"{self.out} holds another attack run ({old.get('attack')}, different settings); choose "
                    "another --out, or pass --overwrite to replace it."
                )
            check_replaceable(self.out)  # everything in it must be hirm's (see hirm.io)
            shutil.rmtree(self.out)
        elif self.out.is_dir() and any(self.out.iterdir()):
            raise OutputExistsError(
                f"{self.out} exists and is not an attack run directory; choose another --out."
            )
        self.out.mkdir(parents=True, exist_ok=True)
        _write_json(existing, {**manifest, "key": self.key, "created": now_iso()})
        self.mark()

    def mark(self) -> None:
        """Record every file now in the run directory as hirm's (``.hirm-output``), so that a later
        ``--overwrite`` may replace the directory and nothing a user put there."""
        write_marker(self.out, "attack")

    # ------------------------------------------------------------------------------ items
    def item_path(self, index: int, suffix: str) -> Path:
        return self.out / "items" / f"{index:05d}{suffix}"

    def finished(self, index: int) -> dict[str, Any] | None:
        path = self.item_path(index, ".json")
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def save_item(
        self,
        index: int,
        record: Mapping[str, Any],
        images: Mapping[str, np.ndarray | None],
        tensors: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Images and tensors first, the record last: a record on disk means the item is complete."""
        files = {}
        for name, image in images.items():
            if image is not None:
                path = self.out / "images" / name / f"{index:05d}.png"
                _write_png(path, image)
                files[name] = str(path.relative_to(self.out))
        if tensors:
            _write_tensors(self.item_path(index, ".safetensors"), tensors)
        _write_json(self.item_path(index, ".json"), {**record, "images": files})

    # ------------------------------------------------------------------------- cached tensors
    def load_tensors(self, name: str) -> dict[str, Tensor] | None:
        path = self.out / name
        return load_file(str(path)) if path.is_file() else None

    def save_tensors(
        self, name: str, tensors: Mapping[str, Tensor], meta: Mapping[str, str] | None = None
    ) -> None:
        _write_tensors(self.out / name, tensors, meta)

    def load_json(self, name: str) -> Any:
        path = self.out / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def save_json(self, name: str, data: Any) -> None:
        _write_json(self.out / name, data)

    def remove(self, name: str) -> None:
        """Delete a file this run wrote (a spent checkpoint)."""
        path = self.out / name
        if path.is_file():
            path.unlink()


# ------------------------------------------------------------------------------- checkpoints


def save_search(
    run: AttackRun,
    param: Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | Sequence[torch.Generator],
    meta: Mapping[str, Any],
    extra: Mapping[str, Tensor] | None = None,
) -> None:
    """Checkpoint of a one-tensor search (its value, Adam moments, random state: one generator, or one
    per searched item), ``meta`` and ``extra`` tensors (names without a dot)."""
    state = optimizer.state[param]
    generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
    tensors = {"param": param.detach().cpu()}
    tensors |= {f"rng.{j}": g.get_state() for j, g in enumerate(generators)}
    if state:
        tensors |= {k: state[k].detach().cpu() for k in ("exp_avg", "exp_avg_sq")}
        tensors["adam_step"] = torch.as_tensor(state["step"], dtype=torch.float64).reshape(1).cpu()
    tensors |= {f"extra.{k}": v for k, v in (extra or {}).items()}
    run.save_tensors(CHECKPOINT, tensors)
    run.save_json(CHECKPOINT_META, dict(meta))


def load_search(
    run: AttackRun,
    param: Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | Sequence[torch.Generator],
) -> tuple[dict[str, Any], dict[str, Tensor]] | tuple[None, None]:
    """Restore a checkpoint written by :func:`save_search` into ``param``/``optimizer``/``generator``(s);
    returns its ``meta`` and ``extra`` tensors (``(None, None)``: no checkpoint)."""
    saved, meta = run.load_tensors(CHECKPOINT), run.load_json(CHECKPOINT_META)
    if saved is None or meta is None:
        return None, None
    with torch.no_grad():
        param.copy_(saved["param"].to(param.device))
    generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
    for j, g in enumerate(generators):
        g.set_state(saved[f"rng.{j}"] if f"rng.{j}" in saved else saved["rng"])  # "rng": before 2026-11-27
    if "exp_avg" in saved:
        optimizer.state[param] = {
            "step": saved["adam_step"].reshape(()).float(),
            "exp_avg": saved["exp_avg"].to(param.device),
            "exp_avg_sq": saved["exp_avg_sq"].to(param.device),
        }
    return meta, {k.removeprefix("extra."): v for k, v in saved.items() if k.startswith("extra.")}


def clear_search(run: AttackRun) -> None:
    run.remove(CHECKPOINT)
    run.remove(CHECKPOINT_META)


# ------------------------------------------------------------------------------------- context


@dataclass
class AttackContext:
    """Everything an attack works with. ``pipe`` is the erased model while items are attacked."""

    pipe: Any
    target: AttackTarget
    judge: ConceptJudge
    sampler: Sampler
    run: AttackRun
    budget: Budget
    seed: int
    progress: bool = True
    cache_dir: Path | None = None
    _uncond: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def tokenizer(self):
        return self.pipe.tokenizer

    @property
    def encoder(self):
        return self.pipe.text_encoder

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def ids(self, prompts: Sequence[str], *, truncate: bool = False) -> Tensor:
        """Padded token ids (B, L) of plain prompts; too long is an error unless ``truncate`` (then cut
        as the pipeline cuts)."""
        room = self.tokenizer.model_max_length - 2
        rows = [word_ids(self.tokenizer, p) for p in prompts]
        return as_batch([pad(self.tokenizer, r[:room] if truncate else r) for r in rows], self.device)

    @torch.no_grad()
    def embed(self, prompts: Sequence[str], *, truncate: bool = False) -> Tensor:
        """Conditioning (B, L, D) of plain prompts with the current text encoder."""
        return encode(self.encoder, self.ids(prompts, truncate=truncate)).detach()

    def uncond(self, state: str) -> Tensor:
        """The empty prompt's conditioning under ``state`` ("original" / "erased"), cached."""
        if state not in self._uncond:
            self._uncond[state] = self.embed([""])
        return self._uncond[state]

    def latents(
        self, cond: Tensor, seeds: Sequence[int], guidance: Sequence[float | None], state: str
    ) -> Tensor:
        return sample_latents(
            self.pipe, cond, seeds, self.sampler, uncond=self.uncond(state), guidance=guidance
        )

    def judged(self, cond: Tensor, items: Sequence[AttackItem]) -> tuple[np.ndarray, list[bool]]:
        """Images of the erased model conditioned on ``cond`` (B, L, D) with the items' seeds, and the judge's verdicts."""
        latents = self.latents(cond, [i.seed for i in items], [i.guidance for i in items], "erased")
        images = decode_latents(self.pipe, latents)
        return images, self.judge(images)

    def item_seed(self, index: int, stream: int = 0) -> int:
        return derived_seed(self.seed, index, stream)


@dataclass
class ItemOutcome:
    """What an attack made of one item. ``success`` is ``None`` when it was not attacked (already
    recognised before the attack, where the attack stops early)."""

    attacked_prompt: str | None
    success: bool | None
    image: np.ndarray | None = None
    tensors: dict[str, Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def summarise(records: Sequence[Mapping[str, Any]], n_items: int) -> dict[str, Any]:
    """ASR (before or after, UnlearnDiffAtk's convention) with its Wilson interval, and the parts:
    ``before`` = the plain prompts on the erased model, ``after`` = the attacked prompts (over the
    items that were attacked; UnlearnDiffAtk skips those already recognised before)."""
    before = [bool(r["before"]) for r in records if r["before"] is not None]
    after = [bool(r["after"]) for r in records if r["after"] is not None]
    success = [bool(r["before"]) or bool(r["after"]) for r in records]
    return {
        "asr": rate(success),
        "before": rate(before),
        "after": rate(after),
        "n_items": n_items,
        "n_done": len(records),
    }


def grid_image(run: AttackRun, records: Sequence[Mapping[str, Any]], limit: int = 24) -> Image.Image | None:
    """Before (top row) and after (bottom row) images of the first ``limit`` items, upscaled for viewing;
    rows labelled before / after, columns by item."""
    from hirm.generation import labelled_grid

    rows: dict[str, list[np.ndarray]] = {"before": [], "after": []}
    for record in records[:limit]:
        files = record.get("images", {})
        if "before" not in files:
            continue
        before = np.asarray(Image.open(run.out / files["before"]).convert("RGB"))
        after_file = files.get("after")
        after = (
            np.asarray(Image.open(run.out / after_file).convert("RGB")) if after_file else before * 0 + 255
        )
        rows["before"].append(before)
        rows["after"].append(after)
    if not rows["before"]:
        return None
    columns = [f"item {i}" for i in range(len(rows["before"]))]
    return labelled_grid(
        [("before the attack", np.stack(rows["before"])), ("after", np.stack(rows["after"]))],
        columns,
        label_width=150,
    )


def manifest_for(
    attack: str,
    config: Any,
    *,
    model: str,
    model_path: Any,
    patches: Sequence[Any],
    target: AttackTarget,
    sampler: Sampler,
    judge: ConceptJudge,
    seed: int,
) -> dict[str, Any]:
    """The run's manifest; ``key_fields`` decide whether a directory holds the same run."""
    infos = [patch_info(p) for p in patches]
    key_fields = {
        "attack": attack,
        "config": config.to_dict(),
        "model": str(model),
        "model_fingerprint": model_fingerprint(model_path) if model_path is not None else None,
        "patches": [i["digest"] for i in infos],
        "target": target.to_dict(),
        "sampler": sampler.to_dict(),
        "judge": judge.describe(),
        "seed": seed,
    }
    return {
        "kind": "attack-run",
        "attack": attack,
        "key_fields": key_fields,
        "meta": run_metadata(
            model=str(model), model_path=model_path, patches=infos, settings=config.to_dict(), seeds=[seed]
        ),
    }
