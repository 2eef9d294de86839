"""The README's quick start runs as written, on the embedded world.

Every ``hirm`` line of the quick start's shell block is run in order, in a fresh directory, with its
options as written; only tiny budgets are appended (a few sampler / optimizer steps, one seed, one
concept), so that a broken option or a missing file fails here. The first erase runs exactly as written
and must visibly erase Cats; the Python block's first example must give the same patch.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

README = Path(__file__).resolve().parents[1] / "README.md"
FAST_GRID = ["--seeds", "188", "--sampler-steps", "2", "--no-heldout", "--no-super", "--quiet"]
#: Appended to each subcommand (the last value of an option wins); the first erase gets nothing.
BUDGETS: dict[tuple[str, ...], list[str]] = {
    ("erase",): ["--steps", "2", "--quiet"],
    ("generate",): ["--seeds", "0", "--sampler-steps", "2", "--quiet"],
    ("eval", "canvas"): FAST_GRID,
    ("sweep",): ["--limit", "1", "--domain", "object", *FAST_GRID],
    ("compare",): ["--method", "hirm-r", "--limit", "1", "--domain", "object", *FAST_GRID],
}


def quick_start(language: str) -> list[str]:
    section = README.read_text(encoding="utf-8").split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def commands() -> list[list[str]]:
    """The ``hirm`` commands of the quick start's shell block (every line must be one)."""
    (block,) = quick_start("bash")
    lines = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
    assert lines and all(args[0] == "hirm" for args in lines), "every quick-start line must be a hirm command"
    return [args[1:] for args in lines]


def budget(args: list[str]) -> list[str]:
    for size in (2, 1):
        extra = BUDGETS.get(tuple(args[:size]))
        if extra is not None:
            return [] if args[0] == "erase" and "--method" in args else extra
    return []


def object_accuracy(patches: list, prompts: list[str], seeds: list[int]) -> np.ndarray:
    """Share of images the world's object judge labels with each prompt's object (one per prompt)."""
    import hirm
    import hirm.world as world
    from hirm.generation import generate

    judge = world.load_judges()["object"]
    images = generate(
        hirm.load_pipeline("minicanvas", patches=patches), prompts, seeds, **world.GENERATION_DEFAULTS
    )
    probs = judge(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    labels = np.array(judge.classes)[probs.argmax(-1).numpy()].reshape(len(prompts), len(seeds))
    names = [p.split()[1] for p in prompts]  # "A Cats image in Pastel style." -> Cats
    return (labels == np.array(names)[:, None]).mean(axis=1)


def test_quick_start_shell_commands_run_and_the_first_erases(tmp_path, monkeypatch):
    from hirm.cli.main import app
    from hirm.core.patch import Patch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HIRM_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    runner = CliRunner()
    steps = commands()
    assert steps[0][0] == "erase" and "--method" not in steps[0]
    for i, args in enumerate(steps):
        full = args + ([] if i == 0 else budget(args))
        result = runner.invoke(app, full)
        assert result.exit_code == 0, (
            f"`hirm {shlex.join(full)}` failed:\n{result.output}{result.exception!r}"
        )
        if i == 0:  # the first example visibly erases: Cats leaves, Horses stays (world-tuned HiRM-S)
            first = Patch.load(args[args.index("-o") + 1])
            prompts = ["A Cats image in Pastel style.", "A Horses image in Pastel style."]
            before, after = (
                object_accuracy([], prompts, list(range(8))),
                object_accuracy([first], prompts, list(range(8))),
            )
            assert before[0] >= 0.75 and after[0] <= 0.375 and after[1] >= 0.75, (before, after)
    assert (tmp_path / "runs" / "report" / "index.html").is_file()
    assert (tmp_path / "hub" / "no-cats" / "README.md").is_file()
    assert (tmp_path / "runs" / "compare-report" / "index.html").is_file()


def test_quick_start_python_block_runs_and_its_first_patch_is_the_cli_one(tmp_path, monkeypatch):
    import hirm

    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    (block,) = quick_start("python")
    namespace: dict = {}
    exec(compile(block, "README quick start", "exec"), namespace)  # noqa: S102 - our own README
    first = hirm.Patch.load(tmp_path / "cats.safetensors")
    from hirm.cli.main import app

    args = commands()[0]
    out = args.index("-o") + 1
    result = CliRunner().invoke(app, [*args[:out], "cli.safetensors", *args[out + 1 :]])
    assert result.exit_code == 0, result.output
    cli = hirm.Patch.load(tmp_path / "cli.safetensors")
    assert first.tensors.keys() == cli.tensors.keys()
    assert all(torch.equal(first.tensors[k], cli.tensors[k]) for k in first.tensors)
    assert len(namespace["images"]) == 1
