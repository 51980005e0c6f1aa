"""Remote policy (posevla.remote_policy): the wire format byte by byte, a real tiny model served over loopback TCP
giving the same chunk as the local engine, and the failure modes (malformed or hostile messages, a model error, a
stalled server, a client that stops mid-message, no server) each ending in one clear error."""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from posevla.remote_policy import (
    MAGIC,
    PolicyClient,
    PolicyServer,
    ProtocolError,
    RemoteEngine,
    RemoteError,
    ServerInfo,
    decode_arrays,
    encode,
    parse_address,
)
from posevla.types import ActionChunk, ArmChunk, ArmState, ModelView, Observation, RobotState

REPO = Path(__file__).resolve().parents[1]
INFO = ServerInfo(["head", "left_wrist"], 32, "fake", "cpu")


def _observation(size: int = 32, views: tuple[str, ...] = ("head", "left_wrist")) -> Observation:
    from posevla.geometry.intrinsics import CameraIntrinsics
    from posevla.geometry.raymap import raymap

    rng = np.random.default_rng(1)
    out = {}
    for k, name in enumerate(views):
        intr = CameraIntrinsics(28.0 + k, 29.0, 15.2, 16.1 - k, size, size)
        depth = np.stack([rng.uniform(0.3, 1.2, (size, size)), rng.integers(0, 2, (size, size))], -1).astype(np.float32)
        T = np.eye(4)
        T[:3, 3] = [0.1 * k, 0.2, 0.5]
        out[name] = ModelView(name, rng.integers(0, 255, (size, size, 3), dtype=np.uint8), raymap(intr), depth, intr,
                              f"{name}_camera_color_optical_frame", 1_000 + k, T)
    arms = {a: ArmState(np.eye(4) + 0.01 * k, np.arange(6) * 0.1 + k, 0.3 + 0.2 * k, 900 + k)
            for k, a in enumerate(("left", "right"))}
    return Observation(out, RobotState(arms, 950), "stack the cups", 1_000)


def _fake_chunk(obs: Observation, modalities: str, seed: int | None) -> ActionChunk:
    """A chunk that encodes what the server received, so the test sees the request arrive intact."""
    head = obs.views["head"]
    T = np.tile(np.eye(4), (4, 1, 1))
    T[:, 0, 3] = [float(head.rgb.mean()), float(head.depth_prior[..., 0].sum()), float(head.raymap.sum()),
                  float(obs.state.arms["right"].gripper)]
    T[:, 1, 3] = len(obs.instruction) + (seed or 0) + {"full": 0, "rgb": 100}[modalities]
    return ActionChunk(head.frame_id, obs.stamp_ns, 0.02, {"left": ArmChunk(T, np.linspace(0, 1, 4))})


@pytest.fixture()
def fake_server():
    calls: list[str] = []

    def predict(obs: Observation, modalities: str, seed: int | None) -> ActionChunk:
        calls.append(obs.instruction)
        if obs.instruction == "fail":
            raise ValueError("engine torch produced NaN or inf actions")
        if obs.instruction == "stall":
            time.sleep(1.5)
        return _fake_chunk(obs, modalities, seed)

    server = PolicyServer(predict, INFO, port=0, message_timeout_s=1.0).start()
    yield server, calls
    server.close()


def test_wire_format_is_the_documented_one() -> None:
    a = np.array([[1.5, -2.0]], dtype=">f4")  # big-endian in memory: little-endian on the wire
    msg = encode({"type": "x", "id": 3}, {"a": a, "b": np.arange(3, dtype=np.uint8)})
    magic, hlen, plen = struct.unpack("<4sIQ", msg[:16])
    assert magic == MAGIC == b"PVLA" and plen == 8 + 3 and len(msg) == 16 + hlen + plen
    header = json.loads(msg[16:16 + hlen])
    assert header == {"type": "x", "id": 3, "arrays": [{"name": "a", "dtype": "float32", "shape": [1, 2]},
                                                       {"name": "b", "dtype": "uint8", "shape": [3]}]}
    assert msg[16 + hlen:] == struct.pack("<ff", 1.5, -2.0) + bytes([0, 1, 2])
    out = decode_arrays(header, msg[16 + hlen:])
    np.testing.assert_array_equal(out["a"], a)
    for bad, match in (([{"name": "a", "dtype": "object", "shape": [1]}], "dtype 'object'"),
                       ([{"name": "a", "dtype": "float64", "shape": [4]}], "overrun"),
                       ([{"name": "a", "dtype": "uint8", "shape": [1]}], "beyond its arrays"),
                       ([{"name": "a", "dtype": "uint8", "shape": [1], "pickle": True}], "exactly name, dtype, shape")):
        with pytest.raises(ProtocolError, match=match):
            decode_arrays({"arrays": bad}, b"\0" * 8)
    with pytest.raises(ProtocolError, match="not one of"):
        encode({"type": "x"}, {"flags": np.zeros(2, bool)})
    assert parse_address("gpu-box") == ("gpu-box", 5555) and parse_address("[::1]:6000") == ("::1", 6000)
    with pytest.raises(ValueError, match="remote='host:http'"):
        parse_address("host:http")


