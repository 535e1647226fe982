"""SWE-ReX's official client (swe-rex 1.4: RemoteRuntime, RemoteDeployment)
against a running `execkit swerex`.

argv: PORT TOKEN TARGET EXECKIT REPORT
  TARGET   the server's --target (what a probe session opens too)
  EXECKIT  the execkit binary, for probes that look at the target from a
           session of their own
  REPORT   where to write what the caller checks after SIGTERM (JSON)

Exits non-zero (a traceback) on the first case that fails.
"""

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid

import aiohttp
from swerex.deployment.remote import RemoteDeployment
from swerex.exceptions import (
    BashIncorrectSyntaxError,
    CommandTimeoutError,
    NonZeroExitCodeError,
    SessionDoesNotExistError,
    SessionExistsError,
)
from swerex.runtime.abstract import (
    BashAction,
    BashInterruptAction,
    CloseBashSessionRequest,
    Command,
    CreateBashSessionRequest,
    ReadFileRequest,
    UploadRequest,
    WriteFileRequest,
)
from swerex.runtime.remote import RemoteRuntime

PORT, TOKEN, TARGET, EXECKIT, REPORT = sys.argv[1:6]
BASE = f"http://127.0.0.1:{PORT}"
LOCAL = TARGET.startswith("local")
DIR = f"/tmp/execkit-swerex-test-{uuid.uuid4().hex[:8]}"


def step(name):
    print(f"--- {name}", flush=True)


def runtime(token=TOKEN):
    return RemoteRuntime(host="http://127.0.0.1", port=int(PORT), auth_token=token, timeout=10)


async def raises(cls, coro):
    try:
        await coro
    except cls as e:
        return e
    raise AssertionError(f"{cls.__name__} was not raised")


