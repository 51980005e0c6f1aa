"""EpisodeReader: the one reader of recorded episodes (replay node, trainer, dataset checks, export, viewer).

Reads both storage formats (`format.py`): "video" (H.264 colour packets, FFV1 or deflate depth) and "jpeg".
Random access: `rgb(camera, i)` of a video episode decodes from the keyframe at or before i (at most `gop`
frames), never the whole episode; sequential reads decode each frame once. Readers hold decoder state:
open one per process (the trainer's DataLoader workers each open their own, lazily).
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np

from posevla.dataset import format as F
from posevla.dataset.format import list_episodes, list_incomplete  # noqa: F401 (re-exported)
from posevla.dataset.video import ColourDecoder, DepthDecoder
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import ARM_NAMES, ArmState, CameraFrame, RobotState


@dataclass
class DatasetFrame:
    stamp_ns: int
    cameras: dict[str, CameraFrame]
    state: RobotState
    action: np.ndarray


class EpisodeReader:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._h = h5py.File(self.path, "r")
        except (OSError, FileNotFoundError) as exc:
            raise ValueError(f"episode {self.path} cannot be opened: {exc}") from exc
        try:
            self.meta = json.loads(self._h.attrs.get("meta", "{}"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"episode {self.path}: attribute meta is not JSON: {exc}") from exc
        if "observations/qpos" not in self._h or "action" not in self._h:
            raise ValueError(f"episode {self.path}: missing observations/qpos or action")
        self.num_frames = int(self._h["observations/qpos"].shape[0])
        self.storage = "video" if "observations/video" in self._h else "jpeg"
        images = self._h.get("observations/video" if self.storage == "video" else "observations/images", {})
        self.camera_names = [F.CAMERA_NAMES.get(k, k) for k in images]
        self._colour: dict[str, ColourDecoder] = {}
        self._depth: dict[str, DepthDecoder] = {}
        self.intrinsics: dict[str, CameraIntrinsics] = {}
        self.depth_scale: dict[str, float] = {}
        self.depth_every: dict[str, int] = {}  # depth stored with every k-th frame (EpisodeWriter depth_every)
        self._depth_last: dict[str, tuple[int, np.ndarray]] = {}  # camera -> (source frame, depth) when k > 1
        for name in self.camera_names:
            key = F.CAMERA_KEYS.get(name, name)
            info = self._h.get(f"observations/camera_info/{key}")
            if info is None:
                raise ValueError(f"episode {self.path}: camera {name} has no camera_info")
            a = info.attrs
            self.intrinsics[name] = CameraIntrinsics.from_camera_info({
                "k": list(a["k"]), "d": list(a["d"]), "width": int(a["width"]), "height": int(a["height"]),
                "distortion_model": str(a["distortion_model"])})
            self.depth_scale[name] = float(a["depth_scale"])
            depth = self._h.get(f"observations/depth/{key}")
            k = int(depth.attrs.get("depth_every", 1)) if depth is not None else 1
            if k < 1:
                raise ValueError(f"episode {self.path}: observations/depth/{key} has depth_every={k} (must be >= 1)")
            self.depth_every[name] = k

    def __len__(self) -> int:
        return self.num_frames

    def __enter__(self) -> EpisodeReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._h.close()

    @staticmethod
    def _key(camera: str) -> str:
        return F.CAMERA_KEYS.get(camera, camera)

    def depth_source(self, camera: str, i: int) -> int:
        """The frame whose stored depth is frame i's: i itself, or with depth_every k > 1 the last multiple of k
        (captured at `camera_stamps(camera)[depth_source]`, up to (k - 1) / fps before frame i's colour)."""
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} outside 0..{self.num_frames - 1} of {self.path}")
        k = self.depth_every.get(camera, 1)
        return i - i % k

    def fresh_depth(self, i: int) -> bool:
        """True when frame i stores every camera's depth (always, unless the episode has depth_every > 1)."""
        return all(self.depth_source(c, i) == i for c in self.camera_names)

    def raw_depth(self, camera: str, i: int) -> np.ndarray:
        """Depth of frame i as recorded: uint16 HxW in depth_scale units (bit-exact in both formats). With
        depth_every k > 1, the depth stored with frame `depth_source(camera, i)`."""
        ds = self._h[f"observations/depth/{self._key(camera)}"]
        if ds.ndim == 3:  # deflate chunks
            return ds[i]
        if self.depth_every.get(camera, 1) > 1:  # held frames repeat the source's depth: decode it once
            src = self.depth_source(camera, i)
            last = self._depth_last.get(camera)
            if last is None or last[0] != src:
                last = self._depth_last[camera] = (src, self._decode_depth(camera, ds, src))
            return last[1].copy()
        return self._decode_depth(camera, ds, i)

    def _decode_depth(self, camera: str, ds: h5py.Dataset, i: int) -> np.ndarray:
        dec = self._depth.get(camera)
        if dec is None:
            a = ds.attrs
            extradata = bytes(np.asarray(a.get("extradata", np.zeros(0, np.uint8)), np.uint8))
            dec = self._depth[camera] = DepthDecoder(int(a["width"]), int(a["height"]), extradata)
        try:
            return dec.decode(bytes(ds[i]))
        except Exception as exc:  # noqa: BLE001 - FFmpeg errors come in several types
            raise ValueError(f"episode {self.path}: depth frame {i} of camera {camera} does not decode: {exc}") from exc

    def _colour_decoder(self, camera: str) -> ColourDecoder:
        dec = self._colour.get(camera)
        if dec is None:
            key = self._key(camera)
            packets = self._h[f"observations/video/{key}"]
            a = packets.attrs
            dec = self._colour[camera] = ColourDecoder(
                str(a["codec"]), int(a["width"]), int(a["height"]), lambda i: bytes(packets[i]),
                self._h[f"observations/video_keyframe/{key}"][:])
        return dec

    def rgb(self, camera: str, i: int) -> np.ndarray:
        """Colour of frame i: RGB uint8 HxWx3."""
        if self.storage == "video":
            try:
                return self._colour_decoder(camera).frame(i)
            except IndexError:
                raise
            except Exception as exc:  # noqa: BLE001 - FFmpeg errors come in several types
                raise ValueError(f"episode {self.path}: frame {i} of camera {camera} does not decode: {exc}") from exc
        buf = self._h[f"observations/images/{self._key(camera)}"][i]
        bgr = cv2.imdecode(np.asarray(buf, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"episode {self.path}: frame {i} of camera {camera} is not a valid JPEG")
        return np.ascontiguousarray(bgr[..., ::-1])

    def frame_digests(self, camera: str) -> np.ndarray:
        """(T,) one integer per frame that is equal exactly when two frames' images are identical (CRC-32 of
        the raw RGB in video episodes, of the JPEG bytes in jpeg ones): frozen-camera checks without decoding."""
        if self.storage == "video":
            return self._h[f"observations/image_crc/{self._key(camera)}"][:].astype(np.int64)
        return np.array([zlib.crc32(bytes(b)) for b in self._h[f"observations/images/{self._key(camera)}"]], np.int64)

    def stream_lengths(self) -> dict[str, int]:
        """Rows of every per-frame dataset (they differ only in a damaged or partial file)."""
        out: dict[str, int] = {}
        self._h.visititems(lambda name, obj: out.__setitem__(name, int(obj.shape[0]))
                           if isinstance(obj, h5py.Dataset) and obj.ndim >= 1 and not name.startswith("observations/camera_info")
                           else None)
        return out

    def stored_bytes(self) -> dict[str, int]:
        """Bytes on disk per stream kind: colour, depth, other (for `dataset info` and the benchmark), and per
        camera: "colour/<camera key>", "depth/<camera key>" (e.g. "depth/cam_high")."""
        out = {"colour": 0, "depth": 0, "other": 0}

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                kind = ("colour" if name.startswith(("observations/video/", "observations/images/")) else
                        "depth" if name.startswith("observations/depth/") else "other")
                n = obj.id.get_storage_size() + (_vlen_bytes(obj) if obj.dtype.kind == "O" else 0)
                out[kind] += n
                if kind != "other":
                    key = f"{kind}/{name.rsplit('/', 1)[-1]}"
                    out[key] = out.get(key, 0) + n
        self._h.visititems(visit)
        return out

    def camera_stamps(self, camera: str) -> np.ndarray:
        return self._h[f"stamps/{camera}"][:]

    def array(self, key: str) -> np.ndarray:
        return self._h[key][:]

    def frame(self, i: int, cameras: Iterable[str] | None = None) -> DatasetFrame:
        """Frame i with every camera, or only `cameras` (the others are not decoded: cheaper for training)."""
        if not 0 <= i < self.num_frames:
            raise IndexError(f"frame {i} outside 0..{self.num_frames - 1} of {self.path}")
        names = self.camera_names if cameras is None else [c for c in self.camera_names if c in set(cameras)]
        cams = {}
        for name in names:
            depth = self.raw_depth(name, i).astype(np.float32) * np.float32(self.depth_scale[name])
            cams[name] = CameraFrame(name, self.rgb(name, i), depth, self.intrinsics[name],
                                     int(self._h[f"stamps/{name}"][i]), f"{name}_camera_color_optical_frame")
        qpos = self._h["observations/qpos"][i]
        robot_stamp = int(self._h["stamps/robot"][i])
        arms = {}
        for k, arm in enumerate(ARM_NAMES):
            tcp = self._h[f"observations/tcp_pose/{arm}"][i]
            if not np.all(np.isfinite(tcp)):
                continue
            arms[arm] = ArmState(se3.T_from_pos_quat(tcp[:3], tcp[3:]), qpos[k * 7:k * 7 + 6].copy(),
                                 float(qpos[k * 7 + 6]), robot_stamp)
        return DatasetFrame(int(self._h["stamps/frame"][i]), cams, RobotState(arms, robot_stamp),
                            self._h["action"][i].copy())

    def __iter__(self):
        for i in range(self.num_frames):
            yield self.frame(i)


def _vlen_bytes(ds: h5py.Dataset) -> int:
    """Payload bytes of a variable-length dataset (its storage size counts only the heap references)."""
    total, step = 0, 256
    for s in range(0, ds.shape[0], step):
        total += sum(len(b) for b in ds[s:s + step])
    return total
