//! How shells are started and prepared for the sentinel protocol. Shared by
//! every transport so a shell behaves the same on this host, in a container
//! and over SSH.

use std::fmt::Write as _;

use crate::protocol;

/// Environment every session shell gets (besides `EXECKIT_SID`).
pub const BASE_ENV: &[(&str, &str)] = &[
    ("TERM", "dumb"),
    ("PAGER", "cat"),
    ("GIT_PAGER", "cat"),
    ("MANPAGER", "cat"),
    ("SYSTEMD_PAGER", ""),
    ("NO_COLOR", "1"),
    ("PS1", ""),
    ("PS2", ""),
    ("LESS", "-FRX"),
];

/// Variables removed from an inherited environment: rc hooks, history and
/// prompt machinery that make sessions slow, noisy or nondeterministic.
pub const STRIP_ENV: &[&str] = &[
    "ENV",
    "BASH_ENV",
    "HISTFILE",
    "PROMPT_COMMAND",
    "PS0",
    "PS3",
    "PS4",
    "COLORTERM",
    "CLICOLOR_FORCE",
    "FORCE_COLOR",
    "EXECKIT_SID",
    // bash and ksh log an idle interactive shell out after TMOUT seconds.
    "TMOUT",
];

/// Name of the variable that marks every process of a session.
pub const MARKER_VAR: &str = "EXECKIT_SID";

/// argv to start `shell` interactively without rc files (or with the user's
/// profile when `load_profile`).
pub fn startup_argv(shell: &str, load_profile: bool) -> Vec<String> {
    let base = shell.rsplit('/').next().unwrap_or(shell);
    let mut argv = vec![shell.to_string()];
    match base {
        "bash" => {
            if !load_profile {
                argv.extend(["--norc", "--noprofile"].map(String::from));
            }
            argv.extend(["--noediting", "-i"].map(String::from));
        }
        "busybox" => argv.extend(["sh", "-i"].map(String::from)),
        "zsh" => {
            if !load_profile {
                argv.push("-f".into());
            }
            argv.push("-i".into());
        }
        _ => {
            if load_profile {
                argv.push("-l".into());
            }
            argv.push("-i".into());
        }
    }
    argv
}

/// Shell source that prepares a fresh shell: terminal modes, no job
/// control, no prompts, no history, safe pagers. Every step that some shell
/// lacks is guarded (`command eval … 2>/dev/null`) so a failure cannot abort
/// the line under dash or busybox.
pub fn init_source(nonce: &str) -> Vec<u8> {
    let mut s = String::new();
    s.push_str("stty -echo -onlcr -ixon 2>/dev/null; ");
    s.push_str("command eval 'set +m' 2>/dev/null; ");
    s.push_str("PS1=''; PS2=''; PS4='+ '; ");
    // See `protocol::TRACE_MARK`; typed as is (not a line-discipline key).
    let _ = write!(
        s,
        "{}='{}'; ",
        protocol::TRACE_MARK_VAR,
        protocol::TRACE_MARK
    );
    s.push_str("unset HISTFILE PROMPT_COMMAND ENV BASH_ENV 2>/dev/null; ");
    // An rc file may set TMOUT (even read-only: then it cannot go).
    s.push_str("command eval 'unset TMOUT' 2>/dev/null; ");
    s.push_str("command eval 'set +o history' 2>/dev/null; ");
    // No `set +o emacs` or `bind`: they start readline in a bash running
    // --noediting, which then blocks reading the terminal. Bracketed paste
    // is a readline feature, so --noediting already turns it off.
    s.push_str("command eval 'unsetopt zle' 2>/dev/null; ");
    s.push_str("export TERM=dumb PAGER=cat GIT_PAGER=cat MANPAGER=cat NO_COLOR=1; ");
    // busybox ash (echo off, so no line editing) takes a read interrupted
    // by SIGCHLD for end of input and exits; ignoreeof keeps it alive.
    s.push_str("case $BASH_VERSION in '') command eval 'set -o ignoreeof' 2>/dev/null;; esac; ");
    // Report the flavour in the status field: 1 = bash, 2 = bash that
    // already holds functions or aliases (a profile, exported functions),
    // which may start background jobs (see `protocol::Via`).
    s.push_str("__ek_s=0; [ -n \"$BASH_VERSION\" ] && command eval '__ek_s=1; ");
    s.push_str("compgen -A function >/dev/null 2>&1; [ $? = 1 ] || __ek_s=2; ");
    s.push_str("[ ${#BASH_ALIASES[@]} = 0 ] || __ek_s=2'; ");
    // The shell's pid (as the target sees it) rides along: status =
    // flavour + 10 × `$$` (see `Flavor::from_status`, `pid_from_status`).
    // The target's clock (`/proc/uptime`), to tell later which processes a
    // command started (see `signal_command_script`, `parse_uptime`).
    s.push_str("__ek_up=; read -r __ek_up __ek_s2 < /proc/uptime 2>/dev/null; ");
    s.push_str("command printf '__EK''U_%s_\\n' \"$__ek_up\"; unset __ek_s2; ");
    s.push_str(&protocol::sentinel_source(nonce, "$((__ek_s + 10 * $$))"));
    s.push('\n');
    s.into_bytes()
}

