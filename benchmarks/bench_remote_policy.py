"""Remote policy over loopback TCP (posevla.remote_policy): what the network path adds to a chunk.

1. Transport only: a server that answers a fixed 50-step two-arm chunk, requests of three 224 x 224 model views
   (RGB + depth prior + pose, as the robot sends them): round trip p50/p90/max and bytes per request.
2. The tiny model (models/tiny.yaml, CPU): local engine.predict vs the same engine behind the server, p50 each.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from posevla.remote_policy import PolicyClient, PolicyServer, ServerInfo, encode, observation_message
from posevla.types import ActionChunk, ArmChunk, ArmState, ModelView, Observation, RobotState

REPO = Path(__file__).resolve().parents[1]


def _views_observation(size: int = 224) -> Observation:
    from posevla.geometry.intrinsics import CameraIntrinsics
    from posevla.geometry.raymap import raymap

    rng = np.random.default_rng(0)
    intr = CameraIntrinsics(0.9 * size, 0.9 * size, (size - 1) / 2, (size - 1) / 2, size, size)
    views = {name: ModelView(name, rng.integers(0, 255, (size, size, 3), dtype=np.uint8), raymap(intr),
                             np.stack([rng.uniform(0.3, 1.5, (size, size)), np.ones((size, size))], -1).astype(np.float32),
                             intr, f"{name}_camera_color_optical_frame", 0, np.eye(4))
             for name in ("head", "left_wrist", "right_wrist")}
    arms = {a: ArmState(np.eye(4), np.zeros(6), 0.5, 0) for a in ("left", "right")}
    return Observation(views, RobotState(arms, 0), "pick up the red cube", 0)


def _stats(xs: list[float]) -> str:
    ms = np.asarray(xs) * 1e3
    return f"p50 {np.median(ms):.2f} ms  p90 {np.percentile(ms, 90):.2f} ms  max {ms.max():.2f} ms (n={len(ms)})"


def transport(n: int = 200) -> None:
    chunk = ActionChunk("head_camera_color_optical_frame", 0, 0.02,
                        {a: ArmChunk(np.tile(np.eye(4), (50, 1, 1)), np.full(50, 0.5)) for a in ("left", "right")})
    server = PolicyServer(lambda obs, m, s: chunk, ServerInfo(["head", "left_wrist", "right_wrist"], 224, "fixed", "cpu"),
                          port=0).start()
    try:
        client = PolicyClient(f"127.0.0.1:{server.port}", timeout_s=30.0)
        obs = _views_observation()
        nbytes = len(encode(*observation_message(obs, "full", None, 1)))
        for _ in range(10):
            client.predict(obs)
        rtt, total = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            client.predict(obs)
            total.append(time.perf_counter() - t0)
            rtt.append(client.last_timing["round_trip_s"])
        client.close()
    finally:
        server.close()
    print(f"request: 3 views of 224 x 224 (RGB, depth prior, pose) + state = {nbytes / 1e6:.2f} MB; reply: 50-step "
          f"chunk of 2 arms")
    print(f"transport round trip (send, server decode + fixed answer, receive): {_stats(rtt)}")
    print(f"client predict incl. encode/decode: {_stats(total)}  ({nbytes / np.median(total) / 1e6:.0f} MB/s)")


def tiny_model(n: int = 30) -> None:
    from posevla import PoseVLAPolicy
    from posevla.model.engines import make_engine

    policy = PoseVLAPolicy.from_config(REPO / "models" / "tiny.yaml", seed=0, device="cpu")
    engine = make_engine(policy, "torch")
    lock = threading.Lock()

    def predict(obs: Observation, m: str, s: int | None) -> ActionChunk:
        with lock:
            return engine.predict(obs, modalities=m, noise_seed=s)

    obs = policy.synthetic_observation("pick up the red cube")
    server = PolicyServer(predict, ServerInfo(list(policy.config.views), int(policy.config.image_size), "torch", "cpu"),
                          port=0).start()
    try:
        client = PolicyClient(f"127.0.0.1:{server.port}", timeout_s=60.0)
        for _ in range(3):
            client.predict(obs, noise_seed=0)
            predict(obs, "full", 0)
        local, remote, server_model = [], [], []
        for i in range(n):  # interleaved, so machine load hits both alike
            t0 = time.perf_counter()
            predict(obs, "full", i)
            local.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            client.predict(obs, noise_seed=i)
            remote.append(time.perf_counter() - t0)
            server_model.append(client.last_timing["server_model_s"])
        client.close()
    finally:
        server.close()
    print(f"tiny model ({len(policy.config.views)} views of {policy.config.image_size} px, CPU) local predict: "
          f"{_stats(local)}")
    print(f"tiny model remote predict (loopback): {_stats(remote)}; of which server model: "
          f"p50 {np.median(server_model) * 1e3:.2f} ms -> network path adds p50 "
          f"{(np.median(remote) - np.median(server_model)) * 1e3:.2f} ms")


def main() -> None:
    transport()
    tiny_model()


if __name__ == "__main__":
    main()
