//! `read_file`, `write_file` and `upload`, on the target.
//!
//! Bytes move natively when the target's transport can
//! ([`FileTransfer`]: the local filesystem, an exec of `cat` in the
//! container, a second SSH channel) — binary-safe, streamed, fast. Otherwise (a
//! transport without one, or one answering `Unsupported` for this
//! request) they cross through [`TargetFiles`] on a pool session's
//! terminal: base64 lines out of `base64 FILE` for a read, base64 lines
//! typed into `head -c N | base64 -d` for a write (≤ 4 MiB a step, so an
//! upload streams in bounded memory), which works on every transport at
//! the speed of the terminal. Staging and placing an upload (`mktemp`,
//! `mv`, `unzip`) are commands of a pool session either way.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use execkit_core::raw::{FileTransfer, FILE_CHUNK};
use execkit_core::RunOptions;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::models::{decode_owned, universal_newlines, Fail, Raised, ReadFile, WriteFile};
use super::multipart::{boundary, Multipart};
use super::target::{
    completed, failure, quote, split_answer, unbase64, Worker, Workers, NATIVE_FROM,
};

/// Bytes written to the target per step.
pub const CHUNK: usize = 4 << 20;
/// Longest text field of an upload form.
const MAX_FIELD: usize = 64 * 1024;
/// No step of a file transfer waits longer than this for the target.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a starting transfer is looked at until it reads.
const READY_POLL: Duration = Duration::from_millis(2);
/// Typed at once (whole lines).
const TYPED_PIECE: usize = 1 << 20;

/// How bytes get to and from files on the target.
#[allow(async_fn_in_trait)] // used generically inside this crate only
pub trait TargetFiles {
    /// The whole file.
    async fn read(&mut self, path: &str) -> Result<Vec<u8>, Raised>;
    /// Writes `bytes` at `path` (its directory created; truncated first,
    /// unless `append`).
    async fn write(&mut self, path: &str, bytes: &[u8], append: bool) -> Result<(), Raised>;
    /// A fresh private file on the target to stage an upload in.
    async fn staging_file(&mut self) -> Result<String, Raised>;
    /// Moves a staged file to `target` (its directory created), or unzips
    /// it into the directory `target`; the staged file is gone afterwards.
    async fn place(&mut self, staged: &str, target: &str, unzip: bool) -> Result<(), Raised>;
    /// Removes a staged file (an upload that failed).
    async fn discard(&mut self, staged: &str);
}

/// [`TargetFiles`] through a pool session's terminal.
pub struct ThroughSession<'a>(pub Worker<'a>);

