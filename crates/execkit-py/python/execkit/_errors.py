"""The exceptions execkit raises: one hierarchy under :class:`Error`.

Every error the engine reports maps to exactly one class here, with the
engine's message as ``str(e)`` and its machine-readable code as ``e.code``
(the same codes ``execkit serve`` and ``execkit mcp`` report). Invalid
arguments are also :class:`ValueError` (or :class:`TypeError` for a wrong
type), so code that validates input generically still catches them.
"""

from __future__ import annotations

from typing import Optional


class Error(Exception):
    """Base class of every execkit error.

    ``code`` is the engine's code for it (``"host_key_mismatch"``,
    ``"busy"``, …), ``None`` when the error did not come from the engine.
    """

    code: Optional[str]

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code


class InvalidTarget(Error, ValueError):
    """The target string cannot be used: an unknown scheme, a malformed URL,
    a parameter the transport does not know."""


class InvalidConfig(Error, ValueError):
    """A session setting cannot be handed to a shell: an environment name
    that is not a name, a NUL byte in a value, a path or a name."""


class InvalidCommand(Error, ValueError):
    """The command (or input) cannot be sent: a NUL byte, a line a terminal
    would cut."""


class TargetUnreachable(Error, ConnectionError):
    """The target could not be reached or refused the session: no such
    container, connection refused, not running, timed out, permission
    denied, authentication refused, a host key that does not match."""


class HostKeyRefused(TargetUnreachable):
    """The SSH host key does not match ``known_hosts``, or is unknown where
    an unknown key is refused. Never retried: it may be an attack."""


class AuthenticationFailed(TargetUnreachable):
    """The target refused every credential offered (SSH keys, agent)."""


class ShellStartFailed(Error):
    """The target was reached but no shell started on it, or the shell did
    not become ready in time."""


class SessionLost(Error):
    """The target went away during the session (container removed, host
    gone); the session cannot go on until it comes back."""


class SessionClosed(Error):
    """The session was closed (or never opened); open a new one."""


class SessionBusy(Error):
    """A command is still running in this session: poll it, send it input
    or interrupt it before running another."""


class NoCommandRunning(Error):
    """``poll``, ``send_input`` or ``interrupt`` while no command runs."""


class CommandFailed(Error):
    """Raised by :meth:`RunResult.check` for a command that did not succeed;
    ``result`` is the :class:`RunResult`."""

    def __init__(self, message: str, result: object = None, code: Optional[str] = None) -> None:
        super().__init__(message, code)
        self.result = result


class CommandTimedOut(CommandFailed):
    """:meth:`RunResult.check` of a command whose hard timeout fired (its
    processes were killed; the session goes on)."""


__all__ = [
    "Error",
    "InvalidTarget",
    "InvalidConfig",
    "InvalidCommand",
    "TargetUnreachable",
    "HostKeyRefused",
    "AuthenticationFailed",
    "ShellStartFailed",
    "SessionLost",
    "SessionClosed",
    "SessionBusy",
    "NoCommandRunning",
    "CommandFailed",
    "CommandTimedOut",
]
