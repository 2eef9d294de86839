#!/usr/bin/env bash
# Set up everything hirm and its tests need on a fresh machine (CPU).
# torch is pinned to the CPU wheel first so that nothing pulls the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip"
$PIP install --quiet "torch==2.13.0"
# open-clip-torch only provides SD's real CLIP BPE vocabulary to the tests; its torchvision/timm
# requirements are not needed for that, so it is installed without dependencies.
$PIP install --quiet --no-deps "open-clip-torch>=2.20"
$PIP install --quiet -e ".[test,nudity]"
