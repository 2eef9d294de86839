"""``hirm env``: versions and devices, for bug reports."""

from __future__ import annotations

import platform

import typer


def env_command() -> None:
    """Print the versions of hirm and its main dependencies, and the available devices."""
    import diffusers
    import safetensors
    import torch
    import transformers

    import hirm

    rows = {
        "hirm": hirm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "cuda available": str(torch.cuda.is_available()),
        "cpu bf16 (mkldnn)": str(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "threads": str(torch.get_num_threads()),
    }
    for key, value in rows.items():
        print(f"{key:>18}: {value}")


def register(app: typer.Typer) -> None:
    app.command("env")(env_command)
