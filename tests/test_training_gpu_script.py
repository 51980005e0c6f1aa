"""scripts/gpu/train_check.py runs end to end on the CPU with the tiny config and writes its JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_train_check_runs_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu" / "train_check.py"), "--device", "cpu",
                           "--config", str(REPO / "models" / "tiny.yaml"), "--rows", "all,expert + ckpt,all + ckpt + 8bit",
                           "--steps", "1", "--budget-s", "1e6",  # the budget is for the GPU box; a loaded CI machine is slow
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "train_check.json").read_text())
    assert result["meta"]["vocab"] == 257152 + 4 * 1024 and result["meta"]["views"] == 3
    rows = {r["row"]: r for r in result["rows"]}
    assert rows["all"]["changed_fraction_lr1e-5"] > 0.999  # fp32 master weights: every weight with a gradient moves
    assert rows["expert + ckpt"]["trainable_M"] < 0.1 * rows["all"]["trainable_M"]
    assert rows["all + ckpt + 8bit"]["skipped"]  # no CUDA here
    assert all(r["step_ms"] > 0 for r in rows.values() if "skipped" not in r)
    assert "one AdamW step at lr 1e-5" in proc.stdout
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu" / "train_check.py"), "--device", "cpu",
                          "--rows", "everything"], capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2 and "--rows: unknown row(s) ['everything']" in bad.stderr
