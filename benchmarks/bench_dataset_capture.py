"""Capture + record in one process (posevla.dataset.capture_record) at 30 Hz from three 640x480 RGB-D cameras in
an independent process (posevla.dataset.shm_camera: synthetic textured, noisy frames written into shared memory
on the source's own clock, like camera hardware): sets/s recorded, dropped frames per camera (at the source,
superseded, refused by the writer), capture-to-writer latency, the writer's CPU, and the machine's load while
measuring.

    python benchmarks/bench_dataset_capture.py [--seconds 30] [--size 640 480] [--fps 30] [--slots 8]
Writes runs/bench/dataset_capture.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from posevla.dataset.capture_record import CaptureRecorder
from posevla.dataset.reader import EpisodeReader
from posevla.dataset.recorder import Recorder, RecorderConfig, Refusal
from posevla.dataset.shm_camera import SharedMemoryCamera, segment_name
from posevla.geometry import se3

CAMS = ("head", "left_wrist", "right_wrist")
REPO = Path(__file__).resolve().parents[1]


def _wait(cond, timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"bench_dataset_capture: timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def run(seconds: float, size: tuple[int, int], fps: float, slots: int, unique: int, storage: str,
        stream_timeout_s: float) -> dict:
    prefix = f"pvb_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        src = subprocess.Popen([sys.executable, "-m", "posevla.dataset.shm_camera", "--prefix", prefix, "--cameras", *CAMS,
                                "--size", str(size[0]), str(size[1]), "--fps", str(fps), "--unique", str(unique),
                                "--slots", str(slots), "--ready-file", str(ready)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            _wait(lambda: ready.exists() or src.poll() is not None, 600, "the camera source process")
            if src.poll() is not None:
                raise SystemExit(f"bench_dataset_capture: camera source failed: {src.stdout.read()[-2000:]}")
            rec = Recorder(RecorderConfig(Path(tmp) / "data", "bench", "bench", CAMS, fps=fps, require_action=False,
                                          reset_period_s=0.0, storage=storage, stream_timeout_s=stream_timeout_s,
                                          calibration_files=tuple(sorted((REPO / "calibration").glob("*.yaml")))))
            cams = {c: SharedMemoryCamera(c, segment_name(prefix, c)) for c in CAMS}
            cr = CaptureRecorder(rec, cams)
            stop = threading.Event()

            def robot() -> None:  # the robot stream the ROS subscriptions would deliver (TCP poses, 50 Hz)
                while not stop.is_set():
                    with cr.lock:
                        for arm in ("left", "right"):
                            rec.latest.tcp[arm] = (time.time_ns(), se3.T_from_xyz_rpy([0.4, 0.2, 0.2], [np.pi, 0, 0]))
                        rec.note_arrival("robot")
                    time.sleep(0.02)
            feed = threading.Thread(target=robot, daemon=True)
            cr.start()
            feed.start()
            _wait(lambda: not isinstance(cr.control(rec.start), Refusal), 60, "the recorder to start")
            writer = rec.writer
            load0, t0, c0 = os.getloadavg(), time.monotonic(), time.process_time()
            _wait(lambda: time.monotonic() - t0 >= seconds or rec.state != "recording", seconds + 60, "the recording")
            wall = time.monotonic() - t0
            summary, msg = cr.control(lambda: (cr.summary(), rec.stop_and_save(True)))
            cpu = time.process_time() - c0
            load1 = os.getloadavg()
            stop.set()
            cr.stop()
            if isinstance(msg, Refusal) or rec.last_saved is None:
                raise SystemExit(f"bench_dataset_capture: episode not saved: {msg} {cr.messages}")
            with EpisodeReader(rec.last_saved) as ep:
                frames = ep.num_frames
                gaps = {c: float(np.diff(ep.camera_stamps(c)).max() / 1e6) for c in CAMS}
            size_mb = rec.last_saved.stat().st_size / 1e6
        finally:
            src.terminate()
            out = src.communicate(timeout=60)[0]
    return {"seconds": wall, "sets_recorded": summary["sets_recorded"], "sets_per_s": summary["sets_recorded"] / wall,
            "episode_frames": frames, "writer_rejected": writer.frames_rejected, "cameras": summary["cameras"],
            "max_stamp_gap_ms": gaps, "process_cores": cpu / wall, "writer_encode_cpu_cores": writer.encode_cpu_s / wall,
            "load_avg_1min_before_after": [load0[0], load1[0]], "cpu_count": os.cpu_count(), "episode_mb": size_mb,
            "source": next((ln for ln in out.splitlines() if ln.startswith("shm_camera:")), out[-300:]), "storage": storage, "slots": slots}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="recording length (s)")
    ap.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"))
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--slots", type=int, default=8, help="frames the source keeps for a reader that falls behind")
    ap.add_argument("--unique", type=int, default=4, help="scene renders per camera in the source (~1 s each)")
    ap.add_argument("--storage", choices=("video", "jpeg"), default="video")
    ap.add_argument("--stream-timeout", type=float, default=RecorderConfig.stream_timeout_s,
                    help="the recorder stops the episode when a camera is silent this long (s)")
    a = ap.parse_args(argv if argv is not None else [])
    for name, v, lo, hi in (("--seconds", a.seconds, 1, 3600), ("--fps", a.fps, 1, 120), ("--slots", a.slots, 2, 1024),
                            ("--unique", a.unique, 1, 100), ("--stream-timeout", a.stream_timeout, 0.05, 60)):
        if not lo <= v <= hi:
            raise SystemExit(f"bench_dataset_capture: {name}={v}: must be in {lo}..{hi}")
    r = run(a.seconds, tuple(a.size), a.fps, a.slots, a.unique, a.storage, a.stream_timeout)
    expected = a.fps * r["seconds"]
    print(f"capture+record in one process, {len(CAMS)} x {a.size[0]}x{a.size[1]} RGB-D at {a.fps:.0f} Hz from a camera "
          f"process (shared memory, {a.slots} slots), {a.storage} storage, {r['seconds']:.1f} s")
    print(f"sets recorded {r['sets_recorded']} ({r['sets_per_s']:.2f}/s, {expected:.0f} expected at {a.fps:.0f} Hz); "
          f"episode frames {r['episode_frames']}, {r['episode_mb']:.0f} MB; writer refused {r['writer_rejected']}")
    print(f"{'camera':12s} {'captured':>8s} {'recorded':>8s} {'superseded':>10s} {'dropped@src':>11s} "
          f"{'lat p50 ms':>10s} {'p99':>7s} {'max':>7s} {'max gap ms':>10s}")
    for c, s in r["cameras"].items():
        print(f"{c:12s} {s['captured']:8d} {s['recorded']:8d} {s['superseded']:10d} {s['dropped_at_source']:11d} "
              f"{s['latency_ms_p50']:10.1f} {s['latency_ms_p99']:7.1f} {s['latency_ms_max']:7.1f} "
              f"{r['max_stamp_gap_ms'][c]:10.1f}")
    print(f"recorder process CPU {r['process_cores']:.2f} cores (encoders {r['writer_encode_cpu_cores']:.2f}); load average "
          f"(1 min) {r['load_avg_1min_before_after'][0]:.1f} -> {r['load_avg_1min_before_after'][1]:.1f} on "
          f"{r['cpu_count']} cores; source: {r['source']}")
    print("latency = capture stamp -> set handed to the episode writer; max gap = largest step between recorded "
          "capture stamps (the source's own lateness under load shows here, not as drops)")
    out = REPO / "runs" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset_capture.json").write_text(json.dumps({"args": vars(a), "result": r}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
