"""MuJoCo twin of the X-Trainer (physics, cameras, a pick-and-lift task) for closed-loop proof of the stack.

Headless rendering: MUJOCO_GL is read when mujoco is first imported; we default it to EGL (Mesa llvmpipe on
machines without a GPU; `osmesa` also works). Set MUJOCO_GL yourself to choose another back end.
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")
