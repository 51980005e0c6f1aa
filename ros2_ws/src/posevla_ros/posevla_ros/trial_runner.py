"""trial_runner: `posevla trial` as a node of the trial graph (`ros2 launch posevla_ros posevla.launch.py setup:=trial`,
`run_graph trial`), configured with ROS parameters instead of command-line options.

The parameters map one to one onto `posevla trial` options (see `posevla trial --help` for the operator flow:
reset, start, run, mark; resumable; results.csv, summary.md, thumbnails.png). Under `ros2 launch` there is no
terminal: the operator starts and marks trials with the services /trial/start, /trial/success, /trial/partial,
/trial/failure, /trial/abort (handle buttons, `ros2 service call`, or `posevla trial` keys when run by hand).
"""
from __future__ import annotations

import sys
from typing import Any

# name -> (default, description, constraint): the node's parameter table (ROS-free, read by posevla_ros.graph too)
PARAMS: dict[str, tuple[Any, str, Any]] = {
    "task": ("", "task name (results.csv column; the recorder's task folder); required", None),
    "instruction": ("", "language instruction given to the policy at each start; required", None),
    "conditions": ([""], "conditions NAME[:key=value,...] setting policy parameters, e.g. [full:modalities=full, "
                         "rgb_only:modalities=rgb] (default: one condition 'policy' with no change)", None),
    "trials": (20, "trials per condition", (1, 100000)),
    "time_limit_s": (60.0, "seconds per trial", (0.1, 86400.0)),
    "seed": (0, "seed of the randomised block order", (0, 2**31 - 1)),
    "out": ("", "session folder: plan.json, results.csv, summary.* (default: runs/trials/<task>)", None),
    "record": (True, "record each trial with the recorder node's services", None),
    "data_root": ("data", "the recorder's root folder (to find the recorded episodes)", None),
    "sim": (False, "simulated scene: reset with /sim/reset, outcome from /sim/success (mujoco_sim)", None),
    "policy_node": ("policy", "name of the policy node", None),
    "timeout_s": (10.0, "seconds to wait for a service", (0.1, 600.0)),
}


def trial_argv(values: dict[str, Any]) -> list[str]:
    """Parameter values -> `posevla trial` arguments. ValueError names a missing required parameter."""
    for name in ("task", "instruction"):
        if not str(values.get(name, "")).strip():
            raise ValueError(f"parameter {name} is required (e.g. -p {name}:=...)")
    out = values.get("out") or f"runs/trials/{values['task']}"
    argv = ["--task", str(values["task"]), "--instruction", str(values["instruction"]),
            "--trials", str(int(values["trials"])), "--time-limit", str(float(values["time_limit_s"])),
            "--seed", str(int(values["seed"])), "--out", str(out), "--data-root", str(values["data_root"]),
            "--policy-node", str(values["policy_node"]), "--timeout", str(float(values["timeout_s"]))]
    for c in values.get("conditions") or []:
        if c:
            argv += ["--condition", str(c)]
    if values.get("record"):
        argv.append("--record")
    if values.get("sim"):
        argv.append("--sim")
    return argv


def trial_options(trials: str = "", time_limit_s: str = "", conditions: str = "", out: str = "", record: str = "",
                  seed: str = "") -> dict[str, Any]:
    """Launch-argument strings -> trial_runner parameters ('' keeps the default). `conditions` separates conditions
    with ';' (a condition's own parameters use ','): "full:modalities=full;rgb_only:modalities=rgb"."""
    opts: dict[str, Any] = {}
    for name, text, kind in (("trials", trials, int), ("time_limit_s", time_limit_s, float), ("seed", seed, int)):
        if text.strip():
            try:
                opts[name] = kind(text)
            except ValueError:
                raise ValueError(f"{name}:={text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if conditions.strip():
        opts["conditions"] = [c.strip() for c in conditions.split(";") if c.strip()]
    if out.strip():
        opts["out"] = out.strip()
    if record.strip():
        if record.strip().lower() not in ("true", "false"):
            raise ValueError(f"record:={record!r}: expected true or false")
        opts["record"] = record.strip().lower() == "true"
    return opts


def read_parameters(args: list[str]) -> dict[str, Any]:
    """The parameters given with --ros-args (-p, --params-file), checked like every node's (unknown names, ranges,
    params-file sections: ValueError naming it). Starts and stops its own rclpy context."""
    import rclpy
    from rclpy.node import Node

    from posevla_ros.params import check_params_files, declare_checked, reject_unknown

    ctx = rclpy.context.Context()
    rclpy.init(args=args, context=ctx)
    node = None
    try:
        node = Node("trial_runner", context=ctx)
        values = declare_checked(node, PARAMS, dynamic=())
        reject_unknown(node)
        check_params_files(node, args)
        return values
    finally:
        if node is not None:
            node.destroy_node()
        ctx.try_shutdown()


def main(args: list[str] | None = None) -> None:
    from posevla_ros.node_main import help_text, wants_help

    argv = list(sys.argv[1:] if args is None else args)
    if wants_help(argv):
        print((__doc__ or "").strip() + "\n\n" + help_text("trial_runner", PARAMS), end="")
        raise SystemExit(0)
    try:
        trial_args = trial_argv(read_parameters(argv))
    except ValueError as exc:
        print(f"trial_runner: {exc}", flush=True)
        raise SystemExit(2) from None
    import argparse

    from posevla.tools import trial

    parser = argparse.ArgumentParser(prog="trial_runner")
    trial.add_arguments(parser)
    raise SystemExit(trial.run(parser.parse_args(trial_args)))


if __name__ == "__main__":
    main()
