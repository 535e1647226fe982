"""The wheel's console script (`execkit`) and `python -m execkit`: the same
command as the Rust binary."""

from __future__ import annotations

import os
import subprocess
import sys

import execkit

SCRIPT = os.path.join(os.path.dirname(sys.executable), "execkit")


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SCRIPT, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_console_script_is_installed():
    assert os.access(SCRIPT, os.X_OK), SCRIPT


def test_exec_keeps_state_and_exits_zero():
    p = cli("exec", "--no-journal", "cd /tmp", "pwd")
    assert (p.returncode, p.stdout) == (0, "/tmp\n"), p


def test_exec_exit_status_is_the_commands():
    p = cli("exec", "--no-journal", "exit 3")
    assert p.returncode == 3, p


def test_exec_json():
    p = cli("exec", "--no-journal", "--json", "export A=1", "echo $A")
    assert p.returncode == 0, p
    import json

    rows = [json.loads(line) for line in p.stdout.splitlines()]
    assert [(r["command"], r["exit_code"], r["output"]) for r in rows] == [
        ("export A=1", 0, ""),
        ("echo $A", 0, "1"),
    ]


def test_help():
    p = cli("--help")
    assert p.returncode == 0, p
    assert "exec" in p.stdout and "transports" in p.stdout, p.stdout


def test_usage_error_exits_2():
    p = cli("exec", "--no-such-flag", "true")
    assert p.returncode == 2, p


def test_transports_lists_all_three():
    p = cli("transports")
    assert p.returncode == 0, p
    schemes = {line.split()[0] for line in p.stdout.splitlines() if line.strip()}
    assert {"local", "docker", "ssh"} <= schemes, p.stdout


def test_python_m_execkit_version():
    p = subprocess.run(
        [sys.executable, "-m", "execkit", "--version"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p
    assert execkit.__version__ in p.stdout, (p.stdout, execkit.__version__)
