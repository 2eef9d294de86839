"""Shared fixtures: tiny pipelines of every supported family, built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on the shared 2-core machine two threads are ~10x slower for
    the tiny nets (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def world_model():
    """The embedded MiniCanvas model (``hirm.load_model("minicanvas")``); skips without shipped assets."""
    import hirm
    from hirm.world import assets_dir

    try:
        assets_dir()
    except Exception as err:  # pragma: no cover - only without shipped assets
        pytest.skip(f"MiniCanvas assets unavailable: {err}")
    return hirm.load_model("minicanvas")


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory) -> Path:
    return tiny.sd_pipeline_dir(tmp_path_factory.mktemp("models") / "sd")


@pytest.fixture(scope="session")
def sdxl_dir(tmp_path_factory) -> Path:
    return tiny.sdxl_pipeline_dir(tmp_path_factory.mktemp("models") / "sdxl")


@pytest.fixture(scope="session")
def sd3_dir(tmp_path_factory) -> Path:
    return tiny.sd3_pipeline_dir(tmp_path_factory.mktemp("models") / "sd3")


@pytest.fixture(scope="session")
def flux_dir(tmp_path_factory) -> Path:
    return tiny.flux_pipeline_dir(tmp_path_factory.mktemp("models") / "flux")


@pytest.fixture
def esd_runs(monkeypatch) -> list[list[str]]:
    """Spy on batched ESD: each call of ``hirm.core.esd_batched.erase_each`` appends its concepts' texts."""
    from hirm.core import esd_batched

    runs: list[list[str]] = []
    real = esd_batched.erase_each

    def spy(model, concepts, *args, **kwargs):
        runs.append([c.text for c in concepts])
        return real(model, concepts, *args, **kwargs)

    monkeypatch.setattr(esd_batched, "erase_each", spy)
    return runs
