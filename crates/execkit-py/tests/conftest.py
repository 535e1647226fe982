"""Fixtures of the pytest suite of the installed `execkit` wheel.

`cargo xtask test` builds the wheel, installs it into a fresh venv and runs
this suite there while its test daemons are up; their whereabouts come in
the same variables the Rust tests read:

- `EXECKIT_TEST_DOCKER_CONTAINER` (+ `DOCKER_HOST`): a running busybox
  container (`--init`, no python3 in it);
- `EXECKIT_TEST_SSH_URL`, `EXECKIT_TEST_SSH_DIR` (its keys, among them
  `wrong_ed25519.pub`): a private sshd on loopback.

A target whose infrastructure is missing is skipped, and under `CI=true`
(or `1`) fails, as in the Rust suites (`testkit::unprovisioned`).

Processes are checked from outside, as the Rust conformance suite does: a
second session on the same target (the probe) lists every process whose
environment carries `EXECKIT_SID=<marker>` of the session under test.

With `EXECKIT_PYTEST_COUNTS=PATH` the run's passed/failed/skipped counts
are written to PATH as JSON (for xtask's results table).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import pytest

# Session records and the default journal go to a private state directory,
# never the user's (set before any session opens; child processes such as
# the console script inherit it).
_STATE = tempfile.mkdtemp(prefix="execkit-pytest-state-")
os.environ["XDG_STATE_HOME"] = _STATE

import execkit  # noqa: E402

TARGETS = ("local", "docker", "ssh")

# How long a probe waits for processes to appear or go (killed processes
# may take a moment to be reaped; a garbage-collected session closes in
# the background).
SETTLE = 10.0


def ci() -> bool:
    return os.environ.get("CI") in ("true", "1")


def unprovisioned(reason: str) -> None:
    """Skips the test, or fails it under CI=true."""
    if ci():
        pytest.fail(f"{reason} (required under CI=true)", pytrace=False)
    pytest.skip(reason)


def target_of(name: str) -> str:
    """The target string of transport `name`, skipping (failing under CI)
    when its daemon was not provisioned."""
    if name == "local":
        return "local"
    if name == "docker":
        c = os.environ.get("EXECKIT_TEST_DOCKER_CONTAINER", "")
        if not c:
            unprovisioned("no test container (EXECKIT_TEST_DOCKER_CONTAINER); run cargo xtask test")
        return f"docker:{c}"
    if name == "ssh":
        url = os.environ.get("EXECKIT_TEST_SSH_URL", "")
        if not url:
            unprovisioned("no test sshd (EXECKIT_TEST_SSH_URL); run cargo xtask test")
        return url
    raise ValueError(name)


def open_session(target: str, **kw) -> execkit.Session:
    """A session that writes no journal and mirrors to no console."""
    kw.setdefault("journal", None)
    kw.setdefault("console", False)
    return execkit.Session(target, **kw)


@pytest.fixture(params=TARGETS)
def target(request) -> str:
    """Each transport's test target in turn."""
    return target_of(request.param)


def _scan(marker: str) -> str:
    # One line `PID CMDLINE` per process carrying the marker: one grep over
    # every environment (NUL-separated entries, whole-entry match; GNU and
    # busybox grep alike), then the command lines of those that matched.
    return (
        "for f in $(grep -lxFzs 'EXECKIT_SID=" + marker + "' /proc/[0-9]*/environ); do "
        'd="${f%/environ}"; '
        "printf '%s %s\\n' \"${d#/proc/}\" \"$(tr '\\000' ' ' < \"$d/cmdline\" 2>/dev/null)\"; done"
    )


class Probe:
    """A second session on a target that lists another session's
    processes."""

    def __init__(self, target: str) -> None:
        self.session = open_session(target)

    def marked(self, marker: str) -> List[Tuple[int, str]]:
        assert marker, "no marker"
        r = self.session.run(_scan(marker), timeout=30)
        assert r.exit_code == 0, f"process probe failed: {r!r}"
        out = []
        for line in r.output.splitlines():
            pid, _, cmd = line.partition(" ")
            if pid.isdigit():
                out.append((int(pid), cmd.strip()))
        return out

    def wait_for(
        self,
        marker: str,
        ok: Callable[[List[Tuple[int, str]]], bool],
        what: str,
        limit: float = SETTLE,
    ) -> List[Tuple[int, str]]:
        """Probes until `ok(processes)` holds; fails after `limit` s."""
        end = time.monotonic() + limit
        while True:
            procs = self.marked(marker)
            if ok(procs):
                return procs
            if time.monotonic() > end:
                pytest.fail(f"{what}: after {limit} s the processes of {marker} are {procs}")
            time.sleep(0.1)

    def wait_sleeps(self, marker: str, n: int = 2) -> List[Tuple[int, str]]:
        """Waits until `n` `sleep 300` of the session run (exec'd, so their
        command line shows)."""
        return self.wait_for(
            marker,
            lambda ps: sum(1 for _, c in ps if c == "sleep 300") >= n,
            f"{n} `sleep 300` never showed up",
        )

    def wait_only(self, marker: str, spare: Tuple[int, ...] = ()) -> None:
        """Waits until no process of `marker` but `spare` is left."""
        self.wait_for(
            marker,
            lambda ps: all(p in spare for p, _ in ps),
            f"processes left beside {list(spare)}",
        )


@pytest.fixture(scope="session")
def probes():
    """One probe session per target, shared by the whole run."""
    made: Dict[str, Probe] = {}

    def get(target: str) -> Probe:
        if target not in made:
            made[target] = Probe(target)
        return made[target]

    yield get
    for p in made.values():
        p.session.close()


@pytest.fixture
def probe(target, probes) -> Probe:
    """The probe of this test's target."""
    return probes(target)


def shell_pid(s: execkit.Session) -> int:
    r = s.run("echo $$")
    assert r.exit_code == 0, r
    return int(r.output.strip())


# ---- counts for xtask ------------------------------------------------------

_outcomes: Dict[str, str] = {}


def pytest_runtest_logreport(report) -> None:
    # One outcome per test: a failure in any phase (setup, call, teardown)
    # fails it; a skip in setup or call skips it.
    prev = _outcomes.get(report.nodeid)
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped and prev != "failed":
        _outcomes[report.nodeid] = "skipped"
    elif report.when == "call" and report.passed and prev is None:
        _outcomes[report.nodeid] = "passed"


def pytest_collectreport(report) -> None:
    if report.failed:
        _outcomes["collect:" + report.nodeid] = "failed"


def pytest_sessionfinish(session, exitstatus) -> None:
    path = os.environ.get("EXECKIT_PYTEST_COUNTS")
    if not path:
        return
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for outcome in _outcomes.values():
        counts[outcome] += 1
    counts["exitstatus"] = int(exitstatus)
    with open(path, "w") as f:
        json.dump(counts, f)


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_STATE, ignore_errors=True)
