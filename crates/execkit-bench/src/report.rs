//! The report: a Markdown table for stdout and `docs/BENCHMARKS.md`, the
//! ratios the targets are stated in, and an SVG chart of round trips.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::{Latency, Results, PY_BLOCK};

fn find<'a>(v: &'a [Latency], system: &str) -> Option<&'a Latency> {
    v.iter().find(|l| l.system == system)
}

pub fn table(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "### Round trip of `true`\n\n| system | samples | p50 ms | p99 ms |\n|---|---:|---:|---:|"
    );
    for l in &r.round_trip {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.3} |",
            l.system, l.samples, l.p50_ms, l.p99_ms
        );
    }
    if !r.start.is_empty() {
        let _ = writeln!(s, "\n### Session start to first result\n\n| system | samples | p50 ms | p99 ms |\n|---|---:|---:|---:|");
    }
    for l in &r.start {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.2} |",
            l.system, l.samples, l.p50_ms, l.p99_ms
        );
    }
    if !r.throughput.is_empty() {
        let _ = writeln!(
            s,
            "\n### Throughput\n\n| system | MB | MB/s | peak RSS MB |\n|---|---:|---:|---:|"
        );
    }
    for t in &r.throughput {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} |",
            t.system,
            t.bytes / 1_000_000,
            t.mb_per_s,
            t.peak_rss_mb
        );
    }
    if !r.swerex_files.is_empty() {
        let _ = writeln!(
            s,
            "\n### SWE-ReX file routes (text, official `RemoteRuntime`)\n\n| system | route | MB | samples | p50 s | p99 s |\n|---|---|---:|---:|---:|---:|"
        );
        for f in &r.swerex_files {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.3} | {:.3} |",
                f.system,
                f.op,
                f.bytes / 1_000_000,
                f.samples,
                f.p50_ms / 1000.0,
                f.p99_ms / 1000.0
            );
        }
    }
    if let Some(c) = &r.concurrent {
        let _ = writeln!(
            s,
            "\n### Concurrent local sessions\n\n{} sessions × {} commands: {:.2} s wall, all correct: {}, {:.0} KB of execkit memory per session (shells excluded)",
            c.sessions, c.commands_each, c.wall_s, c.all_correct, c.kb_per_session
        );
    }
    if !r.threads.is_empty() {
        let _ = writeln!(
            s,
            "\n### Threads, each driving its own local session\n\n| system | threads × commands | runs | open s | commands s | all correct |\n|---|---:|---:|---:|---:|---|"
        );
        for t in &r.threads {
            let _ = writeln!(
                s,
                "| {} | {} × {} | {} | {:.2} | {:.2} | {} |",
                t.system, t.threads, t.commands_each, t.runs, t.open_s, t.commands_s, t.all_correct
            );
        }
    }
    if let Some(w) = &r.wheel {
        let _ = writeln!(s, "\n### Python wheel\n\n`{}`: {:.1} MB", w.file, w.mb);
    }
    if let Some(i) = &r.serve_idle {
        let _ = writeln!(
            s,
            "\n### Idle sessions in `execkit serve`\n\n{} sessions: RSS {:.1} MB ({:.0} KB per session), CPU over 10 s idle: {:.0} ms",
            i.sessions, i.rss_mb, i.kb_per_session, i.cpu_ms_over_10s
        );
    }
    let _ = writeln!(s, "\n### Ratios (same run)\n");
    for line in ratios(r) {
        let _ = writeln!(s, "- {line}");
    }
    for n in &r.notes {
        let _ = writeln!(s, "- note: {n}");
    }
    s
}

