"""The one `main` of every node: --help, start, check the parameters, spin, and stop cleanly.

- `--help` / `-h` (before `--ros-args`) prints the node's parameter table and exits 0 without starting ROS.
- A node whose constructor refuses its configuration (ValueError, FileNotFoundError, or ConnectionError for
  hardware that does not answer), or (nodes that pass their `params` table) that was given a parameter it never
  declared or a params file with no section for it, exits with status 2 and one line naming the reason, before anything moves; no traceback.
- SIGINT and SIGTERM end the spin loop; the node is then destroyed (its threads joined) while the ROS context
  is still valid, so no thread publishes into a dead context; then the context shuts down.
"""
from __future__ import annotations

import gc
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from posevla_ros.params import ParamSpec, check_params_files, describe, in_force, reject_unknown

if TYPE_CHECKING:
    from rclpy.node import Node

CONFIG_ERRORS = (ValueError, FileNotFoundError, ConnectionError)


def wants_help(argv: Sequence[str]) -> bool:
    user = list(argv)[: list(argv).index("--ros-args")] if "--ros-args" in argv else list(argv)
    return "-h" in user or "--help" in user


def help_text(name: str, params: ParamSpec | None, doc: str = "") -> str:
    head = (doc.strip().splitlines()[0] + "\n\n") if doc.strip() else ""
    usage = (f"usage: {name} [--help] [--ros-args [-r __node:=NAME] [-r __ns:=/NAMESPACE] [--params-file FILE] "
             f"[-p NAME:=VALUE ...]]\n\n")
    if not params:
        return head + usage + "parameters: see `ros2 param describe` on the running node\n"
    return head + usage + "parameters (name, default, range, description):\n" + describe(params) + "\n"


def _quiet_shutdown() -> None:
    """Shut the context down without letting a half-built node's destroy_node raise through."""
    import rclpy

    gc.collect()  # the refused node is unreachable once its traceback is gone
    try:
        rclpy.try_shutdown()
    except Exception:  # noqa: BLE001 - exiting anyway; the reason was already printed
        pass


def set_from_signal_handler(event: threading.Event) -> None:
    """Set `event` from a signal handler. Not event.set() there: the handler runs on the main thread between
    bytecodes, possibly inside event.wait() while that holds the event's (non-reentrant) lock, and set() would
    deadlock on it -- a replay looping on stop.wait() hung forever on SIGTERM in CI. A short thread sets it as
    soon as the main thread lets go of the lock."""
    threading.Thread(target=event.set, name="signal-stop", daemon=True).start()


def spin_node(make_node: Callable[[], Node], name: str, args: list[str] | None = None,
              params: ParamSpec | None = None, doc: str = "",
              loop: Callable[[Any, threading.Event], None] | None = None) -> None:
    """Run one node. `params`: its parameter table, for --help; given, parameters the node never declared and
    params files without a section for it are refused. `loop(node, stop)`: run instead of spinning (e.g. a
    replay that publishes from the main thread), returning when `stop` is set or it is done."""
    argv = list(sys.argv[1:] if args is None else args)
    if wants_help(argv):
        print(help_text(name, params, doc), end="")
        raise SystemExit(0)
    from posevla_ros.network import apply_network_policy

    apply_network_policy()  # DDS discovery on this machine only, unless POSEVLA_ROBOT_NETWORK=1
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    started = False

    def on_signal(signum, frame) -> None:
        set_from_signal_handler(stop)
        if not started:
            raise KeyboardInterrupt  # interrupt a slow constructor (model loading, connecting)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    node: Node | None = None
    refused, code = "", 0
    try:
        node = make_node()
        if params is not None:  # converted nodes; the others keep rclpy's lenient behaviour until converted
            reject_unknown(node)
            check_params_files(node, argv)
    except CONFIG_ERRORS as exc:
        refused, code = f"{name}: {exc}", 2
    except KeyboardInterrupt:
        code = 130
    if code:  # outside the except block, so the half-built node is unreachable and collected first
        if refused:
            print(refused, flush=True)
        if node is not None:
            node.destroy_node()
        node = None
        _quiet_shutdown()
        raise SystemExit(code)
    assert node is not None  # made above, or the refusal exited
    started = True
    node.get_logger().info(in_force(node))
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if loop is not None:
            loop(node, stop)
        else:
            while not stop.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop.set()
        executor.remove_node(node)
        node.destroy_node()  # joins the node's threads while the context is valid
        executor.shutdown()
        rclpy.try_shutdown()
