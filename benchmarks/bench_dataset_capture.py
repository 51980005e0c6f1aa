"""Capture + record in one process (posevla.dataset.capture_record) at 30 Hz from three 640x480 RGB-D cameras in
an independent process (posevla.dataset.shm_camera: synthetic textured, noisy frames written into shared memory
on the source's own clock, like camera hardware): sets/s recorded, dropped frames per camera (at the source,
superseded, refused by the writer), capture-to-writer latency, the writer's CPU, and the machine's load while
measuring.

    python benchmarks/bench_dataset_capture.py [--seconds 30] [--size 640 480] [--fps 30] [--slots 8]
                                               [--paths composed|dds|both] [--out runs/bench]
Writes <out>/dataset_capture.json.
"""
from __future__ import annotations

import argparse
import json
import logging
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
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(seconds: float, size: tuple[int, int], fps: float, slots: int, unique: int, storage: str,
        stream_timeout_s: float, recorder_kw: dict | None = None) -> dict:
    """recorder_kw: further RecorderConfig fields (colour_preset, colour_crf, colour_tune, colour_gop, depth_every)."""
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
                raise RuntimeError(f"camera source failed: {src.stdout.read()[-2000:]}")
            rec = Recorder(RecorderConfig(Path(tmp) / "data", "bench", "bench", CAMS, fps=fps, require_action=False,
                                          reset_period_s=0.0, storage=storage, stream_timeout_s=stream_timeout_s,
                                          calibration_files=tuple(sorted((REPO / "calibration").glob("*.yaml"))),
                                          **(recorder_kw or {})))
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
            summary, cpu, enc_at_stop, queued, msg = cr.control(lambda: (
                cr.summary(), time.process_time() - c0, writer.encode_cpu_s, writer.frames_written,
                rec.stop_and_save(True)))
            # CPU per set = encoders (all sets, exact) + capture threads (exact) + the rest (writer worker, robot
            # feed) as measured up to the stop; finishing the file (flush, read-back check, rename) is not per set
            capture_s = sum(st.cpu_s for st in cr.stats.values())
            rest_per_set = max(0.0, cpu - enc_at_stop - capture_s) / max(queued, 1)
            load1 = os.getloadavg()
            stop.set()
            cr.stop()
            aborted = "; ".join(cr.messages)
            frames, gaps, size_mb = 0, {c: float("nan") for c in CAMS}, 0.0
            if not isinstance(msg, Refusal) and rec.last_saved is not None:
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
            "cpu_ms_per_set": 1e3 * (writer.encode_cpu_s / max(summary["sets_recorded"], 1)
                                     + capture_s / max(summary["sets_recorded"], 1) + rest_per_set),
            "encoder_cpu_ms_per_set": 1e3 * writer.encode_cpu_s / max(summary["sets_recorded"], 1),
            "capture_cpu_ms_per_set": 1e3 * capture_s / max(summary["sets_recorded"], 1),
            "aborted": aborted, "source": next((ln for ln in out.splitlines() if ln.startswith("shm_camera:")), out[-300:]), "storage": storage, "slots": slots}


# camera_node's publishing loop on a shared-memory camera: one process per camera, as camera_node runs
CAMERA_PUBLISHER = """
import signal, sys, rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, CameraInfo
from posevla.dataset.shm_camera import SharedMemoryCamera, segment_name
from posevla_ros.msg_conv import image_to_msg, intrinsics_to_msg
from posevla_ros.network import apply_network_policy
apply_network_policy()
def _stop(*_):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, _stop)
cam, prefix = sys.argv[1], sys.argv[2]
rclpy.init()
node = rclpy.create_node(f"camera_{cam}")
c = node.create_publisher(Image, f"{cam}/color/image_raw", qos_profile_sensor_data)
d = node.create_publisher(Image, f"{cam}/aligned_depth_to_color/image_raw", qos_profile_sensor_data)
i = node.create_publisher(CameraInfo, f"{cam}/color/camera_info", qos_profile_sensor_data)
src = SharedMemoryCamera(cam, segment_name(prefix, cam))
src.connect()
n = 0
try:
    while rclpy.ok():
        try:
            f = src.read(500)
        except ConnectionError:
            break
        if f is None:
            continue
        c.publish(image_to_msg(f.rgb, "rgb8", f.stamp_ns, f.frame_id))
        d.publish(image_to_msg(src.raw_depth_mm(f), "16UC1", f.stamp_ns, f.frame_id))
        i.publish(intrinsics_to_msg(f.intrinsics, f.stamp_ns, f.frame_id))
        n += 1
except KeyboardInterrupt:
    pass
print(f"published {n} dropped_at_source {src.dropped}", flush=True)
"""