impl ThroughSession<'_> {
    /// A helper's one-line answer, or the exception it stands for.
    async fn ask(&mut self, cmd: &str, what: &str, path: &str) -> Result<String, Raised> {
        let (text, r) = self.0.run(cmd, None, Some(STEP_TIMEOUT)).await?;
        completed(&r, what)?;
        let (first, _) = split_answer(&text);
        if let Some(e) = failure(first, path) {
            return Err(e);
        }
        Ok(first.to_string())
    }

    /// The whole file, or `None` if it is larger than `max` bytes.
    async fn read_up_to(
        &mut self,
        path: &str,
        max: Option<u64>,
    ) -> Result<Option<Vec<u8>>, Raised> {
        let cmd = match max {
            Some(n) => format!("__swx_read {} {n}", quote(path)),
            None => format!("__swx_read {}", quote(path)),
        };
        let (text, r) = self.0.run(&cmd, None, Some(STEP_TIMEOUT)).await?;
        completed(&r, "reading the file")?;
        let (first, rest) = split_answer(&text);
        if let Some(e) = failure(first, path) {
            return Err(e);
        }
        if first == "swx:big" {
            return Ok(None);
        }
        if first != "swx:ok" {
            return Err(Raised::builtin(
                "RuntimeError",
                format!("unexpected answer from the target: {first}"),
            ));
        }
        if rest.ends_with("swx:fail reading failed\n") {
            return Err(Raised::builtin("OSError", format!("reading {path} failed")));
        }
        unbase64(rest).map(Some)
    }

    /// Starts `cmd`, which reads `text` from the terminal once it printed
    /// `swx:ready`, types the text in, and returns all it printed.
    async fn typed_write(&mut self, cmd: &str, text: &str) -> Result<String, Raised> {
        let fail = |e: execkit_core::SessionError| Raised::builtin("RuntimeError", e.to_string());
        let s = self.0.session();
        let opts = RunOptions::timeout(STEP_TIMEOUT)
            .keep_final_newline(true)
            .yield_after(Some(Duration::ZERO));
        let mut r = s.run(cmd, opts).await.map_err(fail)?;
        let mut seen = r.output.clone();
        // Nothing is typed before the command reads the terminal: the
        // shell would take it for commands.
        while r.running && !seen.contains("swx:ready") {
            r = s.poll(READY_POLL).await.map_err(fail)?;
            seen.push_str(&r.output);
        }
        if r.running {
            for piece in pieces(text, TYPED_PIECE) {
                s.send_input(piece).await.map_err(fail)?;
            }
        }
        while r.running {
            r = s.poll(Duration::from_secs(3600)).await.map_err(fail)?;
            seen.push_str(&r.output);
        }
        if r.timed_out {
            return Err(Raised::swerex(
                "CommandTimeoutError",
                format!(
                    "writing the file took longer than {} s",
                    STEP_TIMEOUT.as_secs()
                ),
            ));
        }
        completed(&r, "writing the file")?;
        Ok(seen)
    }
}

impl TargetFiles for ThroughSession<'_> {
    async fn read(&mut self, path: &str) -> Result<Vec<u8>, Raised> {
        Ok(self.read_up_to(path, None).await?.unwrap_or_default())
    }

    async fn write(&mut self, path: &str, bytes: &[u8], append: bool) -> Result<(), Raised> {
        let text = typed_base64(bytes);
        let cmd = format!(
            "__swx_recv {} {} {}",
            quote(path),
            u8::from(append),
            text.len()
        );
        let answer = match self.typed_write(&cmd, &text).await {
            Ok(a) => a,
            Err(e) => {
                // Typed input may be left over for the shell: never reuse it.
                self.0.retire();
                return Err(e);
            }
        };
        let last = answer.lines().last().unwrap_or_default();
        if let Some(e) = failure(last, path) {
            return Err(e);
        }
        if last != "swx:ok" {
            self.0.retire();
            return Err(Raised::builtin(
                "RuntimeError",
                format!("unexpected answer from the target: {last}"),
            ));
        }
        Ok(())
    }

    async fn staging_file(&mut self) -> Result<String, Raised> {
        self.ask("__swx_tmp", "making a staging file", "").await
    }

    async fn place(&mut self, staged: &str, target: &str, unzip: bool) -> Result<(), Raised> {
        let cmd = format!(
            "__swx_place {} {} {}",
            quote(staged),
            quote(target),
            u8::from(unzip)
        );
        self.ask(&cmd, "placing the upload", target).await.map(drop)
    }

    async fn discard(&mut self, staged: &str) {
        let cmd = format!("rm -f -- {}", quote(staged));
        let _ = self.0.run(&cmd, None, Some(STEP_TIMEOUT)).await;
    }
}

/// Base64 lines short enough for a terminal's line buffer (4,095 bytes).
fn typed_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    /// Input bytes per line: 4,000 characters of base64.
    const PER_LINE: usize = 3000;
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut text = String::with_capacity(bytes.len() / 3 * 4 + bytes.len() / PER_LINE + 8);
    for line in bytes.chunks(PER_LINE) {
        engine.encode_string(line, &mut text);
        text.push('\n');
    }
    text
}

