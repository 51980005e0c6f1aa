"""On-disk episode format (one HDF5 file per episode), compatible with the ALOHA-style X-Trainer keys.

    <root>/<task>/episode_000042.h5         complete, checked episodes (atomic rename into place)
    <root>/<task>/.incomplete/episode_...   episodes being written, or left by a crash (kept, reported)

Inside a file (T frames recorded at a fixed rate, `fps`):
    /action                              (T, 14) float64  command/leader values: left j1..j6 (rad), left gripper
                                                          (0..1), right j1..j6, right gripper
    /observations/qpos                   (T, 14) float64  follower joints + grippers, same layout
    /observations/tcp_pose/{left,right}  (T, 7)  float64  TCP in base_link: x, y, z (m), qx, qy, qz, qw
    /observations/images/<cam>           (T,) vlen uint8  JPEG color (RGB) per frame
    /observations/depth/<cam>            (T, H, W) uint16 aligned depth, lossless (gzip), metres = value * depth_scale
    /observations/camera_info/<cam>      attrs: k (9), d, width, height, distortion_model, depth_scale, frame_id
    /stamps/frame                        (T,) int64       record tick time (ns, ROS time)
    /stamps/<cam>, /stamps/robot         (T,) int64       original capture stamps of each stream (ns)
    attrs["meta"]                        JSON: format_version, task, instruction, operator, fps, cameras
                                         {name: serial}, calibration {file: {sha256, yaml}}, software_version,
                                         success, start_time_ns, notes
Camera names: head -> cam_high, left_wrist -> cam_left_wrist, right_wrist -> cam_right_wrist (ALOHA keys).
"""
from __future__ import annotations

import re
from pathlib import Path

FORMAT_VERSION = 1
CAMERA_KEYS = {"head": "cam_high", "left_wrist": "cam_left_wrist", "right_wrist": "cam_right_wrist"}
CAMERA_NAMES = {v: k for k, v in CAMERA_KEYS.items()}
QPOS_DIM = 14
EPISODE_RE = re.compile(r"^episode_(\d{6})\.h5$")
INCOMPLETE_DIR = ".incomplete"


def episode_name(index: int) -> str:
    return f"episode_{index:06d}.h5"


def list_episodes(task_dir: str | Path) -> list[Path]:
    """Complete episodes of a task directory, in order."""
    task_dir = Path(task_dir)
    return sorted(p for p in task_dir.glob("episode_*.h5") if EPISODE_RE.match(p.name))


def list_incomplete(task_dir: str | Path) -> list[Path]:
    return sorted((Path(task_dir) / INCOMPLETE_DIR).glob("episode_*"))


def next_index(task_dir: str | Path) -> int:
    """Numbering continues after complete and incomplete episodes (a crashed one keeps its number)."""
    used = [int(m.group(1)) for p in [*list_episodes(task_dir), *list_incomplete(task_dir)]
            if (m := re.match(r"^episode_(\d{6})", p.name))]
    return max(used, default=-1) + 1
