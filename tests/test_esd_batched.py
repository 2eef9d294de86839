"""ESD on many concepts in one batched run (``hirm.core.esd_batched.erase_each``) on a tiny random SD
pipeline: each concept's patch is the one its own sequential ESD run gives (the same seeded draws, its
own x_t and Adam), a resumed run is the uninterrupted one, and bad input is refused."""

from __future__ import annotations

import pytest
import torch

import hirm
from hirm.core import esd_batched
from hirm.core.config import Concept
from hirm.core.esd import ESDConfig
from hirm.core.esd import erase as esd_erase
from hirm.core.esd_batched import erase_each
from hirm.core.patch import component_parameters

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CONCEPTS = [Concept("cat"), Concept("dog"), Concept("a red car")]


@pytest.fixture(scope="module")
def model(sd_dir):
    return hirm.load_model(sd_dir)


def _edit(model, patch: hirm.Patch) -> torch.Tensor:
    """The patch's whole change to the U-Net, flattened (the change, not the much larger weights)."""
    originals = component_parameters(model.component("unet"))
    return torch.cat(
        [(patch.tensors[k] - originals[k.split("/", 1)[1]].detach()).flatten() for k in sorted(patch.tensors)]
    )


def _edit_error(model, got: hirm.Patch, expected: hirm.Patch) -> float:
    assert set(got.tensors) == set(expected.tensors)
    mine = _edit(model, expected)
    return float((_edit(model, got) - mine).norm() / mine.norm())


@pytest.mark.parametrize("variant", ["esd-x", "esd-u"])
def test_each_concept_gets_the_patch_of_its_own_sequential_run(model, variant):
    config = ESDConfig(variant=variant, steps=3, lr=1e-3, ddim_steps=6, seed=5)
    batched = erase_each(model, CONCEPTS, config, progress=False)
    assert len(batched) == len(CONCEPTS)
    alones = [esd_erase(model, [c], config, progress=False) for c in CONCEPTS]
    for i, (patch, alone) in enumerate(zip(batched, alones)):
        assert patch.metadata["concepts"] == alone.metadata["concepts"]
        assert patch.metadata["method"] == variant
        assert patch.metadata["batched"]["concepts"] == len(CONCEPTS)
        # batched kernels sum in another order: 2.2e-4 relative on a 2-core AMD EPYC with native bf16
        torch.testing.assert_close(
            torch.tensor(patch.metadata["losses"]["unet"]), torch.tensor(alone.metadata["losses"]["unet"]),
            rtol=1e-3, atol=1e-7,
        )  # fmt: skip
        # the edit in norm: Adam's first updates are lr * sign(g), so an element whose gradient is ~0
        # can flip on float noise (batched kernels sum in another order); the edit must still be its own
        # concept's, far from any other concept's
        error = _edit_error(model, patch, alone)
        assert error < 2e-2
        for j, other in enumerate(alones):
            if j != i:
                assert _edit_error(model, patch, other) > 10 * error


def test_batches_and_a_resumed_checkpoint_give_the_same_patches(model, tmp_path, monkeypatch):
    config = ESDConfig(variant="esd-x", steps=4, lr=1e-3, ddim_steps=5, seed=2)
    whole = erase_each(model, CONCEPTS, config, progress=False)
    # two at a time: the same patches (each concept's stream is its own)
    pairs = erase_each(model, CONCEPTS, config, batch_size=2, progress=False)
    for a, b in zip(whole, pairs):
        assert _edit_error(model, b, a) < 2e-2
    # interrupted (Ctrl-C) after 2 of its 4 steps, then the same call again: it continues from the checkpoint
    ckpt = tmp_path / "esd.safetensors"
    step = esd_batched._Batch._train_step
    done = []

    def interrupted(self):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(step(self))

    monkeypatch.setattr(esd_batched._Batch, "_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        erase_each(model, CONCEPTS, config, checkpoint=ckpt, checkpoint_every=1, progress=False)
    monkeypatch.undo()
    assert ckpt.is_file()
    resumed = erase_each(model, CONCEPTS, config, checkpoint=ckpt, checkpoint_every=1, progress=False)
    for a, b in zip(whole, resumed):
        assert a.digest == b.digest  # bit for bit
        assert a.metadata["losses"] == b.metadata["losses"]
    # a checkpoint of another run is refused, not continued
    with pytest.raises(ValueError, match="checkpoint of another ESD run"):
        erase_each(model, CONCEPTS[:2], config, checkpoint=ckpt, progress=False)


def test_bad_input_is_a_one_line_error(model, tmp_path):
    config = ESDConfig(steps=1, ddim_steps=2)
    with pytest.raises(ValueError, match="at least one concept"):
        erase_each(model, [], config)
    with pytest.raises(ValueError, match="given twice"):
        erase_each(model, [Concept("cat"), Concept("cat")], config)
    with pytest.raises(ValueError, match="one concept at a time"):
        erase_each(model, CONCEPTS, ESDConfig(steps=1, ddim_steps=2, preserve=("dog",)))
    with pytest.raises(ValueError, match="batch_size"):
        erase_each(model, CONCEPTS, config, batch_size=0)
    with pytest.raises(ValueError, match="one batch"):
        erase_each(model, CONCEPTS, config, batch_size=2, checkpoint=tmp_path / "c.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not an ESD checkpoint"):
        erase_each(model, CONCEPTS, config, checkpoint=foreign)
    assert foreign.read_text() == "not a checkpoint"
