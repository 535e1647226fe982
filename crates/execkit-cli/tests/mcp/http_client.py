"""Drives `execkit mcp --http` with the official MCP Python client over
streamable HTTP.

Usage: http_client.py URL REPORT_JSON
Two clients share the server's sessions; asserts tool behaviour and writes
latency numbers to REPORT_JSON.
"""
import asyncio
import json
import statistics
import sys
import time

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


def structured(result):
    assert not result.is_error, result
    return result.structured_content


async def main(url, report_path):
    async with streamable_http_client(url) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as a:
            await a.initialize()
            tools = {t.name for t in (await a.list_tools()).tools}
            expected = {"session_open", "run", "send_input", "poll", "interrupt",
                        "session_close", "session_list"}
            assert expected <= tools, tools

            sid = structured(await a.call_tool("session_open", {}))["session_id"]
            r = structured(await a.call_tool("run", {"session_id": sid, "command": "cd /tmp"}))
            assert r["exit_code"] == 0, r
            r = structured(await a.call_tool("run", {"session_id": sid, "command": "pwd"}))
            assert r["output"] == "/tmp" and r["cwd"] == "/tmp", r
            r = structured(await a.call_tool("run", {"session_id": sid, "command": "false"}))
            assert r["exit_code"] == 1, r
            refused = await a.call_tool("session_open", {"target": "docker:web"})
            assert refused.is_error and "not allowed" in refused.content[0].text, refused

            # A second client on its own connection sees and drives the same session.
            async with streamable_http_client(url) as streams2:
                async with ClientSession(streams2[0], streams2[1]) as b:
                    await b.initialize()
                    listed = structured(await b.call_tool("session_list", {}))
                    assert sid in {x["name"] for x in listed["sessions"]}, listed
                    r = structured(await b.call_tool("run", {"session_id": sid, "command": "pwd"}))
                    assert r["output"] == "/tmp", r

            samples = []
            for _ in range(200):
                t = time.perf_counter()
                r = await a.call_tool("run", {"session_id": sid, "command": "true"})
                samples.append((time.perf_counter() - t) * 1000)
                assert r.structured_content["exit_code"] == 0
            samples.sort()
            report = {
                "run_true_p50_ms": statistics.median(samples),
                "run_true_p99_ms": samples[int(len(samples) * 0.99) - 1],
                "samples": len(samples),
            }
            closed = await a.call_tool("session_close", {"session_id": sid})
            assert not closed.is_error, closed
    with open(report_path, "w") as f:
        json.dump(report, f)
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
