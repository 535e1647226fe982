"""The exception hierarchy, from real failures: unreachable targets, a
refused host key, invalid targets, settings and argument types."""

from __future__ import annotations

import os
import socket
from urllib.parse import parse_qs, urlsplit

import pytest

import execkit
from conftest import open_session, target_of


def test_missing_container_is_unreachable():
    target_of("docker")  # the engine is up: only the container is missing
    name = f"execkit-no-such-container-{os.getpid()}"
    with pytest.raises(execkit.TargetUnreachable) as e:
        open_session(f"docker:{name}")
    assert isinstance(e.value, execkit.Error) and isinstance(e.value, ConnectionError)
    assert not isinstance(e.value, execkit.HostKeyRefused)
    assert e.value.code == "not_found", (e.value.code, str(e.value))
    assert name in str(e.value)


def test_closed_ssh_port_is_unreachable():
    # A loopback port bound but not listening: connecting is refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(execkit.TargetUnreachable) as e:
            open_session(f"ssh://nobody@127.0.0.1:{port}?connect_timeout=10")
    assert e.value.code == "connection_refused", (e.value.code, str(e.value))
    assert str(port) in str(e.value)


def test_wrong_host_key_is_refused(tmp_path):
    url = target_of("ssh")
    parts = urlsplit(url)
    identity = parse_qs(parts.query)["identity"][0]
    keys = os.environ["EXECKIT_TEST_SSH_DIR"]
    with open(os.path.join(keys, "wrong_ed25519.pub")) as f:
        alg, key = f.read().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{parts.port} {alg} {key}\n")
    bad = f"ssh://{parts.username}@127.0.0.1:{parts.port}?identity={identity}&known_hosts={known}"
    for extra in ("", "&host_key=accept_new"):
        with pytest.raises(execkit.HostKeyRefused) as e:
            open_session(bad + extra)
        err = e.value
        assert isinstance(err, execkit.TargetUnreachable)
        assert isinstance(err, execkit.Error)
        assert err.code == "host_key_mismatch", (err.code, str(err))
        assert "CHANGED" in str(err), str(err)
    # The refused key was not recorded.
    assert known.read_text().count("\n") == 1
    # The same URL with the right known_hosts works.
    with open_session(url) as s:
        assert s.run("echo fine").output == "fine"


@pytest.mark.parametrize(
    "target",
    ["nosuch:thing", "ssh://", "ssh://u@h:99999", "ssh://u@h?frobnicate=1", "docker:"],
)
def test_invalid_target(target):
    with pytest.raises(execkit.InvalidTarget) as e:
        open_session(target)
    assert isinstance(e.value, ValueError) and isinstance(e.value, execkit.Error)
    assert e.value.code == "invalid_target", (e.value.code, str(e.value))


@pytest.mark.parametrize("env", [{"NOT A NAME": "x"}, {"A": "nul\0byte"}, {"": "x"}])
def test_invalid_config(env):
    with pytest.raises(execkit.InvalidConfig) as e:
        open_session("local", env=env)
    assert isinstance(e.value, ValueError)
    assert e.value.code == "invalid_config", (e.value.code, str(e.value))


@pytest.mark.parametrize(
    "kw",
    [
        {"output_limit": 0},
        {"size": (0, 80)},
        {"start_timeout": 0},
        {"start_timeout": float("nan")},
        {"start_timeout": -1.0},
    ],
)
def test_invalid_settings_are_value_errors(kw):
    with pytest.raises(ValueError):
        open_session("local", **kw)


def test_invalid_run_arguments_are_value_errors():
    with open_session("local") as s:
        with pytest.raises(ValueError):
            s.run("true", timeout=0)
        with pytest.raises(ValueError):
            s.run("true", yield_after=-1)
        with pytest.raises(ValueError):
            s.run("true", input_wait="sometimes")
        with pytest.raises(execkit.InvalidCommand) as e:
            s.run("echo a\0b")
        assert isinstance(e.value, ValueError)
        assert e.value.code == "invalid_command"
        # The session is unharmed.
        assert s.run("echo ok").output == "ok"


@pytest.mark.parametrize(
    "kw",
    [
        {"env": {"A": 1}},
        {"env": ["A=1"]},
        {"journal": 5},
        {"size": "24x80"},
        {"output_limit": "big"},
        {"redact": [1]},
    ],
)
def test_wrong_types_are_type_errors(kw):
    with pytest.raises(TypeError):
        open_session("local", **kw)


def test_wrong_run_argument_types_are_type_errors():
    with open_session("local") as s:
        with pytest.raises(TypeError):
            s.run(5)
        with pytest.raises(TypeError):
            s.run("cat", stdin=5)
        with pytest.raises(TypeError):
            s.run("true", timeout="1")
        with pytest.raises(TypeError):
            s.send_input(b"bytes")
        assert s.run("echo ok").output == "ok"


def test_every_error_is_an_execkit_error():
    for name in execkit._errors.__all__:
        cls = getattr(execkit, name)
        assert issubclass(cls, execkit.Error), name
