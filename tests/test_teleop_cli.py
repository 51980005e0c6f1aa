"""`posevla teleop`: simulated leaders on pseudo-terminals read back by `read` and `calibrate` (real dynamixel_sdk)."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dynamixel_sdk")
from posevla.cli import main  # noqa: E402
from posevla.teleop.gello import LeaderConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "gello_xtrainer.yaml"


@pytest.fixture()
def sim_leaders(tmp_path: Path):
    links = tmp_path / "leaders"
    proc = subprocess.Popen([sys.executable, "-m", "posevla.cli", "teleop", "sim-leaders", "--link-dir", str(links),
                             "--pose", "10,-50,90,-120,-80,5", "--amplitude", "0", "--duration", "60"],
                            stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not all((links / a).exists() for a in ("left", "right")):
        assert time.monotonic() < deadline and proc.poll() is None, "sim-leaders did not start"
        time.sleep(0.1)
    yield links
    proc.terminate()
    proc.wait(10)
    assert not (links / "left").exists()  # cleans up its links


def test_read_prints_the_simulated_pose(sim_leaders: Path, capsys) -> None:
    assert main(["teleop", "read", "--arm", "right", "--port", str(sim_leaders / "right"), "--count", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    joints = [float(v) for v in re.search(r"\[deg\] \[(.*?)\]", lines[-1]).group(1).split()]
    np.testing.assert_allclose(joints, [10, -50, 90, -120, -80, 5], atol=0.1)


def test_calibrate_gives_offsets_that_read_the_known_pose(sim_leaders: Path, capsys) -> None:
    cfg = LeaderConfig.from_yaml(CONFIG).arms["left"]
    held = np.deg2rad([10, -50, 90, -120, -80, 5])  # where the leader really is
    claimed = np.deg2rad([0, -60, 100, -130, -90, 0])  # the pose the operator says it is in
    assert main(["teleop", "calibrate", "--arm", "left", "--port", str(sim_leaders / "left"), "--samples", "5",
                 "--pose", ",".join(str(v) for v in np.rad2deg(claimed))]) == 0
    out = capsys.readouterr().out
    offsets = [float(v) for v in re.search(r"joint_offsets: \[(.*?)\]", out).group(1).split(",")]
    # q = sign * (raw - offset') == claimed  with raw = sign * held + offset
    expected = np.array(cfg.joint_offsets) + np.array(cfg.joint_signs) * (held - claimed)
    np.testing.assert_allclose(offsets, expected, atol=2 * np.pi / 4096)


def test_bad_arguments_are_named(capsys) -> None:
    assert main(["teleop", "calibrate", "--pose", "1,2"]) == 2
    assert "--pose '1,2'" in capsys.readouterr().err
    assert main(["teleop", "read", "--arm", "middle"]) == 2
    assert "--arm 'middle'" in capsys.readouterr().err
    assert main(["teleop", "read", "--port", "/dev/does-not-exist", "--count", "1"]) == 2
    assert "cannot open serial port /dev/does-not-exist" in capsys.readouterr().err