/// argv before a script for running it with the session's own shell out
/// of band: `SHELL -c` (`busybox sh -c` for busybox), `/bin/sh -c` when the
/// transport chose the shell — a container may have no `/bin/sh` at all.
pub fn script_argv(shell: Option<&str>) -> Vec<String> {
    match shell {
        Some(p) if p.rsplit('/').next() == Some("busybox") => {
            vec![p.to_string(), "sh".into(), "-c".into()]
        }
        Some(p) => vec![p.to_string(), "-c".into()],
        None => vec!["/bin/sh".into(), "-c".into()],
    }
}

/// Which shell answered the start-up sentinel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// GNU bash.
    Bash,
    /// Any other POSIX shell (dash, busybox ash, …).
    Posix,
}

impl Flavor {
    /// Decodes the status the start-up sentinel reported.
    pub fn from_status(status: i32) -> Self {
        if matches!(status % 10, 1 | 2) {
            Flavor::Bash
        } else {
            Flavor::Posix
        }
    }
}

/// Whether the start-up sentinel reported a bash that already holds
/// functions or aliases.
pub fn holds_code(status: i32) -> bool {
    status % 10 == 2
}

/// The target's uptime in centiseconds (its `/proc/uptime`), from the
/// output the start-up line printed before its sentinel.
pub fn parse_uptime(seen: &[u8]) -> Option<u64> {
    let at = seen.windows(6).position(|w| w == b"__EKU_")? + 6;
    let rest = &seen[at..];
    let end = rest.iter().position(|&b| b == b'_')?;
    let text = std::str::from_utf8(&rest[..end]).ok()?;
    let (secs, frac) = text.split_once('.')?;
    let frac: String = frac.chars().chain("00".chars()).take(2).collect();
    Some(secs.parse::<u64>().ok()? * 100 + frac.parse::<u64>().ok()?)
}

/// The shell's pid on its target, as the start-up sentinel reported it.
pub fn pid_from_status(status: i32) -> Option<u32> {
    u32::try_from(status / 10).ok().filter(|&p| p > 1)
}

