"""Reading rosbag2 recordings (MCAP or SQLite3 storage) without a ROS install, for the replay source.

Messages stay raw CDR bytes here (no ROS imports); the replay node deserialises them with rclpy into real
messages, so what it publishes is bit-for-bit what was recorded. Uses the `rosbags` package (pure Python).
Times: `log_time_ns` is the recorder's receive time (ns, the clock of the recording PC); header stamps live
inside the messages.
"""
from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str  # e.g. "sensor_msgs/msg/Image"
    log_time_ns: int
    data: bytes  # CDR


def is_rosbag2(path: str | Path) -> bool:
    """A rosbag2 folder (with metadata.yaml) or a single .mcap / .db3 file."""
    path = Path(path)
    return (path.is_dir() and (path / "metadata.yaml").exists()) or path.suffix in (".mcap", ".db3")


class BagSource:
    """The messages of chosen topics of a rosbag2 recording, in log-time order."""

    def __init__(self, path: str | Path, topics: Collection[str] | None = None) -> None:
        try:
            from rosbags.rosbag2 import Reader
        except ImportError as exc:  # pragma: no cover - rosbags is in requirements.txt
            raise ValueError(f"{path}: reading rosbag2 recordings needs the 'rosbags' package ({exc})") from exc
        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"{self.path}: no such rosbag2 recording")
        bag_dir = self.path.parent if self.path.is_file() else self.path
        if not (bag_dir / "metadata.yaml").exists():
            raise ValueError(f"{self.path}: not a rosbag2 recording (no metadata.yaml in {bag_dir})")
        try:
            self._reader = Reader(bag_dir)
            self._reader.open()
        except Exception as exc:  # noqa: BLE001 - rosbags raises its own error types for corrupt bags
            raise ValueError(f"{self.path}: cannot open rosbag2 recording: {exc}") from exc
        self.types = {c.topic: c.msgtype for c in self._reader.connections}
        if topics:
            missing = sorted(set(topics) - set(self.types))
            if missing:
                raise ValueError(f"{self.path}: topics {missing} are not in the recording (it has {sorted(self.types)})")
        self._connections = [c for c in self._reader.connections if not topics or c.topic in topics]

    @property
    def message_count(self) -> int:
        return sum(c.msgcount for c in self._connections)

    def messages(self) -> Iterator[BagMessage]:
        for conn, t_ns, data in self._reader.messages(connections=self._connections):
            yield BagMessage(conn.topic, conn.msgtype, int(t_ns), bytes(data))

    def schedule(self, rate: float = 1.0) -> Iterator[tuple[float, BagMessage]]:
        """(seconds after the start at which to publish, message), keeping the recorded spacing / rate."""
        if not rate > 0:
            raise ValueError(f"replay rate={rate} must be positive")
        t0 = None
        for msg in self.messages():
            t0 = msg.log_time_ns if t0 is None else t0
            yield (msg.log_time_ns - t0) / 1e9 / rate, msg

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> BagSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
