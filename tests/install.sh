#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: programs that make test media
# (espeak-ng speech, ffmpeg/sox conversions), Chromium for the browser test, and the Python packages.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in $(cat packages.txt) espeak-ng sox chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi
python -m pip install -q -r requirements-dev.txt
