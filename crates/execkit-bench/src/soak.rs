//! `execkit-bench soak [--minutes N] [--dir DIR]`: a bounded resource soak
//! of the session engine on the local transport (bash), run by `cargo xtask
//! soak`. One round is three phases in this one process:
//!
//! 1. 10,000 mixed commands in one session, every result checked;
//! 2. 2,000 sessions opened, used once and closed, then no process of
//!    theirs may be left;
//! 3. a 1 GB output flood through one session, peak memory bounded and the
//!    spool file exactly 1 GB.
//!
//! Around every phase this process's descriptors, threads and RSS are
//! sampled; rounds repeat until `--minutes` are used up, and the last
//! round's numbers must match the first's. Any violation is one line on
//! stderr and a non-zero exit.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use execkit_core::{RunOptions, RunResult, Session, SessionConfig};

use crate::proc_status_kb;
use execkit_local as _;

const COMMANDS: usize = 10_000;
const CYCLES: usize = 2_000;
const FLOOD_BYTES: u64 = 1_000_000_000;
/// Samples per phase (resources are read every COMMANDS / SAMPLES commands).
const SAMPLES: usize = 10;

// Tolerances. Between commands a session holds a fixed set of descriptors
// (PTY master, pidfd, the runtime's epoll and waker), so open-session samples
// may differ from the warm one by at most FD_SLACK (a sample racing a
// descriptor the runtime opens and closes on its own); with no session open
// the count must equal the warm baseline exactly — one leaked fd per
// session would otherwise be found after 2,000 cycles as 2,000.
const FD_SLACK: usize = 2;
// Threads: the runtime is current-thread, plus tokio's blocking pool, which
// runs the fork and the /proc scans and keeps an idle thread 10 s. Used one
// at a time that is one thread; a spawn racing the previous thread's return
// to the idle list may start another. A leak of one thread per session or
// per command would exceed this immediately.
const THREAD_SLACK: u64 = 2;
// RSS growth after warm-up: 2 MB is 200 bytes per command over 10,000
// commands and 1 KB per session over 2,000 sessions, so any per-command or
// per-session leak of that size fails; below it is allocator noise (a new
// malloc arena for a blocking-pool thread, heap pages not returned).
const RSS_SLACK_KB: u64 = 2 * 1024;
// The engine keeps head + tail of an output and streams the rest to disk,
// so a 1 GB flood may raise the peak by buffers only (issue 9: < 64 MB).
const FLOOD_PEAK_LIMIT_KB: u64 = 64 * 1024;

/// This process's descriptors, threads and resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    fds: usize,
    threads: u64,
    rss_kb: u64,
}

impl Usage {
    fn now() -> Usage {
        Usage {
            // The listing's own descriptor is counted too, every time alike.
            fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
            threads: proc_status_kb("self", "Threads"),
            rss_kb: proc_status_kb("self", "VmRSS"),
        }
    }
}

/// One phase of one round.
#[derive(Debug)]
struct Phase {
    round: usize,
    name: &'static str,
    wall: Duration,
    /// Commands run (including session set-up commands).
    commands: usize,
    /// Output bytes (flood only).
    bytes: Option<u64>,
    /// No session open, before the phase / after it closed everything.
    before: Usage,
    after: Usage,
    /// Peak RSS above the start: the highest sample for commands and
    /// cycles, VmHWM above the pre-flood RSS for the flood.
    peak_kb: u64,
    /// Leftover session processes and children after the phase.
    orphans: usize,
}

impl Phase {
    /// Commands (sessions for the cycles) per second; MB/s for the flood.
    fn rate(&self) -> String {
        let s = self.wall.as_secs_f64();
        match self.bytes {
            Some(b) => format!("{:.0} MB/s", b as f64 / 1e6 / s),
            None => format!("{:.0}/s", self.commands as f64 / s),
        }
    }
}

/// A phase in progress.
struct Progress {
    round: usize,
    name: &'static str,
    started: Instant,
    /// No session open, at the start.
    before: Usage,
    /// The first sample, taken a tenth into the phase.
    warm: Option<Usage>,
    samples_ok: bool,
    rss_max: u64,
    /// Wrong results so far.
    wrong: usize,
}

