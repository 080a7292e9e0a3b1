"""Signals raise between tracking-store calls, never inside one (a half-done SQLite write)."""

import os
import signal

import pytest

from imgclf import interrupts


@pytest.fixture
def usr1_interrupts():
    previous = signal.signal(
        signal.SIGUSR1, lambda *_: interrupts.request(KeyboardInterrupt("usr1"))
    )
    yield
    signal.signal(signal.SIGUSR1, previous)


def test_signal_inside_a_shielded_call_is_raised_when_it_ends(usr1_interrupts):
    done = []
    with pytest.raises(KeyboardInterrupt, match="usr1"), interrupts.shielded():
        with interrupts.shielded():  # nested: only the outermost block delivers it
            os.kill(os.getpid(), signal.SIGUSR1)
            done.append("inner")
        done.append("outer")
    assert done == ["inner", "outer"]
    # Delivered once: a later shielded block runs to its end undisturbed.
    with interrupts.shielded():
        done.append("later")
    assert done[-1] == "later"


def test_signal_outside_is_raised_at_once(usr1_interrupts):
    done = []
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGUSR1)
        done.append("not reached")
    assert done == []
