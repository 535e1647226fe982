//! A streaming `multipart/form-data` reader (RFC 7578) for `/upload`: a
//! part's data is handed out in pieces as the body arrives, so a file of
//! any size passes through a bounded buffer.

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt as _;

/// Longest header block of one part.
const MAX_HEADERS: usize = 16 * 1024;

/// A part's name and file name (from `Content-Disposition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHead {
    pub name: String,
    pub filename: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Before the first delimiter.
    Preamble,
    /// Just past a delimiter: `--` ends the body, CRLF starts a part.
    AfterDelimiter,
    /// In a part's headers.
    Headers,
    /// In a part's data.
    Data,
    /// Past the closing delimiter.
    Done,
}

/// Reads parts from a body of `B` frames.
pub struct Multipart<B> {
    body: B,
    buf: BytesMut,
    /// `\r\n--BOUNDARY`.
    delimiter: Vec<u8>,
    state: State,
    ended: bool,
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty() && b.len() <= 200)
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while let Some(i) = hay[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if hay.len() - at < needle.len() {
            return None;
        }
        if &hay[at + 1..at + needle.len()] == rest {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

impl<B> Multipart<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(body: B, boundary: &str) -> Self {
        let mut buf = BytesMut::new();
        // The first delimiter has no CRLF before it: give it one.
        buf.extend_from_slice(b"\r\n");
        Multipart {
            body,
            buf,
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            state: State::Preamble,
            ended: false,
        }
    }

    /// More of the body into the buffer; false at its end.
    async fn fill(&mut self) -> Result<bool, String> {
        while !self.ended {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                        return Ok(true);
                    }
                }
                Some(Err(e)) => return Err(format!("the request body broke off: {e}")),
                None => self.ended = true,
            }
        }
        Ok(false)
    }

    /// The next part's head (what is left of the current part is skipped);
    /// `None` after the last.
    pub async fn next_part(&mut self) -> Result<Option<PartHead>, String> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Preamble | State::Data => {
                    while self.data(usize::MAX).await?.is_some() {}
                    if self.state == State::Preamble {
                        self.state = State::AfterDelimiter;
                    }
                }
                State::AfterDelimiter => {
                    while self.buf.len() < 2 {
                        if !self.fill().await? {
                            return Err("the body ends inside a delimiter".into());
                        }
                    }
                    if self.buf.starts_with(b"--") {
                        self.state = State::Done;
                        return Ok(None);
                    }
                    // Transport padding, then CRLF.
                    loop {
                        if let Some(i) = find(&self.buf, b"\r\n") {
                            self.buf.advance(i + 2);
                            break;
                        }
                        if self.buf.len() > MAX_HEADERS || !self.fill().await? {
                            return Err("malformed delimiter line".into());
                        }
                    }
                    self.state = State::Headers;
                }
                State::Headers => {
                    let end = loop {
                        if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                            break i;
                        }
                        // A part with no headers at all.
                        if self.buf.starts_with(b"\r\n") {
                            break 0;
                        }
                        if self.buf.len() > MAX_HEADERS {
                            return Err("a part's headers are too long".into());
                        }
                        if !self.fill().await? {
                            return Err("the body ends inside a part's headers".into());
                        }
                    };
                    let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    let skip = if end == 0 { 2 } else { end + 4 };
                    self.buf.advance(skip);
                    self.state = State::Data;
                    return Ok(Some(parse_head(&head)));
                }
            }
        }
    }

    /// The next piece (at most `max` bytes) of the current part's data;
    /// `None` at its end.
    pub async fn data(&mut self, max: usize) -> Result<Option<Bytes>, String> {
        if !matches!(self.state, State::Data | State::Preamble) {
            return Ok(None);
        }
        loop {
            if let Some(i) = find(&self.buf, &self.delimiter) {
                if i == 0 {
                    self.buf.advance(self.delimiter.len());
                    self.state = State::AfterDelimiter;
                    return Ok(None);
                }
                let n = i.min(max);
                return Ok(Some(self.buf.split_to(n).freeze()));
            }
            // All but what could be the start of a delimiter is data.
            let safe = self.buf.len().saturating_sub(self.delimiter.len() - 1);
            if safe > 0 {
                let n = safe.min(max);
                return Ok(Some(self.buf.split_to(n).freeze()));
            }
            if !self.fill().await? {
                return Err("the body ends inside a part".into());
            }
        }
    }

    /// The current part's data whole, refused past `limit` bytes.
    pub async fn text(&mut self, limit: usize) -> Result<String, String> {
        let mut all = Vec::new();
        while let Some(piece) = self.data(limit).await? {
            all.extend_from_slice(&piece);
            if all.len() > limit {
                return Err(format!("a form field is longer than {limit} bytes"));
            }
        }
        String::from_utf8(all).map_err(|_| "a form field is not UTF-8".into())
    }
}

/// `name` and `filename` of a part's `Content-Disposition`.
fn parse_head(head: &str) -> PartHead {
    let mut out = PartHead {
        name: String::new(),
        filename: None,
    };
    for line in head.split("\r\n") {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        for param in split_params(v) {
            let Some((pk, pv)) = param.split_once('=') else {
                continue;
            };
            let pv = unquote(pv.trim());
            match pk.trim().to_ascii_lowercase().as_str() {
                "name" => out.name = pv,
                "filename" => out.filename = Some(pv),
                _ => {}
            }
        }
    }
    out
}

/// `;`-separated parameters, `;` inside quotes kept.
fn split_params(v: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for c in v.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ';' && !quoted {
            out.push(String::new());
            continue;
        }
        out.last_mut().expect("never empty").push(c);
    }
    out
}

fn unquote(v: &str) -> String {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of ready frames.
    struct Pieces(std::collections::VecDeque<Bytes>);

    impl hyper::body::Body for Pieces {
        type Data = Bytes;
        type Error = String;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, String>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
        }
    }

    fn body(pieces: Vec<Vec<u8>>) -> Pieces {
        Pieces(pieces.into_iter().map(Bytes::from).collect())
    }

    #[test]
    fn boundary_is_read_from_the_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary("multipart/form-data; charset=x; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("application/json"), None);
    }

    #[test]
    fn parts_come_out_whatever_the_frame_boundaries() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let mut raw = Vec::new();
        raw.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a;b.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n");
        raw.extend_from_slice(&payload);
        raw.extend_from_slice(b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"target_path\"\r\n\r\n/tmp/x\r\n--XyZ--\r\n");
        for step in [1, 3, 7, 64, 4096, raw.len()] {
            let pieces: Vec<Vec<u8>> = raw.chunks(step).map(<[u8]>::to_vec).collect();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut m = Multipart::new(body(pieces), "XyZ");
                let h = m.next_part().await.unwrap().unwrap();
                assert_eq!(h.name, "file");
                assert_eq!(h.filename.as_deref(), Some("a;b.bin"));
                let mut got = Vec::new();
                while let Some(p) = m.data(100).await.unwrap() {
                    assert!(p.len() <= 100);
                    got.extend_from_slice(&p);
                }
                assert_eq!(got, payload, "step {step}");
                let h = m.next_part().await.unwrap().unwrap();
                assert_eq!(h.name, "target_path");
                assert_eq!(m.text(100).await.unwrap(), "/tmp/x");
                assert!(m.next_part().await.unwrap().is_none());
            });
        }
    }
}