impl Progress {
    fn start(round: usize, name: &'static str) -> Progress {
        Progress {
            round,
            name,
            started: Instant::now(),
            before: Usage::now(),
            warm: None,
            samples_ok: true,
            rss_max: 0,
            wrong: 0,
        }
    }

    fn at(&self) -> String {
        format!("round {} {}", self.round, self.name)
    }
}

/// Files of one soak run: spool, session records, a directory to `cd` to.
struct Dirs {
    spool: PathBuf,
    sessions: PathBuf,
    work: PathBuf,
}

struct Soak {
    dirs: Dirs,
    /// `EXECKIT_SOAK=<tag>` in every session's environment: everything a
    /// session started carries it (with its `EXECKIT_SID`), so leftovers
    /// are found without remembering 2,000 markers.
    tag: String,
    violations: Vec<String>,
}

pub fn main(args: &[String]) -> Result<()> {
    let mut minutes = 1.0_f64;
    let mut dir = std::env::temp_dir().join(format!("execkit-soak-{}", std::process::id()));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => {
                minutes = it
                    .next()
                    .context("--minutes needs a number")?
                    .parse()
                    .context("--minutes")?
            }
            "--dir" => dir = it.next().context("--dir needs a path")?.into(),
            other => bail!("unknown soak argument {other}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let dirs = Dirs {
        spool: dir.join("spool"),
        sessions: dir.join("state/execkit/sessions"),
        work: dir.join("work"),
    };
    std::fs::create_dir_all(&dirs.work)?;
    // Session records go under DIR too (checked empty after each phase).
    // Still one thread: nothing reads the environment concurrently.
    std::env::set_var("XDG_STATE_HOME", dir.join("state"));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut soak = Soak {
        dirs,
        tag: format!(
            "{}-{}",
            std::process::id(),
            execkit_core::raw::nonce().expect("random bytes")
        ),
        violations: Vec::new(),
    };
    let budget = Duration::from_secs_f64(minutes * 60.0);
    let started = Instant::now();
    let result = rt.block_on(soak.rounds(budget, started));
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
    let phases = result?;

    println!("\n{}", table(&phases));
    println!(
        "soak: {} round(s) in {:.1} s (budget {:.0} s)",
        phases.last().map_or(0, |p| p.round),
        started.elapsed().as_secs_f64(),
        budget.as_secs_f64()
    );
    if soak.violations.is_empty() {
        println!("soak: no violations");
        return Ok(());
    }
    for v in &soak.violations {
        eprintln!("VIOLATION: {v}");
    }
    eprintln!("soak: {} violation(s)", soak.violations.len());
    std::process::exit(1)
}

impl Soak {
    fn config(&self) -> SessionConfig {
        let mut c = SessionConfig::default();
        c.shell = Some("/bin/bash".into());
        c.spool_dir = self.dirs.spool.clone();
        c.env = vec![("EXECKIT_SOAK".into(), self.tag.clone())];
        c
    }

    fn fail(&mut self, what: String) {
        self.violations.push(what);
    }

    /// Rounds until the budget is used up: another one starts only if it
    /// should end in time, judged by the last one.
    async fn rounds(&mut self, budget: Duration, started: Instant) -> Result<Vec<Phase>> {
        self.warm_up().await?;
        let mut phases = Vec::new();
        let mut first_end: Option<Usage> = None;
        for round in 1.. {
            let t = Instant::now();
            println!("soak: round {round}");
            phases.push(self.commands(round).await?);
            phases.push(self.cycles(round).await?);
            phases.push(self.flood(round).await?);
            let end = Usage::now();
            match first_end {
                None => first_end = Some(end),
                Some(first) => self.check_closed(&format!("round {round} vs round 1"), first, end),
            }
            if started.elapsed() + t.elapsed() > budget {
                break;
            }
        }
        Ok(phases)
    }

