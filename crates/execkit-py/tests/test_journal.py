"""`journal=`: a path gets the session's JSONL lines; `None` writes
nothing, `True` writes the default journal (under `$XDG_STATE_HOME`)."""

from __future__ import annotations

import json
import os

import execkit


def lines(path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_journal_path_gets_the_commands(tmp_path):
    path = tmp_path / "sub" / "journal.jsonl"
    with execkit.Session("local", journal=path, console=False, name="py-journal") as s:
        s.run("echo hello")
        s.run("sh -c 'exit 3'")
        sid = s.id
    events = lines(path)
    mine = [e for e in events if e.get("session") == sid]
    assert mine, events
    assert all(e["target"] == "local" and e.get("name") == "py-journal" for e in mine), mine
    kinds = [e["event"] for e in mine]
    assert kinds[0] == "session_open" and kinds[-1] == "session_close", kinds
    assert [e["command"] for e in mine if e["event"] == "command"] == ["echo hello", "sh -c 'exit 3'"]
    results = [e for e in mine if e["event"] == "result"]
    assert [(r["command"], r["exit_code"]) for r in results] == [("echo hello", 0), ("sh -c 'exit 3'", 3)]
    assert results[0]["output"] == "hello"


def test_journal_none_writes_nothing_and_true_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    default = tmp_path / "execkit" / "journal.jsonl"
    for off in (None, False):
        with execkit.Session("local", journal=off, console=False) as s:
            assert s.run("echo unjournaled").output == "unjournaled"
        assert not default.exists()
    assert not any(p.name.startswith("journal") for p in tmp_path.rglob("*")), list(tmp_path.rglob("*"))
    # The contrast: the default journal is where the test looked.
    with execkit.Session("local", journal=True, console=False) as s:
        s.run("echo journaled")
        sid = s.id
    assert os.path.exists(default)
    assert any(e.get("session") == sid and e.get("command") == "echo journaled" for e in lines(default))


def test_redact_masks_the_journal(tmp_path):
    path = tmp_path / "j.jsonl"
    with execkit.Session("local", journal=path, console=False, redact=[r"sekrit\d+"]) as s:
        assert s.run("echo sekrit42").output == "sekrit42"  # results unmasked
    text = path.read_text()
    assert "sekrit42" not in text
    assert "echo" in text
