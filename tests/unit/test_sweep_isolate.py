"""A job's child process: results and errors come back, a native crash is an exception here."""

from __future__ import annotations

import os
import signal

import pytest

from imgclf.config import ConfigError
from imgclf.sweeps.isolate import NativeCrashError, call_in_child


def _echo(value: int) -> tuple[int, str | None, str, int]:
    return value * 2, os.environ.get("ISOLATE_PROBE"), os.getcwd(), os.getpid()


def _fail() -> None:
    raise ConfigError("model.filters: must be >= 1")


def _segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _exit_without_result() -> None:
    os._exit(3)


def test_the_child_gets_the_callers_environment_and_folder_now(tmp_path, monkeypatch):
    # The fork server was forked earlier (by another test, or another job's env_set): the child
    # still takes the environment and working folder of the call.
    monkeypatch.setenv("ISOLATE_PROBE", "first")
    call_in_child(_echo, 0)
    monkeypatch.setenv("ISOLATE_PROBE", "second")
    monkeypatch.chdir(tmp_path)
    doubled, probe, cwd, pid = call_in_child(_echo, 21)
    assert (doubled, probe, cwd) == (42, "second", str(tmp_path))
    assert pid != os.getpid()


def test_an_error_in_the_child_is_raised_here_as_itself():
    with pytest.raises(ConfigError, match="model.filters"):
        call_in_child(_fail)


def test_a_native_crash_in_the_child_is_a_native_crash_error_naming_the_signal():
    with pytest.raises(NativeCrashError, match="died from SIGSEGV"):
        call_in_child(_segfault)
    with pytest.raises(NativeCrashError, match="exited with code 3 without a result"):
        call_in_child(_exit_without_result)
    assert call_in_child(_echo, 1)[0] == 2  # and the next call works as before
