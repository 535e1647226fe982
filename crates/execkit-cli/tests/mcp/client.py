"""Drives `execkit mcp` with the official MCP Python client.

Usage: client.py EXECKIT_BIN REPORT_JSON
Asserts the tool behaviour and writes latency numbers to REPORT_JSON.
"""
import asyncio
import json
import statistics
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def structured(result):
    assert not result.is_error, result
    return result.structured_content


async def main(binary, report_path):
    params = StdioServerParameters(
        command=binary,
        args=["mcp", "--no-journal", "--allow-target", "local*"],
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            tools = {t.name for t in (await s.list_tools()).tools}
            expected = {"session_open", "run", "send_input", "poll", "interrupt",
                        "session_close", "session_list"}
            assert expected <= tools, tools

            sid = structured(await s.call_tool("session_open", {}))["session_id"]
            r = structured(await s.call_tool("run", {"session_id": sid, "command": "cd /tmp"}))
            assert r["exit_code"] == 0, r
            r = structured(await s.call_tool("run", {"session_id": sid, "command": "pwd"}))
            assert r["output"] == "/tmp" and r["cwd"] == "/tmp", r

            r = structured(await s.call_tool("run", {"session_id": sid, "command": "false"}))
            assert r["exit_code"] == 1, r

            t = time.monotonic()
            r = structured(await s.call_tool("run", {"session_id": sid, "command": "sleep 30",
                                                     "timeout_secs": 1}))
            assert r["timed_out"] and r["exit_code"] is None, r
            assert time.monotonic() - t < 10, "timeout did not return promptly"

            r = structured(await s.call_tool("run", {"session_id": sid, "command": "read x; echo got $x",
                                                     "yield_after_secs": 0.3}))
            assert r["running"], r
            sent = await s.call_tool("send_input", {"session_id": sid, "text": "hello\n"})
            assert not sent.is_error, sent
            r = structured(await s.call_tool("poll", {"session_id": sid, "wait_secs": 5}))
            assert not r["running"] and r["output"] == "got hello", r

            # The default session, and a refused target.
            r = structured(await s.call_tool("run", {"command": "echo default"}))
            assert r["output"] == "default", r
            refused = await s.call_tool("session_open", {"target": "docker:web"})
            assert refused.is_error and "not allowed" in refused.content[0].text, refused

            listed = structured(await s.call_tool("session_list", {}))
            assert {x["name"] for x in listed["sessions"]} == {sid, "default"}, listed

            # Latency of `run true` through the official client.
            samples = []
            for _ in range(200):
                t = time.perf_counter()
                r = await s.call_tool("run", {"session_id": sid, "command": "true"})
                samples.append((time.perf_counter() - t) * 1000)
                assert r.structured_content["exit_code"] == 0
            samples.sort()
            report = {
                "run_true_p50_ms": statistics.median(samples),
                "run_true_p99_ms": samples[int(len(samples) * 0.99) - 1],
                "samples": len(samples),
            }

            closed = await s.call_tool("session_close", {"session_id": sid})
            assert not closed.is_error, closed
    with open(report_path, "w") as f:
        json.dump(report, f)
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
