"""execkit: stateful, structured, safe shell sessions for AI agents.

One live shell per session — a PTY on this host (``"local"``), a shell in a
Docker container (``"docker:NAME"``), a shell over SSH
(``"ssh://user@host"``) — where ``cd``, ``export``, virtualenvs and
functions persist between commands, and every command answers with a
:class:`RunResult`: exit code, clean output (ANSI stripped, valid UTF-8,
capped head + tail with the full text spooled to a file), working
directory, duration, and whether it timed out. A timeout kills the
command's whole process tree and the session goes on.

    >>> import execkit
    >>> with execkit.Session("local") as s:
    ...     s.run("cd /tmp").check()
    ...     s.run("pwd").output
    '/tmp'

:class:`Session` blocks (the GIL is released while a command runs, so
threads run sessions in parallel); :class:`AsyncSession` is the same for
asyncio. Every error is an :class:`Error`. Runs are journaled (JSONL) and
mirrored to a running ``execkit serve``'s console as the CLI does; pass
``journal=None`` / ``console=False`` to turn that off.
"""

from __future__ import annotations

import atexit as _atexit

from ._errors import (
    AuthenticationFailed,
    CommandFailed,
    CommandTimedOut,
    Error,
    HostKeyRefused,
    InvalidCommand,
    InvalidConfig,
    InvalidTarget,
    NoCommandRunning,
    SessionBusy,
    SessionClosed,
    SessionLost,
    ShellStartFailed,
    TargetUnreachable,
)
from ._execkit import (
    AsyncSession,
    RunResult,
    Session,
    TransportInfo,
    __version__,
    close_all as _close_all,
    transports,
)

# Sessions still open when the interpreter exits are closed (their shells
# and every process they started killed) as `close()` would.
_atexit.register(_close_all)

__all__ = [
    "AsyncSession",
    "AuthenticationFailed",
    "CommandFailed",
    "CommandTimedOut",
    "Error",
    "HostKeyRefused",
    "InvalidCommand",
    "InvalidConfig",
    "InvalidTarget",
    "NoCommandRunning",
    "RunResult",
    "Session",
    "SessionBusy",
    "SessionClosed",
    "SessionLost",
    "ShellStartFailed",
    "TargetUnreachable",
    "TransportInfo",
    "__version__",
    "transports",
]
