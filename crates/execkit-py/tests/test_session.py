"""`Session` on every target: state, results, timeouts, interactive
commands, stdin, busy/idle."""

from __future__ import annotations

import os
import time

import pytest

import execkit
from conftest import open_session, shell_pid, target_of

RESULT_KEYS = {
    "command",
    "exit_code",
    "output",
    "cwd",
    "timed_out",
    "truncated",
    "output_path",
    "duration_ms",
    "restarted",
    "session_lost",
    "error",
    "running",
    "waiting_for_input",
}


def test_state_persists_between_commands(target):
    with open_session(target) as s:
        assert s.run("cd /tmp").exit_code == 0
        assert s.run("pwd").output == "/tmp"
        assert s.cwd == "/tmp"
        s.run("export EXECKIT_PY_VAR='a b'").check()
        assert s.run('echo "$EXECKIT_PY_VAR"').output == "a b"
        s.run('greet() { echo "hello $1"; }').check()
        assert s.run("greet py").output == "hello py"
        # A variable that is not exported persists too (one shell).
        s.run("plain=7").check()
        assert s.run('echo "$plain"').output == "7"


def test_run_result_fields(target):
    with open_session(target) as s:
        cmd = "cd /tmp; echo out; echo err >&2; sh -c 'exit 7'"
        r = s.run(cmd)
        assert r.command == cmd
        assert r.exit_code == 7
        assert not r.ok
        assert r.output == "out\nerr"
        assert r.cwd == "/tmp"
        assert not r.timed_out and not r.truncated and r.output_path is None
        assert not r.running and not r.restarted and not r.session_lost
        assert isinstance(r.duration_ms, int) and r.duration_ms >= 0
        d = r.to_dict()
        assert set(d) == RESULT_KEYS
        assert d["exit_code"] == 7 and d["output"] == "out\nerr" and d["cwd"] == "/tmp"

        slow = s.run("sleep 0.3")
        assert slow.ok and slow.exit_code == 0
        assert slow.duration_ms >= 300, slow

        # check(): the result itself when it succeeded, CommandFailed with
        # the result otherwise.
        assert slow.check() is slow
        with pytest.raises(execkit.CommandFailed) as e:
            r.check()
        assert not isinstance(e.value, execkit.CommandTimedOut)
        assert isinstance(e.value, execkit.Error)
        assert e.value.result is r
        assert e.value.code == "failed"
        assert "exited with 7" in str(e.value)


def test_output_over_the_limit_is_capped_and_spooled(target):
    with open_session(target, output_limit=200) as s:
        r = s.run("i=1; while [ $i -le 2000 ]; do echo line$i; i=$((i+1)); done")
        assert r.exit_code == 0
        assert r.truncated
        assert r.output_path is not None
        assert r.output.startswith("line1\n")
        assert r.output.endswith("line2000")
        assert len(r.output) < 2000, len(r.output)
        with open(r.output_path) as f:
            full = f.read().split()
        assert full == [f"line{i}" for i in range(1, 2001)]
        # Under the limit: whole, nothing spooled.
        small = s.run("echo short")
        assert small.output == "short" and not small.truncated and small.output_path is None


def test_timeout_kills_everything_the_command_started(target, probe):
    with open_session(target) as s:
        pid = shell_pid(s)
        # Yield first so the probe can see both sleeps running; the timeout
        # (counted from the start) fires during the poll.
        r = s.run("sleep 300 & sleep 300", timeout=3, yield_after=0.2)
        assert r.running
        probe.wait_sleeps(s.marker, 2)
        while r.running:
            r = s.poll(wait=5)
        assert r.timed_out, r
        assert r.exit_code is None
        probe.wait_only(s.marker, spare=(pid,))
        # The session goes on, with its state.
        s.run("cd /tmp").check()
        assert s.run("echo alive; pwd").output == "alive\n/tmp"
        assert shell_pid(s) == pid


def test_timeout_result_and_check(target, probe):
    with open_session(target) as s:
        pid = shell_pid(s)
        r = s.run("sleep 300 & sleep 300", timeout=1)
        assert r.timed_out and r.exit_code is None and not r.running
        assert not r.ok
        with pytest.raises(execkit.CommandTimedOut) as e:
            r.check()
        assert isinstance(e.value, execkit.CommandFailed)
        assert e.value.result is r
        assert e.value.code == "timed_out"
        probe.wait_only(s.marker, spare=(pid,))
        assert s.run("echo next").output == "next"


