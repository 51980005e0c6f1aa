"""LeRobot dataset v3.0 export and import (pyarrow/pandas parquet + PyAV mp4), without the `lerobot` package.

`lerobot` (0.4.4) pins torch<2.11 and would replace this project's torch 2.13 with another build, so the
layout is written from LeRobot's published v3.0 format (`lerobot/datasets/utils.py` path templates,
`meta/info.json` features, `meta/episodes` and `meta/tasks.parquet`), which LeRobot and openpi read:

    meta/info.json                           codebase_version "v3.0", fps, features, path templates, totals
    meta/stats.json                          per feature min/max/mean/std/count
    meta/tasks.parquet                       index: task (the language instruction), column task_index
    meta/episodes/chunk-000/file-000.parquet episode_index, tasks, length, data/..., videos/<key>/... offsets
    meta/posevla.json                        what LeRobot has no field for: per-episode metadata (calibration
                                             YAML + SHA-256, operator, serials, success), camera_info per camera
    data/chunk-000/file-000.parquet          one row per frame (all episodes)
    videos/<key>/chunk-000/file-000.mp4      all episodes of one camera, back to back

Features written per frame: observation.state (14: qpos), action (14), observation.tcp_pose.{left,right}
(7: x y z qx qy qz qw, base_link, metres), observation.stamp_ns.{frame,robot,<camera>} (int64 original stamps,
so they survive exactly), timestamp (s since the episode's first frame), frame_index, episode_index, index,
task_index. Videos: observation.images.<cam_key> (H.264 yuv420p) and observation.depth.<cam_key> (lossless
FFV1 gray16le in depth_scale units, `video.is_depth_map` true; LeRobot's own depth is 12-bit quantised, ours
stays bit-exact). Import reads any v3.0 dataset: cameras become episode cameras (ALOHA keys cam_high,
cam_left_wrist, cam_right_wrist map to head/left_wrist/right_wrist), observation.state/action become
qpos/action when they have 14 values (ALOHA layout), depth comes back bit-exact when present (else 0 =
invalid), camera parameters come from meta/posevla.json where present (else an assumed pinhole, flagged in
the episode's meta as `intrinsics_assumed`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from posevla.dataset import format as F
from posevla.dataset.reader import EpisodeReader
from posevla.dataset.video import read_video_file, write_video_file
from posevla.dataset.writer import EpisodeWriter, FrameRecord
from posevla.geometry import se3
from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import ARM_NAMES, ArmState, RobotState

CODEBASE_VERSION = "v3.0"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = "meta/episodes/" + CHUNK_FILE + ".parquet"
JOINT_NAMES = [f"{arm}_{j}" for arm in ARM_NAMES for j in [*(f"joint{i}" for i in range(1, 7)), "gripper"]]
POSE_NAMES = ["x", "y", "z", "qx", "qy", "qz", "qw"]
ROBOT_TYPE = "dobot_xtrainer"


def _need_pandas():
    try:
        import pandas as pd
        import pyarrow  # noqa: F401
    except ImportError as exc:  # pragma: no cover - both are in requirements.txt
        raise ValueError(f"LeRobot export/import needs pandas and pyarrow ({exc}); pip install pandas pyarrow") from exc
    return pd


def _video_feature(h: int, w: int, fps: float, depth: bool) -> dict:
    return {"dtype": "video", "shape": [h, w, 1 if depth else 3], "names": ["height", "width", "channels"],
            "info": {"video.height": h, "video.width": w, "video.codec": "ffv1" if depth else "h264",
                     "video.pix_fmt": "gray16le" if depth else "yuv420p", "video.is_depth_map": depth,
                     "video.fps": fps, "video.channels": 1 if depth else 3, "has_audio": False}}


def _stats(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64)
    return {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(), "std": v.std(0).tolist(),
            "count": [int(v.shape[0])]}


def export_lerobot(episodes: list[Path], out: Path, crf: int = 18) -> Path:
    """Write `episodes` (same fps and cameras) as one LeRobot v3.0 dataset at `out` (must not exist)."""
    pd = _need_pandas()
    out = Path(out)
    if out.exists():
        raise ValueError(f"--out {out} already exists: choose a new folder")
    if not episodes:
        raise ValueError("no episodes to export")
    readers = [EpisodeReader(p) for p in episodes]
    try:
        first = readers[0]
        fps = float(first.meta.get("fps") or 0)
        if fps <= 0:
            raise ValueError(f"episode {first.path}: meta.fps missing")
        cams = first.camera_names
        for r in readers[1:]:
            if r.camera_names != cams or float(r.meta.get("fps") or 0) != fps:
                raise ValueError(f"episode {r.path}: cameras {r.camera_names} at {r.meta.get('fps')} Hz differ from "
                                 f"{cams} at {fps} Hz of {first.path}; export them separately")
        keys = {c: F.CAMERA_KEYS.get(c, c) for c in cams}
        tasks: dict[str, int] = {}
        rows: list[dict] = []
        ep_rows: list[dict] = []
        colour_samples: dict[str, list[np.ndarray]] = {c: [] for c in cams}
        offsets = {c: 0.0 for c in cams}
        writers = {}
        posevla_meta: dict = {"episodes": {}, "camera_info": {}, "source_files": {}}
        for c in cams:
            intr = first.intrinsics[c]
            ci = intr.to_camera_info()
            posevla_meta["camera_info"][keys[c]] = {"name": c, "k": list(ci["k"]), "d": list(ci["d"]),
                                                     "width": intr.width, "height": intr.height,
                                                     "distortion_model": intr.distortion_model,
                                                     "depth_scale": first.depth_scale[c],
                                                     "frame_id": f"{c}_camera_color_optical_frame"}
        index = 0
        for e, r in enumerate(readers):
            n = r.num_frames
            task = str(r.meta.get("instruction") or r.meta.get("task") or "")
            t_idx = tasks.setdefault(task, len(tasks))
            qpos, action = r.array("observations/qpos"), r.array("action")
            tcp = {a: r.array(f"observations/tcp_pose/{a}") for a in ARM_NAMES}
            stamps = {"frame": r.array("stamps/frame"), "robot": r.array("stamps/robot"),
                      **{c: r.camera_stamps(c) for c in cams}}
            t0 = int(stamps["frame"][0])
            for i in range(n):
                row = {"observation.state": qpos[i].astype(np.float32), "action": action[i].astype(np.float32),
                       "timestamp": np.float32(i / fps), "frame_index": i, "episode_index": e, "index": index + i,
                       "task_index": t_idx}
                for a in ARM_NAMES:
                    row[f"observation.tcp_pose.{a}"] = tcp[a][i].astype(np.float32)
                for s, v in stamps.items():
                    row[f"observation.stamp_ns.{s}"] = int(v[i])
                rows.append(row)
            ep_row = {"episode_index": e, "tasks": [task], "length": n, "data/chunk_index": 0, "data/file_index": 0,
                      "dataset_from_index": index, "dataset_to_index": index + n,
                      "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
            for c in cams:  # frames of this episode appended to the camera's single video file
                for kind in ("images", "depth"):
                    vkey = f"observation.{kind}.{keys[c]}"
                    ep_row[f"videos/{vkey}/chunk_index"] = 0
                    ep_row[f"videos/{vkey}/file_index"] = 0
                    ep_row[f"videos/{vkey}/from_timestamp"] = offsets[c]
                    ep_row[f"videos/{vkey}/to_timestamp"] = offsets[c] + n / fps
                offsets[c] += n / fps
            ep_rows.append(ep_row)
            posevla_meta["episodes"][str(e)] = {**r.meta, "first_stamp_ns": t0}
            posevla_meta["source_files"][str(e)] = str(r.path)
            index += n
        total = index
        # videos: one file per camera and kind, episodes back to back (sequential decode of each episode)
        for c in cams:
            for kind in ("images", "depth"):
                vkey = f"observation.{kind}.{keys[c]}"
                path = out / VIDEO_PATH.format(video_key=vkey, chunk_index=0, file_index=0)

                def frames(c=c, kind=kind):
                    for r in readers:
                        for i in range(r.num_frames):
                            if kind == "depth":
                                yield r.raw_depth(c, i)
                            else:
                                im = r.rgb(c, i)
                                if i % 10 == 0 and len(colour_samples[c]) < 500:  # stats sample, 1/4 resolution
                                    colour_samples[c].append(im[::4, ::4].copy())
                                yield im
                writers[vkey] = write_video_file(path, frames(), fps, depth=kind == "depth", crf=crf, gop=2)
                if writers[vkey] != total:
                    raise RuntimeError(f"{vkey}: wrote {writers[vkey]} frames for {total}")
        # data, episodes, tasks
        df = pd.DataFrame(rows)
        (out / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
        df.to_parquet(out / DATA_PATH.format(chunk_index=0, file_index=0), index=False)
        (out / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(ep_rows).to_parquet(out / EPISODES_PATH.format(chunk_index=0, file_index=0), index=False)
        pd.DataFrame({"task_index": list(tasks.values())}, index=pd.Index(list(tasks), name="task")).to_parquet(
            out / "meta" / "tasks.parquet")
        # features, stats, info
        features: dict = {
            "observation.state": {"dtype": "float32", "shape": [F.QPOS_DIM], "names": JOINT_NAMES},
            "action": {"dtype": "float32", "shape": [F.QPOS_DIM], "names": JOINT_NAMES},
            **{f"observation.tcp_pose.{a}": {"dtype": "float32", "shape": [7], "names": POSE_NAMES} for a in ARM_NAMES},
            **{f"observation.stamp_ns.{s}": {"dtype": "int64", "shape": [1], "names": None}
               for s in ["frame", "robot", *cams]},
        }
        for c in cams:
            intr = first.intrinsics[c]
            features[f"observation.images.{keys[c]}"] = _video_feature(intr.height, intr.width, fps, False)
            features[f"observation.depth.{keys[c]}"] = _video_feature(intr.height, intr.width, fps, True)
            features[f"observation.depth.{keys[c]}"]["info"]["depth_scale"] = first.depth_scale[c]
        for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
            features[k] = {"dtype": "float32" if k == "timestamp" else "int64", "shape": [1], "names": None}
        stats = {k: _stats(np.stack(df[k].to_numpy())) for k in features
                 if features[k]["dtype"] in ("float32", "int64") and k in df}
        for c in cams:  # channel statistics of a sample of colour frames, in 0..1 as LeRobot normalises them
            px = np.concatenate([im.reshape(-1, 3) for im in colour_samples[c]]).astype(np.float64) / 255.0
            stats[f"observation.images.{keys[c]}"] = {
                s: [[[float(v)]] for v in f(px)] for s, f in (("min", lambda x: x.min(0)), ("max", lambda x: x.max(0)),
                                                              ("mean", lambda x: x.mean(0)), ("std", lambda x: x.std(0)))}
            stats[f"observation.images.{keys[c]}"]["count"] = [int(px.shape[0])]
        info = {"codebase_version": CODEBASE_VERSION, "robot_type": ROBOT_TYPE, "total_episodes": len(readers),
                "total_frames": total, "total_tasks": len(tasks), "chunks_size": 1000, "data_files_size_in_mb": 100,
                "video_files_size_in_mb": 500, "fps": fps, "splits": {"train": f"0:{len(readers)}"},
                "data_path": DATA_PATH, "video_path": VIDEO_PATH, "features": features}
        (out / "meta" / "info.json").write_text(json.dumps(info, indent=4))
        (out / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))
        (out / "meta" / "posevla.json").write_text(json.dumps(posevla_meta, indent=2))
    finally:
        for r in readers:
            r.close()
    return out


# ---------------------------------------------------------------------------------------------- import
def _camera_name(key: str) -> str:
    return F.CAMERA_NAMES.get(key, key)


def _episode_video(dataset: Path, info: dict, ep, kind: str, cam_key: str, n: int) -> list[np.ndarray]:
    """The n frames of one episode from a (multi-episode) video file, by its from/to timestamps."""
    vkey = f"observation.{kind}.{cam_key}"
    path = dataset / info["video_path"].format(video_key=vkey, chunk_index=int(ep[f"videos/{vkey}/chunk_index"]),
                                               file_index=int(ep[f"videos/{vkey}/file_index"]))
    if not path.is_file():
        raise ValueError(f"{path}: video file missing")
    t0, t1 = float(ep[f"videos/{vkey}/from_timestamp"]), float(ep[f"videos/{vkey}/to_timestamp"])
    frames = [f for _, f in read_video_file(path, t0, t1)]
    if len(frames) != n:
        raise ValueError(f"{path}: {len(frames)} frames between {t0:.3f} and {t1:.3f} s; episode "
                         f"{int(ep['episode_index'])} has {n} rows")
    return frames


def import_lerobot(dataset: Path, root: Path, task: str | None = None, episodes: list[int] | None = None,
                   storage: str = "video") -> list[Path]:
    """Convert a local LeRobot v3.0 dataset into episodes `<root>/<task>/episode_*.h5`; returns their paths."""
    pd = _need_pandas()
    dataset = Path(dataset)
    info_path = dataset / "meta" / "info.json"
    if not info_path.is_file():
        raise ValueError(f"{dataset}: no meta/info.json (not a LeRobot dataset folder)")
    info = json.loads(info_path.read_text())
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise ValueError(f"{info_path}: codebase_version {info.get('codebase_version')!r}; only {CODEBASE_VERSION} "
                         "is read (convert older datasets with LeRobot's convert_dataset_v21_to_v30 first)")
    fps = float(info["fps"])
    feats = info["features"]
    for key in ("observation.state", "action"):
        if key not in feats:
            raise ValueError(f"{info_path}: feature {key!r} missing")
    extra_path = dataset / "meta" / "posevla.json"
    extra = json.loads(extra_path.read_text()) if extra_path.is_file() else {"episodes": {}, "camera_info": {}}
    image_keys = [k for k, f in feats.items() if k.startswith("observation.images.") and f["dtype"] == "video"]
    if not image_keys:
        raise ValueError(f"{info_path}: no video camera features (observation.images.*)")
    cam_keys = [k.removeprefix("observation.images.") for k in image_keys]
    ep_files = sorted((dataset / "meta" / "episodes").glob("*/*.parquet"))
    eps = pd.concat([pd.read_parquet(p) for p in ep_files]).sort_values("episode_index")
    if episodes:
        missing = sorted(set(episodes) - set(eps["episode_index"]))
        if missing:
            raise ValueError(f"--episodes {missing}: not in {dataset} (has {len(eps)} episodes)")
        eps = eps[eps["episode_index"].isin(episodes)]
    data_cache: dict[tuple[int, int], Any] = {}  # pandas DataFrames
    task = task or dataset.name
    written = []
    for _, ep in eps.iterrows():
        e = int(ep["episode_index"])
        ck = (int(ep["data/chunk_index"]), int(ep["data/file_index"]))
        if ck not in data_cache:
            data_cache[ck] = pd.read_parquet(dataset / info["data_path"].format(chunk_index=ck[0], file_index=ck[1]))
        df = data_cache[ck]
        df = df[df["episode_index"] == e].sort_values("frame_index")
        n = len(df)
        if n == 0:
            raise ValueError(f"{dataset}: episode {e} has no rows in its data file")
        src_meta = dict(extra["episodes"].get(str(e), {}))
        intr, depth_scale, assumed = {}, {}, []
        for ck_ in cam_keys:
            f = feats[f"observation.images.{ck_}"]
            h, w = int(f["shape"][0]), int(f["shape"][1])
            ci = extra["camera_info"].get(ck_)
            if ci:
                intr[ck_] = CameraIntrinsics.from_camera_info(ci)
                depth_scale[ck_] = float(ci.get("depth_scale", 0.001))
            else:  # LeRobot has no camera model field: assume a 60 deg pinhole, and say so
                intr[ck_] = CameraIntrinsics(w * 0.866, w * 0.866, (w - 1) / 2, (h - 1) / 2, w, h)
                depth_scale[ck_] = float(feats.get(f"observation.depth.{ck_}", {}).get("info", {}).get("depth_scale", 0.001))
                assumed.append(_camera_name(ck_))

        colour = {_camera_name(k): _episode_video(dataset, info, ep, "images", k, n) for k in cam_keys}
        depth = {_camera_name(k): (_episode_video(dataset, info, ep, "depth", k, n)
                                   if f"observation.depth.{k}" in feats else None) for k in cam_keys}
        state = np.stack(df["observation.state"].to_numpy()).astype(np.float64)
        action = np.stack(df["action"].to_numpy()).astype(np.float64)
        if state.shape[1] != F.QPOS_DIM or action.shape[1] != F.QPOS_DIM:
            raise ValueError(f"{info_path}: observation.state/action have {state.shape[1]}/{action.shape[1]} values; "
                             f"this format stores {F.QPOS_DIM} (6 joints + gripper per arm, left first)")

        def col(name: str, default, df=df):
            return np.stack(df[name].to_numpy()) if name in df else default
        # LeRobot's float32 timestamps hold ~0.1 us at a few seconds: keep them to the microsecond
        t_ns = np.round(df["timestamp"].to_numpy(np.float64) * 1e6).astype(np.int64) * 1000
        stamp_frame = col("observation.stamp_ns.frame", t_ns).astype(np.int64)
        stamp_robot = col("observation.stamp_ns.robot", stamp_frame).astype(np.int64)
        tcp = {a: col(f"observation.tcp_pose.{a}", np.full((n, 7), np.nan)).astype(np.float64) for a in ARM_NAMES}
        tasks = list(ep["tasks"]) if "tasks" in ep else []
        meta = {k: v for k, v in src_meta.items() if k not in ("format_version", "storage", "task", "complete",
                                                                 "num_frames", "first_stamp_ns")}
        meta.setdefault("instruction", tasks[0] if tasks else "")
        meta.setdefault("fps", fps)
        meta["imported_from"] = {"lerobot_dataset": str(dataset), "episode_index": e,
                                 "robot_type": info.get("robot_type")}
        meta.setdefault("start_time_ns", time.time_ns())
        if assumed:
            meta["intrinsics_assumed"] = assumed
        names = {_camera_name(k): intr[k] for k in cam_keys}
        scale = {_camera_name(k): depth_scale[k] for k in cam_keys}
        src_storage = src_meta.get("storage")
        # an episode exported with depth_every k (its held depth repeated in the video) comes back as it was
        depth_every = (int(src_storage.get("depth_every", 1)) if storage == "video" and isinstance(src_storage, dict)
                       else 1)
        writer = EpisodeWriter(root, task, meta, names, depth_scale=next(iter(scale.values())), storage=storage,
                          min_free_bytes=64 * 1024 * 1024, depth_every=depth_every)
        for i in range(n):
            arms = {}
            for k, a in enumerate(ARM_NAMES):
                if np.all(np.isfinite(tcp[a][i])):
                    arms[a] = ArmState(se3.T_from_pos_quat(tcp[a][i][:3], tcp[a][i][3:]), state[i, k * 7:k * 7 + 6],
                                       float(state[i, k * 7 + 6]), int(stamp_robot[i]))
            cam_stamps = {c: int(col(f"observation.stamp_ns.{c}", stamp_frame)[i]) for c in names}
            depth_i = {c: np.zeros((names[c].height, names[c].width), np.uint16) if (d := depth[c]) is None else d[i]
                       for c in names}
            rec = FrameRecord(int(stamp_frame[i]), {c: colour[c][i] for c in names}, depth_i, cam_stamps,
                              RobotState(arms, int(stamp_robot[i])), action[i],
                              qpos=state[i])  # joints as recorded, also where the source has no TCP poses
            while not writer.add_frame(rec):
                time.sleep(0.002)
        written.append(writer.finish(success=bool(meta.get("success", True))))
    return written
