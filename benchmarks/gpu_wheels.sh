#!/usr/bin/env bash
# The Python 3.12 wheels the H200 test machine lacks (it has no package registry): PyAV, which brings
# FFmpeg inside it. torch, numpy, opencv-python-headless, scipy and huggingface_hub (with tqdm) are
# there already; librosa, scikit-image and espeak-ng are not needed (see benchmarks/gpu_check.py).
# Writes .gpu-wheels/ (git-ignored, about 35 MB), which the device run carries next to the code.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip download --quiet --python-version 3.12 --only-binary=:all: --platform manylinux_2_28_x86_64 \
  --no-deps --dest .gpu-wheels "av==18.1.0"
du -sh .gpu-wheels
