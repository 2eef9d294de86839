"""Sweep: streaming results, resume after a kill, one generation of the original model, aggregation."""

from __future__ import annotations

import csv
import json

import pytest

import hirm
from hirm.core.config import Concept, HiRMConfig
from hirm.evaluation.common import EvaluationInputError
from hirm.evaluation.sweep import aggregate, read_sweep, run_sweep


class CountingErase:
    """Erases with HiRM (3 steps) and counts calls; raises KeyboardInterrupt at call ``kill_at``."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.calls: list[str] = []
        self.kill_at = kill_at

    def __call__(self, handle, name, domain):
        self.calls.append(name)
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            raise KeyboardInterrupt("simulated kill")
        config = HiRMConfig(steps=3, lr=1e-2, precision="fp32")
        return hirm.erase(
            handle, [Concept(text=name.replace("_", " "), kind=domain)], config=config, progress=False
        )


def sweep(sd_dir, canvas, judges, settings, tmp_path, erase, **kw):
    return run_sweep(
        str(sd_dir),
        out=tmp_path / "sweep",
        canvas=canvas,
        judges=judges,
        settings=settings,
        device="cpu",
        cache_dir=tmp_path / "cache",
        erase_fn=erase,
        progress=False,
        **kw,
    )


def test_sweep_resumes_after_kill(sd_dir, canvas, judges, settings, tmp_path):
    killed = CountingErase(kill_at=2)
    with pytest.raises(KeyboardInterrupt):
        sweep(sd_dir, canvas, judges, settings, tmp_path, killed, domain="style")
    manifest, records = read_sweep(tmp_path / "sweep")
    assert manifest["complete"] is False and [r["concept"] for r in records] == ["Van_Gogh"]
    assert (tmp_path / "sweep" / "concepts" / "Van_Gogh" / "result.json").is_file()
    n_cached = len(list((tmp_path / "cache").rglob("*.png")))

    resumed = CountingErase()
    manifest = sweep(sd_dir, canvas, judges, settings, tmp_path, resumed, domain="style")
    assert resumed.calls == ["Crayon"]  # the finished concept is not redone
    assert manifest["complete"] is True and manifest["finished"] == ["Van_Gogh", "Crayon"]
    assert (
        len(list((tmp_path / "cache").rglob("*.png"))) == n_cached
    )  # the original model was not regenerated
    rows = list(csv.DictReader((tmp_path / "sweep" / "results.csv").open()))
    assert [r["concept"] for r in rows] == ["Van_Gogh", "Crayon"] and rows[0]["UA"] != ""
    ua = [float(r["UA"]) for r in rows]
    assert manifest["aggregate"]["style"]["UA"]["mean"] == pytest.approx(sum(ua) / 2)
    lines = [json.loads(x) for x in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]
    assert all(set(line["times"]) == {"erase", "generate", "judge"} for line in lines)
    assert all(line["patch"]["fingerprints"] for line in lines)


def test_sweep_refuses_other_settings_and_overwrites(sd_dir, canvas, judges, settings, tmp_path):
    from dataclasses import replace

    sweep(sd_dir, canvas, judges, settings, tmp_path, CountingErase(), concepts=["cats"])
    with pytest.raises(EvaluationInputError, match="other settings"):
        sweep(
            sd_dir,
            canvas,
            judges,
            replace(settings, seeds=(5,)),
            tmp_path,
            CountingErase(),
            concepts=["cats"],
        )
    again = CountingErase()
    manifest = sweep(
        sd_dir,
        canvas,
        judges,
        replace(settings, seeds=(5,)),
        tmp_path,
        again,
        concepts=["cats"],
        overwrite=True,
    )
    assert again.calls == ["Cats"] and manifest["complete"] and manifest["meta"]["seeds"] == [5]


def test_sweep_bad_inputs(sd_dir, canvas, judges, settings, tmp_path):
    with pytest.raises(EvaluationInputError):
        sweep(sd_dir, canvas, judges, settings, tmp_path, CountingErase(), domain="colour")
    with pytest.raises(EvaluationInputError):
        sweep(sd_dir, canvas, judges, settings, tmp_path, CountingErase(), concepts=["Monet"])
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "other.txt").write_text("x")
    with pytest.raises(EvaluationInputError, match="not a sweep directory"):
        sweep(sd_dir, canvas, judges, settings, tmp_path, CountingErase(), concepts=["Cats"])


def test_aggregate_mean_std():
    recs = [
        {"domain": "style", "summary": {"UA": 1.0}},
        {"domain": "style", "summary": {"UA": 0.5}},
        {"domain": "object", "summary": {"UA": 0.0}},
    ]
    agg = aggregate(recs)
    assert agg["style"]["UA"] == {"mean": 0.75, "std": 0.25, "n": 2}
    assert agg["all"]["UA"]["mean"] == pytest.approx(0.5) and agg["object"]["n_concepts"] == 1
    assert agg["all"]["IRA"]["mean"] is None


def test_default_erase_spelling_and_super_target(sd_dir, canvas):
    import torch

    from hirm.evaluation.sweep import default_erase

    handle = hirm.load_model(str(sd_dir))
    patch = default_erase("hirm", torch.device("cpu"))(handle, "Van_Gogh", "style")
    assert (
        patch.metadata["concepts"][0]["text"] == "Van Gogh"
        and patch.metadata["concepts"][0]["kind"] == "style"
    )
    patch = default_erase("hirm", torch.device("cpu"), target="super", canvas=canvas)(
        handle, "Cats", "object"
    )
    assert patch.metadata["concepts"][0]["target"]["prompt"] == "animal"
    with pytest.raises(EvaluationInputError):
        default_erase("hirm", torch.device("cpu"), target="nearest")


def test_sweep_unknown_method_fails_before_work(sd_dir, canvas, judges, settings, tmp_path):
    with pytest.raises(ValueError, match="Unknown method"):
        run_sweep(
            str(sd_dir),
            out=tmp_path / "s",
            method="nope",
            canvas=canvas,
            judges=judges,
            settings=settings,
            device="cpu",
            progress=False,
        )
    assert not (tmp_path / "s").exists()


def test_torn_last_line_is_reported_skipped_and_rerun(sd_dir, canvas, judges, settings, tmp_path, caplog):
    """A kill during the append leaves a torn last line: the next record starts on a fresh line, the
    torn concept is re-run, and completeness comes from the records actually present."""
    sweep(sd_dir, canvas, judges, settings, tmp_path, CountingErase(), domain="style", limit=1)
    lines = tmp_path / "sweep" / "results.jsonl"
    with lines.open("a") as handle:
        handle.write('{"concept": "Crayon", "settings_key": "')  # torn: no end, no newline
    manifest, records = read_sweep(tmp_path / "sweep")
    assert manifest["torn_lines"] == [2] and [r["concept"] for r in records] == ["Van_Gogh"]

    resumed = CountingErase()
    with caplog.at_level("WARNING"):
        manifest = sweep(sd_dir, canvas, judges, settings, tmp_path, resumed, domain="style")
    assert resumed.calls == ["Crayon"] and "skipped line(s) [2]" in caplog.text
    assert manifest["complete"] is True and manifest["finished"] == ["Van_Gogh", "Crayon"]
    text = lines.read_text().splitlines()
    assert json.loads(text[-1])["concept"] == "Crayon"  # a whole line of its own
    manifest, records = read_sweep(tmp_path / "sweep")
    assert manifest["complete"] is True and [r["concept"] for r in records] == ["Van_Gogh", "Crayon"]


def test_completeness_is_derived_from_the_records_present(sd_dir, canvas, judges, settings, tmp_path):
    manifest = sweep(sd_dir, canvas, judges, settings, tmp_path, CountingErase(), domain="style")
    assert manifest["complete"] is True
    lines = tmp_path / "sweep" / "results.jsonl"
    lines.write_text(lines.read_text().splitlines()[0] + "\n")  # one record lost
    manifest, records = read_sweep(tmp_path / "sweep")
    assert manifest["complete"] is False and manifest["finished"] == ["Van_Gogh"]
    assert manifest["aggregate"]["all"]["n_concepts"] == 1


def test_a_second_sweep_on_a_locked_directory_is_refused(sd_dir, canvas, judges, settings, tmp_path):
    import subprocess
    import sys

    from hirm.io import LOCK, DirectoryLockedError

    out = tmp_path / "sweep"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        record = {"pid": holder.pid, "host": socket.gethostname(), "what": "hirm sweep"}
        (out / LOCK).write_text(json.dumps(record))
        with pytest.raises(DirectoryLockedError, match=f"pid {holder.pid}"):
            sweep(sd_dir, canvas, judges, settings, tmp_path, CountingErase(), concepts=["Cats"])
        assert not (out / "results.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and is recovered
    manifest = sweep(sd_dir, canvas, judges, settings, tmp_path, CountingErase(), concepts=["Cats"])
    assert manifest["complete"] and not (out / LOCK).exists()


def test_overwrite_never_deletes_files_hirm_did_not_write(sd_dir, canvas, judges, settings, tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(Exception, match="did not write"):
        sweep(sd_dir, canvas, judges, settings, tmp_path, CountingErase(), concepts=["Cats"], overwrite=True)
    assert (out / "thesis.tex").read_text() == "years of work"
    # hirm's own sweep directory is replaced; a file added to it afterwards is protected again
    (out / "thesis.tex").unlink()
    sweep(sd_dir, canvas, judges, settings, tmp_path, CountingErase(), concepts=["Cats"])
    again = CountingErase()
    sweep(sd_dir, canvas, judges, settings, tmp_path, again, concepts=["Cats"], overwrite=True)
    assert again.calls == ["Cats"]
    (out / "concepts" / "Cats" / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="concepts/Cats/notes.txt"):
        sweep(sd_dir, canvas, judges, settings, tmp_path, CountingErase(), concepts=["Cats"], overwrite=True)
    assert (out / "concepts" / "Cats" / "notes.txt").read_text() == "mine"


def test_a_bogus_target_is_refused_before_any_work(sd_dir, canvas, judges, settings, tmp_path, monkeypatch):
    import hirm.evaluation.sweep as sweep_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was opened before the target was checked")

    monkeypatch.setattr(sweep_module, "open_model", no_model)
    with pytest.raises(EvaluationInputError, match="--target must be"):
        run_sweep(str(sd_dir), out=tmp_path / "s", target="bogus", canvas=canvas, judges=judges,
                  settings=settings, device="cpu", progress=False)  # fmt: skip
    assert not (tmp_path / "s").exists()
