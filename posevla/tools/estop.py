"""`posevla estop`: stop the robot from any shell, without the ros2 CLI.

    posevla estop              # publish true on /estop (reliable, transient-local) and call each node's
                               # .../estop/trigger service; prints who stopped
    posevla estop --release    # publish false on /estop, then reset the executor and the driver
    posevla estop --keys       # keyboard / foot pedal: SPACE, ENTER or s stops (a USB pedal set to send one of
                               # these keys works), q quits; keep it running in a terminal during trials

The e-stop is latched: it stays in force in the executor and the driver until each is reset (--release).
The topic is one path and the trigger services another, so a stop gets through if either does. Exit status:
0 when at least one stopping node confirmed, 1 when none did (then use the hardware e-stop), 2 on bad usage.
This is a software stop; it never replaces the controllers' hardware e-stop.
"""
from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--release", action="store_true", help="clear /estop (false) and reset the executor and the driver")
    mode.add_argument("--keys", action="store_true", help="stop on SPACE / ENTER / s (keyboard or foot pedal); q quits")
    parser.add_argument("--timeout", type=float, default=3.0,
                        help="seconds to wait for subscribers and for each service (default 3)")
    parser.add_argument("--hold", type=float, default=1.0,
                        help="seconds to keep the latched message published after sending (default 1)")


class EstopSender:
    """A small rclpy node that sends the e-stop both ways and reports what answered."""

    def __init__(self, timeout_s: float) -> None:
        import rclpy
        from posevla_ros.estop import create_sender
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.rclpy = rclpy
        self.node = rclpy.create_node("posevla_estop")
        self.pub = create_sender(self.node)
        self.timeout_s = timeout_s
        self._clients: dict = {}

    def _spin(self, seconds: float, until=None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until and until()):
            self.rclpy.spin_once(self.node, timeout_sec=0.02)

    def publish(self, value: bool) -> int:
        """Publish on /estop; returns the number of matched subscriptions that acknowledged it."""
        from std_msgs.msg import Bool

        self._spin(self.timeout_s, until=lambda: self.pub.get_subscription_count() > 0)
        self.pub.publish(Bool(data=value))
        n = self.pub.get_subscription_count()
        acked = self.pub.wait_for_all_acked(self.rclpy.duration.Duration(seconds=self.timeout_s)) if n else False
        return n if acked else 0

    def call(self, service: str) -> tuple[bool, str] | None:
        """Call a std_srvs/Trigger service; None when it does not exist or does not answer in time."""
        from std_srvs.srv import Trigger

        cli = self._clients.get(service) or self._clients.setdefault(service, self.node.create_client(Trigger, service))
        if not cli.wait_for_service(timeout_sec=self.timeout_s):
            return None
        fut = cli.call_async(Trigger.Request())
        self._spin(self.timeout_s, until=fut.done)
        res = fut.result() if fut.done() else None
        return None if res is None else (bool(res.success), str(res.message))

    def stop(self) -> int:
        from posevla_ros.estop import NODE_SERVICES, TOPIC

        n = self.publish(True)
        print(f"{TOPIC}: true delivered to {n} subscription(s)" if n else f"{TOPIC}: no subscriber acknowledged",
              flush=True)
        confirmed = 0
        for name, (trigger, _) in NODE_SERVICES.items():
            res = self.call(trigger)
            if res is None:
                print(f"{name}: {trigger} not available (node not running?)", flush=True)
            else:
                confirmed += res[0]
                print(f"{name}: {'STOPPED' if res[0] else 'FAILED'}: {res[1]}", flush=True)
        return 0 if confirmed or n else 1

    def release(self) -> int:
        from posevla_ros.estop import NODE_SERVICES, TOPIC

        n = self.publish(False)
        print(f"{TOPIC}: false delivered to {n} subscription(s)", flush=True)
        ok = 0
        for name, (_, reset) in NODE_SERVICES.items():
            res = self.call(reset)
            if res is None:
                print(f"{name}: {reset} not available (node not running?)", flush=True)
            else:
                ok += res[0]
                print(f"{name}: {'reset' if res[0] else 'FAILED'}: {res[1]}", flush=True)
        return 0 if ok == len(NODE_SERVICES) else 1

    def close(self, hold_s: float) -> None:
        self._spin(hold_s)  # late joiners still get the latched value meanwhile
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def watch_keys(sender: EstopSender) -> int:
    """Raw-mode stdin loop: SPACE / ENTER / s stop, q quits (also a USB foot pedal that types one of these)."""
    import select
    import termios
    import tty

    if not sys.stdin.isatty():
        print("posevla estop --keys: stdin is not a terminal", file=sys.stderr)
        return 2
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    try:
        # TCSANOW keeps a key pressed before this point (the default TCSAFLUSH would discard it: a stop lost); the
        # prompt comes once keys are read one by one
        tty.setcbreak(fd, termios.TCSANOW)
        print("e-stop keys: SPACE, ENTER or s stops the robot; q quits (the stop stays latched)", flush=True)
        while True:
            sender._spin(0.05)  # keep the latched publisher alive and answer discovery
            if not select.select([sys.stdin], [], [], 0.05)[0]:
                continue
            key = sys.stdin.read(1)
            if key in (" ", "\n", "\r", "s", "S"):
                sender.stop()
            elif key in ("q", "Q"):
                return 0
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0 or args.hold < 0:
        print("posevla estop: --timeout must be > 0 and --hold >= 0", file=sys.stderr)
        return 2
    sender = EstopSender(args.timeout)
    try:
        if args.keys:
            return watch_keys(sender)
        return sender.release() if args.release else sender.stop()
    except KeyboardInterrupt:
        return 130
    finally:
        sender.close(args.hold)
