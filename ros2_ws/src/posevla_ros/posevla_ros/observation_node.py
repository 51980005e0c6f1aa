"""observation_node: the model-ready views, for inspection and debugging.

Runs the same ObservationSource the policy node uses (synchroniser + observation builder) and publishes each
observation's views as /observation/<view>/image (rgb8, model size), /observation/<view>/camera_info (the
updated K of that image) and /observation/<view>/depth (32FC1 metres, 0 = invalid), stamped with the view's
capture time; drop and refusal counts go to /diagnostics.
"""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from posevla.types import VIEW_NAMES, Observation
from posevla_ros.msg_conv import image_to_msg, intrinsics_to_msg, ns_to_time
from posevla_ros.node_main import spin_node
from posevla_ros.observation_source import ObservationSource
from posevla_ros.params import ParamSpec, declare_checked


class ObservationNode(Node):
    PARAMS: ParamSpec = {
        "image_size": (224, "model input size (pixels)", (16, 1024)),
        "require_robot_state": (False, "refuse observations without TCP poses at the image stamp", None),
    }

    def __init__(self) -> None:
        super().__init__("observation")
        p = declare_checked(self, self.PARAMS, dynamic=())
        self.source = ObservationSource(self, list(VIEW_NAMES), p["image_size"], self._on_obs,
                                        need_state=p["require_robot_state"])
        self.pubs = {v: (self.create_publisher(Image, f"observation/{v}/image", 10),
                         self.create_publisher(CameraInfo, f"observation/{v}/camera_info", 10),
                         self.create_publisher(Image, f"observation/{v}/depth", 10)) for v in self.source.cameras}
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._diag)

    def _on_obs(self, obs: Observation) -> None:
        for name, v in obs.views.items():
            img, info, depth = self.pubs[name]
            img.publish(image_to_msg(v.rgb, "rgb8", v.stamp_ns, v.frame_id))
            info.publish(intrinsics_to_msg(v.intrinsics, v.stamp_ns, v.frame_id))
            if v.depth_prior is not None:
                depth.publish(image_to_msg(v.depth_prior[..., 0], "32FC1", v.stamp_ns, v.frame_id))

    def _diag(self) -> None:
        st = DiagnosticStatus(name="observation", hardware_id="observation")
        st.values = [KeyValue(key=str(k), value=str(v)) for k, v in self.source.stats().items()]
        st.message = f"{self.source.builder.built} observations"
        msg = DiagnosticArray(status=[st])
        msg.header.stamp = ns_to_time(self.get_clock().now().nanoseconds)
        self.diag_pub.publish(msg)


def main(args: list[str] | None = None) -> None:
    # ObservationSource declares its own parameters too (cameras, slop_s, ...): --help lists the node's own
    spin_node(ObservationNode, "observation_node", args, params=ObservationNode.PARAMS, doc=__doc__)


if __name__ == "__main__":
    main()