def probe(sid, shell_pid):
    """Processes on the target carrying the session marker `sid`, other
    than its shell: looked at from a session of its own."""
    script = (
        "for p in /proc/[0-9]*; do "
        "if tr '\\0' '\\n' 2>/dev/null < \"$p/environ\" | grep -qx 'EXECKIT_SID=" + sid + "'; "
        "then echo \"${p#/proc/}\"; fi; done; true"
    )
    out = subprocess.run(
        [EXECKIT, "exec", "--no-journal", "--json", "--target", TARGET, script],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out
    pids = json.loads(out.stdout.splitlines()[-1])["output"].split()
    return [p for p in pids if p != str(shell_pid)]


async def marker_of(rt, session):
    obs = await rt.run_in_session(BashAction(command='echo "$EXECKIT_SID $$"', session=session))
    sid, pid = obs.output.split()
    return sid, pid


async def http_and_auth():
    step("routes, the API key")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{BASE}/", headers={"X-API-Key": TOKEN}) as r:
            assert r.status == 200, r.status
            assert "message" in await r.json()
        async with s.get(f"{BASE}/is_alive") as r:
            assert r.status == 403, r.status
            assert (await r.json()) == {"detail": "Not authenticated"}
        async with s.post(f"{BASE}/run_in_session", json={"command": "true"}) as r:
            assert r.status == 403, r.status
        async with s.get(f"{BASE}/is_alive", headers={"X-API-Key": TOKEN + "x"}) as r:
            assert r.status == 401, r.status
            assert (await r.json()) == {"detail": "Invalid API Key"}
        async with s.get(f"{BASE}/is_alive", headers={"X-API-Key": TOKEN[:-1]}) as r:
            assert r.status == 401, r.status
        async with s.get(f"{BASE}/nope", headers={"X-API-Key": TOKEN}) as r:
            assert r.status == 404, r.status
        async with s.get(f"{BASE}/execute", headers={"X-API-Key": TOKEN}) as r:
            assert r.status == 405, r.status
        async with s.post(f"{BASE}/execute", headers={"X-API-Key": TOKEN}, json={"cwd": "/"}) as r:
            assert r.status == 422, r.status
    wrong = runtime("wrong-token")
    alive = await wrong.is_alive()
    assert not alive and "401" in alive.message, alive
    e = await raises(aiohttp.ClientResponseError, wrong.run_in_session(BashAction(command="true")))
    assert e.status == 401, e


async def bash_sessions(rt):
    step("create_session")
    assert await rt.is_alive()
    r = await rt.create_session(CreateBashSessionRequest())
    assert r.output == "", r
    await raises(SessionExistsError, rt.create_session(CreateBashSessionRequest()))
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write("export FROM_STARTUP=yes\necho sourced\n")
    await rt.upload(UploadRequest(source_path=f.name, target_path=f"{DIR}/startup.sh"))
    os.unlink(f.name)
    r = await rt.create_session(
        CreateBashSessionRequest(session="with startup", startup_source=[f"{DIR}/startup.sh"], startup_timeout=20)
    )
    assert r.output == "sourced\n", r
    obs = await rt.run_in_session(BashAction(command="echo $FROM_STARTUP", session="with startup"))
    assert obs.output == "yes\n", obs
    await rt.close_session(CloseBashSessionRequest(session="with startup"))

    step("output as SWE-ReX clients expect it")
    cases = [
        ("printf hi", "hi"),
        ("echo hi", "hi\n"),
        ("printf 'hi\\n\\n'", "hi\n\n"),
        ("echo a\necho b", "a\nb\n"),
        ("cat <<'EOF'\nx $y\n  z\nEOF", "x $y\n  z\n"),
        ("# only a comment", ""),
        ("", ""),
        ("echo one # and a comment\n\n# another\necho two", "one\ntwo\n"),
        ("printf 'a\\r\\nb\\rc\\n'", "a\nb\rc\n"),
        ("echo out; echo err >&2", "out\nerr\n"),
        ("printf '\\033[1;31mred\\033[0m\\n'", "red\n"),
        ("true", ""),
    ]
    for cmd, want in cases:
        obs = await rt.run_in_session(BashAction(command=cmd, timeout=20))
        assert obs.output == want, (cmd, obs)
        assert obs.exit_code == 0, (cmd, obs)
    obs = await rt.run_in_session(BashAction(command="cd /tmp && export KEPT=1"))
    obs = await rt.run_in_session(BashAction(command="pwd; echo $KEPT"))
    assert obs.output == "/tmp\n1\n", obs

    step("check, error_msg")
    e = await raises(NonZeroExitCodeError, rt.run_in_session(BashAction(command="echo no; false", error_msg="it broke")))
    assert str(e).startswith("it broke: ") and "exited with 1" in str(e), e
    obs = await rt.run_in_session(BashAction(command="(exit 3)", check="silent"))
    assert obs.exit_code == 3, obs
    obs = await rt.run_in_session(BashAction(command="(exit 3)", check="ignore"))
    assert obs.exit_code is None, obs

    step("syntax errors: refused, nothing run")
    mark = f"{DIR}/syntax-ran"
    for cmd in ["if", "echo 'unterminated", f"touch {mark}\nfi"]:
        e = await raises(BashIncorrectSyntaxError, rt.run_in_session(BashAction(command=cmd)))
        assert set(e.extra_info) >= {"bash_stdout", "bash_stderr"}, e.extra_info
        assert e.extra_info["bash_stderr"].startswith("bash: line"), e.extra_info
    r = await rt.execute(Command(command=["sh", "-c", f"test -e {mark}; echo $?"]))
    assert r.stdout == "1\n", r

    step("a timed-out command leaves nothing running")
    sid, shell = await marker_of(rt, "default")
    t = time.monotonic()
    await raises(
        CommandTimeoutError,
        rt.run_in_session(BashAction(command="sh -c 'sleep 300 & sleep 301'; echo never", timeout=1)),
    )
    assert time.monotonic() - t < 15, time.monotonic() - t
    assert probe(sid, shell) == [], probe(sid, shell)
    obs = await rt.run_in_session(BashAction(command="echo $KEPT; pwd"))
    assert obs.output == "1\n/tmp\n", obs

    step("interrupt")
    running = asyncio.create_task(
        rt.run_in_session(BashAction(command="sleep 200", timeout=120, check="silent"))
    )
    deadline = time.monotonic() + 60
    # The probe runs in a thread: the request above goes out meanwhile.
    while not await asyncio.to_thread(probe, sid, shell):
        assert time.monotonic() < deadline, "sleep never started"
    t = time.monotonic()
    obs = await rt.run_in_session(BashInterruptAction())
    assert obs.exit_code == 0, obs
    ran = await asyncio.wait_for(running, 30)
    assert ran.exit_code != 0, ran
    assert time.monotonic() - t < 15
    assert probe(sid, shell) == []
    obs = await rt.run_in_session(BashInterruptAction())
    assert obs.output == "" and obs.exit_code == 0, obs
    obs = await rt.run_in_session(BashAction(command="echo after"))
    assert obs.output == "after\n", obs

    step("interrupt of less (it takes Ctrl-C and runs on)")
    await rt.run_in_session(BashAction(command=f"mkdir -p {DIR} && seq 1 2000 > {DIR}/long.txt"))
    paging = asyncio.create_task(
        rt.run_in_session(BashAction(command=f"less {DIR}/long.txt", timeout=120, check="silent"))
    )
    deadline = time.monotonic() + 60
    while not await asyncio.to_thread(probe, sid, shell):
        assert time.monotonic() < deadline, "less never started"
    obs = await rt.run_in_session(BashInterruptAction())
    assert obs.exit_code == 0, obs
    await asyncio.wait_for(paging, 30)
    assert probe(sid, shell) == []
    obs = await rt.run_in_session(BashAction(command="echo after less"))
    assert obs.output == "after less\n", obs

    step("expect: a command that stops at a pattern, then reads a line")
    obs = await rt.run_in_session(
        BashAction(command="printf 'a\\nPROMPT> '; read x; echo got $x", expect=["PROMPT> "], timeout=30, check="silent")
    )
    assert obs.output == "a\n" and obs.expect_string == "PROMPT> " and obs.exit_code is None, obs
    obs = await rt.run_in_session(BashAction(command="hello", is_interactive_command=True, timeout=30))
    assert obs.output == "got hello", obs
    obs = await rt.run_in_session(BashAction(command="echo $KEPT"))
    assert obs.output == "1\n", obs

    step("unknown sessions")
    await raises(SessionDoesNotExistError, rt.run_in_session(BashAction(command="true", session="nope")))
    await raises(SessionDoesNotExistError, rt.close_session(CloseBashSessionRequest(session="nope")))
    await raises(SessionDoesNotExistError, rt.run_in_session(BashInterruptAction(session="nope")))


async def interactive(rt):
    step("interactive python3")
    await rt.create_session(CreateBashSessionRequest(session="py"))
    obs = await rt.run_in_session(
        BashAction(command="python3", session="py", is_interactive_command=True, expect=[">>> "], timeout=30)
    )
    assert obs.expect_string == ">>> ", obs
    obs = await rt.run_in_session(
        BashAction(command="print(6 * 7)", session="py", is_interactive_command=True, expect=[">>> "], timeout=30)
    )
    assert obs.output == "42", obs
    obs = await rt.run_in_session(
        BashAction(command="x = 'kept'", session="py", is_interactive_command=True, expect=[">>> "], timeout=30)
    )
    obs = await rt.run_in_session(
        BashAction(command="print(x)", session="py", is_interactive_command=True, expect=[">>> "], timeout=30)
    )
    assert obs.output == "kept", obs
    await rt.run_in_session(BashAction(command="quit()", session="py", is_interactive_quit=True, timeout=30))
    obs = await rt.run_in_session(BashAction(command="echo back in the shell", session="py"))
    assert obs.output == "back in the shell\n", obs
    await rt.close_session(CloseBashSessionRequest(session="py"))


async def idempotent_retry(rt):
    step("X-Request-ID retries")
    await rt.create_session(CreateBashSessionRequest(session="retry"))
    body = {
        "command": "__n=$(( ${__n:-0} + 1 )); echo $__n",
        "session": "retry", "action_type": "bash", "check": "silent",
    }
    async with aiohttp.ClientSession() as s:
        async def post(rid, b=body):
            h = {"X-API-Key": TOKEN, "X-Request-ID": rid}
            async with s.post(f"{BASE}/run_in_session", json=b, headers=h) as r:
                return r.status, await r.json()
        first = await post("req-1")
        again = await post("req-1")
        assert first == again and first[1]["output"] == "1\n", (first, again)
        third = await post("req-2")
        assert third[1]["output"] == "2\n", third
        # A retry while the first is still being answered gets its answer:
        # the command runs once.
        slow = dict(body, command="sleep 1; __n=$(( ${__n:-0} + 1 )); echo $__n")
        a, b = await asyncio.gather(post("req-3", slow), post("req-3", slow))
        assert a == b and a[1]["output"] == "3\n", (a, b)
        # A replayed error is the same error.
        err = {"command": "true", "session": "missing", "action_type": "bash"}
        e1, e2 = await post("req-4", err), await post("req-4", err)
        assert e1 == e2 and e1[0] == 511, (e1, e2)
        assert e1[1]["swerexception"]["class_path"] == "swerex.exceptions.SessionDoesNotExistError", e1
    await rt.close_session(CloseBashSessionRequest(session="retry"))


async def execute(rt):
    step("execute")
    r = await rt.execute(Command(command=["sh", "-c", "echo out; echo err >&2; exit 3"]))
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 3), r
    r = await rt.execute(Command(command="echo out; echo err >&2", shell=True, merge_output_streams=True))
    assert (r.stdout, r.stderr, r.exit_code) == ("out\nerr\n", "", 0), r
    r = await rt.execute(
        Command(command=["sh", "-c", 'echo "$FOO ${HOME:-unset}"'], env={"FOO": "bar", "PATH": "/usr/bin:/bin"})
    )
    assert r.stdout == "bar unset\n", r
    r = await rt.execute(Command(command="pwd", shell=True, cwd="/tmp"))
    assert r.stdout == "/tmp\n", r
    r = await rt.execute(Command(command=["printf", "\\377\\n"]))
    assert r.stdout == "\\xff\n", r
    e = await raises(NonZeroExitCodeError, rt.execute(Command(command="exit 4", shell=True, check=True, error_msg="x")))
    assert str(e).startswith("x: ") and "exited with 4" in str(e), e
    await raises(CommandTimeoutError, rt.execute(Command(command=["sleep", "100"], timeout=1)))
    e = await raises(FileNotFoundError, rt.execute(Command(command=["no-such-program-here"])))
    assert "no-such-program-here" in str(e), e
    await raises(FileNotFoundError, rt.execute(Command(command="pwd", shell=True, cwd="/no/such/dir")))


