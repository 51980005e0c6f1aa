"""Remote policy: the model on a workstation's GPU, the rest of the graph on the robot PC.

    workstation:  posevla serve-policy --checkpoint /data/ckpt --engine torch_graphs --host 0.0.0.0 --port 5555
    robot PC:     ros2 run posevla_ros policy_node --ros-args -p remote:=192.168.1.20:5555

The robot PC builds the observation as always (sync, resize, depth prior: `posevla.perception`), sends the model
views and the robot state, and gets the chunk back in the observation's camera frame, stamped with its capture
time: the executor cannot tell a remote chunk from a local one. The server runs `engine.predict` (the same code
as the policy node) with the raymaps recomputed from the sent intrinsics by `posevla.geometry.raymap` (one
definition, so they are bit-identical and need not cross the network).

Wire format (docs/remote_policy.md): one TCP stream, request / reply, no pickle. Every message is

    b"PVLA" | u32 LE header length | u64 LE payload length | header: JSON (UTF-8) | payload: raw arrays

The header lists the payload's arrays (`name`, `dtype` among DTYPES, little-endian, C order, `shape`); the
payload is those arrays back to back. Sizes are bounded (MAX_HEADER, `max_payload`), every field is checked and
an unknown field is an error, so a malformed or hostile peer gets an error reply (or a closed connection), never
code execution.
"""
from __future__ import annotations

import argparse
import json
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from posevla.geometry.intrinsics import CameraIntrinsics
from posevla.types import ActionChunk, ArmChunk, ArmState, ModelView, Observation, RobotState

MAGIC = b"PVLA"
VERSION = 1
PREFIX = struct.Struct("<4sIQ")  # magic, header length, payload length
MAX_HEADER = 1 << 20  # 1 MiB of JSON
MAX_PAYLOAD = 256 << 20  # default bound on the arrays of one message (3 views of 224 px need ~1.7 MB)
DTYPES = {"uint8": "|u1", "uint16": "<u2", "int64": "<i8", "float32": "<f4", "float64": "<f8"}
_KINDS = {"u1": "uint8", "u2": "uint16", "i8": "int64", "f4": "float32", "f8": "float64"}  # numpy kind+size -> name
DEFAULT_PORT = 5555


class ProtocolError(ValueError):
    """A malformed message (the connection is closed after it)."""


class RemoteError(RuntimeError):
    """The server could not run the request (its message says why); the connection stays usable."""