/// The targets of issue 8, each with its measured ratio and a verdict.
pub fn ratios(r: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let rt = &r.round_trip;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    if let (Some(ek), Some(floor)) = (find(rt, "execkit local"), find(rt, "raw-pty-floor")) {
        let x = ek.p50_ms / floor.p50_ms;
        out.push(format!(
            "execkit local p50 = {x:.2} × raw-pty-floor (target ≤ 1.5: {})",
            verdict(x <= 1.5)
        ));
    }
    if let (Some(ek), Some(b)) = (find(rt, "execkit local"), find(rt, "fresh-bash-c")) {
        let x = b.p50_ms / ek.p50_ms;
        out.push(format!(
            "execkit local is {x:.1} × faster than fresh-bash-c (target ≥ 5: {})",
            verdict(x >= 5.0)
        ));
    }
    for (ek, base) in [
        ("execkit docker", "docker-exec-oneshot"),
        ("execkit ssh", "ssh-oneshot"),
    ] {
        if let (Some(e), Some(b)) = (find(rt, ek), find(rt, base)) {
            let x = b.p50_ms / e.p50_ms;
            out.push(format!(
                "{ek} p50 {:.3} ms (target < 1 ms: {}), {x:.0} × faster than {base} (target ≥ 30: {})",
                e.p50_ms,
                verdict(e.p50_ms < 1.0),
                verdict(x >= 30.0)
            ));
        }
    }
    let tp = |s: &str| r.throughput.iter().find(|t| t.system == s);
    if let (Some(e), Some(f)) = (tp("execkit local"), tp("raw-pty-floor")) {
        let x = e.mb_per_s / f.mb_per_s;
        out.push(format!(
            "throughput {x:.2} × raw-pty-floor (target ≥ 0.7: {}), peak RSS {:.1} MB (target < 64: {})",
            verdict(x >= 0.7),
            e.peak_rss_mb,
            verdict(e.peak_rss_mb < 64.0)
        ));
    }
    if let Some(c) = &r.concurrent {
        out.push(format!(
            "{} concurrent sessions all correct: {}; {:.0} KB per session (target < 512: {})",
            c.sessions,
            c.all_correct,
            c.kb_per_session,
            verdict(c.all_correct && c.kb_per_session < 512.0)
        ));
    }
    if let Some(s) = find(&r.start, "execkit local") {
        out.push(format!(
            "local session start to first result p50 {:.2} ms (target < 10: {})",
            s.p50_ms,
            verdict(s.p50_ms < 10.0)
        ));
    }
    if let Some(i) = &r.serve_idle {
        out.push(format!(
            "serve with {} idle sessions used {:.0} ms CPU in 10 s (target ≈ 0: {})",
            i.sessions,
            i.cpu_ms_over_10s,
            verdict(i.cpu_ms_over_10s < 50.0)
        ));
    }
    python_ratios(r, &mut out);
    swerex_ratios(r, &mut out);
    contained_ratios(r, &mut out);
    out
}

/// The targets of contained sessions: next to plain ones in the same run.
fn contained_ratios(r: &Results, out: &mut Vec<String>) {
    use crate::contained::{CONTAINED, PLAIN};
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    if let (Some(c), Some(p)) = (find(&r.round_trip, CONTAINED), find(&r.round_trip, PLAIN)) {
        let x = c.p50_ms / p.p50_ms;
        out.push(format!(
            "contained round trip p50 {:.3} ms = {x:.2} × plain {:.3} ms (target ≤ 1.1: {})",
            c.p50_ms,
            p.p50_ms,
            verdict(x <= 1.1)
        ));
    }
    if let (Some(c), Some(p)) = (find(&r.start, CONTAINED), find(&r.start, PLAIN)) {
        out.push(format!(
            "contained session start p50 {:.2} ms vs plain {:.2} ms (target ≤ 2 × + 5 ms = {:.2}: {})",
            c.p50_ms,
            p.p50_ms,
            2.0 * p.p50_ms + 5.0,
            verdict(c.p50_ms <= 2.0 * p.p50_ms + 5.0)
        ));
    }
}

