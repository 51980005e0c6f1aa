"""Scheduling priority for simulated hardware processes.

A real servo bus or leader arm answers within its protocol timeout whatever the robot PC is doing; a simulated one
runs as a process on the same (possibly loaded) machine. Raising its priority keeps the simulation honest: the
driver, teleop and recorder under test see hardware timing, and a starved *client* still shows its own lateness.
"""
from __future__ import annotations

import os


def raise_for_simulated_hardware(niceness: int = -10) -> bool:
    """Lower this process's niceness (higher priority); True if it worked (needs root or CAP_SYS_NICE)."""
    try:
        os.nice(niceness)
        return True
    except OSError:
        return False