# The docker test container is busybox: it has no python3, so the REPL case
# runs on local and ssh only.
@pytest.mark.parametrize("name", ["local", "ssh"])
def test_interactive_repl_yield_poll_input_interrupt(name, probes):
    target = target_of(name)
    probe = probes(target)
    with open_session(target) as s:
        assert s.run("command -v python3").exit_code == 0, f"no python3 on {target}"
        pid = shell_pid(s)
        r = s.run("python3 -i -q", yield_after=0.5)
        assert r.running and r.exit_code is None and s.running
        seen = r.output

        def until(text: str) -> None:
            nonlocal seen
            end = time.monotonic() + 20
            while text not in seen:
                assert time.monotonic() < end, f"{text!r} never came: {seen!r}"
                p = s.poll(wait=0.5)
                assert p.running, p
                seen += p.output

        until(">>> ")
        seen = ""
        s.send_input("x = 6 * 7\n")
        s.send_input("print(x + 1)\n")
        until("43")
        # The REPL keeps its state between inputs.
        seen = ""
        s.send_input("print(x * 2)\n")
        until("84")
        # Busy meanwhile.
        with pytest.raises(execkit.SessionBusy):
            s.run("echo no")
        s.send_input("import time; time.sleep(300)\n")
        r = s.interrupt()
        assert not r.running and not s.running
        assert r.exit_code != 0
        probe.wait_only(s.marker, spare=(pid,))
        assert s.run("echo back").output == "back"


def test_stdin_bytes_and_text(target):
    with open_session(target) as s:
        r = s.run("cat", stdin=b"abc\ndef\n")
        assert r.exit_code == 0 and r.output == "abc\ndef"
        data = bytes(range(256)) * 4
        assert s.run("wc -c", stdin=data).output.strip() == str(len(data))
        assert s.run("wc -c", stdin=bytearray(b"12345")).output.strip() == "5"
        # Text goes as UTF-8.
        assert s.run("wc -c", stdin="h\u00e9llo").output.strip() == "6"
        # stdin ends: a reader sees EOF and the command ends.
        assert s.run("cat; echo done", stdin=b"x").output == "xdone"


def test_busy_and_no_command_running(target):
    with open_session(target) as s:
        for call in (s.poll, s.interrupt, lambda: s.send_input("x\n")):
            with pytest.raises(execkit.NoCommandRunning) as e:
                call()
            assert e.value.code == "idle"
            assert isinstance(e.value, execkit.Error)
        r = s.run("sleep 300", yield_after=0.2)
        assert r.running and s.running
        with pytest.raises(execkit.SessionBusy) as e:
            s.run("echo x")
        assert e.value.code == "busy"
        r = s.interrupt()
        assert not r.running and not s.running and r.exit_code != 0
        assert s.run("echo ok").output == "ok"


def test_the_wheel_is_what_is_tested():
    # The installed package, not the source tree.
    src = os.path.join("crates", "execkit-py", "python")
    assert src not in execkit.__file__, execkit.__file__
    assert "site-packages" in execkit.__file__, execkit.__file__
    assert execkit._execkit.__file__.endswith(".abi3.so"), execkit._execkit.__file__
    assert {t.scheme for t in execkit.transports()} == {"local", "docker", "ssh"}


def test_env_cwd_and_size_settings(target):
    with open_session(target, env={"EXECKIT_PY_SETTING": "x y"}, cwd="/tmp", size=(30, 100)) as s:
        assert s.cwd == "/tmp"
        r = s.run('echo "$EXECKIT_PY_SETTING"; pwd; stty size')
        assert r.output == "x y\n/tmp\n30 100", r


def test_input_wait_stop_and_yield(target):
    with open_session(target) as s:
        r = s.run("read x", input_wait="stop", timeout=60)
        assert r.waiting_for_input and not r.running, r
        assert not s.running
        assert s.run("echo next").output == "next"
        r = s.run('read x; echo "got $x"', input_wait="yield", timeout=60)
        assert r.running and r.waiting_for_input, r
        s.send_input("hi\n")
        out = ""
        while r.running:
            r = s.poll(wait=5)
            out += r.output
        assert r.exit_code == 0 and out.strip() == "got hi", (r, out)
