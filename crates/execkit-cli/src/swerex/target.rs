//! The server's own sessions on the target, for what is not a bash
//! session: `execute` and the file routes run there as commands of a
//! session (so `docker:NAME` with only busybox inside and `ssh://…` work
//! as `local` does). A small pool per job, opened when first needed; each
//! session first gets the shell functions below.
//!
//! Their output is never shown as text: it comes back base64-encoded
//! (binary-safe; the cleaner leaves such lines alone), a long answer taken
//! whole from its spool file.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use execkit_core::raw::FileTransfer;
use execkit_core::{RunOptions, RunResult, Session, SessionConfig};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::models::Raised;

/// Characters of a pool command's output kept in memory; a longer answer
/// is read back from its spool file.
const ANSWER_IN_MEMORY: usize = 64 * 1024;

/// Size from which a file on another machine moves natively.
pub const NATIVE_FROM: u64 = 1 << 20;

/// Sessions per pool: requests beyond it wait for one.
const POOL_SIZE: usize = 4;

/// Shell functions every pool session gets (POSIX sh: bash, dash, busybox
/// ash). Every answer starts with a `swx:` line; payloads are base64.
pub const HELPERS: &str = r#"__swx_tmp() {
  for __swx_dir in "${TMPDIR:-}" /tmp /var/tmp /dev/shm; do
    [ -n "$__swx_dir" ] && [ -d "$__swx_dir" ] && [ -w "$__swx_dir" ] || continue
    __swx_t=$(mktemp "$__swx_dir/execkit-swerex.XXXXXX" 2>/dev/null) && { printf '%s\n' "$__swx_t"; return 0; }
  done
  echo 'swx:fail no writable temporary directory ($TMPDIR, /tmp, /var/tmp, /dev/shm): mount a tmpfs or set TMPDIR'
  return 1
}
__swx_exec() {
  __swx_m=$1 __swx_d=$2 __swx_p=$3; shift 3
  __swx_o=$(__swx_tmp) || { printf '%s\n' "$__swx_o"; return 0; }
  __swx_e=$(__swx_tmp) || { rm -f -- "$__swx_o"; printf '%s\n' "$__swx_e"; return 0; }
  ( { rm -f -- "$__swx_o" "$__swx_e"
      if [ -n "$__swx_d" ] && ! cd -- "$__swx_d" 2>/dev/null; then
        if [ ! -e "$__swx_d" ]; then echo 'swx:cwd 2'; elif [ ! -d "$__swx_d" ]; then echo 'swx:cwd 20'; else echo 'swx:cwd 13'; fi
        exit 0
      fi
      if [ -n "$__swx_p" ]; then
        case $__swx_p in
          */*) if [ ! -e "$__swx_p" ]; then echo 'swx:prog 2'; exit 0; elif [ -d "$__swx_p" ] || [ ! -x "$__swx_p" ]; then echo 'swx:prog 13'; exit 0; fi ;;
          *) command -v "$__swx_p" >/dev/null 2>&1 || { echo 'swx:prog 2'; exit 0; } ;;
        esac
      fi
      if [ "$__swx_m" = 1 ]; then "$@" </dev/null >&5 2>&5 5>&- 6<&- 7>&- 8<&-
      else "$@" </dev/null >&5 2>&7 5>&- 6<&- 7>&- 8<&-; fi
      echo "swx:rc $?"; base64 <&6; echo 'swx:stderr'; base64 <&8
    } 5>"$__swx_o" 6<"$__swx_o" 7>"$__swx_e" 8<"$__swx_e" )
}
__swx_read() {
  if [ -d "$1" ]; then echo 'swx:errno 21'
  elif [ ! -e "$1" ]; then echo 'swx:errno 2'
  elif [ ! -r "$1" ]; then echo 'swx:errno 13'
  elif [ -n "${2:-}" ] && [ "$(stat -L -c %s -- "$1" 2>/dev/null || echo 0)" -gt "$2" ] 2>/dev/null; then echo 'swx:big'
  else echo 'swx:ok'; base64 < "$1" || echo 'swx:fail reading failed'; fi
}
__swx_write() {
  if [ "$2" != 1 ]; then
    __swx_d=$(dirname -- "$1") && mkdir -p -- "$__swx_d" 2>/dev/null
    if [ -d "$1" ]; then cat >/dev/null; echo 'swx:errno 21'; return 0; fi
    __swx_err=$( { cat > "$1"; } 2>&1 )
  else
    __swx_err=$( { cat >> "$1"; } 2>&1 )
  fi
  if [ -z "$__swx_err" ]; then echo 'swx:ok'; else printf 'swx:fail %s\n' "$__swx_err"; fi
}
__swx_recv() {
  command -v head >/dev/null 2>&1 || { echo 'swx:fail head is not installed on the target'; return 0; }
  command -v base64 >/dev/null 2>&1 || { echo 'swx:fail base64 is not installed on the target'; return 0; }
  if [ "$2" != 1 ]; then
    __swx_d=$(dirname -- "$1") && mkdir -p -- "$__swx_d" 2>/dev/null
    if [ -d "$1" ]; then echo 'swx:errno 21'; return 0; fi
    __swx_err=$( { true > "$1"; } 2>&1 )
  else
    __swx_err=$( { true >> "$1"; } 2>&1 )
  fi
  if [ -n "$__swx_err" ]; then printf 'swx:fail %s\n' "$__swx_err"; return 0; fi
  echo 'swx:ready'
  __swx_err=$( { head -c "$3" | base64 -d >> "$1"; } 2>&1 )
  if [ -z "$__swx_err" ]; then echo 'swx:ok'; else printf 'swx:fail %s\n' "$__swx_err"; fi
}
__swx_place() {
  if [ "$3" = 1 ]; then
    if ! command -v unzip >/dev/null 2>&1; then rm -f -- "$1"; echo 'swx:fail unzip is not installed on the target'; return 0; fi
    __swx_err=$(mkdir -p -- "$2" 2>&1 && unzip -o -q "$1" -d "$2" 2>&1 </dev/null)
  else
    __swx_d=$(dirname -- "$2") && mkdir -p -- "$__swx_d" 2>/dev/null
    chmod "$(printf '%o' "$(( 0666 & ~0$(umask) ))")" -- "$1" 2>/dev/null
    __swx_err=$(mv -f -- "$1" "$2" 2>&1)
  fi
  __swx_rc=$?
  rm -f -- "$1"
  if [ "$__swx_rc" = 0 ]; then echo 'swx:ok'; else printf 'swx:fail %s\n' "$__swx_err"; fi
}"#;

/// `text` single-quoted for a POSIX shell.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A pool of sessions on the target for one job.
pub struct Workers {
    target: String,
    /// The transport's native file transfer, if it has one.
    native: Option<Arc<dyn FileTransfer>>,
    /// The target's shells run on this host: its native transfer costs
    /// no process start.
    here: bool,
    config: SessionConfig,
    kind: &'static str,
    idle: Mutex<Vec<Session>>,
    /// Sessions given back once the pool was closing, or given back in an
    /// unknown state: closed by [`Workers::shutdown`].
    retired: Mutex<Vec<Session>>,
    slots: Semaphore,
    closing: AtomicBool,
    opened: AtomicU64,
}

/// A session taken from a pool; given back when dropped.
pub struct Worker<'a> {
    pool: &'a Workers,
    session: Option<Session>,
    /// Its state is in doubt: closed, never handed out again.
    retire: bool,
    _slot: SemaphorePermit<'a>,
}

impl Worker<'_> {
    pub fn session(&mut self) -> &mut Session {
        self.session
            .as_mut()
            .expect("a worker holds its session until dropped")
    }

    /// Closes the session when it is given back instead of pooling it.
    pub fn retire(&mut self) {
        self.retire = true;
    }

    /// Runs `command` (with `input` as its stdin when given) and returns
    /// all it printed and its result.
    pub async fn run(
        &mut self,
        command: &str,
        input: Option<&[u8]>,
        timeout: Option<Duration>,
    ) -> Result<(String, RunResult), Raised> {
        let mut opts = RunOptions::default().keep_final_newline(true);
        opts.timeout = timeout;
        let s = self.session();
        let ran = match input {
            Some(bytes) => s.run_with_stdin(command, bytes, opts).await,
            None => s.run(command, opts).await,
        };
        let r = ran.map_err(|e| Raised::builtin("RuntimeError", e.to_string()))?;
        let text = whole_output(&r).await?;
        Ok((text, r))
    }
}

impl Drop for Worker<'_> {
    fn drop(&mut self) {
        let Some(s) = self.session.take() else { return };
        let healthy = s.is_alive() && !s.is_running() && !self.retire;
        if self.pool.closing.load(Ordering::SeqCst) {
            self.pool
                .retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(s);
        } else if healthy {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(s);
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(15), s.close()).await;
            });
        }
    }
}

/// The whole output of a pool session's command: its spool file (read,
/// then removed), or nothing when it printed nothing.
async fn whole_output(r: &RunResult) -> Result<String, Raised> {
    match &r.output_path {
        Some(p) => {
            let text = tokio::fs::read_to_string(p).await;
            let _ = tokio::fs::remove_file(p).await;
            text.map_err(|e| {
                Raised::builtin(
                    "RuntimeError",
                    format!(
                        "the answer from the target could not be read back from {}: {e}",
                        p.display()
                    ),
                )
            })
        }
        None if r.truncated => Err(Raised::builtin(
            "RuntimeError",
            format!(
                "the answer from the target was lost: {}",
                r.error
                    .as_deref()
                    .unwrap_or("its spool file could not be written")
            ),
        )),
        None => Ok(r.output.clone()),
    }
}

impl Workers {
    /// A pool for `kind` (`execute`, `files`) on `target`; `config` is the
    /// session template (with or without the observer).
    pub fn new(target: &str, mut config: SessionConfig, kind: &'static str) -> Workers {
        config.output_limit = ANSWER_IN_MEMORY;
        let native = execkit_core::connect(target).ok().and_then(|t| t.files());
        Workers {
            target: target.to_string(),
            native,
            here: execkit_core::on_this_host(target),
            config,
            kind,
            idle: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            slots: Semaphore::new(POOL_SIZE),
            closing: AtomicBool::new(false),
            opened: AtomicU64::new(0),
        }
    }

    /// The target's native file transfer ([`FileTransfer`]), if any.
    pub fn native(&self) -> Option<Arc<dyn FileTransfer>> {
        self.native.clone()
    }

    /// The native transfer for a file of `len` bytes: on this host
    /// always; elsewhere (each transfer starts a process there: a docker
    /// exec costs ~80 ms, a command of a live session ~1 ms) from
    /// [`NATIVE_FROM`] bytes on.
    pub fn native_for(&self, len: u64) -> Option<Arc<dyn FileTransfer>> {
        self.native
            .clone()
            .filter(|_| self.here || len >= NATIVE_FROM)
    }

    /// Whether a read should go native without asking the size first.
    pub fn native_first(&self) -> bool {
        self.here && self.native.is_some()
    }

    /// `path` made absolute as the pool's sessions see it: a relative one
    /// is taken from the directory their shells start in.
    pub async fn absolute(&self, path: &str) -> Result<String, Raised> {
        if path.starts_with('/') {
            return Ok(path.to_string());
        }
        let mut w = self.take().await?;
        let cwd = w.session().cwd().trim_end_matches('/').to_string();
        Ok(format!("{cwd}/{path}"))
    }

    /// A session of the pool: an idle one, else a new one (up to the pool
    /// size; beyond it, waits).
    pub async fn take(&self) -> Result<Worker<'_>, Raised> {
        let shutting = || Raised::builtin("RuntimeError", "the server is shutting down");
        let slot = self.slots.acquire().await.map_err(|_| shutting())?;
        if self.closing.load(Ordering::SeqCst) {
            return Err(shutting());
        }
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let session = match idle {
            Some(s) => s,
            None => self.open().await?,
        };
        Ok(Worker {
            pool: self,
            session: Some(session),
            retire: false,
            _slot: slot,
        })
    }

    async fn open(&self) -> Result<Session, Raised> {
        let n = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        let mut config = self.config.clone();
        config.name = Some(format!("swerex-{}-{n}", self.kind));
        let mut s = Session::open(&self.target, config)
            .await
            .map_err(|e| Raised::builtin("RuntimeError", format!("{}: {e}", self.target)))?;
        let r = s
            .run(HELPERS, RunOptions::timeout(Duration::from_secs(30)))
            .await
            .map_err(|e| Raised::builtin("RuntimeError", e.to_string()))?;
        if r.exit_code != Some(0) {
            let _ = s.close().await;
            return Err(Raised::builtin(
                "RuntimeError",
                format!(
                    "the helper functions could not be defined on {}: {}",
                    self.target,
                    r.error.unwrap_or_default()
                ),
            ));
        }
        Ok(s)
    }

    /// From now on no session is handed out, and one given back is kept
    /// for [`Workers::shutdown`] to close.
    pub fn stop_lending(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.slots.close();
    }

    /// Closes every session of the pool (call once the requests using
    /// them have ended).
    pub async fn shutdown(&self) {
        self.stop_lending();
        let mut all: Vec<Session> = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        all.extend(
            self.retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..),
        );
        let closes = all.into_iter().map(|s| async move {
            let _ = tokio::time::timeout(Duration::from_secs(15), s.close()).await;
        });
        futures_join_all(closes).await;
    }

    /// Closes the idle sessions (the `close` route); the pool stays usable.
    pub async fn close_idle(&self) {
        let all: Vec<Session> = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        futures_join_all(all.into_iter().map(|s| async move {
            let _ = tokio::time::timeout(Duration::from_secs(15), s.close()).await;
        }))
        .await;
    }
}

/// Runs the futures concurrently and waits for all of them.
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

/// The first line of a helper's answer and the rest.
pub fn split_answer(text: &str) -> (&str, &str) {
    match text.split_once('\n') {
        Some((first, rest)) => (first, rest),
        None => (text, ""),
    }
}

/// A `swx:fail …` or `swx:errno N` first line as the exception Python
/// would raise for `path`; `None` for any other line.
pub fn failure(first: &str, path: &str) -> Option<Raised> {
    if let Some(n) = first.strip_prefix("swx:errno ") {
        let errno = n.trim().parse().unwrap_or(libc::EIO);
        return Some(Raised::os(errno, path));
    }
    let msg = first.strip_prefix("swx:fail ")?;
    Some(match super::models::errno_in(msg) {
        Some(errno) => Raised::os(errno, path),
        None => Raised::builtin("OSError", format!("{msg} ({path})")),
    })
}

/// The bytes of base64 lines (whitespace ignored).
pub fn unbase64(text: &str) -> Result<Vec<u8>, Raised> {
    use base64::Engine as _;
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean)
        .map_err(|e| {
            Raised::builtin(
                "RuntimeError",
                format!("garbled answer from the target: {e}"),
            )
        })
}

/// Whether a command ran to its end on a live shell; else the exception.
pub fn completed(r: &RunResult, what: &str) -> Result<(), Raised> {
    if r.session_lost || r.restarted || (r.exit_code.is_none() && !r.timed_out) {
        return Err(Raised::builtin(
            "RuntimeError",
            format!(
                "{what} did not complete on the target: {}",
                r.error.as_deref().unwrap_or("no exit code")
            ),
        ));
    }
    Ok(())
}