    /// Everything a round uses once (runtime, blocking pool, allocator
    /// arenas, spool directory), so baselines are warm.
    async fn warm_up(&mut self) -> Result<()> {
        for _ in 0..20 {
            let mut s = Session::open("local:/bin/bash", self.config()).await?;
            for i in 0..50 {
                let r = s.run(&format!("echo {i}"), opts()).await?;
                ensure_result(&r, Some(0), &i.to_string())?;
            }
            s.close().await?;
        }
        Ok(())
    }

    /// Phase 1: 10,000 commands in one session.
    async fn commands(&mut self, round: usize) -> Result<Phase> {
        let mut p = Progress::start(round, "10k commands");
        let mut s = Session::open("local:/bin/bash", self.config()).await?;
        let home = s.run("n=0; cd ~ && pwd", opts()).await?;
        ensure_result(&home, Some(0), &home.cwd)?;
        let home = home.cwd;
        let work = self.dirs.work.display().to_string();
        let mut increments = 0;
        for i in 0..COMMANDS {
            let (cmd, code, out, cwd): (String, i32, String, &str) = match i % 6 {
                0 => ("true".into(), 0, String::new(), &home),
                1 => (format!("echo {i}"), 0, i.to_string(), &home),
                2 => (format!("cd {work}"), 0, String::new(), &work),
                3 => (
                    "echo \"$n\" >&2; cd - >/dev/null".into(),
                    0,
                    increments.to_string(),
                    &home,
                ),
                4 => {
                    increments += 1;
                    ("n=$((n + 1))".into(), 0, String::new(), &home)
                }
                _ => ("false".into(), 1, String::new(), &home),
            };
            let r = s.run(&cmd, opts()).await?;
            let checked = ensure_result(&r, Some(code), &out).and_then(|()| {
                if r.cwd != cwd {
                    bail!("cwd {:?}, expected {cwd:?}", r.cwd);
                }
                Ok(())
            });
            if let Err(e) = checked {
                self.wrong(&mut p, format!("command {i} `{cmd}`: {e:#}"));
            }
            if (i + 1) % (COMMANDS / SAMPLES) == 0 {
                self.sample(&mut p, i + 1, false);
            }
        }
        let last = s.run("echo \"$n\"", opts()).await?;
        if let Err(e) = ensure_result(&last, Some(0), &increments.to_string()) {
            self.wrong(&mut p, format!("final counter: {e:#}"));
        }
        s.close().await?;
        Ok(self.finish(p, COMMANDS + 2, None, None))
    }

    /// Phase 2: 2,000 sessions opened, used once, closed.
    async fn cycles(&mut self, round: usize) -> Result<Phase> {
        let mut p = Progress::start(round, "2k open/close");
        for i in 0..CYCLES {
            let mut s = Session::open("local:/bin/bash", self.config()).await?;
            let r = s.run("echo \"$EXECKIT_SID\"", opts()).await?;
            if let Err(e) = ensure_result(&r, Some(0), s.marker()) {
                self.wrong(&mut p, format!("session {i}: {e:#}"));
            }
            s.close().await?;
            if (i + 1) % (CYCLES / SAMPLES) == 0 {
                self.sample(&mut p, i + 1, true);
            }
        }
        Ok(self.finish(p, CYCLES, None, None))
    }