# ------------------------------------------------------------------------------------------- framing
def encode(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """One message: the header (JSON; `arrays` is filled in here) and the arrays as raw little-endian bytes."""
    specs, blobs = [], []
    for name, a in (arrays or {}).items():
        a = np.asarray(a)
        kind = _KINDS.get(f"{a.dtype.kind}{a.dtype.itemsize}")
        if kind is None:
            raise ProtocolError(f"array {name}: dtype {a.dtype} is not one of {sorted(DTYPES)}")
        data = np.ascontiguousarray(a, dtype=np.dtype(DTYPES[kind])).tobytes()
        specs.append({"name": name, "dtype": kind, "shape": list(a.shape)})
        blobs.append(data)
    head = json.dumps({**header, "arrays": specs}, separators=(",", ":"), allow_nan=False).encode()
    return b"".join([PREFIX.pack(MAGIC, len(head), sum(map(len, blobs))), head, *blobs])  # one copy


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    if deadline is None:
        sock.settimeout(None)
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out with {got} of {n} bytes received")
            sock.settimeout(left)
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("connection closed by the peer" + (f" after {got} of {n} bytes" if got else ""))
        got += k
    return buf


def decode_arrays(header: dict[str, Any], payload: bytes | bytearray) -> dict[str, np.ndarray]:
    """The header's array list -> arrays (views into the payload); ProtocolError on any mismatch."""
    specs = header.get("arrays")
    if not isinstance(specs, list):
        raise ProtocolError("header field arrays: expected a list")
    out, offset = {}, 0
    for i, s in enumerate(specs):
        if not isinstance(s, dict) or set(s) != {"name", "dtype", "shape"}:
            raise ProtocolError(f"arrays[{i}]: expected exactly name, dtype, shape")
        name, kind, shape = s["name"], s["dtype"], s["shape"]
        if not isinstance(name, str) or name in out:
            raise ProtocolError(f"arrays[{i}]: name {name!r} is not a new string")
        if kind not in DTYPES:
            raise ProtocolError(f"array {name}: dtype {kind!r} is not one of {sorted(DTYPES)}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(isinstance(d, int) and 0 <= d < 1 << 31
                                                                      for d in shape):
            raise ProtocolError(f"array {name}: shape {shape!r} is not a list of at most 8 sizes")
        dt = np.dtype(DTYPES[kind])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if offset + nbytes > len(payload):
            raise ProtocolError(f"array {name}: {nbytes} bytes at offset {offset} overrun the {len(payload)}-byte payload")
        out[name] = np.frombuffer(payload, dtype=dt, count=nbytes // dt.itemsize, offset=offset).reshape(shape)
        offset += nbytes
    if offset != len(payload):
        raise ProtocolError(f"payload has {len(payload) - offset} bytes beyond its arrays")
    return out


def read_message(sock: socket.socket, deadline: float | None = None, max_payload: int = MAX_PAYLOAD,
                 idle_timeout_s: float | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read one message within `deadline` (time.monotonic; None: no limit). With `idle_timeout_s` (the server)
    it waits for the message to begin as long as it takes, then the message must complete within that many
    seconds. ProtocolError when malformed; ConnectionError / TimeoutError from the socket."""
    start = _recv_exact(sock, 1, None if idle_timeout_s is not None else deadline)
    if idle_timeout_s is not None:
        deadline = time.monotonic() + idle_timeout_s
    rest = _recv_exact(sock, PREFIX.size - 1, deadline)
    magic, hlen, plen = PREFIX.unpack(bytes(start + rest))
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r} (expected {MAGIC!r}): not a posevla policy peer")
    if hlen > MAX_HEADER:
        raise ProtocolError(f"header of {hlen} bytes exceeds {MAX_HEADER}")
    if plen > max_payload:
        raise ProtocolError(f"payload of {plen} bytes exceeds the limit of {max_payload}")
    try:
        header = json.loads(_recv_exact(sock, hlen, deadline).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    payload = _recv_exact(sock, plen, deadline)
    return header, decode_arrays(header, payload)


def _fields(header: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(header) - allowed - {"type", "id", "arrays"})
    if unknown:
        raise ProtocolError(f"{what}: unknown field(s) {unknown}")


# ------------------------------------------------------------------------------------------- observation <-> message
def observation_message(obs: Observation, modalities: str, noise_seed: int | None, request_id: int
                        ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The request for one observation: model views (RGB, depth prior, intrinsics, pose), robot state, instruction.
    The raymaps are not sent (the server recomputes them from the intrinsics)."""
    arrays: dict[str, np.ndarray] = {}
    views = []
    for name, v in obs.views.items():
        i = v.intrinsics
        views.append({"name": name, "frame_id": v.frame_id, "stamp_ns": int(v.stamp_ns),
                      "intrinsics": [i.fx, i.fy, i.cx, i.cy, i.width, i.height],
                      "depth": v.depth_prior is not None, "pose": v.T_base_cam is not None})
        arrays[f"{name}/rgb"] = v.rgb
        if v.depth_prior is not None:
            arrays[f"{name}/depth_prior"] = np.asarray(v.depth_prior, np.float32)
        if v.T_base_cam is not None:
            arrays[f"{name}/T_base_cam"] = np.asarray(v.T_base_cam, np.float64)
    state = None
    if obs.state is not None:
        state = {"stamp_ns": int(obs.state.stamp_ns),
                 "arms": {a: {"gripper": float(s.gripper), "stamp_ns": int(s.stamp_ns)} for a, s in obs.state.arms.items()}}
        for a, s in obs.state.arms.items():
            arrays[f"state/{a}/T_base_tcp"] = np.asarray(s.T_base_tcp, np.float64)
            arrays[f"state/{a}/joints"] = np.asarray(s.joints, np.float64)
    header = {"type": "predict", "id": request_id, "instruction": obs.instruction, "stamp_ns": int(obs.stamp_ns),
              "modalities": modalities, "noise_seed": noise_seed, "views": views, "state": state}
    return header, arrays


def message_observation(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[Observation, str, int | None]:
    """The server's side of observation_message; ProtocolError names the first bad field."""
    from posevla.geometry.raymap import raymap

    _fields(header, {"instruction", "stamp_ns", "modalities", "noise_seed", "views", "state"}, "predict")
    if not isinstance(header.get("instruction"), str) or not isinstance(header.get("modalities"), str):
        raise ProtocolError("predict: instruction and modalities must be strings")
    seed = header.get("noise_seed")
    if seed is not None and not isinstance(seed, int):
        raise ProtocolError("predict: noise_seed must be an integer or null")
    views: dict[str, ModelView] = {}
    for v in header.get("views") or []:
        if not isinstance(v, dict) or set(v) != {"name", "frame_id", "stamp_ns", "intrinsics", "depth", "pose"}:
            raise ProtocolError("predict: each view needs exactly name, frame_id, stamp_ns, intrinsics, depth, pose")
        name = v["name"]
        try:
            fx, fy, cx, cy, w, h = v["intrinsics"]
            intr = CameraIntrinsics(float(fx), float(fy), float(cx), float(cy), int(w), int(h))
            rgb = arrays[f"{name}/rgb"]
            if rgb.dtype != np.uint8 or rgb.shape != (intr.height, intr.width, 3):
                raise ProtocolError(f"view {name}: rgb {rgb.dtype} {rgb.shape} is not uint8 "
                                    f"({intr.height}, {intr.width}, 3)")
            depth = arrays[f"{name}/depth_prior"] if v["depth"] else None
            if depth is not None and (depth.dtype != np.float32 or depth.shape != (intr.height, intr.width, 2)):
                raise ProtocolError(f"view {name}: depth_prior {depth.dtype} {depth.shape} is not float32 "
                                    f"({intr.height}, {intr.width}, 2)")
            T = arrays[f"{name}/T_base_cam"] if v["pose"] else None
            if T is not None and T.shape != (4, 4):
                raise ProtocolError(f"view {name}: T_base_cam shape {T.shape} is not (4, 4)")
        except KeyError as exc:
            raise ProtocolError(f"view {name}: missing array {exc}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(f"view {name}: intrinsics {v['intrinsics']!r}: {exc}") from None
        views[name] = ModelView(name, rgb, raymap(intr), depth, intr, str(v["frame_id"]), int(v["stamp_ns"]), T)
    state = None
    if header.get("state") is not None:
        st = header["state"]
        try:
            arms = {a: ArmState(arrays[f"state/{a}/T_base_tcp"], arrays[f"state/{a}/joints"], float(s["gripper"]),
                                int(s["stamp_ns"])) for a, s in st["arms"].items()}
            state = RobotState(arms, int(st["stamp_ns"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"predict: state: {type(exc).__name__} {exc}") from None
    return Observation(views, state, header["instruction"], int(header["stamp_ns"])), header["modalities"], seed


def chunk_message(chunk: ActionChunk, request_id: int, timing: dict[str, float]
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    arrays = {}
    for arm, c in chunk.arms.items():
        arrays[f"{arm}/T"] = np.asarray(c.T, np.float64)
        arrays[f"{arm}/gripper"] = np.asarray(c.gripper, np.float64)
    return ({"type": "chunk", "id": request_id, "frame_id": chunk.frame_id, "stamp_ns": int(chunk.stamp_ns),
             "dt": float(chunk.dt), "arms_order": list(chunk.arms), "timing": timing}, arrays)


def message_chunk(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> ActionChunk:
    _fields(header, {"frame_id", "stamp_ns", "dt", "arms_order", "timing"}, "chunk")
    try:
        arms = {a: ArmChunk(T=np.array(arrays[f"{a}/T"]), gripper=np.array(arrays[f"{a}/gripper"]))
                for a in header["arms_order"]}
        return ActionChunk(str(header["frame_id"]), int(header["stamp_ns"]), float(header["dt"]), arms)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"chunk: {type(exc).__name__} {exc}") from None


# ------------------------------------------------------------------------------------------- server
@dataclass
class ServerInfo:
    """What the client needs to build observations for the served model."""

    views: list[str]
    image_size: int
    engine: str
    device: str
    checkpoint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    view_crops: dict[str, list[float]] = field(default_factory=dict)  # the model config's regions of interest

    def to_header(self) -> dict[str, Any]:
        return {"type": "info", "version": VERSION, "views": self.views, "image_size": self.image_size,
                "engine": self.engine, "device": self.device, "checkpoint": self.checkpoint,
                "view_crops": self.view_crops}


class PolicyServer:
    """Serves `predict(observation, modalities, noise_seed) -> ActionChunk` over TCP. One thread per connection;
    model calls are serialised (one engine). `port=0` picks a free port (see `.port`)."""

    def __init__(self, predict: Callable[[Observation, str, int | None], ActionChunk], info: ServerInfo,
                 host: str = "127.0.0.1", port: int = DEFAULT_PORT, max_payload: int = MAX_PAYLOAD,
                 message_timeout_s: float = 10.0) -> None:
        self.predict, self.info = predict, info
        self.max_payload, self.message_timeout_s = max_payload, message_timeout_s
        self._model_lock = threading.Lock()
        self.served = self.errors = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve_connection(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server((host, port), Handler)
        address = self._server.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self._thread: threading.Thread | None = None
        self._serving = False

    def start(self) -> PolicyServer:
        """Serve on a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="policy-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until close() (from another thread) or KeyboardInterrupt."""
        self._serving = True
        self._server.serve_forever()

    def close(self) -> None:
        if self._serving:  # shutdown() waits for a serve_forever loop: only when one ran
            self._server.shutdown()
        self._server.server_close()

    def _serve_connection(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:  # wait for a request as long as the client likes; once it begins, it must arrive in time
                header, arrays = read_message(sock, max_payload=self.max_payload,
                                              idle_timeout_s=self.message_timeout_s)
            except ProtocolError as exc:
                self.errors += 1
                self._send(sock, {"type": "error", "id": None, "message": f"protocol: {exc}"})
                return  # the stream is out of step: close it
            except (ConnectionError, TimeoutError, OSError):
                return
            rid = header.get("id")
            try:
                reply = self._answer(header, arrays, rid)
            except ProtocolError as exc:
                self.errors += 1
                self._send(sock, {"type": "error", "id": rid, "message": f"protocol: {exc}"})
                return
            except Exception as exc:  # noqa: BLE001 - the model failed on this observation: say why, stay up
                self.errors += 1
                reply = ({"type": "error", "id": rid, "message": f"{type(exc).__name__}: {exc}"}, {})
            if not self._send(sock, *reply):
                return

    def _answer(self, header: dict[str, Any], arrays: dict[str, np.ndarray], rid: Any
                ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        kind = header.get("type")
        if kind == "hello":
            _fields(header, {"version"}, "hello")
            if header.get("version") != VERSION:
                raise ProtocolError(f"client speaks version {header.get('version')}, this server {VERSION}")
            return {**self.info.to_header(), "id": rid}, {}
        if kind == "predict":
            obs, modalities, seed = message_observation(header, arrays)
            t0 = time.perf_counter()
            with self._model_lock:
                t1 = time.perf_counter()
                chunk = self.predict(obs, modalities, seed)
            t2 = time.perf_counter()
            self.served += 1
            return chunk_message(chunk, rid, {"queue_s": t1 - t0, "model_s": t2 - t1})
        raise ProtocolError(f"unknown message type {kind!r} (expected hello or predict)")

    @staticmethod
    def _send(sock: socket.socket, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bool:
        try:
            sock.settimeout(10.0)
            sock.sendall(encode(header, arrays))
            return True
        except OSError:
            return False


# ------------------------------------------------------------------------------------------- client
def parse_address(text: str, what: str = "remote") -> tuple[str, int]:
    """'host:port' (or 'host', port 5555; '[::1]:5555' for IPv6) -> (host, port); ValueError names `what`."""
    host, sep, port = text.strip().rpartition(":")
    if not sep:
        host, port = text.strip(), str(DEFAULT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}={text!r}: expected host:port, e.g. 192.168.1.20:{DEFAULT_PORT}")
    return host, int(port)


class PolicyClient:
    """Connects to a PolicyServer; `predict` has the contract of PoseVLAPolicy.predict plus a deadline for the
    whole round trip (`timeout_s`). After any transport failure the connection is dropped and the next call
    reconnects (a half-read reply would leave the stream out of step)."""

    def __init__(self, address: str, timeout_s: float = 5.0, connect_timeout_s: float = 5.0,
                 max_payload: int = MAX_PAYLOAD) -> None:
        self.host, self.port = parse_address(address)
        self.timeout_s, self.connect_timeout_s, self.max_payload = timeout_s, connect_timeout_s, max_payload
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self.info: dict[str, Any] = {}
        self.last_timing: dict[str, float] = {}
        self.reconnects = -1
        self._connect()

    def _connect(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s)
        except OSError as exc:
            raise ConnectionError(f"policy server {self.host}:{self.port}: {exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self.reconnects += 1
        try:
            header, _ = self._round_trip({"type": "hello", "version": VERSION}, {},
                                         time.monotonic() + self.connect_timeout_s)
        except (RemoteError, TimeoutError) as exc:  # a refused hello (version) or a silent server: cannot connect
            self.close()
            raise ConnectionError(str(exc)) from None
        if header.get("type") != "info":
            self.close()
            raise ConnectionError(f"policy server {self.host}:{self.port}: answered {header.get('type')!r} to hello")
        self.info = header

    def _round_trip(self, header: dict[str, Any], arrays: dict[str, np.ndarray], deadline: float
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        assert self._sock is not None
        self._next_id += 1
        header = {**header, "id": self._next_id}
        try:
            self._sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            self._sock.sendall(encode(header, arrays))
            reply, out = read_message(self._sock, deadline, self.max_payload)
        except (OSError, ProtocolError) as exc:
            self.close()
            if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
                raise TimeoutError(f"policy server {self.host}:{self.port}: no reply within the deadline") from None
            raise ConnectionError(f"policy server {self.host}:{self.port}: {exc}") from None
        if reply.get("type") == "error":
            if reply.get("id") is None or str(reply.get("message", "")).startswith("protocol:"):
                self.close()  # the server closes the connection after a protocol error
            raise RemoteError(f"policy server {self.host}:{self.port}: {reply.get('message')}")
        if reply.get("id") != self._next_id:
            self.close()
            raise ConnectionError(f"policy server {self.host}:{self.port}: reply id {reply.get('id')} for request "
                                  f"{self._next_id}")
        return reply, out

    def predict(self, observation: Observation, modalities: str = "full", noise_seed: int | None = None) -> ActionChunk:
        t0 = time.perf_counter()
        header, arrays = observation_message(observation, modalities, noise_seed, 0)
        with self._lock:
            deadline = time.monotonic() + self.timeout_s
            if self._sock is None:
                self._connect()
            t1 = time.perf_counter()
            reply, out = self._round_trip(header, arrays, deadline)
        t2 = time.perf_counter()
        chunk = message_chunk(reply, out)
        server = reply.get("timing") or {}
        self.last_timing = {"encode_s": t1 - t0, "round_trip_s": t2 - t1, "decode_s": time.perf_counter() - t2,
                            "server_model_s": float(server.get("model_s", float("nan")))}
        return chunk

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


# ------------------------------------------------------------------------------------------- engine adapter
class _RemoteConfig:
    def __init__(self, views: list[str], image_size: int, view_crops: dict[str, list[float]] | None = None) -> None:
        self.views, self.image_size = views, image_size
        self.view_crops = dict(view_crops or {})
        from posevla.model.config import _valid_crop

        if not all(v in views and _valid_crop(c) for v, c in self.view_crops.items()):
            raise ConnectionError(f"policy server info: view_crops {self.view_crops} must map the served views "
                                  f"{views} to [x0, y0, x1, y1] fractions")


class _RemotePolicy:
    """What the policy node reads from `policy`: config.views, config.image_size, config.view_crops, device."""

    def __init__(self, client: PolicyClient) -> None:
        self.config = _RemoteConfig(list(client.info["views"]), int(client.info["image_size"]),
                                    client.info.get("view_crops") or {})
        self.device = f"remote {client.host}:{client.port} ({client.info.get('engine')} on {client.info.get('device')})"


class RemoteEngine:
    """The engine interface the policy node's PipelinedRunner drives (preprocess / execute / postprocess /
    release, predict, warmup, close), with the model on a policy server: preprocess packs the request on the
    staging thread, execute is the round trip, postprocess hands the decoded chunk on."""

    name = "remote"

    def __init__(self, address: str, timeout_s: float = 5.0) -> None:
        self.client = PolicyClient(address, timeout_s=timeout_s)
        self.policy = _RemotePolicy(self.client)
        self.last_timing: dict[str, float] = {}

    def preprocess(self, observation: Observation, modalities: str = "full", noise_seed: int | None = None
                   ) -> tuple[Observation, str, int | None]:
        return observation, modalities, noise_seed

    def execute(self, staged: tuple[Observation, str, int | None]) -> ActionChunk:
        chunk = self.client.predict(*staged)
        self.last_timing = dict(self.client.last_timing)
        return chunk

    def postprocess(self, actions: ActionChunk, observation: Observation) -> ActionChunk:
        return actions

    def release(self, staged: Any) -> None:
        pass

    def predict(self, observation: Observation, modalities: str = "full", noise_seed: int | None = None) -> ActionChunk:
        return self.execute(self.preprocess(observation, modalities, noise_seed))

    def warmup(self, observation: Observation | None = None) -> float:
        """One round trip (the server warmed its own engine when it started); seconds."""
        t0 = time.perf_counter()
        if observation is not None:
            self.predict(observation, noise_seed=0)
        else:
            self.client.close()
            self.client._connect()  # noqa: SLF001 - a hello round trip
        return time.perf_counter() - t0

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------------------------------- `posevla serve-policy`
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--checkpoint", required=True, help="policy checkpoint directory (PoseVLAPolicy.save_pretrained)")
    parser.add_argument("--engine", default="torch", help="inference engine: torch | torch_graphs | onnxruntime")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for the robot's network: the "
                             "protocol has no authentication, keep it on a trusted link or an SSH tunnel)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    parser.add_argument("--no-warmup", action="store_true", help="do not run the model once before serving")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from posevla.model.engines import ENGINES

    if args.engine not in ENGINES:
        print(f"posevla serve-policy: --engine {args.engine!r} is not one of {list(ENGINES)}", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"posevla serve-policy: --port {args.port} is not a TCP port", file=sys.stderr)
        return 2
    if not Path(args.checkpoint).is_dir():
        print(f"posevla serve-policy: --checkpoint {args.checkpoint} is not a checkpoint directory", file=sys.stderr)
        return 2
    from posevla import PoseVLAPolicy
    from posevla.model.engines import make_engine

    policy = PoseVLAPolicy.from_pretrained(args.checkpoint, device=None if args.device == "auto" else args.device)
    engine = make_engine(policy, args.engine)
    if not args.no_warmup:
        print(f"[serve-policy] warm-up {engine.warmup():.2f} s", flush=True)
    info = ServerInfo(list(policy.config.views), int(policy.config.image_size), args.engine, str(policy.device),
                      str(args.checkpoint), view_crops=dict(policy.config.view_crops))
    try:
        server = PolicyServer(lambda obs, m, s: engine.predict(obs, modalities=m, noise_seed=s), info, args.host,
                              args.port)
    except OSError as exc:
        print(f"posevla serve-policy: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    print(f"[serve-policy] serving {args.checkpoint} ({args.engine} on {policy.device}) on {server.host}:{server.port}",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    print(f"[serve-policy] served {server.served} chunks, {server.errors} errors", flush=True)
    return 0