/// `text` cut after a newline about every `size` bytes.
fn pieces(text: &str, size: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = if rest.len() <= size {
            rest.len()
        } else {
            rest[..size].rfind('\n').map_or(rest.len(), |i| i + 1)
        };
        let (piece, after) = rest.split_at(cut);
        rest = after;
        Some(piece)
    })
}

/// A native transfer's error as the exception Python would raise for
/// `path`.
fn io_raised(e: &io::Error, path: &str) -> Raised {
    match execkit_core::raw::file_errno(e) {
        Some(errno) => Raised::os(errno, path),
        None => Raised::builtin("OSError", format!("{e} ({path})")),
    }
}

/// `Ok(None)`: the native transfer cannot serve this request.
fn unless_unsupported<T>(r: io::Result<T>, path: &str) -> Result<Option<T>, Raised> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(None),
        Err(e) => Err(io_raised(&e, path)),
    }
}

/// The whole file through the native transfer; `None` when there is none
/// or it cannot serve the request.
async fn native_read(workers: &Workers, path: &str) -> Result<Option<Vec<u8>>, Raised> {
    let Some(files) = workers.native() else {
        return Ok(None);
    };
    let at = workers.absolute(path).await?;
    unless_unsupported(execkit_core::raw::read_file(&*files, &at).await, path)
}

/// `POST /read_file`: `Path.read_text(encoding, errors)` of a file on the
/// target.
pub async fn read_file(workers: &Workers, req: ReadFile) -> Result<Value, Raised> {
    let small = if workers.native_first() {
        None
    } else if workers.native().is_some() {
        // One command answers a small file whole, or says it is big.
        let mut s = ThroughSession(workers.take().await?);
        s.read_up_to(&req.path, Some(NATIVE_FROM)).await?
    } else {
        Some(
            ThroughSession(workers.take().await?)
                .read(&req.path)
                .await?,
        )
    };
    let bytes = match small {
        Some(b) => b,
        None => match native_read(workers, &req.path).await? {
            Some(b) => b,
            None => {
                ThroughSession(workers.take().await?)
                    .read(&req.path)
                    .await?
            }
        },
    };
    let text = decode_owned(bytes, req.encoding.as_deref(), req.errors.as_deref())?;
    Ok(json!({"content": universal_newlines(text)}))
}

/// `POST /write_file`: the text, UTF-8, at the path (its directory made).
pub async fn write_file(workers: &Workers, req: WriteFile) -> Result<Value, Raised> {
    let bytes = req.content.as_bytes();
    if let Some(files) = workers.native_for(bytes.len() as u64) {
        let at = workers.absolute(&req.path).await?;
        let written = execkit_core::raw::write_file(&*files, &at, bytes).await;
        if unless_unsupported(written, &req.path)?.is_some() {
            return Ok(json!({}));
        }
    }
    let mut files = ThroughSession(workers.take().await?);
    if bytes.is_empty() {
        files.write(&req.path, &[], false).await?;
    }
    for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
        files.write(&req.path, chunk, i > 0).await?;
    }
    Ok(json!({}))
}

/// `POST /upload` (multipart: `file`, `target_path`, `unzip`): the file is
/// staged on the target as it arrives, then moved to `target_path` or
/// unzipped into it.
pub async fn upload<B>(workers: &Workers, content_type: &str, body: B) -> Result<Value, Fail>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let Some(b) = boundary(content_type) else {
        return Err(Fail::invalid(
            &["body"],
            "the body must be multipart/form-data with a boundary",
        ));
    };
    let mut form = Multipart::new(body, &b);
    let mut files = ThroughSession(workers.take().await?);
    let mut staged: Option<String> = None;
    let placed = match receive(&mut form, &mut files, workers, &mut staged).await {
        Ok((target, unzip)) => {
            let s = staged.take().expect("a file part was staged");
            files.place(&s, &target, unzip).await.map_err(Fail::from)
        }
        Err(e) => Err(e),
    };
    if let Some(s) = staged {
        files.discard(&s).await;
    }
    placed.map(|()| json!({}))
}

