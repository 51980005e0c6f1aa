"""Sound cues for the operator: a short tone on episode start, save and stop-with-error.

Plays through `aplay` (ALSA) when a sound device exists; otherwise rings the terminal bell when stdout is a
terminal; otherwise does nothing. Never blocks the caller (the player runs as a detached process).
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import wave

import numpy as np

# cue -> list of (frequency Hz, duration s)
CUES: dict[str, list[tuple[float, float]]] = {
    "start": [(880.0, 0.12)],
    "saved": [(660.0, 0.1), (990.0, 0.15)],
    "error": [(300.0, 0.35)],
}


def tone_wav(notes: list[tuple[float, float]], rate: int = 16000) -> bytes:
    """16-bit mono WAV of the notes, with 5 ms fades so that they do not click."""
    parts = []
    for freq, dur in notes:
        t = np.arange(int(rate * dur)) / rate
        env = np.minimum(1.0, np.minimum(t, dur - t) / 0.005)
        parts.append(0.3 * env * np.sin(2 * np.pi * freq * t))
    pcm = (np.concatenate(parts) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def sound_device_present() -> bool:
    return os.path.isdir("/dev/snd") and any(n.startswith("pcm") for n in os.listdir("/dev/snd"))


def play(cue: str) -> str:
    """Play a cue; returns how ('aplay', 'bell' or 'none')."""
    if cue not in CUES:
        raise ValueError(f"unknown cue {cue!r} (known: {sorted(CUES)})")
    player = shutil.which("aplay")
    if player and sound_device_present():
        proc = subprocess.Popen([player, "-q", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        assert proc.stdin is not None  # stdin=PIPE
        try:
            proc.stdin.write(tone_wav(CUES[cue]))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        return "aplay"
    if sys.stdout.isatty():
        sys.stdout.write("\a" * len(CUES[cue]))
        sys.stdout.flush()
        return "bell"
    return "none"
