"""EpisodeWriter: records one episode crash-safely with encoding off the caller's thread.

`add_frame` only enqueues (bounded queue); a worker thread encodes color (H.264 packets, storage "video", the
default; or JPEG, storage "jpeg"), writes depth losslessly (FFV1 packets or shuffle+deflate chunks) and
appends one row per stream per frame to the HDF5 file under `<task>/.incomplete/` (format: `format.py`). When the queue is full the frame is NOT silently lost:
`add_frame` returns False, the event is counted and logged, and the recorder decides (it stops the episode
with a reason). `finish()` flushes, fsyncs, re-opens and checks the file, then renames it into place
atomically; a crash at any point leaves earlier episodes untouched and the partial file in .incomplete/.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np

from posevla.dataset import format as F
from posevla.dataset.video import ColourCodec, ColourEncoder, DepthEncoder
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import ARM_NAMES, RobotState

log = logging.getLogger(__name__)
MIN_FREE_BYTES = 512 * 1024 * 1024


@dataclass
class FrameRecord:
    stamp_ns: int
    rgb: dict[str, np.ndarray]  # camera -> HxWx3 uint8
    depth: dict[str, np.ndarray]  # camera -> HxW uint16 (raw, depth_scale units) or float32 metres
    camera_stamps: dict[str, int]
    state: RobotState
    action: np.ndarray  # (14,)
    qpos: np.ndarray | None = None  # (14,) joints + grippers when not derivable from `state` (imports); else None


def robot_vectors(state: RobotState) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    qpos = np.zeros(F.QPOS_DIM)
    tcp = {}
    for i, arm in enumerate(ARM_NAMES):
        a = state.arms.get(arm)
        if a is None:
            qpos[i * 7:(i + 1) * 7] = np.nan
            tcp[arm] = np.full(7, np.nan)
            continue
        qpos[i * 7:i * 7 + 6] = a.joints
        qpos[i * 7 + 6] = a.gripper
        p, q = se3.pos_quat_from_T(a.T_base_tcp)
        tcp[arm] = np.concatenate([p, q])
    return qpos, tcp, state.stamp_ns


class EpisodeWriter:
    def __init__(self, root: str | Path, task: str, meta: dict, cameras: dict[str, CameraIntrinsics],
                 depth_scale: float = 0.001, jpeg_quality: int = 90, queue_size: int = 64,
                 min_free_bytes: int = MIN_FREE_BYTES, index: int | None = None, storage: str = "video",
                 colour_codec: ColourCodec | None = None, depth_codec: str = "ffv1", depth_every: int = 1) -> None:
        """storage: "video" (H.264 colour, format_version 2) or "jpeg" (format_version 1); depth_codec (video
        storage only): "ffv1" or "deflate". Both depth codecs are lossless. depth_every (FFV1 only): store the
        depth of every k-th frame (frames 0, k, 2k, ...; bit-exact), an empty packet for the others, whose depth
        is the last stored one (`EpisodeReader.depth_source`): depth at fps / k, for smaller episodes."""
        if storage not in F.STORAGE_FORMATS:
            raise ValueError(f"episode storage={storage!r}: one of {list(F.STORAGE_FORMATS)}")
        if depth_codec not in F.DEPTH_CODECS:
            raise ValueError(f"episode depth_codec={depth_codec!r}: one of {list(F.DEPTH_CODECS)}")
        if isinstance(depth_every, bool) or not isinstance(depth_every, (int, np.integer)) or not 1 <= depth_every <= 30:
            raise ValueError(f"episode depth_every={depth_every!r}: an integer in 1..30 (1: depth with every frame)")
        if depth_every > 1 and (storage != "video" or depth_codec != "ffv1"):
            raise ValueError(f"episode depth_every={depth_every}: needs storage 'video' with depth_codec 'ffv1' "
                             f"(got {storage!r}, {depth_codec!r})")
        self.depth_every = int(depth_every)
        self.storage = storage
        self.colour_codec = colour_codec or ColourCodec()
        self.depth_codec = depth_codec if storage == "video" else "deflate"
        self.task_dir = Path(root) / task
        (self.task_dir / F.INCOMPLETE_DIR).mkdir(parents=True, exist_ok=True)
        self.index = F.next_index(self.task_dir) if index is None else index
        self.tmp_path = self.task_dir / F.INCOMPLETE_DIR / F.episode_name(self.index)
        self.final_path = self.task_dir / F.episode_name(self.index)
        self.cameras, self.depth_scale, self.jpeg_quality = cameras, depth_scale, jpeg_quality
        self.min_free_bytes = min_free_bytes
        storage_meta: dict = {"format": storage, "depth_codec": self.depth_codec}
        if self.depth_every > 1:
            storage_meta["depth_every"] = self.depth_every
        if storage == "video":
            storage_meta["colour_codec"] = self.colour_codec.to_attrs()
        self.meta = {"format_version": F.FORMAT_VERSIONS[storage], "storage": storage_meta, "task": task, **meta}
        self._check_disk()
        fps = float(meta.get("fps") or 30.0)
        self._colour_enc = ({n: ColourEncoder(i.width, i.height, self.colour_codec, fps) for n, i in cameras.items()}
                            if storage == "video" else {})
        self._depth_enc = ({n: DepthEncoder(i.width, i.height) for n, i in cameras.items()}
                           if self.depth_codec == "ffv1" else {})
        self._h5 = h5py.File(self.tmp_path, "w")
        self._h5.attrs["meta"] = json.dumps({**self.meta, "complete": False})
        self._setup()
        self._q: queue.Queue[FrameRecord | None] = queue.Queue(maxsize=queue_size)
        self.frames_written = 0
        self.frames_rejected = 0
        self.encode_s = 0.0  # wall time of the worker per frame (encode + write), summed
        self.encode_cpu_s = 0.0  # CPU time of the per-camera encoders (thread time), summed: independent of load
        self.error: str | None = None
        # per-camera JPEG and depth compression run in parallel (OpenCV and zlib release the GIL)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(cameras)), thread_name_prefix="episode-encode")
        self._worker = threading.Thread(target=self._work, name=f"episode-writer-{self.index}", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ layout
    def _setup(self) -> None:
        h = self._h5
        obs = h.create_group("observations")
        f64 = np.float64
        h.create_dataset("action", (0, F.QPOS_DIM), f64, maxshape=(None, F.QPOS_DIM), chunks=(64, F.QPOS_DIM))
        obs.create_dataset("qpos", (0, F.QPOS_DIM), f64, maxshape=(None, F.QPOS_DIM), chunks=(64, F.QPOS_DIM))
        for arm in ARM_NAMES:
            obs.create_dataset(f"tcp_pose/{arm}", (0, 7), f64, maxshape=(None, 7), chunks=(64, 7))
        stamps = h.create_group("stamps")
        for name in ["frame", "robot", *self.cameras]:
            stamps.create_dataset(name, (0,), np.int64, maxshape=(None,), chunks=(256,))
        vlen = h5py.vlen_dtype(np.uint8)
        for name, intr in self.cameras.items():
            key = F.CAMERA_KEYS.get(name, name)
            if self.storage == "video":
                v = obs.create_dataset(f"video/{key}", (0,), vlen, maxshape=(None,), chunks=(16,))
                v.attrs.update({**self.colour_codec.to_attrs(), "width": intr.width, "height": intr.height})
                obs.create_dataset(f"video_keyframe/{key}", (0,), np.uint8, maxshape=(None,), chunks=(256,))
                obs.create_dataset(f"image_crc/{key}", (0,), np.uint32, maxshape=(None,), chunks=(256,))
            else:
                obs.create_dataset(f"images/{key}", (0,), vlen, maxshape=(None,), chunks=(16,))
            if self.depth_codec == "ffv1":
                d = obs.create_dataset(f"depth/{key}", (0,), vlen, maxshape=(None,), chunks=(16,))
                d.attrs.update({"codec": "ffv1", "width": intr.width, "height": intr.height,
                                "extradata": np.frombuffer(self._depth_enc[name].extradata, np.uint8),
                                "depth_every": self.depth_every})
            else:
                obs.create_dataset(f"depth/{key}", (0, intr.height, intr.width), np.uint16,
                                   maxshape=(None, intr.height, intr.width), chunks=(1, intr.height, intr.width),
                                   compression="gzip", compression_opts=1, shuffle=True)
            info = obs.create_group(f"camera_info/{key}")
            ci = intr.to_camera_info()
            info.attrs.update({"k": ci["k"], "d": ci["d"], "width": intr.width, "height": intr.height,
                               "distortion_model": intr.distortion_model, "depth_scale": self.depth_scale,
                               "frame_id": f"{name}_camera_color_optical_frame", "name": name})

    def _check_disk(self) -> None:
        free = shutil.disk_usage(self.task_dir).free
        if free < self.min_free_bytes:
            raise OSError(f"only {free / 1e9:.2f} GB free in {self.task_dir}: refusing to record "
                          f"(need {self.min_free_bytes / 1e9:.2f} GB)")

    # ------------------------------------------------------------------ producer side
    def add_frame(self, rec: FrameRecord) -> bool:
        """Enqueue one frame; False (counted, logged) when the writer is behind or has failed."""
        if self.error is not None:
            return False
        try:
            self._q.put_nowait(rec)
            return True
        except queue.Full:
            self.frames_rejected += 1
            log.warning("episode %d: writer queue full (%d frames); encoding/disk is falling behind",
                        self.index, self._q.maxsize)
            return False

    @property
    def backlog(self) -> int:
        return self._q.qsize()

    # ------------------------------------------------------------------ worker
    def _append(self, name: str, value) -> None:
        ds = self._h5[name]
        ds.resize(ds.shape[0] + 1, axis=0)
        ds[-1] = value

    def _work(self) -> None:
        while True:
            rec = self._q.get()
            if rec is None:
                return
            if self.error is not None:
                continue
            t0 = time.perf_counter()
            try:
                if self.frames_written % 30 == 0:
                    self._check_disk()
                self._write(rec)
                self.frames_written += 1
            except Exception as exc:  # noqa: BLE001 - reported to the recorder, which stops the episode
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("episode %d: writing failed: %s", self.index, self.error)
            self.encode_s += time.perf_counter() - t0

    def _encode(self, name: str, rgb: np.ndarray, depth: np.ndarray, store_depth: bool = True) -> dict:
        """The rows of one camera's frame: colour (JPEG or H.264 packet + keyframe flag + CRC) and depth (FFV1
        packet, empty when `store_depth` is False (depth_every), or the chunk as HDF5 stores it: shuffle + deflate
        level 1)."""
        intr = self.cameras[name]
        if rgb.shape != (intr.height, intr.width, 3) or depth.shape != (intr.height, intr.width):
            raise ValueError(f"camera {name}: frame shapes {rgb.shape}/{depth.shape} differ from its camera_info "
                             f"{intr.width}x{intr.height}")
        cpu0 = time.thread_time()
        out: dict = {}
        if self.storage == "video":
            rgb = np.ascontiguousarray(rgb, np.uint8)
            packet, key = self._colour_enc[name].encode(rgb)
            out.update(video=np.frombuffer(packet, np.uint8), keyframe=key, crc=zlib.crc32(rgb.data))
        else:
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                   [int(cv2.IMWRITE_JPEG_QUALITY), self.jpeg_quality])
            if not ok:
                raise ValueError(f"JPEG encoding of camera {name} failed")
            out["jpeg"] = np.frombuffer(jpg.tobytes(), np.uint8)
        if not store_depth:
            out.update(depth_packet=np.zeros(0, np.uint8), cpu_s=time.thread_time() - cpu0)
            return out
        if depth.dtype != np.uint16:  # metres -> raw units, invalid (NaN/inf/<=0) -> 0
            depth = np.where(np.isfinite(depth) & (depth > 0), np.round(depth / self.depth_scale), 0).clip(0, 65535)
        d = np.ascontiguousarray(depth, dtype="<u2")
        if self.depth_codec == "ffv1":
            out["depth_packet"] = np.frombuffer(self._depth_enc[name].encode(d.astype(np.uint16)), np.uint8)
        else:
            out["depth_chunk"] = zlib.compress(d.view(np.uint8).reshape(-1, 2).T.tobytes(), 1)
        out["cpu_s"] = time.thread_time() - cpu0
        return out

    def _write(self, rec: FrameRecord) -> None:
        qpos, tcp, robot_stamp = robot_vectors(rec.state)
        if rec.qpos is not None:
            qpos = np.asarray(rec.qpos, np.float64)
        store_depth = self.frames_written % self.depth_every == 0  # frame index = frames written so far
        jobs = {name: self._pool.submit(self._encode, name, rec.rgb[name], rec.depth[name], store_depth)
                for name in self.cameras}
        for name, job in jobs.items():
            key = F.CAMERA_KEYS.get(name, name)
            rows = job.result()
            self.encode_cpu_s += rows["cpu_s"]
            if "jpeg" in rows:
                self._append(f"observations/images/{key}", rows["jpeg"])
            else:
                self._append(f"observations/video/{key}", rows["video"])
                self._append(f"observations/video_keyframe/{key}", np.uint8(rows["keyframe"]))
                self._append(f"observations/image_crc/{key}", np.uint32(rows["crc"]))
            if "depth_packet" in rows:
                self._append(f"observations/depth/{key}", rows["depth_packet"])
            else:
                ds = self._h5[f"observations/depth/{key}"]
                ds.resize(ds.shape[0] + 1, axis=0)
                ds.id.write_direct_chunk((ds.shape[0] - 1, 0, 0), rows["depth_chunk"], filter_mask=0)
            self._append(f"stamps/{name}", rec.camera_stamps[name])
        self._append("observations/qpos", qpos)
        for arm in ARM_NAMES:
            self._append(f"observations/tcp_pose/{arm}", tcp[arm])
        self._append("action", np.asarray(rec.action, np.float64))
        self._append("stamps/robot", robot_stamp)
        self._append("stamps/frame", rec.stamp_ns)

    # ------------------------------------------------------------------ end of episode
    def _stop_worker(self, timeout_s: float = 60.0) -> None:
        self._q.put(None)
        self._worker.join(timeout_s)
        self._pool.shutdown(wait=True)
        for colour in self._colour_enc.values():
            colour.close()
        for depth in self._depth_enc.values():
            depth.close()

    def finish(self, success: bool, extra_meta: dict | None = None) -> Path:
        """Flush, check and atomically publish the episode. Raises (leaving it in .incomplete/) on a problem."""
        self._stop_worker()
        if self.error is not None:
            self._h5.close()
            raise OSError(f"episode {self.index} was not saved: {self.error} (partial file kept at {self.tmp_path})")
        self._h5.attrs["meta"] = json.dumps({**self.meta, **(extra_meta or {}), "success": bool(success),
                                             "complete": True, "num_frames": self.frames_written})
        self._h5.flush()
        self._h5.close()
        with open(self.tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        with h5py.File(self.tmp_path, "r") as h:  # check before publishing
            n = h["stamps/frame"].shape[0]
            image = "video" if self.storage == "video" else "images"
            if n != self.frames_written or any(h[f"observations/{kind}/{F.CAMERA_KEYS.get(c, c)}"].shape[0] != n
                                               for c in self.cameras for kind in (image, "depth")):
                raise OSError(f"episode {self.index} failed its check: stream lengths differ; kept at {self.tmp_path}")
        os.replace(self.tmp_path, self.final_path)
        dir_fd = os.open(self.task_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return self.final_path

    def abort(self, reason: str) -> Path:
        """Stop recording and keep what was written in .incomplete/, marked with the reason (never deleted)."""
        self._stop_worker()
        try:
            self._h5.attrs["meta"] = json.dumps({**self.meta, "complete": False, "aborted": reason,
                                                 "num_frames": self.frames_written})
            self._h5.close()
        except Exception:  # noqa: BLE001 - the file may be the reason; it stays where it is
            pass
        return self.tmp_path

    def discard(self) -> None:
        self._stop_worker()
        try:
            self._h5.close()
        except Exception:  # noqa: BLE001
            pass
        self.tmp_path.unlink(missing_ok=True)
