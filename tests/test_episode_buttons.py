"""Leader-handle buttons -> episode actions; operator sound cues."""
from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from posevla.dataset import cues
from posevla.dataset.episode_buttons import ButtonActions, ButtonBindings


def _vec(*pressed: int, n: int = 16) -> list[int]:
    return [int(i in pressed) for i in range(n)]


def test_actions_fire_once_per_press_on_either_handle() -> None:
    b = ButtonActions()
    assert b.update(_vec(), 0.0) == []
    assert b.update(_vec(0), 1.0) == ["start_stop"]
    assert b.update(_vec(0), 1.1) == []  # held: no repeat
    assert b.update(_vec(0), 5.0) == []
    assert b.update(_vec(), 5.1) == []  # release does nothing
    assert b.update(_vec(8), 6.0) == ["start_stop"]  # the right handle's copy
    assert b.update(_vec(8, 9), 7.0) == ["discard"]
    assert b.update(_vec(), 8.0) == []
    assert b.update(_vec(2, 11), 9.0) == ["mark_failure", "rerecord_last"]


def test_first_message_with_a_pressed_button_counts_as_a_press() -> None:
    assert ButtonActions().update(_vec(1), 0.0) == ["discard"]


def test_debounce_suppresses_contact_bounce() -> None:
    b = ButtonActions(ButtonBindings(debounce_s=0.3))
    assert b.update(_vec(0), 0.0) == ["start_stop"]
    b.update(_vec(), 0.05)
    assert b.update(_vec(0), 0.1) == []  # bounce within 0.3 s
    b.update(_vec(), 0.5)
    assert b.update(_vec(0), 0.6) == ["start_stop"]


def test_short_button_vector_and_out_of_range_bindings_are_harmless() -> None:
    b = ButtonActions()
    assert b.update([0, 0], 0.0) == []  # only one leader connected: 8 buttons or fewer
    assert b.update([0, 1], 1.0) == ["discard"]


def test_bindings_reject_conflicts_and_negatives() -> None:
    with pytest.raises(ValueError, match="button 1 is bound to both start_stop and discard"):
        ButtonBindings(start_stop=[1], discard=[1])
    with pytest.raises(ValueError, match="discard: index -2"):
        ButtonBindings(discard=[-2])


def test_cue_tones_are_valid_wav_of_the_right_length() -> None:
    data = cues.tone_wav(cues.CUES["saved"], rate=16000)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert len(pcm) == int(16000 * 0.1) + int(16000 * 0.15)
    assert 0.25 * 32767 < np.abs(pcm).max() <= 0.3 * 32767 + 1
    assert abs(int(pcm[0])) < 100 and abs(int(pcm[-1])) < 300  # faded in and out: no click
    with pytest.raises(ValueError, match="unknown cue 'boom'"):
        cues.play("boom")