/// The targets of the SWE-ReX server: against upstream's `swerex-remote`,
/// both driven by the same client in the same run.
fn swerex_ratios(r: &Results, out: &mut Vec<String>) {
    use crate::swerex::{EXECKIT, UPSTREAM};
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    if let (Some(e), Some(u)) = (find(&r.round_trip, EXECKIT), find(&r.round_trip, UPSTREAM)) {
        let x = u.p50_ms / e.p50_ms;
        out.push(format!(
            "{EXECKIT} run_in_session p50 {:.2} ms: {x:.0} × faster than {UPSTREAM} (p99: {:.0} ×; target ≥ 30: {})",
            e.p50_ms,
            u.p99_ms / e.p99_ms,
            verdict(x >= 30.0)
        ));
    }
    let file = |system: &str, op: &str| {
        r.swerex_files
            .iter()
            .find(|f| f.system == system && f.op == op)
    };
    for op in ["write_file", "read_file"] {
        if let (Some(e), Some(u)) = (file(EXECKIT, op), file(UPSTREAM, op)) {
            let x = u.p50_ms / e.p50_ms;
            out.push(format!(
                "{EXECKIT} {op} of {} MB p50 {:.3} s, {UPSTREAM} {:.3} s: {x:.2} × as fast (target ≥ 5: {})",
                e.bytes / 1_000_000,
                e.p50_ms / 1000.0,
                u.p50_ms / 1000.0,
                verdict(x >= 5.0)
            ));
        }
    }
}

/// The targets of issue 17 (the Python wheel).
fn python_ratios(r: &Results, out: &mut Vec<String>) {
    let rt = &r.round_trip;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    if let (Some(py), Some(ek)) = (find(rt, "execkit python"), find(rt, "execkit local")) {
        let x = py.p50_ms / ek.p50_ms;
        out.push(format!(
            "execkit python p50 = {x:.2} × execkit local (target ≤ 1.5: {})",
            verdict(x <= 1.5)
        ));
    }
    if let (Some(py), Some(b)) = (find(rt, "execkit python"), find(rt, "swe-rex-local")) {
        let x = b.p50_ms / py.p50_ms;
        out.push(format!(
            "execkit python is {x:.0} × faster than swe-rex-local (target ≥ 300: {})",
            verdict(x >= 300.0)
        ));
    }
    if let (Some(py), Some(b)) = (
        find(rt, "execkit python"),
        find(rt, "pexpect-prompt-nodelay"),
    ) {
        out.push(format!(
            "execkit python is {:.1} × faster than pexpect-prompt-nodelay (no target)",
            b.p50_ms / py.p50_ms
        ));
    }
    let load = |s: &str| r.threads.iter().find(|t| t.system == s);
    if let (Some(py), Some(th)) = (load("python threads"), load("rust os threads")) {
        let x = py.commands_s / th.commands_s;
        let tasks = load("rust tokio tasks")
            .map(|t| format!(", {:.2} × rust tokio tasks", py.commands_s / t.commands_s))
            .unwrap_or_default();
        out.push(format!(
            "python threads ({} × {}): all correct: {}, commands wall = {x:.2} × rust os threads{tasks} (target ≤ 2 × rust os threads, all correct: {}); opening the sessions {:.2} × rust os threads",
            py.threads,
            py.commands_each,
            py.all_correct,
            verdict(py.all_correct && th.all_correct && x <= 2.0),
            py.open_s / th.open_s
        ));
    }
    if let Some(w) = &r.wheel {
        out.push(format!(
            "wheel {:.1} MB (target < 20: {})",
            w.mb,
            verdict(w.mb < 20.0)
        ));
    }
}