/// A busybox-portable script that sends `signal` (a name: `INT`, `TERM`,
/// `KILL`, or `0` to only count) to what one command started, and prints
/// how many processes it signalled. Run out of band on the target
/// ([`crate::ShellProcess::run_script`]).
///
/// What the command started: processes whose environment holds
/// `command_entry` (`EXECKIT_CMD=<id>`: everything it exec'd), and
/// processes with no `EXECKIT_CMD` at all — forked subshells that never
/// exec'd carry only the shell's own environment — started since the
/// command began (`since_cs`: the target's uptime in centiseconds then)
/// that descend from the shell or, reparented, still carry `marker_entry`.
/// A process that carries another command's id, or sits below one or below
/// an older process, belongs to an earlier command's job and is left
/// alone; the shell itself never gets a signal. (A subshell an earlier
/// command forked within the same 10 ms clock tick cannot be told apart.)
/// Zombies are skipped: they are dead already, and `0` as the signal counts
/// what is still alive. Its only output is the count (stderr goes nowhere:
/// a process that ends while the script reads `/proc` must not add noise,
/// and an SSH exec channel merges stderr into the output).
pub fn signal_command_script(
    signal: &str,
    shell_pid: u32,
    marker_entry: &str,
    command_entry: &str,
    since_cs: u64,
) -> String {
    let sid = protocol::shell_quote(marker_entry);
    let cid = protocol::shell_quote(command_entry);
    let cmd_var = crate::session::COMMAND_VAR;
    format!(
        r#"exec 2>/dev/null; sig={signal}; shell={shell_pid}; sid={sid}; cid={cid}; me=$$
t0=$(({since_cs} - 2))
pids() {{ if printf 'x\000' | grep -qzxF x 2>/dev/null; then
  for f in $(grep -lsz "$@" /proc/[0-9]*/environ 2>/dev/null); do f=${{f#/proc/}}; printf '%s ' "${{f%/environ}}"; done
else for d in /proc/[0-9]*; do tr '\000' '\n' < "$d/environ" 2>/dev/null | grep -q "$@" && printf '%s ' "${{d#/proc/}}"; done; fi; }}
marked=" $(pids -xF "$sid") "; cmdp=" $(pids -xF "$cid") "; anyc=" $(pids '^{cmd_var}=') "
for d in /proc/[0-9]*; do
  p=${{d#/proc/}}
  read -r l < "$d/stat" 2>/dev/null || continue
  set -- ${{l##*) }}
  case $1 in Z|X) continue;; esac
  eval "pp_$p=$2 st_$p=${{20}}"
done
n=0
for d in /proc/[0-9]*; do
  p=${{d#/proc/}}
  [ "$p" = "$me" ] || [ "$p" = "$shell" ] && continue
  eval "st=\${{st_$p:-}}"; [ -n "$st" ] || continue
  hit=
  case $cmdp in *" $p "*) hit=1;; esac
  case $anyc in *" $p "*) ;; *) if [ -z "$hit" ] && [ "$st" -ge "$t0" ]; then
    q=$p
    while :; do
      eval "q=\${{pp_$q:-0}}"
      if [ "$q" = "$shell" ]; then hit=1; break; fi
      if [ "$q" -le 1 ]; then case $marked in *" $p "*) hit=1;; esac; break; fi
      case $anyc in *" $q "*) break;; esac
      eval "qs=\${{st_$q:-0}}"
      [ "$qs" -ge "$t0" ] || break
    done
  fi;; esac
  [ -n "$hit" ] && kill -s "$sig" "$p" 2>/dev/null && n=$((n + 1))
done
echo "$n"
"#
    )
}

/// A busybox-portable script that prints `1` when a process of the session
/// (carrying `marker_entry`; the shell itself too, for its `read`) is
/// blocked reading the session's terminal, else `0`. Blocked reading: its
/// current system call (`/proc/PID/syscall`) is `read` on a descriptor
/// that is the terminal the shell has on fd 0, or `poll`/`select` (a pager,
/// an editor) with that terminal on its fd 0. Linux on x86_64 and aarch64;
/// elsewhere, or where `/proc/PID/syscall` cannot be read, it says `0`.
pub fn input_wait_script(shell_pid: u32, marker_entry: &str) -> String {
    let sid = protocol::shell_quote(marker_entry);
    format!(
        r#"exec 2>/dev/null; shell={shell_pid}; sid={sid}
tty=$(readlink /proc/$shell/fd/0 2>/dev/null) || {{ echo 0; exit 0; }}
case $tty in /dev/pts/*|/dev/tty*) ;; *) echo 0; exit 0;; esac
case $(uname -m) in
  x86_64) reads=" 0 17 19 295 "; polls=" 7 23 232 270 271 281 441 ";;
  aarch64|arm64) reads=" 63 65 67 69 "; polls=" 22 72 73 441 ";;
  *) echo 0; exit 0;;
esac
if printf 'x\000' | grep -qzxF x 2>/dev/null; then
  list=$(grep -lszxF "$sid" /proc/[0-9]*/environ 2>/dev/null)
else
  list=$(for d in /proc/[0-9]*; do tr '\000' '\n' < "$d/environ" 2>/dev/null | grep -qxF "$sid" && echo "$d/environ"; done)
fi
for f in $list; do
  d=${{f%/environ}}
  read -r nr a0 _ < "$d/syscall" 2>/dev/null || continue
  case $reads in *" $nr "*)
    [ "$(readlink "$d/fd/$((a0))" 2>/dev/null)" = "$tty" ] && {{ echo 1; exit 0; }};;
  esac
  case $polls in *" $nr "*)
    [ "$(readlink "$d/fd/0" 2>/dev/null)" = "$tty" ] && {{ echo 1; exit 0; }};;
  esac
done
echo 0
"#
    )
}