    /// Phase 3: 1 GB of output through one session.
    async fn flood(&mut self, round: usize) -> Result<Phase> {
        let mut p = Progress::start(round, "1 GB flood");
        let mut s = Session::open("local:/bin/bash", self.config()).await?;
        let r = s.run("true", opts()).await?;
        ensure_result(&r, Some(0), "")?;
        // Peak RSS from here on: "5" resets VmHWM to the current RSS.
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let base = Usage::now().rss_kb;
        // Lines of 50 bytes, like real logs.
        let cmd = format!(
            "yes 0123456789012345678901234567890123456789012345678 | head -c {FLOOD_BYTES}"
        );
        let r = s
            .run(&cmd, RunOptions::timeout(Duration::from_secs(600)))
            .await?;
        let hwm = proc_status_kb("self", "VmHWM");
        // Without the reset VmHWM is the whole run's peak: still an upper bound.
        let peak = hwm.saturating_sub(if reset { base } else { 0 });
        if peak >= FLOOD_PEAK_LIMIT_KB {
            self.wrong(
                &mut p,
                format!(
                    "peak RSS {} MB above the pre-flood {} MB (limit {} MB)",
                    peak / 1024,
                    base / 1024,
                    FLOOD_PEAK_LIMIT_KB / 1024
                ),
            );
        }
        if r.exit_code != Some(0) || !r.truncated || r.timed_out || r.error.is_some() {
            let what = format!(
                "exit {:?}, truncated {}, timed out {}, error {:?}",
                r.exit_code, r.truncated, r.timed_out, r.error
            );
            self.wrong(&mut p, what);
        }
        match &r.output_path {
            Some(path) => {
                let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                let _ = std::fs::remove_file(path);
                if len != FLOOD_BYTES {
                    self.wrong(
                        &mut p,
                        format!("spooled {len} bytes, expected {FLOOD_BYTES}"),
                    );
                }
            }
            None => self.wrong(&mut p, "no output_path".into()),
        }
        let r = s.run("echo after", opts()).await?;
        if let Err(e) = ensure_result(&r, Some(0), "after") {
            self.wrong(&mut p, format!("command after the flood: {e:#}"));
        }
        s.close().await?;
        Ok(self.finish(p, 3, Some(FLOOD_BYTES), Some(peak)))
    }

    /// A wrong result; a phase reports its first few one by one, then a count.
    fn wrong(&mut self, p: &mut Progress, what: String) {
        p.wrong += 1;
        if p.wrong <= 5 {
            self.fail(format!("{}: {what}", p.at()));
        }
    }

    /// Resources after `done` commands or cycles. The first sample is the
    /// warm baseline, later ones are checked against it; only a phase's
    /// first failing sample is reported. Between cycles (`closed`) no session
    /// is open, so descriptors must equal the phase's starting count.
    fn sample(&mut self, p: &mut Progress, done: usize, closed: bool) {
        let u = Usage::now();
        p.rss_max = p.rss_max.max(u.rss_kb);
        let Some(warm) = p.warm else {
            p.warm = Some(u);
            return;
        };
        if !p.samples_ok {
            return;
        }
        let at = format!("{} at {done}", p.at());
        let n = self.violations.len();
        if closed && u.fds != p.before.fds {
            self.fail(format!(
                "{at}: {} fds with no session open, {} before",
                u.fds, p.before.fds
            ));
        } else if u.fds.abs_diff(warm.fds) > FD_SLACK {
            self.fail(format!(
                "{at}: {} fds, warm {} (±{FD_SLACK})",
                u.fds, warm.fds
            ));
        }
        self.check_growth(&at, warm, u);
        p.samples_ok = self.violations.len() == n;
    }

    /// Ends a phase whose sessions are closed: descriptors exactly as
    /// before it, no growth, nothing left behind.
    fn finish(
        &mut self,
        p: Progress,
        commands: usize,
        bytes: Option<u64>,
        peak_kb: Option<u64>,
    ) -> Phase {
        let wall = p.started.elapsed();
        let at = p.at();
        if p.wrong > 5 {
            self.fail(format!("{at}: {} wrong results in all", p.wrong));
        }
        let after = Usage::now();
        self.check_closed(&at, p.before, after);
        let orphans = self.leftovers(&at);
        Phase {
            round: p.round,
            name: p.name,
            wall,
            commands,
            bytes,
            before: p.before,
            after,
            peak_kb: peak_kb.unwrap_or(p.rss_max.saturating_sub(p.before.rss_kb)),
            orphans,
        }
    }

    /// After a phase closed its sessions: descriptors exactly as before.
    fn check_closed(&mut self, at: &str, before: Usage, after: Usage) {
        if after.fds != before.fds {
            self.fail(format!(
                "{at}: {} fds with every session closed, {} at the start",
                after.fds, before.fds
            ));
        }
        self.check_growth(at, before, after);
    }