/// A horizontal bar chart (log scale) of round-trip p50 per system.
pub fn svg(r: &Results) -> String {
    let rows = &r.round_trip;
    let (w, bar, gap, left) = (760.0, 22.0, 10.0, 170.0);
    let h = 60.0 + rows.len() as f64 * (bar + gap);
    let max = rows.iter().map(|l| l.p50_ms).fold(1.0, f64::max);
    let min = rows
        .iter()
        .map(|l| l.p50_ms)
        .fold(f64::MAX, f64::min)
        .min(0.1);
    let (lo, hi) = (min.log10().floor(), max.log10().ceil());
    let x = |v: f64| left + (v.log10() - lo) / (hi - lo) * (w - left - 80.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">Round trip of `true`, p50 (ms, log scale)</text>\n"
    );
    let mut e = lo;
    while e <= hi {
        let v = 10f64.powf(e);
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" y1=\"28\" x2=\"{0:.1}\" y2=\"{1:.1}\" stroke=\"#ddd\"/><text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\" fill=\"#666\">{3}</text>",
            x(v),
            h - 20.0,
            h - 6.0,
            if v < 1.0 { format!("{v}") } else { format!("{v:.0}") }
        );
        e += 1.0;
    }
    for (i, l) in rows.iter().enumerate() {
        let y = 34.0 + i as f64 * (bar + gap);
        let color = if l.system.starts_with("execkit") {
            "#2a7ab0"
        } else if l.system == "raw-pty-floor" {
            "#6a6"
        } else {
            "#c77"
        };
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><rect x=\"{left}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bar}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{:.3}</text>",
            left - 8.0,
            y + 15.0,
            l.system,
            (x(l.p50_ms.max(min)) - left).max(1.0),
            x(l.p50_ms.max(min)) + 4.0,
            y + 15.0,
            l.p50_ms
        );
    }
    s.push_str("</svg>\n");
    s
}

fn machine(r: &Results) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024 / 1024);
    let cmd = |c: &str, a: &[&str]| {
        std::process::Command::new(c)
            .args(a)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    };
    let python = r
        .python_versions
        .as_ref()
        .map(|v| {
            let list: Vec<String> = v
                .iter()
                .map(|(k, v)| format!("{k} {}", v.as_deref().unwrap_or("(missing)")))
                .collect();
            format!("\n- {}", list.join(", "))
        })
        .unwrap_or_default();
    // The 1-minute load average when the report was written: how busy the
    // neighbours were during the last minute of the run.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    format!(
        "- CPU: {cpu}, {cores} cores, {mem} GiB RAM (a shared, noisy machine: compare ratios, not absolutes); load average {load} at the end of the run\n- kernel: {}\n- {}\n- {}\n- {}\n- {}{python}",
        cmd("uname", &["-sr"]),
        cmd("rustc", &["-V"]),
        cmd("bash", &["--version"]),
        cmd("tmux", &["-V"]),
        cmd("docker", &["--version"]),
    )
}

