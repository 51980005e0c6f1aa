"""The project's YAML reader and atomic writer: a reader racing a writer sees a whole document or none."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from posevla.yaml_file import read_yaml, write_yaml


def test_read_yaml_names_the_file_when_missing_or_malformed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"gripper configuration .*nope\.yaml does not exist"):
        read_yaml(tmp_path / "nope.yaml", "gripper configuration")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad\.yaml cannot be read"):
        read_yaml(bad, "robot description")


def test_write_yaml_is_atomic_for_a_racing_reader(tmp_path: Path) -> None:
    """The failure seen in CI: a test polled for a simulator's config file and parsed it while it was half
    written. With write_yaml a reader sees either no file or a complete document, never a prefix."""
    path = tmp_path / "cfg.yaml"
    docs = [{"arms": {f"arm{i}": {"port": "/dev/ttyUSB0", "id": i, "pad": "x" * 20000} for i in range(k + 1)}}
            for k in range(8)]
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            for d in docs:
                write_yaml(path, d)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    seen = 0
    try:
        deadline = time.monotonic() + 60.0  # the writer thread may start late on a loaded machine (CI: 0 reads)
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        for _ in range(100):
            if path.exists():
                doc = read_yaml(path, "config")
                assert doc in docs  # a prefix would parse as None, a shorter mapping or an error
                seen += 1
    finally:
        stop.set()
        t.join(10)
    assert seen > 0
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.yaml"]  # no temporary file left behind
