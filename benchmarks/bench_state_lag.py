"""Robot-state age under a busy executor: a 100 Hz TCP stream and a 30 Hz image stream from one publisher process;
the subscriber's executor is busy `--busy-ms` per cycle. Prints how much older than each image the newest TCP pose
the subscriber holds is, with the old queue depth (50) and the stack's `LATEST_STATE` (depth 1).

    python benchmarks/bench_state_lag.py [--seconds 8] [--busy-ms 20]
"""
from __future__ import annotations

import argparse

from posevla_ros.qos import LATEST_STATE
from posevla_ros.state_lag import measure


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per QoS")
    ap.add_argument("--busy-ms", type=float, default=20.0, help="executor busy time per cycle (ms)")
    args = ap.parse_args(argv if argv is not None else [])
    import rclpy

    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    try:
        print(f"100 Hz TCP + 30 Hz images from one process; subscriber executor busy {args.busy_ms:.0f} ms per cycle")
        for qos in (50, LATEST_STATE):
            print("  " + measure(ctx, qos, seconds=args.seconds, busy_s=args.busy_ms * 1e-3).summary(), flush=True)
    finally:
        ctx.try_shutdown()


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
