"""Shared fixtures: tiny pipelines of every supported family, built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402


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
