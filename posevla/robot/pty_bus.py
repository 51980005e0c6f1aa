"""A serial bus on a pseudo-terminal: the part the servo simulators share (Feetech SCS on the grippers' RS-485
adapter, Dynamixel Protocol 2.0 on the leader arms' U2D2).

`PtyBus` opens a raw pty (its slave path is `port`, what the vendor SDKs open), serves it on one thread, and hands
every chunk of received bytes to the subclass's `_consume(buf) -> rest`, which parses the protocol's packets and
answers with `_write`. `unplug()` makes the bus stop answering (the adapter's cable out) while bytes are still read;
`close()` releases the pty, after which the port is gone for whoever has it open.
"""
from __future__ import annotations

import os
import select
import threading
import tty


class PtyBus:
    """One pty served on a thread. Subclasses set their state, then call `_start()` at the end of __init__."""

    def __init__(self, name: str) -> None:
        self.master, slave = os.openpty()
        tty.setraw(slave)
        tty.setraw(self.master)
        self.port = os.ttyname(slave)
        self._slave = slave
        self.connected = True
        self.requests = 0  # valid packets received
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True, name=name)

    def _start(self) -> None:
        self._thread.start()

    def plug_in(self) -> None:
        self.connected = True

    def unplug(self) -> None:
        """The adapter's cable comes out: nothing answers any more."""
        self.connected = False

    def close(self) -> None:
        """Stop serving and release the pty (the port vanishes for whoever has it open). The serving thread closes
        the master itself after it stopped reading, so a reused fd number can never be read by a stale thread."""
        self.connected = False
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=10.0)
        for fd in (self._slave, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _consume(self, buf: bytes) -> bytes:
        """Handle the complete packets at the front of `buf`; return the bytes to keep for the next read."""
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.master, data)
        except OSError:
            pass  # the reader went away

    def _serve(self) -> None:
        try:
            self._serve_until_closed()
        finally:
            os.close(self.master)

    def _serve_until_closed(self) -> None:
        buf = b""
        while True:
            ready, _, _ = select.select([self.master, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                data = os.read(self.master, 1024)
            except OSError:
                return
            if not data:
                return
            buf = self._consume(buf + data)
