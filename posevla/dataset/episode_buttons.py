"""Episode control from the leader handles' buttons (no ROS): rising edges of a button vector -> recorder actions.

The teleop node publishes the buttons of all leaders as one vector (8 per arm, left first). Each action is
bound to a list of button indices, so the operator can use either handle. An action fires once on the
press (0 -> 1), never while the button is held, and not again within `debounce_s` of the previous action.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

ACTIONS = ("start_stop", "discard", "mark_failure", "rerecord_last")


@dataclass
class ButtonBindings:
    """Button indices per action. Defaults: button 0/1/2/3 on the left handle, 8/9/10/11 on the right."""

    start_stop: list[int] = field(default_factory=lambda: [0, 8])
    discard: list[int] = field(default_factory=lambda: [1, 9])
    mark_failure: list[int] = field(default_factory=lambda: [2, 10])
    rerecord_last: list[int] = field(default_factory=lambda: [3, 11])
    debounce_s: float = 0.3

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for action in ACTIONS:
            for b in getattr(self, action):
                if b < 0:
                    raise ValueError(f"button binding {action}: index {b} is negative")
                if b in seen:
                    raise ValueError(f"button {b} is bound to both {seen[b]} and {action}")
                seen[b] = action


class ButtonActions:
    """Turns successive button vectors into actions (names from ACTIONS)."""

    def __init__(self, bindings: ButtonBindings | None = None) -> None:
        self.bindings = bindings or ButtonBindings()
        self._previous: tuple[int, ...] = ()
        self._last_fire_s = -1e9

    def update(self, buttons: Sequence[int], now_s: float) -> list[str]:
        """Actions whose button went from released to pressed since the previous vector."""
        prev = self._previous + (0,) * max(0, len(buttons) - len(self._previous))
        pressed = {i for i, b in enumerate(buttons) if b and not prev[i]}
        self._previous = tuple(int(bool(b)) for b in buttons)
        fired = [a for a in ACTIONS if pressed & set(getattr(self.bindings, a))]
        if not fired or now_s - self._last_fire_s < self.bindings.debounce_s:
            return []
        self._last_fire_s = now_s
        return fired
