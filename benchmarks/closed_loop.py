"""The closed-loop benchmark on the MuJoCo twin (not part of `make bench`: 30-45 min on a quiet 2-core machine).

  python benchmarks/closed_loop.py [options of `posevla benchmark closed-loop`]

is the same as `posevla benchmark closed-loop ...`: scripted demos recorded by the recorder, `posevla train`, then
closed-loop trials on held-out seeds through policy node, executor, driver and twin, full model and the two
ablations (RGB only; head calibration perturbed by 2 cm / 2 deg). Prints the success table with 95 % Wilson
intervals; writes <out>/results.json and <out>/rollouts.png. See docs/closed_loop.md.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from posevla.cli import main as cli

    return cli(["benchmark", "closed-loop", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
