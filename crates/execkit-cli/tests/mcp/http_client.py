"""Drives `execkit mcp --http` with the official MCP Python client over
streamable HTTP.

Usage: EXECKIT_MCP_TOKEN=T http_client.py URL REPORT_JSON
Two clients share the server's sessions; asserts tool behaviour and writes
latency numbers to REPORT_JSON.
"""
import asyncio
import os
import sys

from common import open_and_check_basics, run_true_latency, structured, write_report
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def client():
    """An HTTP client that carries the server's bearer token."""
    token = os.environ["EXECKIT_MCP_TOKEN"]
    return create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})


async def main(url, report_path):
    async with streamable_http_client(url, http_client=client()) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as a:
            sid = await open_and_check_basics(a)
            refused = await a.call_tool("session_open", {"target": "docker:web"})
            assert refused.is_error and "not allowed" in refused.content[0].text, refused

            # A second client on its own connection sees and drives the same session.
            async with streamable_http_client(url, http_client=client()) as streams2:
                async with ClientSession(streams2[0], streams2[1]) as b:
                    await b.initialize()
                    listed = structured(await b.call_tool("session_list", {}))
                    assert sid in {x["name"] for x in listed["sessions"]}, listed
                    r = structured(await b.call_tool("run", {"session_id": sid, "command": "pwd"}))
                    assert r["output"] == "/tmp", r

            report = await run_true_latency(a, sid)
            closed = await a.call_tool("session_close", {"session_id": sid})
            assert not closed.is_error, closed
    write_report(report, report_path)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
