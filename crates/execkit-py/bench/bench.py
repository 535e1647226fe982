"""The Python rows of `cargo xtask bench`: execkit's `Session.run` next to
pexpect with a fixed prompt and SWE-ReX's in-process `LocalRuntime`, and
many threads driving many sessions from one interpreter.

Run by `execkit-bench` (which `cargo xtask bench` runs) with the python of
a fresh venv holding the execkit wheel, pexpect and swe-rex. Every mode
prints JSON on stdout; times are in seconds.

    python bench.py versions
    python bench.py execkit N           N round trips of `true` (after 20 warm-up)
    python bench.py serve               round trips on request, see below
    python bench.py pexpect N [DELAY]   pexpect, fixed prompt (DELAY: its delaybeforesend; 'none' for no delay)
    python bench.py swerex N            SWE-ReX LocalRuntime bash session
    python bench.py swerex-remote SPEC  SWE-ReX RemoteRuntime against servers, see below
    python bench.py threads T C         T threads, each its own session, C commands each
    python bench.py profile N           profiling aid: costs per call (see `profile`)

`serve` opens one warm session and, for each line `K` read on stdin, runs
one untimed round trip (the process was idle), then K timed ones, printed
as one JSON line: the caller alternates these blocks with its own samples
so both see the same minute of the machine. An empty line or EOF ends it.

`swerex-remote` drives running SWE-ReX servers with the official client,
`RemoteRuntime`, from this one process: SPEC is JSON, `{"n": N, "block":
B, "files": F, "bytes": S, "servers": [{"name", "url", "dir"}, ...]}`, the
API key in EXECKIT_BENCH_SWEREX_TOKEN. It times N round trips of
`run_in_session(BashAction(command="true"))` per server in blocks of B,
the servers taking turns block by block (who goes first alternates), then
F rounds of `write_file` and `read_file` of S bytes of text in the
server's `dir` (read back and compared), again taking turns; warm-up
calls first, untimed. A call that raises (or answers wrongly) is counted
under `errors` with the first message, not timed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

WARM_UP = 20


def out(value: object) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def versions() -> dict:
    from importlib.metadata import version

    v = {"python": sys.version.split()[0]}
    try:
        import execkit

        v["execkit"] = execkit.__version__
    except ImportError:  # a venv for the SWE-ReX rows alone: no wheel
        pass
    for dist in ("pexpect", "swe-rex", "aiohttp", "fastapi", "uvicorn"):
        try:
            v[dist] = version(dist)
        except Exception:  # not installed: its rows are skipped
            v[dist] = None
    return v


def session():
    import execkit

    # No journal, no console mirror: the same engine work as the Rust row.
    return execkit.Session("local", journal=None, console=False)


def time_true(s, n: int) -> list:
    samples = []
    clock = time.perf_counter
    for _ in range(n):
        t = clock()
        r = s.run("true")
        samples.append(clock() - t)
        if r.exit_code != 0:
            raise RuntimeError(f"`true` did not succeed: {r!r}")
    return samples


def execkit_round_trips(n: int) -> dict:
    with session() as s:
        time_true(s, WARM_UP)
        return {"samples_s": time_true(s, n)}


def serve() -> None:
    with session() as s:
        time_true(s, WARM_UP)
        out({"ready": True})
        for line in sys.stdin:
            line = line.strip()
            if not line:
                break
            time_true(s, 1)  # untimed: this process has been idle
            out({"samples_s": time_true(s, int(line))})


def pexpect_round_trips(n: int, delay: float | None) -> dict:
    import pexpect

    prompt = "__PEXPECT_PROMPT__> "
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "TERM": "dumb", "PS1": prompt, "PS2": ""}
    p = pexpect.spawn(
        "/bin/bash",
        ["--norc", "--noprofile"],
        env=env,
        encoding="utf-8",
        echo=False,
    )
    try:
        p.delaybeforesend = delay
        p.expect_exact(prompt, timeout=20)

        def once() -> float:
            t = time.perf_counter()
            p.sendline("true")
            p.expect_exact(prompt, timeout=20)
            return time.perf_counter() - t

        for _ in range(min(WARM_UP, n)):
            once()
        return {"samples_s": [once() for _ in range(n)]}
    finally:
        p.close(force=True)


def swerex_round_trips(n: int) -> dict:
    from swerex.runtime.abstract import BashAction, CloseBashSessionRequest, CreateBashSessionRequest
    from swerex.runtime.local import LocalRuntime

    async def main() -> list:
        runtime = LocalRuntime()
        await runtime.create_session(CreateBashSessionRequest())
        try:

            async def once() -> float:
                t = time.perf_counter()
                o = await runtime.run_in_session(BashAction(command="true"))
                d = time.perf_counter() - t
                if o.exit_code != 0:
                    raise RuntimeError(f"`true` did not succeed: {o!r}")
                return d

            for _ in range(min(3, n)):
                await once()
            return [await once() for _ in range(n)]
        finally:
            await runtime.close_session(CloseBashSessionRequest())
            await runtime.close()

    return {"samples_s": asyncio.run(main())}


def swerex_remote(spec: dict) -> dict:
    import contextlib
    import logging
    import os
    from urllib.parse import urlsplit

    from swerex.runtime.abstract import (
        BashAction,
        CloseBashSessionRequest,
        CreateBashSessionRequest,
        ReadFileRequest,
        WriteFileRequest,
    )
    from swerex.runtime.remote import RemoteRuntime

    token = os.environ["EXECKIT_BENCH_SWEREX_TOKEN"]
    # Text like a source file or a log: 50-byte ASCII lines.
    line = "0123456789" * 4 + "abcdefghi\n"
    size = int(spec["bytes"])
    content = (line * (size // len(line) + 1))[:size]
    clock = time.perf_counter
    ops = ("run_in_session", "write_file", "read_file")

    class Server:
        def __init__(self, s: dict) -> None:
            url = urlsplit(s["url"])
            self.name = s["name"]
            self.rt = RemoteRuntime(host=f"http://{url.hostname}", port=url.port, auth_token=token)
            self.path = os.path.join(s["dir"], "bench-text.txt")
            self.samples: dict = {op: [] for op in ops}
            self.errors: dict = {}

        async def call(self, op: str, timed: bool) -> None:
            t = clock()
            try:
                if op == "run_in_session":
                    r = await self.rt.run_in_session(BashAction(command="true"))
                    d = clock() - t
                    wrong = None if r.exit_code == 0 else f"exit code {r.exit_code!r}"
                elif op == "write_file":
                    await self.rt.write_file(WriteFileRequest(content=content, path=self.path))
                    d = clock() - t
                    wrong = None
                else:
                    r = await self.rt.read_file(ReadFileRequest(path=self.path))
                    d = clock() - t
                    wrong = None if r.content == content else f"read back {len(r.content)} characters, not what was written"
            except Exception as e:  # counted, not fatal: the other server goes on
                wrong = f"{type(e).__name__}: {e}"
            if wrong is not None:
                e = self.errors.setdefault(op, {"count": 0, "first": wrong})
                e["count"] += 1
            elif timed:
                self.samples[op].append(d)

    servers = [Server(s) for s in spec["servers"]]
    n, block, files = int(spec["n"]), int(spec["block"]), int(spec["files"])

    async def main() -> None:
        for s in servers:
            await s.rt.create_session(CreateBashSessionRequest())
            for _ in range(5):
                await s.call("run_in_session", timed=False)
        done = 0
        while done < n:
            k = min(block, n - done)
            order = servers if (done // block) % 2 == 0 else servers[::-1]
            for s in order:
                for _ in range(k):
                    await s.call("run_in_session", timed=True)
            done += k
        for i in range(files + 1):  # round 0: warm-up
            order = servers if i % 2 == 0 else servers[::-1]
            for s in order:
                await s.call("write_file", timed=i > 0)
                await s.call("read_file", timed=i > 0)
        for s in servers:
            with contextlib.suppress(Exception):
                await s.rt.close_session(CloseBashSessionRequest())

    # RemoteRuntime prints a re-raised exception's class on stdout, which
    # carries this mode's JSON; its log goes to stderr.
    logging.getLogger("rex-runtime").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(sys.stderr):
        asyncio.run(main())
    return {s.name: {"samples_s": s.samples, "errors": s.errors} for s in servers}


def threads(n_threads: int, n_commands: int) -> dict:
    """`n_threads` threads of this interpreter, each opening its own
    session (timed: `open_s`, until the last is open) and then, all open,
    running `n_commands` commands whose output is checked (timed:
    `commands_s`, until the last command ends); closing is not timed. The
    same phases as the Rust load in `execkit-bench`."""
    results: list = [None] * n_threads
    errors: list = []
    opened = threading.Barrier(n_threads + 1)

    def worker(i: int) -> None:
        try:
            try:
                s = session()
            finally:
                opened.wait()
            ok = True
            for k in range(n_commands):
                r = s.run(f"echo $(({i} * 1000 + {k}))")
                ok = ok and r.exit_code == 0 and r.output == str(i * 1000 + k)
            results[i] = (s, ok)
        except BaseException as e:  # reported, not lost in the thread
            errors.append(f"thread {i}: {e!r}")

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    t = time.perf_counter()
    for w in workers:
        w.start()
    opened.wait()
    open_s = time.perf_counter() - t
    for w in workers:
        w.join()
    commands_s = time.perf_counter() - t - open_s
    all_correct = not errors and all(r is not None and r[1] for r in results)
    for r in results:
        if r is not None:
            r[0].close()
    return {
        "threads": n_threads,
        "commands_each": n_commands,
        "open_s": open_s,
        "commands_s": commands_s,
        "all_correct": all_correct,
        "errors": errors[:5],
    }


def profile(n: int) -> dict:
    """Profiling aid: per call of `Session.run("true")` from the main
    thread and from another thread, the p50 latency and this process's CPU
    time (shells excluded) and voluntary context switches; and the calls
    that cross into Rust without waiting on the shell: a getter (`cwd`, the
    GIL kept) and `resize` (the GIL released, `block_on` of a future that
    is ready at once)."""
    import resource

    def usage():
        u = resource.getrusage(resource.RUSAGE_SELF)
        return u.ru_utime + u.ru_stime, u.ru_nvcsw

    def measure(call) -> dict:
        call()
        samples = []
        clock = time.perf_counter
        c0, v0 = usage()
        for _ in range(n):
            t = clock()
            call()
            samples.append(clock() - t)
        c1, v1 = usage()
        samples.sort()
        return {
            "p50_us": samples[len(samples) // 2] * 1e6,
            "cpu_us": (c1 - c0) / n * 1e6,
            "vol_ctx": (v1 - v0) / n,
        }

    out_: dict = {}
    with session() as s:
        time_true(s, WARM_UP)
        out_["run_main_thread"] = measure(lambda: s.run("true"))
        t = threading.Thread(target=lambda: out_.setdefault("run_other_thread", measure(lambda: s.run("true"))))
        t.start()
        t.join()
        out_["cwd_getter"] = measure(lambda: s.cwd)
        out_["resize"] = measure(lambda: s.resize(24, 80))
    return out_


def main(argv: list) -> None:
    mode = argv[0] if argv else ""
    if mode == "versions":
        out(versions())
    elif mode == "execkit":
        out(execkit_round_trips(int(argv[1])))
    elif mode == "serve":
        serve()
    elif mode == "pexpect":
        delay = 0.05 if len(argv) < 3 else (None if argv[2] == "none" else float(argv[2]))
        out(pexpect_round_trips(int(argv[1]), delay))
    elif mode == "swerex":
        out(swerex_round_trips(int(argv[1])))
    elif mode == "swerex-remote":
        out(swerex_remote(json.loads(argv[1])))
    elif mode == "profile":
        out(profile(int(argv[1])))
    elif mode == "threads":
        out(threads(int(argv[1]), int(argv[2])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