def test_request_arrives_intact_and_errors_keep_the_connection(fake_server) -> None:
    server, calls = fake_server
    client = PolicyClient(f"127.0.0.1:{server.port}", timeout_s=10.0)
    assert client.info["views"] == ["head", "left_wrist"] and client.info["image_size"] == 32
    obs = _observation()
    chunk = client.predict(obs, "rgb", noise_seed=7)
    expected = _fake_chunk(obs, "rgb", 7)  # computed here from the original observation
    np.testing.assert_array_equal(chunk.arms["left"].T, expected.arms["left"].T)  # raymap recomputed bit-identical
    np.testing.assert_array_equal(chunk.arms["left"].gripper, expected.arms["left"].gripper)
    assert (chunk.frame_id, chunk.stamp_ns, chunk.dt) == ("head_camera_color_optical_frame", 1_000, 0.02)
    assert client.last_timing["round_trip_s"] > 0 and client.last_timing["server_model_s"] >= 0
    obs.instruction = "fail"
    with pytest.raises(RemoteError, match="engine torch produced NaN"):
        client.predict(obs)
    obs.instruction = "again"  # the same connection goes on
    assert client.predict(obs).stamp_ns == 1_000 and client.reconnects == 0
    assert calls == ["stack the cups", "fail", "again"] and server.errors == 1


def test_stalled_server_times_out_and_the_client_reconnects(fake_server) -> None:
    server, _ = fake_server
    client = PolicyClient(f"127.0.0.1:{server.port}", timeout_s=0.5)
    obs = _observation()
    obs.instruction = "stall"
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="no reply within the deadline"):
        client.predict(obs)
    assert time.monotonic() - t0 < 1.4  # the deadline, not the 1.5 s model call
    client.timeout_s = 20.0
    obs.instruction = "after"
    assert client.predict(obs).arms["left"].T[0, 1, 3] == len("after")
    assert client.reconnects == 1


def test_malformed_and_hostile_messages_are_refused(fake_server) -> None:
    server, calls = fake_server

    def raw(data: bytes) -> dict:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(data)
            prefix = s.recv(16, socket.MSG_WAITALL)
            _, hlen, plen = struct.unpack("<4sIQ", prefix)
            reply = json.loads(s.recv(hlen, socket.MSG_WAITALL))
            assert s.recv(1) == b""  # then the server closes the connection
            return reply

    assert "bad magic b'GET '" in raw(b"GET / HTTP/1.1\r\n\r\n")["message"]
    huge = struct.pack("<4sIQ", MAGIC, 2, 1 << 40) + b"{}"  # claims a 1 TiB payload: refused, never allocated
    assert "exceeds the limit" in raw(huge)["message"]
    unknown = encode({"type": "hello", "version": 1, "exec": "rm -rf /"})
    assert "unknown field(s) ['exec']" in raw(unknown)["message"]
    assert "unknown message type 'pickle'" in raw(encode({"type": "pickle"}))["message"]
    assert "version 99" in raw(encode({"type": "hello", "version": 99}))["message"]
    # a client that stops mid-message is dropped after message_timeout_s; others are served meanwhile
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as stuck:
        stuck.sendall(encode({"type": "hello", "version": 1})[:10])
        t0 = time.monotonic()
        assert PolicyClient(f"127.0.0.1:{server.port}", timeout_s=5.0).predict(_observation()).stamp_ns == 1_000
        assert stuck.recv(1) == b"" and time.monotonic() - t0 < 8.0
    assert calls == ["stack the cups"] and server.errors >= 4


def test_no_server_or_a_silent_one_is_one_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"policy server 127.0.0.1:{port}"):
        PolicyClient(f"127.0.0.1:{port}", connect_timeout_s=2.0)
    with socket.socket() as silent:  # accepts (the kernel's backlog) but never answers the hello
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match=f"policy server 127.0.0.1:{port}: no reply within the deadline"):
            PolicyClient(f"127.0.0.1:{port}", connect_timeout_s=0.5)
        assert time.monotonic() - t0 < 5.0
    PolicyServer(_fake_chunk, INFO, port=0).close()  # never started: closes without waiting for a serve loop


def test_tiny_model_served_gives_the_local_chunk() -> None:
    """The real model behind the server: same weights, same noise seed -> the same chunk as the local engine."""
    from posevla import PoseVLAPolicy
    from posevla.model.engines import make_engine

    policy = PoseVLAPolicy.from_config(REPO / "models" / "tiny.yaml", seed=0, device="cpu")
    engine = make_engine(policy, "torch")
    lock = threading.Lock()

    def predict(obs: Observation, modalities: str, seed: int | None) -> ActionChunk:
        with lock:
            return engine.predict(obs, modalities=modalities, noise_seed=seed)

    info = ServerInfo(list(policy.config.views), int(policy.config.image_size), "torch", "cpu")
    server = PolicyServer(predict, info, port=0).start()
    try:
        remote = RemoteEngine(f"127.0.0.1:{server.port}", timeout_s=120.0)
        assert remote.policy.config.views == list(policy.config.views)
        obs = policy.synthetic_observation("pick up the red cube")
        obs.stamp_ns = 123_456_789
        for modalities in ("full", "rgb"):
            with lock:
                local = engine.predict(obs, modalities=modalities, noise_seed=3)
            got = remote.predict(obs, modalities, noise_seed=3)
            assert got.frame_id == local.frame_id and got.stamp_ns == 123_456_789 and got.dt == local.dt
            for arm in local.arms:
                np.testing.assert_allclose(got.arms[arm].T, local.arms[arm].T, rtol=0, atol=1e-12)
                np.testing.assert_allclose(got.arms[arm].gripper, local.arms[arm].gripper, rtol=0, atol=1e-12)
        assert not np.allclose(remote.predict(obs, "full", 4).arms["left"].T, local.arms["left"].T)  # seed matters
        remote.close()
    finally:
        server.close()


