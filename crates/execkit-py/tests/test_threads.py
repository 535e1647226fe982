"""Sessions in threads: in parallel, each its own shell, and the GIL
released while a command runs."""

from __future__ import annotations

import os
import threading
import time

from conftest import open_session

THREADS = 20
COMMANDS = 20


def test_twenty_threads_twenty_commands_each():
    errors = []
    outputs = {}
    ready = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        try:
            with open_session("local", env={"WORKER": str(t)}) as s:
                ready.wait(timeout=60)  # all open: the commands overlap
                got = []
                for i in range(COMMANDS):
                    r = s.run(f'n={i}; echo "$WORKER:$n:$((n * n))"')
                    assert r.exit_code == 0, r
                    got.append(r.output)
                outputs[t] = got
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((t, repr(e)))
            ready.abort()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert not any(th.is_alive() for th in threads), "a worker hangs"
    assert errors == []
    for t in range(THREADS):
        assert outputs[t] == [f"{t}:{i}:{i * i}" for i in range(COMMANDS)], t


def test_one_session_from_several_threads_takes_turns():
    with open_session("local") as s:
        s.run("count=0").check()
        errors = []

        def bump() -> None:
            try:
                for _ in range(10):
                    s.run("count=$((count + 1))").check()
            except BaseException as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        assert errors == []
        assert s.run("echo $count").output == "40"


def test_the_gil_is_released_while_a_command_runs(tmp_path):
    # The command ends only once this (main) thread has created `go`, which
    # it does after seeing `started` and doing Python work: if `run` held
    # the GIL, the main thread could not run until the command's timeout,
    # and the result would be timed out with the events in the other order.
    started = tmp_path / "started"
    go = tmp_path / "go"
    events = []
    result = {}

    with open_session("local") as s:

        def runner() -> None:
            r = s.run(
                f"touch {started}; while [ ! -e {go} ]; do sleep 0.02; done; echo done",
                timeout=20,
            )
            result["r"] = r
            events.append("command returned")

        th = threading.Thread(target=runner)
        th.start()
        end = time.monotonic() + 30
        while not started.exists() and time.monotonic() < end:
            time.sleep(0.01)
        # Python work while the command runs in the other thread.
        total = sum(i * i for i in range(200_000))
        assert total > 0
        events.append("main thread worked")
        go.touch()
        th.join(timeout=60)
        assert not th.is_alive()

    r = result["r"]
    assert not r.timed_out and r.exit_code == 0 and r.output == "done", r
    assert events == ["main thread worked", "command returned"]
    assert os.path.exists(started)
