"""Every method on the same runs: one sweep per method over the miniature world's styles and objects,
then one table (``hirm compare``).

Output directory::

    out/<entry>/            a full sweep directory per entry (resumable; see hirm.evaluation.sweep)
    out/compare.md          the table, with the command, settings and machine
    out/compare.csv         the same numbers, one row per (entry, domain)

The original model's grid is cached on disk once and shared by every entry. Re-running the same
command resumes: finished concepts of every entry are kept.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from hirm.core.config import (
    DEFAULT_PRESERVE_WEIGHT,
    Concept,
    PromptTarget,
    RandomTarget,
    ReadingPoint,
    Target,
)
from hirm.evaluation.canvas import CanvasSettings
from hirm.evaluation.canvas_grid import Canvas
from hirm.evaluation.common import (
    EvaluationInputError,
    display_name,
    machine_text,
    mean_ci,
    mean_std,
    now_iso,
    resolve_device,
)
from hirm.evaluation.sweep import EraseFn, erase_seconds, plan_merge, read_sweep, run_sweep, write_merge
from hirm.io import LOCK, directory_lock, read_json, read_marker, write_atomic, write_marker

METRICS = ("UA", "IRA", "CRA", "AA", "UA_heldout")


#: The ESD variants (the methods ``Entry.trained_on`` and ``--esd-batch`` apply to).
ESD_METHODS = ("esd-x", "esd-u")


@dataclass(frozen=True)
class Entry:
    """One row group of the table: a method (or several whose patches are applied together).

    Attributes:
        name: the label in the table and the sub-directory name.
        methods: registered method names; several = their patches merged (e.g. HiRM + UCE).
        target: ``random`` (HiRM-R at the paper's scale), ``random-rms`` (the same direction scaled to
            the concept read-out's RMS, ``RandomTarget(scale="readout-rms")``), ``super`` (HiRM-S:
            toward the concept's super-category) or ``empty`` (toward the empty prompt's read-out,
            ``PromptTarget("")``; ours) for methods whose concepts carry a target; ignored by the others.
        overrides: config fields per method, e.g. ``{"esd-x": {"steps": 200}}``.
        preserve_others: methods (of ``methods``) whose ``preserve`` list gets the erased concept's domain
            siblings, as UCE's original script preserves the other artists when it erases one.
        world_templates: methods (of ``methods``) whose ``templates`` are the world's training templates
            for the erased concept's domain (:func:`world_templates`: never the grid's template).
        contrast_others: methods (of ``methods``) whose ``contrast`` words are the erased concept's domain
            siblings (KV-Proj: the concept's directions are where it differs from them).
        spare_others: methods (of ``methods``) whose ``spare`` words are the other domain's concepts, in
            :func:`spare_templates` (KV-Proj: directions that leave what tells them apart, which CRA
            measures).
        preserve_sentences: methods (of ``preserve_others``) that also preserve each sibling in sentences
            pairing it with concepts of the other domain (:func:`pair_sentences`; never the grid's template):
            a preserved bare name does not keep the sentences that name it.
        trained_on: ``{method: earlier}``: ``method`` (ESD) is trained with the patch ``earlier`` (a method
            listed before it) made for the same concept in place (``hirm.core.esd.erase``'s ``trained_on``),
            e.g. ESD-u on the U-Net that carries KV-Proj's edit; never reused from a patch made alone.
        retain_through: methods (ESD, of ``preserve_others``) whose retain term compares the original model
            with the trained U-Net as it will ship: through the patches the methods listed before it made
            for the same concept, merged (``hirm.core.esd.erase``'s ``retain_through``); never reused from
            a patch made alone.
    """

    name: str
    methods: tuple[str, ...]
    target: str = "random"
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    preserve_others: tuple[str, ...] = ()
    world_templates: tuple[str, ...] = ()
    contrast_others: tuple[str, ...] = ()
    spare_others: tuple[str, ...] = ()
    preserve_sentences: tuple[str, ...] = ()
    trained_on: Mapping[str, str] = field(default_factory=dict)
    retain_through: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"Entry {self.name!r}: target must be one of {TARGETS}, not {self.target!r}.")
        stray = [m for m in self.preserve_sentences if m not in self.preserve_others]
        if stray:
            raise ValueError(
                f"Entry {self.name!r}: preserve_sentences names {stray}; add them to preserve_others."
            )
        for method, earlier in self.trained_on.items():
            if method not in ESD_METHODS:
                raise ValueError(
                    f"Entry {self.name!r}: trained_on names {method!r}; only {ESD_METHODS} train on another patch."
                )
            order = list(self.methods)
            if method not in order or earlier not in order or order.index(earlier) >= order.index(method):
                raise ValueError(
                    f"Entry {self.name!r}: trained_on {method!r} -> {earlier!r} needs both among its methods, "
                    f"{earlier!r} first."
                )
        for method in self.retain_through:
            if (
                method not in self.methods
                or method not in ESD_METHODS
                or method not in self.preserve_others
                or self.methods.index(method) == 0
            ):
                raise ValueError(
                    f"Entry {self.name!r}: retain_through names {method!r}; it must be an ESD method of "
                    "preserve_others listed after the parts it keeps the retain term through."
                )
        unrouted = [
            m
            for m in ESD_METHODS
            if (self.overrides.get(m) or {}).get("adversary_through") and m not in self.retain_through
        ]
        if unrouted:
            raise ValueError(
                f"Entry {self.name!r}: {unrouted[0]!r} sets adversary_through; add it to retain_through (the "
                "adversary attacks the parts it ships with)."
            )
        for name in ("preserve_others", "world_templates", "contrast_others", "spare_others"):
            stray = [m for m in getattr(self, name) if m not in self.methods]
            if stray:
                raise ValueError(
                    f"Entry {self.name!r}: {name} names {stray}, which are not among its methods."
                )


TARGETS = ("random", "random-rms", "super", "empty")
#: Methods that misdirect each concept toward its target (the others ignore ``Entry.target``).
TARGETED = ("hirm", "hirm-adv")

#: HiRM settings that erase on the miniature world (read the final hidden state, 100 steps, lr 5e-4);
#: the reference ones (out_proj of the last block, 15-30 steps, lr 5e-5) barely move MiniCLIP.
WORLD_TUNED_HIRM: Mapping[str, Any] = {"read": ReadingPoint(site="final"), "steps": 100, "lr": 5e-4}

#: The default comparison: HiRM-R/-S, the paper's naive baseline, the peers, and HiRM + UCE.
ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("hirm-r", ("hirm",)),
        Entry("hirm-s", ("hirm",), target="super"),
        # Measured on the first MiniCLIP (width 128): the reference steps/lr barely moved it; this setting erased
        # (it also erases Cats on MiniCanvas 2: tests/test_hirm_world.py).
        Entry("hirm-s-tuned", ("hirm",), target="super", overrides={"hirm": WORLD_TUNED_HIRM}),
        # The target-scale option: HiRM-R's direction at the read-out's own RMS, world-tuned settings.
        Entry("hirm-r-rms", ("hirm",), target="random-rms", overrides={"hirm": WORLD_TUNED_HIRM}),
        # Ours: world-tuned HiRM toward the empty prompt (the guide UCE and ESD erase toward), keeping the
        # read-outs of the domain's other concepts (as UCE's original script keeps the other artists).
        Entry(
            "hirm-empty-keep",
            ("hirm",),
            target="empty",
            overrides={"hirm": WORLD_TUNED_HIRM},
            preserve_others=("hirm",),
        ),
        Entry("naive", ("naive",)),
        Entry("diffquickfix", ("diffquickfix",)),
        Entry("uce", ("uce",), preserve_others=("uce",)),
        Entry("hirm+uce", ("hirm", "uce"), preserve_others=("uce",)),
        Entry("esd-x", ("esd-x",)),
        Entry("esd-u", ("esd-u",)),
    )
}


#: ``preserve_weight`` given to a HiRM preserve set that has none (the unweighted sum of the two MSEs,
#: as ``hirm.core.multi``'s ``preserved`` strategy: one constant for both).
PRESERVE_WEIGHT = DEFAULT_PRESERVE_WEIGHT


def preserving(config: Any, prompts: tuple[str, ...], weight: float | None = None) -> Any:
    """``config`` with ``prompts`` as its preserve set: UCE's ``preserve``; HiRM's and ESD's ``preserve``
    with ``preserve_weight`` = ``weight`` if given, else the config's (:data:`PRESERVE_WEIGHT` when it has
    none); hardened HiRM's nested HiRM config."""
    names = {f.name for f in fields(config)}
    if "hirm" in names and "preserve" not in names:
        return replace(config, hirm=preserving(config.hirm, prompts, weight))
    if "preserve" not in names:
        raise ValueError(f"{type(config).__name__} has no preserve set; leave it out of preserve_others.")
    if "preserve_weight" in names:
        chosen = weight or config.preserve_weight or PRESERVE_WEIGHT
        return replace(config, preserve=prompts, preserve_weight=chosen)
    if weight is not None:
        raise ValueError(f"{type(config).__name__} has no preserve weight; leave preserve_weight out.")
    return replace(config, preserve=prompts)


def unevaluated_templates() -> tuple[str, ...]:
    """The world's training templates a method may train on: the grid's (``CANVAS_TEMPLATE``: the
    evaluation's and the attacks' prompts) and those with super-category words left out."""
    from hirm.world.concepts import CANVAS_TEMPLATE, TRAIN_TEMPLATES

    return tuple(t for t in TRAIN_TEMPLATES if t != CANVAS_TEMPLATE and "_super}" not in t)


def world_templates(domain: str) -> tuple[str, ...]:
    """The world's training templates that name a concept of ``domain``, as ``{concept}`` templates with
    every concept of the other domain filled in (one template per other-domain concept where the template
    names one). The grid's template (``CANVAS_TEMPLATE``: the evaluation's and the attacks' prompts) and
    the templates with super-category words are left out."""
    from hirm.world.concepts import OBJECTS, STYLES

    if domain not in ("style", "object"):
        raise ValueError(f"domain must be 'style' or 'object', not {domain!r}.")
    mine, other = ("{style}", "{object}") if domain == "style" else ("{object}", "{style}")
    partners = OBJECTS if domain == "style" else STYLES
    out: list[str] = []
    for template in unevaluated_templates():
        if mine not in template:
            continue
        named = template.replace(mine, "{concept}")
        if other in named:
            out.extend(named.replace(other, display_name(p)) for p in partners)
        else:
            out.append(named)
    return tuple(dict.fromkeys(out))


def pair_sentences(
    names: Sequence[str], domain: str, partners: Sequence[str], per_name: int = 2
) -> tuple[str, ...]:
    """Sentences pairing each of ``names`` (display names of ``domain``) with ``per_name`` of ``partners``
    (display names of the other domain), the partners and the templates taken in turn, so each partner
    is used about equally often. The templates are the world's training templates that name a style and
    an object by name; the grid's (``CANVAS_TEMPLATE``) and those with super-category words are left out,
    so no sentence is an evaluated prompt. E.g. ``"A Rust style image of Cats."``."""
    if domain not in ("style", "object"):
        raise ValueError(f"domain must be 'style' or 'object', not {domain!r}.")
    if not partners or per_name < 1:
        raise ValueError("pair_sentences needs at least one partner and per_name >= 1.")
    templates = [t for t in unevaluated_templates() if "{style}" in t and "{object}" in t]
    other = "object" if domain == "style" else "style"
    out = []
    for i, name in enumerate(names):
        for r in range(per_name):
            k = i * per_name + r
            words = {domain: name, other: partners[k % len(partners)]}
            template = templates[k % len(templates)]
            out.append(template.replace("{style}", words["style"]).replace("{object}", words["object"]))
    return tuple(dict.fromkeys(out))


def spare_templates(concept: str, domain: str) -> tuple[str, ...]:
    """The templates a concept of ``domain`` spares the other domain's concepts in: the other domain's
    :func:`world_templates` (never the grid's) that do not name ``concept`` (a display name)."""
    named = re.compile(rf"(?<!\w){re.escape(concept)}(?!\w)")
    return tuple(
        t for t in world_templates("object" if domain == "style" else "style") if not named.search(t)
    )


def world_target(canvas: Canvas, name: str, domain: str, kind: str) -> Target:
    """The misdirection target ``kind`` (one of :data:`TARGETS`) names for the world concept ``name``."""
    if kind == "super":
        words = canvas.style_super if domain == "style" else canvas.object_super
        return PromptTarget(words[name])
    if kind == "empty":
        return PromptTarget("")
    if kind == "random-rms":
        return RandomTarget(scale="readout-rms")
    if kind == "random":
        return RandomTarget()
    raise ValueError(f"target must be one of {TARGETS}, not {kind!r}.")


#: Overrides of a ``preserve_others`` method that wait for its preserve set: a config may refuse them
#: without one (ESD does).
WITH_PRESERVE = ("preserve_weight", "preserve_nearest", "nearest_latents")


def _configs(entry: Entry) -> dict[str, Any]:
    """Each method's config with the entry's overrides, except those of :data:`WITH_PRESERVE` for a
    method in ``preserve_others``: they wait for the preserve set (:func:`_preserved`)."""
    from hirm.core.registry import get_method

    out = {}
    for m in entry.methods:
        settings = dict(entry.overrides.get(m, {}))
        if m in entry.preserve_others:
            for name in WITH_PRESERVE:
                settings.pop(name, None)
        out[m] = replace(get_method(m).config_cls(), **settings)
    return out


def _preserved(entry: Entry, method: str, config: Any, kept: tuple[str, ...]) -> Any:
    """``config`` with ``kept`` as its preserve set (:func:`preserving`, with the entry's
    ``preserve_weight`` for ``method`` if it gives one) and the entry's other :data:`WITH_PRESERVE`
    overrides of ``method``."""
    overrides = entry.overrides.get(method, {})
    config = preserving(config, kept, overrides.get("preserve_weight"))
    later = {k: v for k, v in overrides.items() if k in WITH_PRESERVE and k != "preserve_weight"}
    return replace(config, **later) if later else config


def _world_concept(canvas: Canvas, name: str, domain: str, entry: Entry) -> Concept:
    return Concept(
        text=display_name(name), kind=domain, target=world_target(canvas, name, domain, entry.target)
    )


#: ``reuse(method, config, concept, handle)``: a part of a merged entry made before (a patch whose
#: :func:`made_alone` holds and whose base is ``handle``'s weights), with what it cost in seconds and where
#: it came from; ``None`` = erase it now.
Reuse = Callable[[str, Any, Concept, Any], "tuple[Any, float, str] | None"]


def made_alone(metadata: Mapping[str, Any], method: str, config: Any, concept: Concept) -> bool:
    """Whether a patch's ``metadata`` says it is what ``method`` with ``config`` makes when it erases
    ``concept`` alone: the same method, config and concept as recorded (the concept's target only where
    the method records one, as :meth:`Concept.record` does). Merged patches name several methods, so
    never match. The base weights are the caller's to check (:func:`hirm.core.patch.component_fingerprints`)."""
    recorded = metadata.get("concepts") or []
    if metadata.get("method") != method or len(recorded) != 1 or not isinstance(recorded[0], dict):
        return False
    if "trained_on" in metadata or "retain_through" in metadata:  # trained with other patches in view:
        return False  # not what the method makes alone
    mine = concept.record(target="target" in recorded[0])
    # as the patch file stores them: JSON (tuples become lists)
    as_json = json.loads(json.dumps({"config": config.to_dict(), "concept": mine}))
    return as_json == {"config": metadata.get("config"), "concept": recorded[0]}


def make_erase(
    entry: Entry,
    canvas: Canvas,
    device: torch.device,
    *,
    esd_batch: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    reuse: Reuse | None = None,
    progress: bool = True,
) -> EraseFn:
    """``erase_fn(handle, name, domain)`` for :func:`run_sweep`: every method of ``entry``, merged.

    ``esd_batch``: each ESD method of ``entry`` that runs the authors' ESD (no preserve set, no adversary,
    not trained on another patch) erases up to that many of the sweep's pending concepts in one batched
    run (:class:`BatchedESD`); each is still its own ESD run, and its patch is kept in ``cache_dir``, so an
    entry that merges ESD with another method (e.g. HiRM + ESD-x) reuses the patch the ESD entry made for
    the same concept.

    ``reuse``: for an entry of several methods, each part (not batched) is first looked up with it, so a
    part another entry already made alone (same method, config, concept and base weights) is not trained
    again; the merged patch's ``seconds`` then count each reused part's recorded cost, and its
    ``reused`` metadata says where each came from.
    """
    from hirm.core.esd_batched import unbatchable

    configs = _configs(entry)
    batched = {
        m: BatchedESD(
            # the plain ESD entry (ESD has no target), so the patch is the one that entry makes and caches
            Entry(m, (m,), overrides={m: entry.overrides[m]} if m in entry.overrides else {}),
            canvas, device, batch=esd_batch, cache_dir=cache_dir, progress=progress,
        )
        for m in entry.methods
        if esd_batch and m in ESD_METHODS and m not in entry.preserve_others and m not in entry.trained_on
        and not unbatchable(configs[m])
    }  # fmt: skip
    if len(entry.methods) == 1 and batched:
        return batched[entry.methods[0]]
    from hirm.api import erase
    from hirm.core.multi import base_tensors
    from hirm.core.patch import merge_patches, shared_keys

    def merged_parts(handle: Any, parts: Sequence[Any]) -> Any:
        """``parts`` as one patch (one part as it is; tensors several change merged on the base's)."""
        if len(parts) == 1:
            return parts[0]
        keys = shared_keys(parts)
        return merge_patches(parts, base=base_tensors(handle, keys) if keys else None)

    def run(handle: Any, name: str, domain: str):
        concept = _world_concept(canvas, name, domain, entry)
        siblings = tuple(
            display_name(x) for x in (canvas.styles if domain == "style" else canvas.objects) if x != name
        )
        patches, seconds, reused = [], 0.0, {}
        made: dict[str, Any] = {}  # method -> its patch for this concept, for Entry.trained_on
        for m in entry.methods:
            start = time.perf_counter()
            if m in batched:
                patch = batched[m](handle, name, domain)
            else:
                kept = siblings
                if m in entry.preserve_sentences:
                    others = canvas.objects if domain == "style" else canvas.styles
                    kept += pair_sentences(siblings, domain, [display_name(x) for x in others])
                config = _preserved(entry, m, configs[m], kept) if m in entry.preserve_others else configs[m]
                if m in entry.world_templates:
                    config = replace(config, templates=world_templates(domain))
                if m in entry.contrast_others:
                    config = replace(config, contrast=siblings)
                if m in entry.spare_others:
                    others = canvas.objects if domain == "style" else canvas.styles
                    config = replace(
                        config,
                        spare=tuple(display_name(x) for x in others),
                        spare_templates=spare_templates(display_name(name), domain),
                    )
                alone = (
                    reuse
                    and len(entry.methods) > 1
                    and m not in entry.trained_on
                    and m not in entry.retain_through
                )
                found = reuse(m, config, concept, handle) if alone else None
                if found is not None:
                    patch, part_seconds, reused[m] = found
                    made[m] = patch
                    patches.append(patch)
                    seconds += part_seconds
                    continue
                if m in entry.trained_on or m in entry.retain_through:
                    from hirm.core.registry import get_method

                    kwargs: dict[str, Any] = {}
                    if m in entry.trained_on:
                        kwargs["trained_on"] = made[entry.trained_on[m]]
                    if m in entry.retain_through:
                        earlier = [made[x] for x in entry.methods[: entry.methods.index(m)]]
                        kwargs["retain_through"] = merged_parts(handle, earlier)
                    patch = get_method(m).erase(handle, [concept], config, progress=False, **kwargs)
                else:
                    patch = erase(handle, [concept], method=m, device=device, progress=False, config=config)
            made[m] = patch
            patches.append(patch)
            seconds += erase_seconds(patch, time.perf_counter() - start)
        if len(patches) == 1:
            return patches[0]
        merged = merged_parts(handle, patches)
        if batched or reused:
            # what the merged erase cost: each batched or reused part's share or record, the others' wall time
            merged.metadata["seconds"] = seconds
        if reused:
            merged.metadata["reused"] = reused
        if batched:
            merged.metadata["batched"] = {
                m: patch.metadata["batched"] for m, patch in zip(entry.methods, patches) if m in batched
            }
        return merged

    if batched:

        def prepare(names: Sequence[tuple[str, str]]) -> None:
            for each in batched.values():
                each.prepare(names)

        run.prepare = prepare  # type: ignore[attr-defined]  # the sweep's hook (see BatchedESD)
    return run


class BatchedESD:
    """``erase_fn`` of an ESD entry that erases the sweep's pending concepts ``batch`` at a time in one
    batched run (:func:`hirm.core.esd_batched.erase_each`): each concept's patch is its own ESD run's,
    up to floating point, at a fraction of the time; each patch's ``seconds`` is its share of the batch.

    The sweep calls :meth:`prepare` with the concepts it has still to run, then this object once per
    concept. A finished batch leaves each concept's patch in ``<cache>/esd-batched/`` (keyed by the
    model, the config and the concept), so an interrupted sweep does not train them again; a batch
    interrupted while training resumes from its checkpoint there.
    """

    def __init__(
        self,
        entry: Entry,
        canvas: Canvas,
        device: torch.device,
        *,
        batch: int,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> None:
        from hirm.evaluation.generation import default_cache_dir

        if not isinstance(batch, int) or batch < 1:
            raise EvaluationInputError(f"The ESD batch must be a positive number of concepts, not {batch!r}.")
        (self.method,) = entry.methods
        self.entry, self.canvas, self.device, self.batch = entry, canvas, device, batch
        self.config = _configs(entry)[self.method]
        self.root = Path(cache_dir or default_cache_dir()) / "esd-batched"
        self.progress = progress
        self.pending: list[tuple[str, str]] = []
        self._model: tuple[Any, list[str]] | None = None

    def prepare(self, names: Sequence[tuple[str, str]]) -> None:
        """The (concept, domain) pairs the sweep has still to run, in its order."""
        self.pending = list(names)

    def _key(self, handle: Any, texts: Sequence[str]) -> str:
        """Names a patch or a batch's checkpoint by what it depends on: model, method, config, concepts."""
        import hashlib
        import json

        from hirm.core.patch import fingerprint

        if self._model is None or self._model[0] is not handle:
            unet, encoder = handle.component("unet"), handle.text_encoder("text_encoder")
            self._model = (
                handle,
                [fingerprint(dict(m.named_parameters())) for m in (unet, encoder)],
            )
        payload = {
            "method": self.method,
            "config": self.config.to_dict(),
            "concepts": list(texts),
            "model": self._model[1],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]

    def __call__(self, handle: Any, name: str, domain: str):
        from hirm.core.esd_batched import erase_each
        from hirm.core.patch import Patch

        cached = self.root / f"{self._key(handle, [display_name(name)])}.safetensors"
        if cached.is_file():
            return Patch.load(cached)
        queue = [(name, domain)] + [(n, d) for n, d in self.pending if n != name]
        chunk = [
            (n, d)
            for n, d in queue
            if n == name or not (self.root / f"{self._key(handle, [display_name(n)])}.safetensors").is_file()
        ][: self.batch]
        concepts = [_world_concept(self.canvas, n, d, self.entry) for n, d in chunk]
        self.root.mkdir(parents=True, exist_ok=True)
        checkpoint = self.root / f"run-{self._key(handle, [c.text for c in concepts])}.safetensors"
        patches = erase_each(handle, concepts, self.config, checkpoint=checkpoint, progress=self.progress)
        for concept, patch in zip(concepts, patches):
            patch.save(self.root / f"{self._key(handle, [concept.text])}.safetensors", overwrite=True)
        checkpoint.unlink(missing_ok=True)  # hirm's own file; the patches are kept instead
        return patches[0]


def run_compare(
    model: str | os.PathLike = "minicanvas",
    *,
    out: str | os.PathLike,
    entries: Sequence[Entry] = tuple(ENTRIES.values()),
    domain: str = "all",
    concepts: Sequence[str] | None = None,
    limit: int | None = None,
    settings: CanvasSettings | None = None,
    canvas: Canvas | None = None,
    judges: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    command: str = "",
    progress: bool = True,
    esd_batch: int | None = None,
) -> Path:
    """Run (or resume) one sweep per entry and write ``compare.md`` and ``compare.csv``.

    ``canvas`` and ``judges`` default to the miniature world's; give both for another pipeline.
    ``esd_batch``: ESD entries erase up to that many concepts at once (:class:`BatchedESD`).
    """
    from hirm.evaluation.canvas import default_canvas_and_judges

    if not entries:
        raise EvaluationInputError("Give at least one method to compare.")
    device = resolve_device(device)
    canvas, judges = default_canvas_and_judges(model, canvas, judges, device)
    out = Path(out)
    with directory_lock(out, "hirm compare"):
        prepare_compare_out(out)
        for entry in entries:  # one sweep per entry in out/<entry name>, each resuming on its own
            run_sweep(
                model,
                out=out / entry.name,
                domain=domain,
                method="+".join(entry.methods),
                target=entry.target,
                concepts=concepts,
                limit=limit,
                settings=settings,
                canvas=canvas,
                judges=judges,
                device=device,
                cache_dir=cache_dir,
                erase_fn=make_erase(
                    entry, canvas, device, esd_batch=esd_batch, cache_dir=cache_dir, progress=progress
                ),
                progress=progress,
            )
        rows = table_rows(out, [e.name for e in entries])
        write_tables(out, rows, command=command, settings=settings, entries=entries)
    return out / "compare.md"


def merge_compare(
    parts: Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    names: Sequence[str] | None = None,
    command: str = "",
    settings: CanvasSettings | None = None,
) -> Path:
    """Merge comparison directories over disjoint concepts (e.g. one process per concept group on a
    shared GPU) into ``out`` and write its tables; returns ``out/compare.md``.

    ``names``: the entries to merge (default: every entry found in any part, in :data:`ENTRIES` order).
    Each entry's sweeps are merged as :func:`~hirm.evaluation.sweep.merge_sweeps` does (same settings,
    disjoint concepts, concepts in the parts' order); ``out`` must be new or empty, and every entry is
    checked before anything is written.
    """
    parts = [Path(p) for p in parts]
    out = Path(out)
    missing = [str(p) for p in parts if not p.is_dir()]
    if missing:
        raise EvaluationInputError(f"No such comparison directory: {', '.join(missing)}.")
    found = {d.name for p in parts for d in p.iterdir() if (d / "sweep.json").is_file()}
    names = list(names) if names else [n for n in ENTRIES if n in found] + sorted(found - set(ENTRIES))
    absent = [n for n in names if n not in found]
    if absent or not names:
        raise EvaluationInputError(
            f"No part holds the entries {absent or 'to merge'}; give comparison directories written by hirm compare."
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EvaluationInputError(f"{out} exists and is not empty; merge into a new directory.")
    # every entry is read and checked before anything is written
    plans = {n: plan_merge([p / n for p in parts if (p / n / "sweep.json").is_file()]) for n in names}
    with directory_lock(out, "hirm compare --merge"):
        write_marker(out, "compare", files=COMPARE_FILES, dirs=[""])
        for name, plan in plans.items():
            write_merge(plan, out / name)
        rows = table_rows(out, names)
        entries = [ENTRIES[n] for n in names if n in ENTRIES]
        write_tables(out, rows, command=command, settings=settings, entries=entries)
    return out / "compare.md"


COMPARE_FILES = ("compare.md", "compare.csv")


def prepare_compare_out(out: Path) -> None:
    """Mark ``out`` as a comparison directory (compare.md/csv + one sweep directory per entry).

    A directory without hirm's marker is taken over only when it holds nothing but a previous
    comparison's tables and sweep directories; anything else is refused (nothing is overwritten).
    """
    if read_marker(out) is None:
        foreign = [
            p.name
            for p in out.iterdir()
            if p.name != LOCK
            and not (p.name in COMPARE_FILES and p.is_file() and _is_compare_table(p))
            and not (p.is_dir() and (p / "sweep.json").is_file())
        ]
        if foreign:
            raise EvaluationInputError(
                f"{out} holds files that are not a hirm comparison ({', '.join(sorted(foreign)[:3])}); "
                "choose another --out."
            )
    write_marker(out, "compare", files=COMPARE_FILES, dirs=[""])


def _is_compare_table(path: Path) -> bool:
    first = path.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
    return first.startswith(("# Method comparison", "method,domain,"))


# Where each metric's image count sits in a concept's result.json (``metrics.erased``): (split, count).
IMAGE_COUNTS = {
    "UA": ("grid", "n_target"),
    "IRA": ("grid", "n_in_domain"),
    "CRA": ("grid", "n_cross"),
    "UA_heldout": ("heldout", "n_target"),
}


def table_rows(out: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (entry, domain): every metric's mean over concepts with its std, a 95 % bootstrap
    interval over concepts (:func:`~hirm.evaluation.common.mean_ci`) and the images it pools; cost, size."""
    rows = []
    for name in names:
        manifest, records = read_sweep(out / name)
        for domain in ("style", "object"):
            chosen = [r for r in records if r["domain"] == domain]
            if not chosen:
                continue
            row: dict[str, Any] = {
                "method": name,
                "domain": domain,
                "concepts": len(chosen),
                "names": [r["concept"] for r in chosen],
                "complete": manifest["complete"],
            }
            images = _image_counts(out / name, row["names"])
            for metric in METRICS:
                row[metric] = mean_ci(r["summary"].get(metric) for r in chosen)
                row[metric]["images"] = images.get(metric)
            row["seconds"] = mean_std(r["times"]["erase"] for r in chosen)
            meta = manifest.get("meta") or {}
            row["machine"], row["date"], row["settings"] = (
                meta.get(k) for k in ("machine", "date", "settings")
            )
            row["parameters"] = max(r["patch"].get("num_parameters", 0) for r in chosen)
            rows.append(row)
    return rows


def _image_counts(sweep_dir: Path, concepts: Sequence[str]) -> dict[str, int]:
    """Images judged per metric, summed over ``concepts`` (from each concept's result.json; a metric
    is left out when any concept's file or count is missing, e.g. a sweep written by an older version)."""
    totals = dict.fromkeys(IMAGE_COUNTS, 0)
    for concept in concepts:
        path = sweep_dir / "concepts" / concept / "result.json"
        metrics = (
            read_json(path, "a sweep concept result").get("metrics", {}).get("erased", {})
            if path.is_file()
            else {}
        )
        for metric, (split, key) in IMAGE_COUNTS.items():
            n = metrics.get(split, {}).get(key)
            totals[metric] = None if n is None or totals[metric] is None else totals[metric] + int(n)
    return {m: n for m, n in totals.items() if n is not None}


def _pm(stats: Mapping[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std``; with ``[lo, hi]`` (the 95 % interval over concepts) when the stats carry one."""
    if stats.get("mean") is None:
        return "–"
    text = f"{stats['mean'] * scale:.{digits}f} ± {(stats.get('std') or 0.0) * scale:.{digits}f}"
    if stats.get("ci95"):
        lo, hi = stats["ci95"]
        text += f" [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
    return text


def write_tables(
    out: Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    command: str,
    settings: CanvasSettings | None,
    entries: Sequence[Entry] = (),
) -> None:
    header = [
        "method",
        "domain",
        "UA",
        "IRA",
        "CRA",
        "AA",
        "held-out UA",
        "s / concept",
        "changed params",
        "concepts",
        "follows",
    ]
    # Each row names the authors' code its entry follows: a note number here, the script in the notes.
    note_of = {e.name: i for i, e in enumerate(entries, start=1)}
    follows = {e.name: _follows_text(e) for e in entries}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r["method"],
            r["domain"],
            *(_pm(r[m]) for m in METRICS),
            _pm(r["seconds"], 1.0, 2),
            f"{r['parameters']:,}",
            f"{r['concepts']}{'' if r['complete'] else ' (incomplete)'}",
            f"[{note_of[r['method']]}]" if r["method"] in note_of else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    best = _best_notes(rows)
    text = "\n".join(
        [
            "# Method comparison on the miniature world (MiniCanvas)",
            "",
            "UA / IRA / CRA / AA and held-out-template UA in %: mean ± std over the concepts of the domain",
            "[95 % percentile-bootstrap interval over concepts, 10,000 resamples, seed 0]; each concept's",
            "figure is a share of judged images (counts below). Seconds per concept are the erase time only",
            "(mean ± std); changed params = tensors in the patch.",
            "",
            *lines,
            "",
            *best,
            "",
            *_concept_lines(rows),
            *_count_lines(rows),
            *(f"- [{note_of[e.name]}] {e.name}: {_entry_text(e)}" for e in entries),
            f"- command: `{command}`" if command else "",
            f"- settings: {settings.to_dict() if settings else _recorded_settings(rows)}",
            *_machine_lines(rows),
        ]
    )
    write_atomic(
        out / "compare.md", lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"), overwrite=True
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    stats = [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "ci95_lo", "ci95_hi", "images")]
    writer.writerow(
        [
            "method",
            "domain",
            "concepts",
            "complete",
            *stats,
            "seconds_mean",
            "seconds_std",
            "parameters",
            "follows",
        ]
    )
    for r in rows:
        values = [
            v
            for m in METRICS
            for v in (
                r[m].get("mean"),
                r[m].get("std"),
                *(r[m].get("ci95") or (None, None)),
                r[m].get("images"),
            )
        ]
        seconds = [r["seconds"]["mean"], r["seconds"]["std"]]
        writer.writerow(
            [
                r["method"],
                r["domain"],
                r["concepts"],
                r["complete"],
                *values,
                *seconds,
                r["parameters"],
                follows.get(r["method"], ""),
            ]
        )
    write_atomic(
        out / "compare.csv", lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"), overwrite=True
    )


def _recorded_settings(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The settings the entries' sweeps recorded (the table's own settings when it was not given any)."""
    recorded = next((r["settings"] for r in rows if r.get("settings")), None)
    if not recorded:
        return "world defaults"
    return {k: v for k, v in recorded.items() if k not in ("method", "target", "domain")}  # per entry


def _machine_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where each entry ran (its sweep's recorded machine: seconds compare only within one machine)
    and when the table was written."""
    machines = {r["method"]: r.get("machine") or "not recorded" for r in rows}
    written = f"table written {now_iso()} on {machine_text()}"
    if len(set(machines.values())) <= 1:
        return [f"- machine: {next(iter(machines.values()), machine_text())}; {written}"]
    return [
        "- machines (seconds per concept compare only within one machine): "
        + "; ".join(
            f"{r['method']}: {machines[r['method']]} ({r.get('date') or 'date not recorded'})"
            for r in {r["method"]: r for r in rows}.values()
        ),
        f"- {written}",
    ]


def _follows(method: str) -> str:
    """The authors' code a registered method's defaults reproduce."""
    from hirm.core.registry import get_method

    return get_method(method).follows or "no published script"


def _follows_text(entry: Entry) -> str:
    return " + ".join(f"{m}: {_follows(m)}" for m in entry.methods)


def _entry_text(entry: Entry) -> str:
    """What an entry runs: each method with the authors' code its defaults follow, and any change."""
    parts = [f"{m} (follows {_follows(m)})" for m in entry.methods]
    text = " + ".join(parts)
    if any(m in TARGETED for m in entry.methods):  # the others ignore a concept's target
        text += f"; target {entry.target}"
    if entry.overrides:
        text += "; changed from the defaults: " + "; ".join(
            f"{method} " + ", ".join(f"{k}={v}" for k, v in changes.items())
            for method, changes in entry.overrides.items()
        )
    if entry.preserve_others:
        text += (
            f"; {', '.join(entry.preserve_others)} preserves the other concepts of the erased one's domain"
        )
    if entry.preserve_sentences:
        text += f" ({', '.join(entry.preserve_sentences)}: also in sentences pairing them with the other domain's)"
    return text


def _concept_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Which concepts each domain's means are over: the first entry's list, then every entry run on
    another list (e.g. a subset, or a comparison merged from runs on different concepts)."""
    lines = []
    for domain in ("style", "object"):
        names = next((r["names"] for r in rows if r["domain"] == domain), None)
        if names:
            lines.append(f"- {domain} concepts: {', '.join(names)}")
        lines += [
            f"- {r['method']}, {domain} concepts: {', '.join(r['names'])} (only these)"
            for r in rows
            if r["domain"] == domain and r["names"] != names
        ]
    return lines


def _count_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The images each domain's figures pool (the first entry's counts; every entry judges the same grid)."""
    lines = []
    for domain in ("style", "object"):
        row = next((r for r in rows if r["domain"] == domain), None)
        if row is None:
            continue
        counts = [f"{m} {row[m]['images']:,}" for m in IMAGE_COUNTS if row[m].get("images") is not None]
        if counts:
            lines.append(
                f"- {domain} images judged per entry (n, over {row['concepts']} concepts): {', '.join(counts)}"
            )
    return lines


def _best_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Plain sentences: which method is best per domain and metric, and where a peer beats HiRM."""
    notes = []
    for domain in ("style", "object"):
        chosen = [r for r in rows if r["domain"] == domain and r["AA"].get("mean") is not None]
        hirm = [r for r in chosen if r["method"].startswith("hirm-")]
        for metric in ("UA", "IRA", "CRA", "AA"):
            if not chosen:
                continue
            top = max(chosen, key=lambda r: r[metric]["mean"] or 0)
            line = f"- {domain} {metric}: best {top['method']} ({_pm(top[metric])})"
            if hirm:
                best_hirm = max(hirm, key=lambda r: r[metric]["mean"] or 0)
                beaters = [
                    r["method"]
                    for r in chosen
                    if not r["method"].startswith("hirm")
                    and (r[metric]["mean"] or 0) > (best_hirm[metric]["mean"] or 0)
                ]
                if beaters:
                    line += f"; peers above the best HiRM ({best_hirm['method']}): {', '.join(beaters)}"
            notes.append(line)
    return notes