def _policy_node(*params: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "posevla_ros.policy_node", "--ros-args", *params],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_policy_node_refuses_an_absent_server() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _policy_node("-p", f"remote:=127.0.0.1:{port}")  # (a malformed address: parse_address, tested above)
    out = proc.communicate(timeout=180)[0]
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, out
    assert lines[0].startswith(f"policy_node: policy server 127.0.0.1:{port}: "), out


def test_policy_node_publishes_the_servers_chunk(fake_server, rclpy_context) -> None:
    """policy_node -p remote:=... with no checkpoint: its observations (head camera + TCP poses published here over
    DDS) go to the server, whose chunk comes out on /policy/chunk with the observation's frame and stamp."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from posevla_ros.msg_conv import T_to_pose_stamped, image_to_msg, intrinsics_to_msg, msg_to_chunk
    from rclpy.qos import qos_profile_sensor_data
    from ros_helpers import spin
    from sensor_msgs.msg import CameraInfo, Image
    from trajectory_msgs.msg import MultiDOFJointTrajectory

    from posevla.geometry.intrinsics import CameraIntrinsics

    server, calls = fake_server
    server.info = ServerInfo(["head"], 32, "fake", "cpu", view_crops={"head": [0.0, 0.0, 0.5, 0.75]})
    proc = _policy_node("-p", f"remote:=127.0.0.1:{server.port}", "-p", "instruction:=stack the cups",
                        "-p", "remote_timeout_s:=20.0", "-p", "max_age_s:=5.0")
    node = rclpy.create_node("remote_policy_probe", context=rclpy_context)
    ex = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    chunks: list[ActionChunk] = []
    hardware: list[str] = []
    node.create_subscription(MultiDOFJointTrajectory, "/policy/chunk", lambda m: chunks.append(msg_to_chunk(m)), 10)
    node.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda m: hardware.extend(s.hardware_id for s in m.status if s.name == "policy_node"), 10)
    pubs = (node.create_publisher(Image, "/head/color/image_raw", qos_profile_sensor_data),
            node.create_publisher(Image, "/head/aligned_depth_to_color/image_raw", qos_profile_sensor_data),
            node.create_publisher(CameraInfo, "/head/color/camera_info", qos_profile_sensor_data))
    tcp = {a: node.create_publisher(PoseStamped, f"/{a}_arm/tcp_pose", 50) for a in ("left", "right")}
    intr = CameraIntrinsics(60.0, 60.0, 31.5, 23.5, 64, 48)
    rgb, depth = np.full((48, 64, 3), 90, np.uint8), np.full((48, 64), 700, np.uint16)
    sent: list[int] = []
    try:
        deadline = time.monotonic() + 180  # the node's start (rclpy, torch) on a loaded machine, then a few frames
        while time.monotonic() < deadline and not (chunks and hardware) and proc.poll() is None:
            now = node.get_clock().now().nanoseconds
            for pub in tcp.values():
                pub.publish(T_to_pose_stamped(np.eye(4), now, "base_link"))
            frame = "head_camera_color_optical_frame"
            pubs[2].publish(intrinsics_to_msg(intr, now, frame))
            pubs[0].publish(image_to_msg(rgb, "rgb8", now, frame))
            pubs[1].publish(image_to_msg(depth, "16UC1", now, frame))
            sent.append(now)
            spin(ex, 0.1)
        assert chunks and hardware, f"no chunk from the policy node (exit {proc.poll()})"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
        node.destroy_node()
    assert "Traceback" not in out, out
    c = chunks[0]
    assert c.frame_id == "head_camera_color_optical_frame" and c.stamp_ns in sent
    assert calls and set(calls) == {"stack the cups"}
    np.testing.assert_allclose(c.arms["left"].T[:, 1, 3], len("stack the cups"))  # the fake server's mark
    # mean of the model view the server received: the served model's region of interest (view_crops, sent in the
    # server info), 32x36 px of the 64x48 grey-90 image, resized with padding to 32x32 -> 28 image columns of 32
    # (the rest black padding): 90 * 28 / 32 (the whole image would give 90 * 24 / 32)
    np.testing.assert_allclose(c.arms["left"].T[0, 0, 3], 90.0 * 28 / 32)
    assert hardware[0] == f"remote 127.0.0.1:{server.port} (fake on cpu)"
