"""Drives `execkit mcp` with the official MCP Python client.

Usage: client.py EXECKIT_BIN REPORT_JSON
Asserts the tool behaviour and writes latency numbers to REPORT_JSON.
"""
import asyncio
import sys
import time

from common import open_and_check_basics, run_true_latency, structured, write_report
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main(binary, report_path):
    params = StdioServerParameters(
        command=binary,
        args=["mcp", "--no-journal", "--allow-target", "local*"],
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as s:
            sid = await open_and_check_basics(s)

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

            report = await run_true_latency(s, sid)

            closed = await s.call_tool("session_close", {"session_id": sid})
            assert not closed.is_error, closed
    write_report(report, report_path)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
