"""trigger: call std_srvs/Trigger services from a shell where the `ros2` CLI is not installed.

    trigger /recorder/start
    trigger /recorder/stop_and_save /recorder/mark_success

Prints each service's reply; exits 1 if a call fails or a service does not appear within --timeout seconds.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

import rclpy
from std_srvs.srv import Trigger


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trigger", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("services", nargs="+", help="service names, called in order")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each service")
    ns = parser.parse_args(args)
    rclpy.init()
    node = rclpy.create_node("trigger_cli")
    rc = 0
    try:
        for name in ns.services:
            cli: Any = node.create_client(Trigger, name)
            if not cli.wait_for_service(timeout_sec=ns.timeout):
                print(f"{name}: service not available after {ns.timeout} s", file=sys.stderr)
                return 1
            fut = cli.call_async(Trigger.Request())
            rclpy.spin_until_future_complete(node, fut, timeout_sec=ns.timeout)
            res = fut.result()
            if res is None:
                print(f"{name}: no reply within {ns.timeout} s", file=sys.stderr)
                return 1
            print(f"{name}: {'ok' if res.success else 'FAILED'}: {res.message}")
            rc |= 0 if res.success else 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return rc


if __name__ == "__main__":
    sys.exit(main())
