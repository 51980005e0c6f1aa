#!/usr/bin/env bash
# Create or update .venv/ at the repository root. Idempotent: re-running after a change to
# requirements.txt or pyproject.toml reinstalls only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PYTHON="${PYTHON:-python3}"

# librealsense's Python wheel needs libusb at import time.
if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "[bootstrap] installing libusb-1.0-0 (needed by pyrealsense2)"
    (apt-get update -qq && apt-get install -y -qq libusb-1.0-0) >/dev/null
  else
    echo "[bootstrap] WARNING: libusb-1.0-0 is missing; run: sudo apt-get install libusb-1.0-0" >&2
  fi
fi

# MuJoCo (the closed-loop benchmark's twin) renders headless through EGL on Mesa (llvmpipe without a GPU).
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL_mesa.so.0'; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "[bootstrap] installing libegl1 libegl-mesa0 libgl1-mesa-dri (headless rendering for mujoco)"
    (apt-get update -qq && apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri) >/dev/null
  else
    echo "[bootstrap] WARNING: EGL/Mesa is missing; run: sudo apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/pip --disable-pip-version-check -q"
echo "[bootstrap] installing $TORCH_SPEC and requirements.txt (first run takes ~2 min)"
$PIP install "$TORCH_SPEC" -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
$PIP install --no-deps -e . -e ros2_ws/src/posevla_ros 2> >(grep -v "is ignored: it is neither" >&2)
echo "[bootstrap] .venv ready"
