"""Type stubs of the extension module ``execkit._execkit`` (re-exported by
``execkit``)."""

from __future__ import annotations

import os
from typing import Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

from typing_extensions import Self

__version__: str

_Journal = Union[str, "os.PathLike[str]", bool, None]
_InputWait = Literal["ignore", "stop", "yield"]
_Stdin = Union[bytes, bytearray, str, None]

class RunResult:
    """The structured result of one command."""

    command: str
    """The command as given."""
    exit_code: Optional[int]
    """``$?``; ``None`` when the command did not finish (timed out, killed,
    lost, still running)."""
    output: str
    """stdout and stderr as the terminal saw them: ANSI stripped, valid
    UTF-8, capped head + tail, final newline trimmed. While the command runs,
    what it printed since the last read."""
    cwd: str
    """Working directory of the shell afterwards."""
    timed_out: bool
    """The hard timeout fired (the command's processes were killed)."""
    truncated: bool
    """The output was capped; the full text is at ``output_path``."""
    output_path: Optional[str]
    """Spool file with the full output, when it was capped."""
    duration_ms: int
    """Wall time of the command in milliseconds."""
    restarted: bool
    """The shell died and a fresh one replaced it (state was reset)."""
    session_lost: bool
    """The target went away."""
    error: Optional[str]
    """What went wrong besides the command failing, if anything."""
    running: bool
    """The command is still running (it yielded): ``poll``, ``send_input``
    or ``interrupt`` it."""
    waiting_for_input: bool
    """The command was found blocked reading the terminal."""
    @property
    def ok(self) -> bool:
        """The command finished with exit code 0."""
    def check(self) -> Self:
        """Returns this result if the command finished with exit code 0;
        raises :class:`CommandTimedOut`, :class:`SessionLost` or
        :class:`CommandFailed` (``.result`` is this result) otherwise."""
    def to_dict(self) -> Dict[str, object]:
        """The result as a dict (the keys of ``execkit exec --json``)."""

class TransportInfo:
    """One transport this build carries."""

    scheme: str
    """URL scheme: ``local``, ``docker``, ``ssh``."""
    summary: str
    """What it reaches."""
    example: str
    """An example target."""

def transports() -> List[TransportInfo]:
    """The transports this build carries."""

class Session:
    """A stateful shell on one target, for blocking code.

    Opens at once; use it as a context manager (or call :meth:`close`) so
    the shell and everything it started are killed when you are done.
    Sessions left open are closed when garbage-collected and at interpreter
    exit. Calls release the GIL while they wait; calls on one session from
    several threads take turns.

    :param target: ``"local"``, ``"local:/bin/dash"``, ``"docker:NAME"``,
        ``"ssh://user@host:port?identity=PATH&known_hosts=PATH"`` (see
        ``execkit transports``).
    :param env: extra environment variables for the shell.
    :param cwd: the shell's starting directory.
    :param shell: the shell to start (default: the transport's choice).
    :param load_profile: source the user's rc/profile files.
    :param output_limit: characters of output kept per command (head +
        tail) before capping; the full output is spooled to a file.
    :param start_timeout: seconds the shell may take to start.
    :param size: the terminal's ``(rows, cols)``.
    :param journal: ``True`` journals to the CLI's default file, a path to
        that file, ``None`` (or ``False``) turns the journal off.
    :param redact: regular expressions whose matches are masked in the
        journal and console (secrets in ``env`` are masked anyway).
    :param console: mirror runs to a running ``execkit serve``'s console,
        so ``execkit watch`` shows them.
    :param name: a name journaled next to the session's id.
    :raises TargetUnreachable: the target cannot be reached (a
        :class:`HostKeyRefused`, :class:`AuthenticationFailed`, …).
    :raises InvalidTarget: the target string cannot be used.
    :raises InvalidConfig: a setting cannot be handed to a shell.
    """

    def __init__(
        self,
        target: str = "local",
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Union[str, "os.PathLike[str]", None] = None,
        shell: Optional[str] = None,
        load_profile: bool = False,
        output_limit: int = 30000,
        start_timeout: float = 20.0,
        size: Tuple[int, int] = (24, 80),
        journal: _Journal = True,
        redact: Sequence[str] = (),
        console: bool = True,
        name: Optional[str] = None,
    ) -> None: ...
    def run(
        self,
        command: str,
        *,
        timeout: Optional[float] = 300.0,
        yield_after: Optional[float] = None,
        input_wait: _InputWait = "ignore",
        stdin: _Stdin = None,
    ) -> RunResult:
        """Runs one command in the session's shell and returns its result.

        :param timeout: hard timeout in seconds (``None``: none); when it
            fires the command and everything it started are killed and the
            result has ``timed_out``.
        :param yield_after: return after this many seconds with
            ``running=True`` and the output so far if the command is still
            going; continue with :meth:`poll`, :meth:`send_input`,
            :meth:`interrupt`.
        :param input_wait: when the command blocks reading the terminal:
            ``"ignore"`` keep waiting, ``"stop"`` stop it and return the
            prompt (``waiting_for_input``), ``"yield"`` return at once,
            running.
        :param stdin: bytes (or text, as UTF-8) fed to the command's stdin.
        :raises SessionBusy: a command is still running.
        :raises InvalidCommand: the command holds a NUL byte.
        :raises KeyboardInterrupt: Ctrl-C while waiting (main thread): the
            command was interrupted first.
        """
    def poll(self, wait: float = 1.0) -> RunResult:
        """Continues a running command for up to ``wait`` seconds: what it
        printed since the last read, and its result once it ended.

        :raises NoCommandRunning: no command runs.
        """
    def send_input(self, text: str) -> None:
        """Types ``text`` into the running command (include the newline).

        :raises NoCommandRunning: no command runs.
        """
    def interrupt(self) -> RunResult:
        """Interrupts the running command (Ctrl-C; killed with everything
        it started if it does not stop) and returns its final result.

        :raises NoCommandRunning: no command runs.
        """
    def resize(self, rows: int, cols: int) -> None:
        """Resizes the session's terminal."""
    def close(self) -> None:
        """Closes the session: the shell and every process it started are
        killed. Closing again does nothing."""
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> bool: ...
    @property
    def target(self) -> str:
        """The target as given."""
    @property
    def id(self) -> str:
        """The session's short id (as in the journal)."""
    @property
    def marker(self) -> str:
        """``EXECKIT_SID``, carried by every process of the session."""
    @property
    def cwd(self) -> str:
        """The shell's working directory after the last command."""
    @property
    def running(self) -> bool:
        """A command is running (it yielded and has not ended)."""
    @property
    def closed(self) -> bool:
        """The session was closed (or its opening failed)."""