    /// Threads and RSS against a baseline.
    fn check_growth(&mut self, at: &str, base: Usage, now: Usage) {
        if now.threads > base.threads + THREAD_SLACK {
            self.fail(format!(
                "{at}: {} threads, {} at the start (+{THREAD_SLACK} allowed)",
                now.threads, base.threads
            ));
        }
        if now.rss_kb > base.rss_kb + RSS_SLACK_KB {
            self.fail(format!(
                "{at}: RSS grew {} KB, from {} to {} KB (limit {RSS_SLACK_KB} KB)",
                now.rss_kb - base.rss_kb,
                base.rss_kb,
                now.rss_kb
            ));
        }
    }

    /// Processes left behind: any carrying this run's tag and an
    /// `EXECKIT_SID`, any child of this process (a zombie counts), any
    /// session record or spool file. Each is a violation; returns the count.
    fn leftovers(&mut self, at: &str) -> usize {
        let tag = format!("EXECKIT_SOAK={}", self.tag);
        let me = std::process::id().to_string();
        let mut found = Vec::new();
        for d in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = d.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
                continue;
            }
            let env = std::fs::read(d.path().join("environ")).unwrap_or_default();
            let mut vars = env.split(|&b| b == 0);
            let marked = vars.clone().any(|v| v.starts_with(b"EXECKIT_SID="))
                && vars.any(|v| v == tag.as_bytes());
            let stat = std::fs::read_to_string(d.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces and parens.
            let (comm, rest) = stat.rsplit_once(')').unwrap_or(("", ""));
            let child = rest.split_whitespace().nth(1) == Some(me.as_str());
            if marked || child {
                let comm = comm.split_once('(').map_or("?", |(_, c)| c);
                found.push(format!("{pid} ({comm})"));
            }
        }
        let n = found.len();
        if n > 0 {
            self.fail(format!(
                "{at}: {n} orphan process(es): {}",
                found.join(", ")
            ));
        }
        let dirs = [
            ("session record", self.dirs.sessions.clone()),
            ("spool file", self.dirs.spool.clone()),
        ];
        for (what, dir) in dirs {
            let left = count_files(&dir);
            if left > 0 {
                let d = dir.display().to_string();
                self.fail(format!("{at}: {left} {what}(s) left in {d}"));
            }
        }
        n
    }
}

fn opts() -> RunOptions {
    RunOptions::timeout(Duration::from_secs(30))
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

/// A finished, clean result with this exit code and output.
fn ensure_result(r: &RunResult, code: Option<i32>, output: &str) -> Result<()> {
    if r.exit_code != code
        || r.output != output
        || r.timed_out
        || r.truncated
        || r.restarted
        || r.session_lost
        || r.running
        || r.error.is_some()
    {
        bail!("expected exit {code:?} and output {output:?}, got {r:?}");
    }
    Ok(())
}

fn table(phases: &[Phase]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:>5}  {:<14} {:>7} {:>9}  {:>9}  {:>9}  {:>15}  {:>8}  {:>7}",
        "round", "phase", "wall s", "rate", "fds", "threads", "RSS MB", "peak MB", "orphans"
    );
    let _ = writeln!(t, "{}", "-".repeat(100));
    let mb = |kb: u64| kb as f64 / 1024.0;
    for p in phases {
        let _ = writeln!(
            t,
            "{:>5}  {:<14} {:>7.1} {:>9}  {:>9}  {:>9}  {:>15}  {:>8}  {:>7}",
            p.round,
            p.name,
            p.wall.as_secs_f64(),
            p.rate(),
            format!("{}→{}", p.before.fds, p.after.fds),
            format!("{}→{}", p.before.threads, p.after.threads),
            format!("{:.1}→{:.1}", mb(p.before.rss_kb), mb(p.after.rss_kb)),
            format!("+{:.1}", mb(p.peak_kb)),
            p.orphans
        );
    }
    t
}
