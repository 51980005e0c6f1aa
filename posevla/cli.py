"""The `posevla` command. Each subcommand lives in its own module and is imported only when used."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help). Each module defines `add_arguments(parser)` and `run(args) -> int`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("posevla.tools.demo", "run the whole ROS graph on this machine: replay cameras -> policy -> executor -> simulated X-Trainer"),
    "bench": ("posevla.tools.bench", "run the benchmarks and print figures"),
    "dataset": ("posevla.dataset.cli", "inspect and check recorded datasets (dataset check|info)"),
    "train": ("posevla.training.train", "flow-matching post-training on recorded episodes (torchrun for several processes)"),
    "convert-authors": ("posevla.model.convert_authors", "convert a checkpoint of the Pose-VLA authors' code (hetolin/PoseVLA) into a Pose-VLA checkpoint directory"),
    "pretrain": ("posevla.pretrain.train", "pose pre-training: 3D grounding or trajectories as pose tokens, AP15 evaluation (pretrain --stage grounding|trajectory)"),
    "tokenizer": ("posevla.pretrain.tokenizer_cli", "pose-token bins: fit equal-frequency bins from data, report quantisation error (tokenizer fit)"),
    "calibrate": ("posevla.calibration.cli", "hand-eye calibration from a recorded episode (calibrate handeye|board)"),
    "teleop": ("posevla.teleop.cli", "leader arms: read, calibrate offsets, run simulated leaders (teleop read|calibrate|sim-leaders)"),
    "estop": ("posevla.tools.estop", "software e-stop without the ros2 CLI: stop, --release, --keys (keyboard / foot pedal)"),
    "doctor": ("posevla.tools.doctor", "pre-flight check: cameras, leader ports, controllers, calibration, checkpoint, GPU, e-stop, clock"),
    "gripper": ("posevla.robot.gripper_cli", "Feetech follower grippers: read, move, calibrate closed/open positions, simulate (gripper read|move|calibrate|sim)"),
    "benchmark": ("posevla.sim.benchmark", "closed-loop benchmark on the MuJoCo twin: demos -> training -> trials (benchmark closed-loop)"),
    "view": ("posevla.viewer", "live view of the running graph in rerun: cameras, predicted chunks in the images, TCP traces, e-stop/holds/refusals (--save x.rrd headless)"),
    "serve-policy": ("posevla.remote_policy", "serve a policy checkpoint over TCP to robot PCs (policy_node -p remote:=host:port); no pickle, docs/remote_policy.md"),
    "trial": ("posevla.tools.trial", "evaluation trials: N per condition in randomised blocks, operator marks outcomes, resumable, success rates with Wilson intervals"),
    "xtrainer-sim": ("posevla.robot.simulator", "run the X-Trainer TCP simulator on loopback"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posevla", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    words = sys.argv[1:] if argv is None else argv
    chosen = words[0] if words and words[0] in SUBCOMMANDS else None  # import only its module (`posevla estop` fast)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if chosen is not None and name != chosen:
            continue
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("posevla"):
                p.set_defaults(_missing=str(exc))
            else:
                raise
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        print(f"posevla {args.command}: not available in this build ({args._missing})", file=sys.stderr)
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
