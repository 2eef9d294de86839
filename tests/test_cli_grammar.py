"""One CLI grammar: the same option means the same thing in every command (walks the whole command tree)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from hirm.cli.main import app

runner = CliRunner()


def commands() -> Iterator[tuple[str, Any]]:
    """Every leaf command (a click command of typer's) as ("eval canvas", command)."""

    def walk(prefix: str, command: Any) -> Iterator[tuple[str, Any]]:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from walk(f"{prefix} {name}".strip(), sub)
        else:
            yield prefix, command

    yield from walk("", typer.main.get_command(app))


def option(command: Any, name: str) -> Any:
    return next((p for p in command.params if p.param_type_name == "option" and name in p.opts), None)


ALL = dict(commands())


def test_the_tree_is_what_the_readme_documents():
    assert {"erase", "apply", "generate", "info", "eval canvas", "eval nudity", "eval utility", "attack",
            "sweep", "compare", "report", "world build", "world info", "export encoder", "env"} <= set(ALL)  # fmt: skip


@pytest.mark.parametrize("name", sorted(ALL))
def test_dash_h_is_help_everywhere(name):
    result = runner.invoke(app, [*name.split(), "-h"])
    assert result.exit_code == 0 and "Usage:" in result.output, result.output


def test_version():
    from hirm._version import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"hirm {__version__}"


@pytest.mark.parametrize(
    ("long", "short"),
    [("--concept", "-c"), ("--patch", "-p"), ("--out", "-o"), ("--model", "-m"), ("--quiet", "-q")],
)
def test_each_shared_option_has_its_short_form_wherever_it_appears(long, short):
    having = {name: option(cmd, long) for name, cmd in ALL.items() if option(cmd, long) is not None}
    assert having, long
    assert [name for name, opt in having.items() if short not in opt.opts] == []


def test_device_and_precision_are_one_definition_with_one_default():
    for flag in ("--device", "--precision"):
        found = {name: option(cmd, flag) for name, cmd in ALL.items() if option(cmd, flag) is not None}
        assert {(opt.default, opt.help) for opt in found.values()} == {
            ("auto", next(iter(found.values())).help)
        }, flag
    assert {n for n, c in ALL.items() if option(c, "--precision")} >= {"erase", "generate", "eval canvas", "sweep", "compare"}  # fmt: skip


def test_steps_are_optimizer_steps_and_sampler_steps_have_their_own_name():
    for name, cmd in ALL.items():
        steps = option(cmd, "--steps")
        if steps is not None and not steps.hidden:
            assert name in ("erase", "attack") and "ptimizer" in (steps.help or ""), name
    sampling = {"generate", "eval canvas", "eval nudity", "eval utility", "sweep", "compare", "attack"}
    assert {n for n, c in ALL.items() if option(c, "--sampler-steps")} == sampling


def test_the_erased_concept_is_concept_everywhere():
    assert option(ALL["eval canvas"], "--target").hidden  # the former name, kept hidden
    for name in ("erase", "sweep"):  # --target there is the misdirection target
        assert "random" in option(ALL[name], "--target").help


def test_commands_that_show_progress_take_quiet():
    expected = {"erase", "apply", "generate", "eval canvas", "eval nudity", "eval utility", "attack", "sweep",
                "compare", "world build", "export encoder"}  # fmt: skip
    assert {n for n, c in ALL.items() if option(c, "--quiet")} >= expected


def test_former_names_still_work_with_a_notice(sd_dir, tmp_path):
    result = runner.invoke(app, ["eval", "canvas", "-m", str(sd_dir), "--target", "Cats", "--device", "cpu"])
    assert "--target is now --concept" in result.output and "needs judges" in result.output
    result = runner.invoke(app, ["eval", "canvas", "-c", "Cats", "--target", "Cats"])
    assert result.exit_code == 2 and "give only --concept" in result.output
    out = tmp_path / "g"
    result = runner.invoke(app, ["generate", "-m", str(sd_dir), "--prompt", "a cat", "--seeds", "0", "--steps", "1",
                                 "--height", "16", "--width", "16", "--device", "cpu", "-q", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0 and "--steps is now --sampler-steps" in result.output, result.output
    assert json.loads((out / "manifest.json").read_text())["call"]["num_inference_steps"] == 1


def test_precision_auto_resolves_by_the_hardware_and_bad_values_are_one_line():
    import torch

    from hirm.checks import native_bf16
    from hirm.cli.common import sampling_precision

    cpu = torch.device("cpu")
    assert sampling_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    assert sampling_precision("fp32", cpu) == "fp32" and sampling_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="--precision takes one of 'auto', 'fp32', 'bf16'; got \"half\""):
        sampling_precision("half", cpu)


def test_quiet_silences_transformers_and_diffusers_and_restores_them():
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    from hirm.cli.common import quiet_libraries

    before = (tlog.get_verbosity(), dlog.get_verbosity(), tlog.is_progress_bar_enabled())
    with quiet_libraries(True):
        assert tlog.get_verbosity() == logging.ERROR and dlog.get_verbosity() == logging.ERROR
        assert not tlog.is_progress_bar_enabled() and not dlog.is_progress_bar_enabled()
    assert (tlog.get_verbosity(), dlog.get_verbosity(), tlog.is_progress_bar_enabled()) == before
    with quiet_libraries(False):
        assert tlog.get_verbosity() == before[0]


def test_info_draws_the_loss_curve_and_prints_json_only_when_asked(sd_dir, tmp_path):
    import hirm
    from hirm.cli.info import text_chart
    from hirm.core.config import HiRMConfig

    chart = text_chart([8.0, 4.0, 2.0, 1.0], height=4).splitlines()
    assert chart[0].startswith("8 ┤█") and chart[0].endswith("   ")  # only the first bar reaches the top
    assert chart[3] == "1 ┤██▅▁"  # heights in eighths of a line; the lowest value is a thin bar
    assert chart[-1].split() == ["step", "1", "4"]
    assert (
        len(text_chart(list(range(500)), width=40).splitlines()[0].split("┤")[1]) == 40
    )  # 500 steps, 40 columns
    patch = hirm.erase(str(sd_dir), ["cat"], config=HiRMConfig(steps=3, precision="fp32"), progress=False)
    path = patch.save(tmp_path / "p.safetensors")
    text = runner.invoke(app, ["info", str(path)]).output
    assert (
        "loss per optimizer step (text_encoder)" in text and "┤" in text and not text.lstrip().startswith("{")
    )
    meta = json.loads(runner.invoke(app, ["info", str(path), "--json"]).output)
    assert len(meta["losses"]["text_encoder"]) == 3


def test_python_m_hirm_world_build_is_hirm_world_build(tmp_path, monkeypatch):
    """The module entry point runs the CLI command (its checks, lock and marker) with the older spellings."""
    import hirm.world
    from hirm.io import read_marker
    from hirm.world.build import main

    calls = []

    def fake_build(out, **kwargs):
        calls.append(kwargs)
        return out / "assets"

    monkeypatch.setattr(hirm.world, "build_world", fake_build)
    out = tmp_path / "w"
    with pytest.raises(SystemExit) as done:
        main(["--out", str(out), "--preset", "tiny", "--stages", "data", "tokenizer", "--no-progress",
              "--device", "cpu"])  # fmt: skip
    assert done.value.code == 0
    assert calls == [{"seed": 0, "preset": "tiny", "stages": ("data", "tokenizer"), "device": "cpu",
                      "install": False, "progress": False}]  # fmt: skip
    assert read_marker(out) is not None  # written by the CLI path, not by a separate parser
    with pytest.raises(SystemExit) as bad:
        main(["--out", str(tmp_path / "v"), "--stage", "bogus", "--device", "cpu"])
    assert bad.value.code == 2 and len(calls) == 1