/// The native transfer that will take a staged upload at `staged`, if
/// any: asked first with an empty write, so that an `Unsupported` comes
/// before a byte of the form is consumed.
async fn native_stager(
    workers: &Workers,
    staged: &str,
) -> Result<Option<Arc<dyn FileTransfer>>, Raised> {
    let Some(files) = workers.native() else {
        return Ok(None);
    };
    let probe = execkit_core::raw::write_file(&*files, staged, &[]).await;
    Ok(unless_unsupported(probe, staged)?.map(|()| files))
}

/// Streams the form's current part into `staged` through `files`.
async fn stream_part<B>(
    form: &mut Multipart<B>,
    files: &dyn FileTransfer,
    staged: &str,
) -> Result<(), Fail>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (tx, rx) = mpsc::channel(2);
    let feed = async move {
        loop {
            match form.data(FILE_CHUNK).await {
                Ok(Some(piece)) => {
                    if tx.send(Ok(piece.to_vec())).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e.clone()))).await;
                    return Err(e);
                }
            }
        }
    };
    let (written, fed) = tokio::join!(files.write(staged, None, rx), feed);
    fed.map_err(|e| Fail::invalid(&["body"], &e))?;
    written.map_err(|e| Fail::from(io_raised(&e, staged)))?;
    Ok(())
}

/// Reads the form, streaming the file part into a staging file; returns
/// `target_path` and `unzip`.
async fn receive<B, F: TargetFiles>(
    form: &mut Multipart<B>,
    files: &mut F,
    workers: &Workers,
    staged: &mut Option<String>,
) -> Result<(String, bool), Fail>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let bad = |e: String| Fail::invalid(&["body"], &e);
    let mut target = None;
    let mut unzip = false;
    while let Some(part) = form.next_part().await.map_err(bad)? {
        match part.name.as_str() {
            "file" if staged.is_none() => {
                let path = files.staging_file().await?;
                *staged = Some(path.clone());
                if let Some(native) = native_stager(workers, &path).await? {
                    stream_part(form, &*native, &path).await?;
                    continue;
                }
                let mut buf = Vec::with_capacity(CHUNK);
                while let Some(piece) = form.data(CHUNK - buf.len()).await.map_err(bad)? {
                    buf.extend_from_slice(&piece);
                    if buf.len() == CHUNK {
                        files.write(&path, &buf, true).await?;
                        buf.clear();
                    }
                }
                if !buf.is_empty() {
                    files.write(&path, &buf, true).await?;
                }
            }
            "target_path" => target = Some(form.text(MAX_FIELD).await.map_err(bad)?),
            "unzip" => {
                let v = form.text(MAX_FIELD).await.map_err(bad)?;
                unzip = match v.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" | "on" | "t" | "y" => true,
                    "false" | "0" | "no" | "off" | "f" | "n" => false,
                    _ => {
                        return Err(Fail::invalid(
                            &["body", "unzip"],
                            "Input should be a valid boolean",
                        ))
                    }
                };
            }
            _ => {}
        }
    }
    let missing = |field: &str| {
        Fail::Invalid(json!({"detail": [{
            "type": "missing", "loc": ["body", field], "msg": "Field required"
        }]}))
    };
    if staged.is_none() {
        return Err(missing("file"));
    }
    let target = target.ok_or_else(|| missing("target_path"))?;
    Ok((target, unzip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_text_is_whole_short_lines() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let text = typed_base64(&bytes);
        assert!(text.lines().all(|l| l.len() <= 4000));
        let parts: Vec<&str> = pieces(&text, 4500).collect();
        assert!(parts.iter().all(|p| p.ends_with('\n')));
        assert_eq!(parts.concat(), text);
        assert_eq!(unbase64(&text).unwrap(), bytes);
    }
}
