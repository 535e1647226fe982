"""However a session ends — close(), the end of a `with`, garbage
collection, interpreter exit — its shell and everything it started are
gone from the target (checked from outside by the probe)."""

from __future__ import annotations

import asyncio
import gc
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import execkit
from conftest import open_session, shell_pid


def started_background(s: execkit.Session, probe) -> None:
    """A `sleep 300` left running in the background, seen from outside."""
    r = s.run("sleep 300 &")
    assert r.exit_code == 0, r
    procs = probe.wait_sleeps(s.marker, 1)
    assert len(procs) >= 2, procs  # the shell and the sleep


def test_close_kills_everything(target, probe):
    s = open_session(target)
    assert not s.closed and s.target == target and s.id and s.marker
    started_background(s, probe)
    marker = s.marker
    s.close()
    assert s.closed
    probe.wait_only(marker)
    s.close()  # again: nothing
    with pytest.raises(execkit.SessionClosed) as e:
        s.run("echo x")
    assert e.value.code == "closed"
    with pytest.raises(execkit.SessionClosed):
        s.poll()


def test_context_exit_kills_everything(target, probe):
    with open_session(target) as s:
        started_background(s, probe)
    assert s.closed
    probe.wait_only(s.marker)
    # Also when the block raises (and the exception goes on).
    with pytest.raises(RuntimeError, match="boom"):
        with open_session(target) as s2:
            started_background(s2, probe)
            raise RuntimeError("boom")
    assert s2.closed
    probe.wait_only(s2.marker)


def test_garbage_collected_session_is_closed(target, probe):
    s = open_session(target)
    started_background(s, probe)
    marker = s.marker
    del s
    gc.collect()
    # Closed in the background: poll until it is done (bounded).
    probe.wait_only(marker)


def test_interpreter_exit_closes_open_sessions(target, probe):
    # Two sessions left open: `a` as a script leaves one, `b` also never
    # freed (an extra reference), so only the exit hook can close it.
    code = textwrap.dedent(
        f"""
        import ctypes, sys, execkit
        a = execkit.Session({target!r}, journal=None, console=False)
        b = execkit.Session({target!r}, journal=None, console=False)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(b))
        for s in (a, b):
            r = s.run("sleep 300 &")
            assert r.exit_code == 0, r
        print(a.marker, b.marker, flush=True)
        sys.stdin.readline()
        # exits with both sessions open
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        markers = child.stdout.readline().split()
        assert len(markers) == 2, f"the child printed no markers (exit {child.poll()})"
        for m in markers:
            procs = probe.wait_sleeps(m, 1)
            assert len(procs) >= 2, procs
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    for m in markers:
        probe.wait_only(m)


def test_session_properties(target):
    with open_session(target) as s:
        pid = shell_pid(s)
        assert pid > 0
        assert len(s.marker) >= 8 and s.marker != s.id
        assert repr(s).startswith("Session(")
        s.resize(40, 120)
        assert s.run("stty size").output == "40 120"
        with pytest.raises(ValueError):
            s.resize(0, 10)


def test_ctrl_c_while_waiting_interrupts_the_command(target, probe):
    # SIGINT to a program blocked in run(): KeyboardInterrupt, after the
    # command (and what it started) was interrupted; the session goes on.
    code = textwrap.dedent(
        f"""
        import sys, execkit
        s = execkit.Session({target!r}, journal=None, console=False)
        print(s.marker, s.run("echo $$").output, flush=True)
        try:
            r = s.run("sleep 300 & sleep 300", timeout=60)
            print("returned", r.timed_out, flush=True)
        except KeyboardInterrupt:
            print("interrupted", s.running, s.run("echo $$").output, flush=True)
        s.close()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        marker, pid = child.stdout.readline().split()
        probe.wait_sleeps(marker, 2)
        child.send_signal(signal.SIGINT)
        line = child.stdout.readline().split()
        # The exception came (not the timeout), with the session free again
        # and the same shell.
        assert line == ["interrupted", "False", pid], line
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    probe.wait_only(marker)


def test_close_from_another_thread_lets_a_waiting_run_go(target, probe):
    s = open_session(target)
    got = {}

    def waiter() -> None:
        try:
            got["result"] = s.run("sleep 300 & sleep 300", timeout=60)
        except BaseException as e:  # noqa: BLE001 - checked below
            got["error"] = e

    th = threading.Thread(target=waiter)
    th.start()
    probe.wait_sleeps(s.marker, 2)
    s.close()
    th.join(timeout=60)
    assert not th.is_alive()
    assert isinstance(got.get("error"), execkit.SessionClosed), got
    assert s.closed
    probe.wait_only(s.marker)


def test_async_close_from_another_task_lets_a_waiting_run_go(target, probe):
    async def main():
        s = await execkit.AsyncSession(target, journal=None, console=False).open()
        task = asyncio.ensure_future(s.run("sleep 300 & sleep 300", timeout=60))
        await asyncio.to_thread(probe.wait_sleeps, s.marker, 2)
        await asyncio.wait_for(s.close(), 30)
        with pytest.raises(execkit.SessionClosed):
            await asyncio.wait_for(task, 30)
        assert s.closed
        await asyncio.to_thread(probe.wait_only, s.marker)

    asyncio.run(main())
