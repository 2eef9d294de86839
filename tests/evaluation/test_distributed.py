"""Sharding over 2 CPU processes with accelerate gives exactly the numbers of 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("distributed_canvas.py")


def launch(args, env):
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_match_one(sd_dir, tiny_patch, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    launch([sys.executable, str(SCRIPT), str(sd_dir), str(tiny_patch), str(one)], env)
    # CPU processes: torchrun (accelerate launch --num_processes N does the same on GPUs)
    launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(SCRIPT),
            str(sd_dir),
            str(tiny_patch),
            str(two),
        ],
        env,
    )
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["processes"] == 1 and b["processes"] == 2
    assert a["summary"] == b["summary"]
    assert a["rows"] == b["rows"]  # predictions and probabilities, image by image
    assert a["timing"]["generated"] == b["timing"]["generated"]