def run_dds(seconds: float, size: tuple[int, int], fps: float, slots: int, unique: int, storage: str,
            stream_timeout_s: float) -> dict:
    """The same cameras through DDS: a camera_node-like publisher process per camera -> recorder_node (unchanged,
    fixed-rate sampling at fps). Frames recorded = distinct capture stamps per camera in the episode."""
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from posevla_ros.msg_conv import T_to_pose_stamped
    from posevla_ros.network import apply_network_policy
    from std_srvs.srv import Trigger

    apply_network_policy()
    # a DDS domain of its own (215..232: above the ephemeral ports; tests draw 1..200, closed-loop runs 1..100), so no other graph on this
    # machine receives the benchmark's cameras and robot poses, or sends it theirs
    os.environ["ROS_DOMAIN_ID"] = str(215 + os.getpid() % 18)
    prefix = f"pvb_{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        src = subprocess.Popen([sys.executable, "-m", "posevla.dataset.shm_camera", "--prefix", prefix, "--cameras", *CAMS,
                                "--size", str(size[0]), str(size[1]), "--fps", str(fps), "--unique", str(unique),
                                "--slots", str(slots), "--ready-file", str(ready)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ctx = rclpy.context.Context()
        rclpy.init(context=ctx)
        node = None
        try:
            _wait(lambda: ready.exists() or src.poll() is not None, 600, "the camera source process")
            procs = [subprocess.Popen([sys.executable, "-c", CAMERA_PUBLISHER, c, prefix], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True) for c in CAMS]
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "posevla_ros.recorder_node", "--ros-args", "-p", f"root:={tmp}/data",
                 "-p", "task:=bench", "-p", "instruction:=bench", "-p", f"cameras:=[{', '.join(CAMS)}]",
                 "-p", f"fps:={float(fps)}", "-p", "require_action:=false", "-p", "reset_period_s:=0.0",
                 "-p", f"stream_timeout_s:={stream_timeout_s}", "-p", f"storage:={storage}", "-p", "sound_cues:=false"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            node = rclpy.create_node("bench_robot", context=ctx)
            ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
            ex.add_node(node)
            tcp = [node.create_publisher(PoseStamped, f"/{a}_arm/tcp_pose", 10) for a in ("left", "right")]
            T = se3.T_from_xyz_rpy([0.4, 0.2, 0.2], [np.pi, 0, 0])
            node.create_timer(0.02, lambda: [p.publish(T_to_pose_stamped(T, time.time_ns(), "base_link")) for p in tcp])
            cli = {n: node.create_client(Trigger, f"/recorder/{n}") for n in ("start", "stop_and_save")}

            def call(name: str) -> Trigger.Response | None:
                if not cli[name].wait_for_service(30):
                    return None
                fut = cli[name].call_async(Trigger.Request())
                end = time.monotonic() + 60
                while not fut.done() and time.monotonic() < end:
                    ex.spin_once(timeout_sec=0.05)
                return fut.result()
            end, r = time.monotonic() + 120, None
            while time.monotonic() < end:
                ex.spin_once(timeout_sec=0.2)
                r = call("start")
                if r is not None and r.success:
                    break
                time.sleep(0.5)
            if r is None or not r.success:
                raise RuntimeError(f"recorder_node did not start: {r and r.message}")
            load0, t0 = os.getloadavg(), time.monotonic()
            cpu0 = [_cpu_s(p.pid) for p in procs]
            while time.monotonic() - t0 < seconds:
                ex.spin_once(timeout_sec=0.05)
            cpu1 = [_cpu_s(p.pid) for p in procs]
            r = call("stop_and_save")
            wall, load1 = time.monotonic() - t0, os.getloadavg()
            saved = sorted((Path(tmp) / "data" / "bench").glob("episode_*.h5"))
            aborted = "" if r is not None and r.success else (r.message if r is not None else "no answer")
            out: dict = {"seconds": wall, "aborted": aborted, "load_avg_1min_before_after": [load0[0], load1[0]],
                         "cpu_count": os.cpu_count(), "cameras": {}, "storage": storage, "slots": slots,
                         "publisher_cores": sum(b - a for a, b in zip(cpu0[:-1], cpu1[:-1])) / wall,
                         "recorder_node_cores": (cpu1[-1] - cpu0[-1]) / wall}
            if saved:
                with EpisodeReader(saved[0]) as ep:
                    out["episode_frames"] = ep.num_frames
                    for c in CAMS:
                        st = ep.camera_stamps(c)
                        distinct = int(np.unique(st).size)
                        produced = int(round((st.max() - st.min()) / 1e9 * fps)) + 1  # source frames in the episode's span
                        out["cameras"][c] = {"distinct_frames_recorded": distinct, "source_frames_in_span": produced,
                                             "repeated": int(st.size - distinct), "lost": max(0, produced - distinct)}
        finally:
            for p in procs:
                p.terminate()
            logs = []
            for p in procs:
                try:
                    logs.append(p.communicate(timeout=30)[0] or "")
                except subprocess.TimeoutExpired:
                    p.kill()
                    logs.append("")
            if logs and "out" in locals():
                reasons = [ln.strip() for ln in logs[-1].splitlines() if "stopped" in ln or "NOT saved" in ln]
                out["aborted"] = "; ".join([out["aborted"], *reasons[:2]]) if out["aborted"] else ""
                out["recorder_log_tail"] = logs[-1][-3000:]
                out["publishers"] = [next((ln for ln in lg.splitlines() if ln.startswith("published")), "") for lg in logs[:-1]]
            if node is not None:
                node.destroy_node()
            ctx.try_shutdown()
            src.terminate()
            src.communicate(timeout=60)
    return out


