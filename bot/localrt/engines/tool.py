"""External engine programs (apertium, espeak-ng) run as subprocesses with a deadline.

Every way such a run can fail (exit status aside: a hang past the deadline, a program that vanished
or cannot be started) becomes an :class:`EngineError`: the interpreter turns that into an `error`
event for the one segment, and the session goes on. A run is its own process group, so a hung
pipeline (``apertium`` is a shell script starting several programs) is killed whole, not orphaned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence

from bot.localrt.engines.asr import EngineError

TOOL_TIMEOUT_S = 30.0
"""Longest one engine program may run for one segment; its whole process group is killed after that."""


class EngineTimeout(EngineError):
    """An engine program ran past :data:`TOOL_TIMEOUT_S` and was killed."""


def _kill_group(proc: subprocess.Popen) -> None:
    """Only before ``proc`` is reaped, so its pid cannot have been reused for another group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_tool(
    name: str, cmd: Sequence[str], *, input: str | bytes | None = None, text: bool = False
) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion within :data:`TOOL_TIMEOUT_S`; raises nothing but :class:`EngineError`."""
    timeout = TOOL_TIMEOUT_S
    args = list(cmd)
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=text,
            start_new_session=True,  # its own process group: killed whole on timeout
        )
    except (OSError, ValueError) as exc:  # vanished, not executable, or a NUL byte in an argument
        raise EngineError(f"{name} could not run: {exc}") from None
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()  # reap it; the pipes close with the group
        raise EngineTimeout(f"{name} did not finish within {timeout:g} s (killed)") from None
    except BaseException:
        if proc.returncode is None:  # not reaped yet: its pid still names its group
            _kill_group(proc)
        proc.wait()
        raise
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
