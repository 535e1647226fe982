"""What the stdio and HTTP client scripts share."""
import json
import statistics
import time


def structured(result):
    assert not result.is_error, result
    return result.structured_content


async def open_and_check_basics(session):
    """Initialises, checks the tool list, opens a session and checks that
    state persists and exit codes come back; returns the session id."""
    await session.initialize()
    tools = {t.name for t in (await session.list_tools()).tools}
    expected = {"session_open", "run", "send_input", "poll", "interrupt",
                "session_close", "session_list"}
    assert expected <= tools, tools
    sid = structured(await session.call_tool("session_open", {}))["session_id"]
    r = structured(await session.call_tool("run", {"session_id": sid, "command": "cd /tmp"}))
    assert r["exit_code"] == 0, r
    r = structured(await session.call_tool("run", {"session_id": sid, "command": "pwd"}))
    assert r["output"] == "/tmp" and r["cwd"] == "/tmp", r
    r = structured(await session.call_tool("run", {"session_id": sid, "command": "false"}))
    assert r["exit_code"] == 1, r
    return sid


async def run_true_latency(session, sid, n=200):
    """p50/p99 of `run true` through the client, in ms."""
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        r = await session.call_tool("run", {"session_id": sid, "command": "true"})
        samples.append((time.perf_counter() - t) * 1000)
        assert r.structured_content["exit_code"] == 0, r
    samples.sort()
    return {
        "run_true_p50_ms": statistics.median(samples),
        "run_true_p99_ms": samples[int(len(samples) * 0.99) - 1],
        "samples": len(samples),
    }


def write_report(report, path):
    with open(path, "w") as f:
        json.dump(report, f)
    print(json.dumps(report))