pub fn write(dir: &Path, r: &Results) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("bench-roundtrip.svg"), svg(r))?;
    let mode = match (r.quick, r.only.as_deref()) {
        (true, Some(only)) => format!("`cargo xtask bench --quick --only {only}`"),
        (false, Some(only)) => format!("`cargo xtask bench --only {only}`"),
        (true, None) => "`cargo xtask bench --quick`".to_string(),
        (false, None) => "`cargo xtask bench`".to_string(),
    };
    let py_block = PY_BLOCK;
    let (threads, commands) = (crate::load::THREADS, crate::load::COMMANDS);
    let doc = format!(
        "# Benchmarks\n\nGenerated by {mode} (release build). Every number below comes from one run, so the ratios compare systems under the same load.\n\n\
         ## Machine\n\n{}\n\n## Method\n\n\
         - **raw-pty-floor**: a bare bash on a PTY, echo off, history off, a fixed marker and no parsing — the physical floor of any PTY tool. Its samples alternate one for one with execkit local\'s, so both see the same machine.\n\
         - **execkit local / docker / ssh**: `Session::run(\"true\")` in one warm session (20 warm-up runs first).\n\
         - **fresh-bash-c**: a new `bash -c true` per command (how one-shot tools work).\n\
         - **tmux-poll-10ms / -500ms**: `tmux send-keys` then `capture-pane` every 10 / 500 ms until a marker shows (how tmux-based agents work).\n\
         - **docker-exec-oneshot**: `docker exec C sh -c true`; **ssh-oneshot**: a new `ssh host true` per command.\n\
         - Session start: open a session and get the first result of `true`.\n\
         - Throughput: `yes … | head -c N` (50-byte lines) through one session, measured in a child process whose peak RSS (VmHWM) is reported; execkit caps the output and spools it to disk.\n\
         - Concurrent: N local sessions opened at once in one process, 10 commands each, outputs checked; memory = process RSS growth / N (shell processes not counted).\n\
         - Serve idle: N sessions opened in `execkit serve`, then its RSS and its CPU time over 10 idle seconds.\n\
         - **execkit python**: `execkit.Session(\"local\", journal=None, console=False).run(\"true\")` from the main thread of the wheel's interpreter (a fresh venv, the release wheel), timed in Python; blocks of {py_block} alternate with blocks of {py_block} raw-pty-floor / execkit local pairs, so all three rows come from the same minutes (each block starts with one untimed round trip: its process was idle during the other block).\n\
         - **pexpect-prompt**: `pexpect.spawn` of bash with a fixed `PS1`, `sendline(\"true\")` then `expect_exact(prompt)` (no exit status); with pexpect's default 50 ms `delaybeforesend`, and **-nodelay** with it off.\n\
         - **swe-rex-local**: SWE-ReX's in-process `LocalRuntime`: `await runtime.run_in_session(BashAction(command=\"true\"))` in a session from `create_session(CreateBashSessionRequest())` (pexpect underneath, plus its syntax check and exit-code round trip).\n\
         - Threads: {threads} threads × {commands} commands, each thread opening its own local session (timed: *open*), then, once all are open, running its commands with their outputs checked (timed until the last ends: *commands*, the phase the target is stated for). **python threads**: `threading.Thread`s of one interpreter calling `Session.run` (the GIL is released while a command runs). **rust os threads**: the same with OS threads, each `block_on` a shared multi-thread tokio runtime — how the wheel drives sessions, so the ratio is the cost of Python itself. **rust tokio tasks**: the same load as tasks, for reference. Rounds alternate the three; each row is the median round.\n\
         - Wheel: the size of the release wheel `maturin build` made.\n\
         - **execkit swerex / swerex-remote**: SWE-ReX's official client, `RemoteRuntime` (`swe-rex` 1.4.0, a new connection per request, as it makes them), against `execkit swerex --target local --no-journal` and against upstream's own server, `swerex-remote` (FastAPI and pexpect, from the same venv), both on this host on free loopback ports, each started in the environment of a fresh sandbox (an empty `HOME` as its working directory, `PATH`, `LANG=C.UTF-8`, no `TERM`: upstream's shell is an interactive bash that reads `~/.bashrc`, and a host's rc file — here pyenv's prompt hook — slows it and breaks its 0.1 s wait for the prompt after the exit code), and waited for by `GET /is_alive`. One client process drives both, the servers taking turns block by block: `run_in_session(BashAction(command=\"true\"))` after `create_session`, then rounds of `write_file` and `read_file` (read back and compared) of 10 MB of 50-byte ASCII lines; 5 round trips and one file round first, untimed. A call that raises is counted in a note, not timed. **swe-rex-local** runs in that same environment.\n\n\
         ## Results\n\n![round trip per system](bench-roundtrip.svg)\n\n{}",
        machine(r),
        table(r)
    );
    std::fs::write(dir.join("BENCHMARKS.md"), doc)?;
    std::fs::write(
        dir.join("bench-results.json"),
        serde_json::to_string_pretty(r)?,
    )?;
    Ok(())
}