/// A busybox-portable script that kills every process whose environment
/// holds exactly `entry` (e.g. `EXECKIT_SID=abc`), skipping itself. For
/// transports that clean up by running a one-shot command on the target.
pub fn kill_matching_script(entry: &str) -> String {
    let q = protocol::shell_quote(entry);
    // Several rounds catch children forked while we were scanning. Where
    // grep reads NUL-separated input (`-z`: GNU, busybox), one grep scans
    // every environ at once; else one `tr | grep` per process (two forks
    // each: slow with hundreds of processes, but portable).
    format!(
        "e={q}; me=$$; \
         if printf 'x\\000' | grep -qzxF x 2>/dev/null; then \
         for round in 1 2 3; do found=; \
         for f in $(grep -lszxF \"$e\" /proc/[0-9]*/environ 2>/dev/null); do \
         p=${{f#/proc/}}; p=${{p%/environ}}; [ \"$p\" = \"$me\" ] && continue; \
         kill -9 \"$p\" 2>/dev/null && found=1; done; \
         [ -z \"$found\" ] && break; done; \
         else \
         for round in 1 2 3; do found=; \
         for d in /proc/[0-9]*; do p=${{d#/proc/}}; [ \"$p\" = \"$me\" ] && continue; \
         if tr '\\000' '\\n' < \"$d/environ\" 2>/dev/null | grep -qxF \"$e\"; then \
         kill -9 \"$p\" 2>/dev/null && found=1; fi; done; \
         [ -z \"$found\" ] && break; done; \
         fi; exit 0"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_matching_script_kills_only_marked_processes() {
        use std::process::{Command, Stdio};
        let marker = format!("killtest{}", std::process::id());
        let spawn = |m: &str| {
            Command::new("sleep")
                .arg("30")
                .env(MARKER_VAR, m)
                .stdin(Stdio::null())
                .spawn()
                .expect("sleep")
        };
        let mut marked = spawn(&marker);
        let mut other = spawn(&format!("{marker}x"));
        let st = Command::new("/bin/sh")
            .arg("-c")
            .arg(kill_matching_script(&format!("{MARKER_VAR}={marker}")))
            .status()
            .expect("sh");
        assert!(st.success());
        let t = std::time::Instant::now();
        while marked.try_wait().expect("wait").is_none() {
            assert!(t.elapsed().as_secs() < 5, "marked process survived");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(other.try_wait().expect("wait").is_none(), "unmarked killed");
        let _ = other.kill();
        let _ = other.wait();
    }

    #[test]
    fn argv_per_shell() {
        assert_eq!(
            startup_argv("/bin/bash", false),
            ["/bin/bash", "--norc", "--noprofile", "--noediting", "-i"]
        );
        assert_eq!(startup_argv("/bin/dash", false), ["/bin/dash", "-i"]);
        assert_eq!(
            startup_argv("/bin/busybox", false),
            ["/bin/busybox", "sh", "-i"]
        );
    }
}