async def files(rt):
    step("files: write_file, read_file")
    text = "héllo wörld\nsecond line\n"
    await rt.write_file(WriteFileRequest(path=f"{DIR}/new/dir/a.txt", content=text))
    assert (await rt.read_file(ReadFileRequest(path=f"{DIR}/new/dir/a.txt"))).content == text
    await rt.write_file(WriteFileRequest(path=f"{DIR}/new/dir/a.txt", content="short"))
    assert (await rt.read_file(ReadFileRequest(path=f"{DIR}/new/dir/a.txt"))).content == "short"
    await rt.write_file(WriteFileRequest(path=f"{DIR}/empty", content=""))
    assert (await rt.read_file(ReadFileRequest(path=f"{DIR}/empty"))).content == ""
    await raises(FileNotFoundError, rt.read_file(ReadFileRequest(path=f"{DIR}/missing")))
    await raises(IsADirectoryError, rt.read_file(ReadFileRequest(path=DIR)))
    await raises(IsADirectoryError, rt.write_file(WriteFileRequest(path=DIR, content="x")))

    step("files: every byte value, both ways")
    every = bytes(range(256))
    # Every character U+0000..U+00FF through write_file (UTF-8 on disk).
    chars = "".join(map(chr, range(256)))
    await rt.write_file(WriteFileRequest(path=f"{DIR}/chars.txt", content=chars))
    got = (await rt.read_file(ReadFileRequest(path=f"{DIR}/chars.txt"))).content
    # read_text reads universal newlines.
    assert got == chars.replace("\r\n", "\n").replace("\r", "\n"), got
    r = await rt.execute(Command(command=["sha256sum", f"{DIR}/chars.txt"]))
    assert r.stdout.split()[0] == hashlib.sha256(chars.encode()).hexdigest(), r
    # Bytes through upload: more than one 4 MiB step.
    rnd = random.Random(7)
    data = every * 16 + bytes(rnd.getrandbits(8) for _ in range(5 * 1024 * 1024)) + every
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(data)
    await rt.upload(UploadRequest(source_path=f.name, target_path=f"{DIR}/up/all.bin"))
    os.unlink(f.name)
    r = await rt.execute(Command(command=["sha256sum", f"{DIR}/up/all.bin"]))
    assert r.stdout.split()[0] == hashlib.sha256(data).hexdigest(), r
    r = await rt.execute(Command(command=["sh", "-c", f"ls -l {DIR}/up/all.bin | cut -c1-10"]))
    assert r.stdout.startswith("-rw-r"), r
    got = (await rt.read_file(ReadFileRequest(path=f"{DIR}/up/all.bin", encoding="latin-1"))).content
    want = data.decode("latin-1").replace("\r\n", "\n").replace("\r", "\n")
    assert got == want, "latin-1 read differs"
    got = (await rt.read_file(ReadFileRequest(path=f"{DIR}/up/all.bin", errors="backslashreplace"))).content
    assert got.startswith("\x00\x01"), got[:10]

    step("files: 100 MiB up and back")
    big = random.Random(100).randbytes(100 * 1024 * 1024)
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(big)
    await rt.upload(UploadRequest(source_path=f.name, target_path=f"{DIR}/big.bin"))
    os.unlink(f.name)
    r = await rt.execute(Command(command=["sha256sum", f"{DIR}/big.bin"]))
    assert r.stdout.split()[0] == hashlib.sha256(big).hexdigest(), r
    got = (await rt.read_file(ReadFileRequest(path=f"{DIR}/big.bin", encoding="latin-1"))).content
    want = big.decode("latin-1").replace("\r\n", "\n").replace("\r", "\n")
    assert got == want, "the 100 MiB read differs"
    del got, want, big
    await rt.execute(Command(command=["rm", "-f", f"{DIR}/big.bin"]))

    step("upload: a directory (zip, unzipped on the target)")
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(f"{d}/sub")
        with open(f"{d}/top.txt", "w") as f:
            f.write("top\n")
        with open(f"{d}/sub/every.bin", "wb") as f:
            f.write(every)
        await rt.upload(UploadRequest(source_path=d, target_path=f"{DIR}/tree"))
    assert (await rt.read_file(ReadFileRequest(path=f"{DIR}/tree/top.txt"))).content == "top\n"
    r = await rt.execute(Command(command=["sha256sum", f"{DIR}/tree/sub/every.bin"]))
    assert r.stdout.split()[0] == hashlib.sha256(every).hexdigest(), r


