"""The one `main` of every spinning node: start, spin, and stop cleanly on Ctrl-C or an external shutdown.

A node whose constructor refuses its parameters (ValueError, or ConnectionError for hardware that does not
answer) exits with status 2 and the reason on stdout, before anything moves.
"""
from __future__ import annotations

from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node


def spin_node(make_node: Callable[[], Node], name: str, args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    try:
        node = make_node()
    except (ValueError, ConnectionError) as exc:
        print(f"{name}: {exc}", flush=True)
        rclpy.try_shutdown()
        raise SystemExit(2) from exc
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        # rclpy can fail to take a message that arrives while SIGINT tears the context down; that is the
        # shutdown we asked for. The same error while the context is alive is a real fault.
        if rclpy.ok():
            raise
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
