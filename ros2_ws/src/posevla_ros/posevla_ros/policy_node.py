"""policy_node: synchronised camera topics -> Pose-VLA -> /policy/chunk (end-effector chunk in a camera frame).

Plumbing only. Observations come from `ObservationSource` (subscriptions + synchroniser + observation
builder, shared with observation_node); the model runs in `posevla.model.serving.PipelinedRunner`: one thread
preprocesses the newest observation into the engine's pinned input buffers and queues the host -> device copy,
another runs the model and publishes, so preprocessing of the next observation overlaps the current model call
and a slow model call never blocks the ROS executor. Each chunk is stamped with the observation's capture time.
/diagnostics carries the runner's counts and p50/p90/max seconds of queue, preprocess, handoff, model,
postprocess, publish and observation age over the last 500 chunks.

Topics: publishes /policy/chunk (trajectory_msgs/MultiDOFJointTrajectory), /diagnostics;
subscribes /policy/instruction (std_msgs/String) plus the camera and TCP-pose topics.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from std_msgs.msg import String
from trajectory_msgs.msg import MultiDOFJointTrajectory

from posevla.model.engines import ENGINES  # torch-free import
from posevla.serving import ChunkTiming
from posevla.types import ActionChunk, Observation
from posevla_ros.msg_conv import chunk_to_msg, ns_to_time
from posevla_ros.node_main import spin_node
from posevla_ros.params import declare_checked

MODALITIES = ("rgb", "rgb+ray", "rgb+depth", "full")
# stages timed per chunk (posevla.model.serving.STAGES; kept here so importing the node needs no torch)
STAGES = ("queue", "preprocess", "handoff", "model", "postprocess", "publish", "obs_age")


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy_node")
        p = declare_checked(self, {
            "checkpoint": ("", "policy checkpoint directory (PoseVLAPolicy.save_pretrained)", None),
            "instruction": ("", "language instruction (also settable on /policy/instruction)", None),
            "device": ("auto", "auto | cpu | cuda | cuda:N", None),
            "modalities": ("full", "rgb | rgb+ray | rgb+depth | full", MODALITIES),
            "min_period_s": (0.0, "minimum seconds between model calls", (0.0, 10.0)),
            "warmup": (True, "run the model once at start-up", None),
            "compile": (False, "torch.compile the model (engine torch: the pi0 module; torch_graphs: the prefix "
                                "and the flow step, before CUDA-graph capture; onnxruntime: ignored)", None),
            "engine": ("torch", "inference engine: torch (eager) | torch_graphs (static KV cache, CUDA graphs) | "
                       "onnxruntime", ENGINES),
            "attention": ("matmul", "engine torch_graphs: how the flow steps attend over the static cache: matmul "
                                    "(GEMMs, fp32 scores; H200 full size 28.9 ms p50) | sdpa (39.7 ms)", ("matmul", "sdpa")),
            "pipelined": (False, "stage the next observation on a second thread while the model runs (on the H200 "
                                 "it contended with the model thread: 92.5 ms end to end vs 61.4 ms sequential)", None),
            "diagnostics_period_s": (1.0, "period of /diagnostics", (0.1, 60.0)),
            "remote": ("", "host:port of a policy server (`posevla serve-policy`, docs/remote_policy.md): the model "
                           "runs there; checkpoint, device, engine and compile are then the server's", None),
            "remote_timeout_s": (2.0, "remote: seconds for one round trip before the call fails", (0.01, 60.0)),
            "flow_noise_scale": (1.0, "the flow's starting noise is N(0, I) x this: 1 samples as trained; 0 starts "
                                      "every chunk from zero noise (deterministic; the twin's E17 lifted 66/80 "
                                      "against 59/80); remote: the server's setting", (0.0, 1.0)),
        })
        ckpt = Path(p["checkpoint"])
        self.policy: Any  # PoseVLAPolicy, or the remote server's description of it
        self.engine: Any  # an Engine (posevla.model.engines) or a RemoteEngine: the same interface
        if p["remote"]:  # the model on another machine (posevla.remote_policy): same engine interface
            from posevla.remote_policy import RemoteEngine

            self.engine = RemoteEngine(p["remote"], timeout_s=p["remote_timeout_s"])
            self.policy = self.engine.policy
            self.get_logger().info(f"policy server: {self.policy.device}")
        elif not p["checkpoint"] or not ckpt.is_dir():
            raise ValueError(f"parameter checkpoint={p['checkpoint']!r} is not a checkpoint directory "
                             "(or give remote:=host:port)")
        else:
            from posevla import PoseVLAPolicy  # torch import happens here, after the parameters are valid

            t0 = time.perf_counter()
            device = None if p["device"] == "auto" else p["device"]
            self.policy = PoseVLAPolicy.from_pretrained(ckpt, device=device,
                                                        compile=p["compile"] and p["engine"] == "torch")
            self.get_logger().info(f"loaded {ckpt} on {self.policy.device} in {time.perf_counter() - t0:.1f} s")
            from posevla.model.engines import make_engine

            options: dict[str, object] = {}
            if p["engine"] == "torch_graphs":
                options["attention"] = p["attention"]
                if p["compile"]:
                    options["compile"] = True
            self.policy.flow_noise_scale = float(p["flow_noise_scale"])
            self.engine = make_engine(self.policy, p["engine"], **options)
        if p["warmup"]:  # also captures the CUDA graphs / exports the ONNX graphs for the full-view shape
            self.get_logger().info(f"engine {p['engine']}: warm-up done in {self.engine.warmup():.2f} s")
        self.instruction = p["instruction"]
        self.modalities = p["modalities"]
        self.chunk_pub = self.create_publisher(MultiDOFJointTrajectory, "/policy/chunk", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(String, "/policy/instruction", self._on_instruction, 10)
        self.add_on_set_parameters_callback(self._on_params)
        self.last_timing: ChunkTiming | None = None
        self._error_logged_at, self._errors_unlogged = -1e9, 0  # _on_error's once-a-second log
        from posevla.model.serving import PipelinedRunner

        self.runner = PipelinedRunner(self.engine, self._publish_chunk, now_ns=self._now_ns,
                                      min_period_s=p["min_period_s"], on_error=self._on_error,
                                      modalities=lambda: self.modalities, pipelined=p["pipelined"])
        from posevla_ros.observation_source import ObservationSource

        self.source = ObservationSource(self, views=list(self.policy.config.views),
                                        image_size=self.policy.config.image_size,
                                        callback=self._on_observation,
                                        crops=dict(self.policy.config.view_crops))
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics)

    # ------------------------------------------------------------------ callbacks
    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_instruction(self, msg: String) -> None:
        self.instruction = msg.data
        self.get_logger().info(f"instruction: {msg.data!r}")

    def _on_params(self, params) -> SetParametersResult:
        for prm in params:
            if prm.name == "instruction":
                self.instruction = prm.value
            elif prm.name == "modalities":
                if prm.value not in MODALITIES:
                    return SetParametersResult(successful=False, reason=f"modalities must be one of {MODALITIES}")
                self.modalities = prm.value
        return SetParametersResult(successful=True)

    def _on_observation(self, obs: Observation) -> None:
        if not self.instruction:
            self.get_logger().warning("no instruction yet (parameter instruction or /policy/instruction)",
                                   throttle_duration_sec=5.0)
            return
        obs.instruction = self.instruction
        self.runner.submit(obs)

    def _predict(self, obs: Observation) -> ActionChunk:
        """One chunk on the calling thread (the sequential path; the runner uses engine.stage/execute itself)."""
        return self.engine.predict(obs, modalities=self.modalities)

    def _publish_chunk(self, chunk: ActionChunk, timing: ChunkTiming) -> None:
        """Runner callback (model thread): publish; the runner times this call as the publish stage."""
        self.chunk_pub.publish(chunk_to_msg(chunk))
        self.last_timing = timing

    def _on_error(self, obs: Observation, exc: Exception) -> None:
        """Runner callback: one log line per second at most (a gripper bus dropout fails every observation for
        its length); the diagnostics count them all."""
        now = time.monotonic()
        if now - self._error_logged_at < 1.0:
            self._errors_unlogged += 1
            return
        more = f" ({self._errors_unlogged} more since the last report)" if self._errors_unlogged else ""
        self._error_logged_at, self._errors_unlogged = now, 0
        self.get_logger().error(f"policy call failed on observation stamped {obs.stamp_ns}: {exc}{more}")

    def _publish_diagnostics(self) -> None:
        st = self.runner.stats()
        status = DiagnosticStatus(name="policy_node", hardware_id=str(self.policy.device))
        status.level = DiagnosticStatus.OK if self.runner.failed == 0 else DiagnosticStatus.WARN
        status.message = self.runner.last_error or "running"
        # counts, then p50/p90/max seconds per stage of the recent chunks (STAGES)
        values = {k: (f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in st.items()}
        values.update({f"source_{k}": str(v) for k, v in self.source.stats().items()})
        values["engine"] = self.engine.name
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = ns_to_time(self._now_ns())
        self.diag_pub.publish(msg)

    def destroy_node(self) -> None:
        for part in ("runner", "engine"):  # absent when the constructor refused a parameter
            if hasattr(self, part):
                getattr(self, part).close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    spin_node(PolicyNode, "policy_node", args)


if __name__ == "__main__":
    main()
