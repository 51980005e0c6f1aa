"""Ending a torchrun rank without tearing the process group down from Python.

Seen in CI (torch 2.13, gloo, 2 CPU ranks): after `destroy_process_group()` the DDP reducer still held the gloo
process group; when the trainer's frame was freed, `~ProcessGroupGloo` joined its worker thread while holding the
GIL, and that thread was destroying a finished all_gather work whose tensors Python had already dropped, so it waited
for the GIL: the rank hung for ever after saving everything. A rank that has written its outputs and passed the
final barrier therefore leaves with `os._exit`, which runs no destructors.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

import torch


def leave_after_barrier() -> NoReturn:
    """The last call of a distributed run: wait for every rank, flush, and exit 0 without teardown."""
    torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