class AsyncSession:
    """A stateful shell on one target, for asyncio code.

    Takes the same arguments as :class:`Session`; opens when entered
    (``async with``) or on ``await session.open()``. Every method returns
    an awaitable; cancelling a task that awaits :meth:`run` or :meth:`poll`
    interrupts the command (nothing it started is left running) before the
    session takes the next call.
    """

    def __init__(
        self,
        target: str = "local",
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Union[str, "os.PathLike[str]", None] = None,
        shell: Optional[str] = None,
        load_profile: bool = False,
        output_limit: int = 30000,
        start_timeout: float = 20.0,
        size: Tuple[int, int] = (24, 80),
        journal: _Journal = True,
        redact: Sequence[str] = (),
        console: bool = True,
        name: Optional[str] = None,
    ) -> None: ...
    async def open(self) -> Self:
        """Opens the session (``async with`` does it)."""
    async def run(
        self,
        command: str,
        *,
        timeout: Optional[float] = 300.0,
        yield_after: Optional[float] = None,
        input_wait: _InputWait = "ignore",
        stdin: _Stdin = None,
    ) -> RunResult:
        """Runs one command (see :meth:`Session.run`)."""
    async def poll(self, wait: float = 1.0) -> RunResult:
        """Continues a running command (see :meth:`Session.poll`)."""
    async def send_input(self, text: str) -> None:
        """Types ``text`` into the running command."""
    async def interrupt(self) -> RunResult:
        """Interrupts the running command and returns its final result."""
    async def resize(self, rows: int, cols: int) -> None:
        """Resizes the session's terminal."""
    async def close(self) -> None:
        """Closes the session (see :meth:`Session.close`)."""
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> bool: ...
    @property
    def target(self) -> str:
        """The target as given."""
    @property
    def id(self) -> str:
        """The session's short id (empty until opened)."""
    @property
    def marker(self) -> str:
        """``EXECKIT_SID``, carried by every process of the session."""
    @property
    def cwd(self) -> str:
        """The shell's working directory after the last command."""
    @property
    def running(self) -> bool:
        """A command is running."""
    @property
    def closed(self) -> bool:
        """The session is not open (not yet, or no longer)."""

def cli_main(argv: List[str]) -> int:
    """Runs the ``execkit`` command with ``argv`` (program name first) and
    returns its exit status."""

def close_all(limit: float = 10.0) -> None:
    """Closes every session still open, waiting at most ``limit`` seconds
    (registered with :mod:`atexit`)."""
