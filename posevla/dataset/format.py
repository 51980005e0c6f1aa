"""On-disk episode format (one HDF5 file per episode), compatible with the ALOHA-style X-Trainer keys.

    <root>/<task>/episode_000042.h5         complete, checked episodes (atomic rename into place)
    <root>/<task>/.incomplete/episode_...   episodes being written, or left by a crash (kept, reported)
    <root>/<task>/.discarded/episode_...    episodes the operator discarded or re-recorded (kept)
Only the first kind is data: hidden folders (.incomplete, .discarded, any ".*") are never listed as episodes,
trained on or counted by `posevla dataset check/info` (which report them apart).

Two storage formats share everything but the image streams (`meta.format_version`, `storage`):
  "video" (format_version 2, the default for new recordings; `posevla.dataset.video`):
    /observations/video/<cam>            (T,) vlen uint8  one H.264 packet per frame (libx264, yuv444p, crf,
                                                          zerolatency, no B-frames); attrs: codec, encoder,
                                                          pix_fmt, crf, preset, gop, width, height
    /observations/video_keyframe/<cam>   (T,) uint8       1 where packet i is a keyframe (random access)
    /observations/image_crc/<cam>        (T,) uint32      CRC-32 of the raw RGB frame (frozen-camera check)
    /observations/depth/<cam>            (T,) vlen uint8  one lossless FFV1 gray16le packet per frame (attrs:
                                                          codec "ffv1", extradata), or, with depth_codec
                                                          "deflate", the (T, H, W) uint16 dataset below
  "jpeg" (format_version 1, ALOHA-style):
    /observations/images/<cam>           (T,) vlen uint8  JPEG color (RGB) per frame
    /observations/depth/<cam>            (T, H, W) uint16 aligned depth, lossless (shuffle + deflate)

Inside a file (T frames recorded at a fixed rate, `fps`):
    /action                              (T, 14) float64  command/leader values: left j1..j6 (rad), left gripper
                                                          (0..1), right j1..j6, right gripper
    /observations/qpos                   (T, 14) float64  follower joints + grippers, same layout
    /observations/tcp_pose/{left,right}  (T, 7)  float64  TCP in base_link: x, y, z (m), qx, qy, qz, qw
    (colour and depth streams as above; depth metres = value * depth_scale)
    /observations/camera_info/<cam>      attrs: k (9), d, width, height, distortion_model, depth_scale, frame_id
    /stamps/frame                        (T,) int64       record tick time (ns, ROS time)
    /stamps/<cam>, /stamps/robot         (T,) int64       original capture stamps of each stream (ns)
    attrs["meta"]                        JSON: format_version, storage, task, instruction, operator, fps, cameras
                                         {name: serial}, calibration {file: {sha256, yaml}}, software_version,
                                         success, start_time_ns, notes
Camera names: head -> cam_high, left_wrist -> cam_left_wrist, right_wrist -> cam_right_wrist (ALOHA keys).
"""
from __future__ import annotations

import re
from pathlib import Path

FORMAT_VERSION = 2  # written by storage "video"; storage "jpeg" writes version 1
FORMAT_VERSIONS = {"video": 2, "jpeg": 1}
STORAGE_FORMATS = tuple(FORMAT_VERSIONS)
DEPTH_CODECS = ("ffv1", "deflate")
CAMERA_KEYS = {"head": "cam_high", "left_wrist": "cam_left_wrist", "right_wrist": "cam_right_wrist"}
CAMERA_NAMES = {v: k for k, v in CAMERA_KEYS.items()}
QPOS_DIM = 14
EPISODE_RE = re.compile(r"^episode_(\d{6})\.h5$")
INCOMPLETE_DIR = ".incomplete"
DISCARDED_DIR = ".discarded"


def episode_name(index: int) -> str:
    return f"episode_{index:06d}.h5"


def list_episodes(task_dir: str | Path) -> list[Path]:
    """Complete episodes of a task directory, in order (none inside hidden folders such as .incomplete/)."""
    task_dir = Path(task_dir)
    if task_dir.name.startswith("."):
        return []
    return sorted(p for p in task_dir.glob("episode_*.h5") if EPISODE_RE.match(p.name))


def list_incomplete(task_dir: str | Path) -> list[Path]:
    return sorted((Path(task_dir) / INCOMPLETE_DIR).glob("episode_*"))


def next_index(task_dir: str | Path) -> int:
    """Numbering continues after complete and incomplete episodes (a crashed one keeps its number)."""
    used = [int(m.group(1)) for p in [*list_episodes(task_dir), *list_incomplete(task_dir)]
            if (m := re.match(r"^episode_(\d{6})", p.name))]
    return max(used, default=-1) + 1


def list_discarded(task_dir: str | Path) -> list[Path]:
    return sorted((Path(task_dir) / DISCARDED_DIR).glob("episode_*"))


def is_hidden(path: str | Path, below: str | Path | None = None) -> bool:
    """True when a path lies in a hidden folder (.incomplete, .discarded, ...), relative to `below` if given."""
    parts = Path(path).relative_to(below).parts if below is not None else Path(path).parts
    return any(p.startswith(".") and p not in (".", "..") for p in parts[:-1])
