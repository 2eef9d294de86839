"""``hirm generate``: labelled grid (rows: prompt and model, columns: seed), the base model alone, progress."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hirm.cli.main import app
from hirm.generation import labelled_grid

runner = CliRunner()


def dark(picture: Image.Image, box: tuple[float, float, float, float]) -> int:
    """Number of dark (text) pixels in ``box`` of ``picture``."""
    return int((np.asarray(picture.crop(tuple(int(v) for v in box)).convert("L")) < 100).sum())


def test_labelled_grid_layout_and_labels():
    rng = np.random.default_rng(0)
    rows = [(f"prompt {i}\n{run}", rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)) for i in range(2) for run in ("original", "erased")]  # fmt: skip
    a = labelled_grid(rows, ["seed 0", "seed 1", "seed 2"], label_width=200)
    cell, head = 96, 28  # 16 px images enlarged x6; header = 2 x font size
    assert a.size == (200 + 3 * cell, head + 4 * cell)
    # the image block is the images, enlarged with nearest neighbour, in row-major order
    block = np.asarray(a)[head:, 200:]
    for i, (_, images) in enumerate(rows):
        for j, image in enumerate(images):
            expected = np.asarray(Image.fromarray(image).resize((cell, cell), Image.NEAREST))
            assert np.array_equal(block[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell], expected)
    # every row and every column carries a label, and the label follows the text
    assert all(dark(a, (0, head + i * cell, 200, head + (i + 1) * cell)) > 20 for i in range(4))
    assert all(dark(a, (200 + j * cell, 0, 200 + (j + 1) * cell, head)) > 10 for j in range(3))
    b = labelled_grid([(label.upper(), images) for label, images in rows], ["x", "y", "z"], label_width=200)
    assert np.array_equal(np.asarray(b)[head:, 200:], block)
    assert not np.array_equal(np.asarray(a)[:, :200], np.asarray(b)[:, :200])
    with pytest.raises(ValueError, match="one image per column"):
        labelled_grid(rows, ["seed 0"])


def test_generate_with_and_without_patch(sd_dir, tmp_path):
    import hirm
    from hirm.core.config import HiRMConfig

    patch = hirm.erase(str(sd_dir), ["Cats"], config=HiRMConfig(steps=2, precision="fp32"), progress=False)
    patch_file = patch.save(tmp_path / "p.safetensors")
    common = ["--model", str(sd_dir), "--prompt", "a Cats image", "--prompt", "a dog", "--seeds", "0,1",
              "--sampler-steps", "2", "--height", "16", "--width", "16"]  # fmt: skip
    result = runner.invoke(app, ["generate", *common, "-p", str(patch_file), "-o", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    a = tmp_path / "a"
    assert len(list((a / "original").glob("*.png"))) == 4 and len(list((a / "erased").glob("*.png"))) == 4
    with Image.open(a / "grid.png") as grid:
        assert grid.size == (260 + 2 * 96, 28 + 4 * 96)  # 2 prompts x (original, erased) rows, 2 seeds
    assert json.loads((a / "manifest.json").read_text())["runs"] == ["original", "erased"]
    assert "original" in result.output and "erased" in result.output  # one progress bar per model

    result = runner.invoke(app, ["generate", *common, "-o", str(tmp_path / "b"), "--quiet"])
    assert result.exit_code == 0, result.output
    b = tmp_path / "b"
    assert not (b / "erased").exists() and "original model (no patch)" in result.output
    with Image.open(b / "grid.png") as grid:
        assert grid.size == (260 + 2 * 96, 28 + 2 * 96)
    # the base model's images are the same as the original row of the run with a patch
    for png in (a / "original").glob("*.png"):
        assert np.array_equal(np.asarray(Image.open(png)), np.asarray(Image.open(b / "original" / png.name)))


def test_bf16_sampling_warns_where_the_cpu_emulates_it(monkeypatch):
    """bf16 autocast on a CPU without native bf16 is emulated (12x slower than fp32 on the world's
    pipeline on an AVX2 CPU): a bf16 request says so; fp32, or a CPU with native bf16, says nothing."""
    import warnings

    import torch

    import hirm.checks
    from hirm.evaluation.generation import Request, generate_batch

    class Pipe:  # the pipeline's call is not what is tested: images of the requested size
        device = torch.device("cpu")

        def __call__(self, prompt, **kwargs):
            return type("Out", (), {"images": np.zeros((len(prompt), 4, 4, 3), np.float32)})()

    def sample(precision, native):
        monkeypatch.setattr(hirm.checks, "native_bf16", lambda device: native)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generate_batch(Pipe(), [Request("a cat", 0, 6.0, 2, precision=precision)])
        return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]

    (message,) = sample("bf16", native=False)
    assert "emulated" in message and "'fp32' or 'auto'" in message
    assert sample("bf16", native=True) == [] and sample("fp32", native=False) == []