async def deployment():
    step("RemoteDeployment")
    d = RemoteDeployment(host="http://127.0.0.1", port=int(PORT), auth_token=TOKEN)
    await d.start()
    assert await d.is_alive()
    await d.runtime.create_session(CreateBashSessionRequest(session="dep"))
    obs = await d.runtime.run_in_session(BashAction(command="echo deployed", session="dep"))
    assert obs.output == "deployed\n", obs
    await d.stop()
    # `close` ended every session.
    await raises(SessionDoesNotExistError, runtime().run_in_session(BashAction(command="true", session="dep")))


async def left_for_sigterm(rt):
    step("a session left open for SIGTERM")
    await rt.create_session(CreateBashSessionRequest(session="left"))
    sid, shell = await marker_of(rt, "left")
    await rt.run_in_session(BashAction(command="sleep 1000 &", session="left"))
    await rt.run_in_session(BashAction(command="echo journal-marker-5f3a", session="left"))
    assert probe(sid, shell), "the background job is not running"
    with open(REPORT, "w") as f:
        json.dump({"sid": sid}, f)


async def main():
    rt = runtime()
    await http_and_auth()
    await bash_sessions(rt)
    if LOCAL:
        await interactive(rt)
    await idempotent_retry(rt)
    await execute(rt)
    await files(rt)
    await rt.execute(Command(command=["rm", "-rf", DIR]))
    await deployment()
    await left_for_sigterm(rt)
    print("all passed", flush=True)


asyncio.run(main())
