"""`AsyncSession` on every target: runs, and a cancelled task leaves
nothing of its command running."""

from __future__ import annotations

import asyncio

import pytest

import execkit


def new(target: str) -> execkit.AsyncSession:
    return execkit.AsyncSession(target, journal=None, console=False)


def test_async_session_runs_with_state(target):
    async def main():
        s = new(target)
        assert s.closed
        with pytest.raises(execkit.SessionClosed) as e:
            await s.run("echo early")
        assert e.value.code == "not_open"
        async with s:
            assert not s.closed and s.marker
            assert (await s.run("cd /tmp")).exit_code == 0
            await s.run("export X=async")
            r = await s.run('echo "$X"; pwd')
            assert r.output == "async\n/tmp" and r.cwd == "/tmp" and s.cwd == "/tmp"
            r = await s.run("sh -c 'exit 4'")
            assert r.exit_code == 4
            r = await s.run("cat", stdin=b"in")
            assert r.output == "in"
            r = await s.run("sleep 300", yield_after=0.2)
            assert r.running and s.running
            with pytest.raises(execkit.SessionBusy):
                await s.run("echo x")
            r = await s.interrupt()
            assert not r.running
        assert s.closed
        with pytest.raises(execkit.SessionClosed):
            await s.run("echo late")

    asyncio.run(main())


def test_async_sessions_run_concurrently(target):
    # Two sessions on one loop: both commands wait on each other's marker
    # file, so they can only finish if they run at the same time.
    async def main():
        async with new(target) as a, new(target) as b:
            d = (await a.run("mktemp -d")).output
            ra, rb = await asyncio.gather(
                a.run(f"touch {d}/a; while [ ! -e {d}/b ]; do sleep 0.05; done; echo a", timeout=30),
                b.run(f"touch {d}/b; while [ ! -e {d}/a ]; do sleep 0.05; done; echo b", timeout=30),
            )
            assert (ra.output, rb.output) == ("a", "b"), (ra, rb)
            assert not ra.timed_out and not rb.timed_out
            await a.run(f"rm -r {d}")

    asyncio.run(main())


def test_cancelled_task_leaves_no_process(target, probe):
    async def main():
        s = await new(target).open()
        try:
            pid = int((await s.run("echo $$")).output)
            task = asyncio.ensure_future(s.run("sleep 300 & sleep 300"))
            # Both sleeps run (seen from outside) before the task is cancelled.
            await asyncio.to_thread(probe.wait_sleeps, s.marker, 2)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(task, 0.2)
            assert task.cancelled()
            # The interrupt of the cancelled command holds the session: the
            # next call returns once it is done (bounded here: were the
            # command not interrupted, it would wait for the sleeps).
            r = await asyncio.wait_for(s.run("echo after"), 60)
            assert r.output == "after" and r.exit_code == 0
            await asyncio.to_thread(probe.wait_only, s.marker, (pid,))
            assert int((await s.run("echo $$")).output) == pid
        finally:
            # Bounded too, for the same reason.
            await asyncio.wait_for(s.close(), 60)

    asyncio.run(main())