def main(argv: list[str] | None = None) -> None:
    logging.getLogger("posevla.dataset.writer").setLevel(logging.ERROR)  # refusals are counted, not logged per frame
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="recording length (s)")
    ap.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("W", "H"))
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--slots", type=int, default=8, help="frames the source keeps for a reader that falls behind")
    ap.add_argument("--unique", type=int, default=4, help="scene renders per camera in the source (~1 s each)")
    ap.add_argument("--storage", choices=("video", "jpeg"), default="video")
    ap.add_argument("--stream-timeout", type=float, default=RecorderConfig.stream_timeout_s,
                    help="the recorder stops the episode when a camera is silent this long (s)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench", help="folder for dataset_capture.json")
    ap.add_argument("--depth-every", type=int, default=1, help="composed path: store depth with every k-th frame")
    ap.add_argument("--colour-preset", default=RecorderConfig.colour_preset, help="composed path: x264 preset")
    ap.add_argument("--colour-crf", type=int, default=RecorderConfig.colour_crf, help="composed path: x264 crf")
    ap.add_argument("--colour-tune", default=RecorderConfig.colour_tune, help="composed path: x264 tune")
    ap.add_argument("--colour-gop", type=int, default=RecorderConfig.colour_gop, help="composed path: keyframe interval")
    ap.add_argument("--paths", choices=("composed", "dds", "both"), default="composed",
                    help="composed: capture+record in one process; dds: a camera_node-like publisher process per camera "
                         "-> DDS -> recorder_node; both: one after the other")
    a = ap.parse_args(argv if argv is not None else [])
    for name, v, lo, hi in (("--seconds", a.seconds, 1, 3600), ("--fps", a.fps, 1, 120), ("--slots", a.slots, 2, 1024),
                            ("--unique", a.unique, 1, 100), ("--stream-timeout", a.stream_timeout, 0.05, 60),
                            ("--size W", a.size[0], 16, 4096), ("--size H", a.size[1], 16, 4096)):
        if not lo <= v <= hi:
            print(f"bench_dataset_capture: {name}={v}: must be in {lo}..{hi}", file=sys.stderr)
            raise SystemExit(2)
    kw = {"depth_every": a.depth_every, "colour_preset": a.colour_preset, "colour_crf": a.colour_crf,
          "colour_tune": a.colour_tune, "colour_gop": a.colour_gop}
    try:
        RecorderConfig(Path("."), "t", "i", **kw)
    except ValueError as exc:
        print(f"bench_dataset_capture: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    r = None
    if a.paths != "dds":
        r = run(a.seconds, tuple(a.size), a.fps, a.slots, a.unique, a.storage, a.stream_timeout, kw)
        report(r, a)
    dds = None
    if a.paths != "composed":
        dds = run_dds(a.seconds, tuple(a.size), a.fps, a.slots, a.unique, a.storage, a.stream_timeout)
        report_dds(dds, a, r)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "dataset_capture.json").write_text(json.dumps({"args": {**vars(a), "out": str(a.out)}, "result": r,
                                                            "dds": dds}, indent=2))


def report(r: dict, a: argparse.Namespace) -> None:
    expected = a.fps * r["seconds"]
    print(f"capture+record in one process, {len(CAMS)} x {a.size[0]}x{a.size[1]} RGB-D at {a.fps:.0f} Hz from a camera "
          f"process (shared memory, {a.slots} slots), {a.storage} storage (colour {a.colour_preset} crf {a.colour_crf} "
          f"gop {a.colour_gop} {a.colour_tune}, depth every {a.depth_every} frames), {r['seconds']:.1f} s")
    print(f"sets recorded {r['sets_recorded']} ({r['sets_per_s']:.2f}/s, {expected:.0f} expected at {a.fps:.0f} Hz); "
          f"episode frames {r['episode_frames']}, {r['episode_mb']:.0f} MB; writer refused {r['writer_rejected']}")
    if r["aborted"]:
        print(f"EPISODE STOPPED by the recorder: {r['aborted']}")
    print(f"{'camera':12s} {'captured':>8s} {'recorded':>8s} {'superseded':>10s} {'dropped@src':>11s} "
          f"{'lat p50 ms':>10s} {'p99':>7s} {'max':>7s} {'max gap ms':>10s}")
    for c, s in r["cameras"].items():
        print(f"{c:12s} {s['captured']:8d} {s['recorded']:8d} {s['superseded']:10d} {s['dropped_at_source']:11d} "
              f"{s['latency_ms_p50']:10.1f} {s['latency_ms_p99']:7.1f} {s['latency_ms_max']:7.1f} "
              f"{r['max_stamp_gap_ms'][c]:10.1f}")
    per_set = r["cpu_ms_per_set"]
    print(f"load-independent cost: {per_set:.1f} CPU ms per recorded set -> {per_set * a.fps / 1e3:.2f} cores at "
          f"{a.fps:.0f} Hz (encoders {r['encoder_cpu_ms_per_set']:.1f} ms, capture threads "
          f"{r['capture_cpu_ms_per_set']:.1f} ms, writer worker and the rest "
          f"{per_set - r['encoder_cpu_ms_per_set'] - r['capture_cpu_ms_per_set']:.1f} ms)")
    print(f"recorder process CPU {r['process_cores']:.2f} cores (encoders {r['writer_encode_cpu_cores']:.2f}); load average "
          f"(1 min) {r['load_avg_1min_before_after'][0]:.1f} -> {r['load_avg_1min_before_after'][1]:.1f} on "
          f"{r['cpu_count']} cores; source: {r['source']}")
    print("latency = capture stamp -> set handed to the episode writer; max gap = largest step between recorded "
          "capture stamps (the source's own lateness under load shows here, not as drops)")


def report_dds(dds: dict, a: argparse.Namespace, r: dict | None) -> None:
    print(f"\nDDS path (publisher process per camera -> recorder_node sampling at {a.fps:.0f} Hz), {dds['seconds']:.1f} s, "
          f"load average {dds['load_avg_1min_before_after'][0]:.1f} -> {dds['load_avg_1min_before_after'][1]:.1f}"
          + (f"; EPISODE STOPPED: {dds['aborted']}" if dds["aborted"] else ""))
    print(f"publishers: {dds.get('publishers')}")
    print(f"episode frames {dds.get('episode_frames', 0)}; CPU: publishers {dds['publisher_cores']:.2f} cores, "
          f"recorder_node {dds['recorder_node_cores']:.2f} cores"
          + (f" (composed path, all in one: {r['process_cores']:.2f})" if r else ""))
    n = dds.get("episode_frames", 0)
    if n:
        per = (dds["publisher_cores"] + dds["recorder_node_cores"]) * dds["seconds"] / n
        print(f"load-independent cost: {1e3 * per:.1f} CPU ms per recorded tick (publishers + recorder_node) -> "
              f"{per * a.fps:.2f} cores at {a.fps:.0f} Hz")
    for c, v in dds["cameras"].items():
        print(f"  {c:12s} distinct camera frames recorded {v['distinct_frames_recorded']} of "
              f"{v['source_frames_in_span']} produced in the span (lost {v['lost']}), {v['repeated']} ticks repeated a frame")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except RuntimeError as exc:  # a run that could not be measured (under `posevla bench` the runner reports it)
        print(f"bench_dataset_capture: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
