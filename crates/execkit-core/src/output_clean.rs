//! Turns the raw bytes a terminal saw into clean text for an agent.
//!
//! Three streaming stages, each safe across arbitrary chunk boundaries:
//! [`Utf8Decoder`] (invalid bytes become U+FFFD exactly as
//! `String::from_utf8_lossy` would), [`AnsiStripper`] (CSI/OSC/DCS and other
//! escape sequences and control characters removed, `\t` and `\n` kept) and a
//! `\r\n` → `\n` fold. [`OutputCleaner`] chains them.

/// Streaming UTF-8 decoder: never splits a character across chunks.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Decodes `bytes`, appending complete characters to `out`; an incomplete
    /// trailing sequence is held back for the next call.
    pub fn push(&mut self, bytes: &[u8], out: &mut String) {
        if self.pending.is_empty() {
            let rest = decode_into(bytes, out);
            self.pending.extend_from_slice(rest);
            return;
        }
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(bytes);
        let rest = decode_into(&buf, out);
        self.pending.extend_from_slice(rest);
    }

    /// Flushes a held-back incomplete sequence at end of stream as U+FFFD.
    pub fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
    }
}

/// Decodes as much of `bytes` as is certain; returns the unfinished tail
/// (a prefix of a valid multi-byte sequence, at most 3 bytes).
fn decode_into<'a>(mut bytes: &'a [u8], out: &mut String) -> &'a [u8] {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return &[];
            }
            Err(e) => {
                let (good, bad) = bytes.split_at(e.valid_up_to());
                // SAFETY-free: `good` was just validated.
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        bytes = &bad[n..];
                    }
                    None => return bad,
                }
            }
        }
    }
}

/// Removes terminal escape sequences and control characters from text,
/// keeping printable characters, `\t`, `\n` and `\r`.
#[derive(Default)]
pub struct AnsiStripper {
    parser: vte::Parser,
    limit: crate::osc_limit::OscLimit,
    buf: Vec<u8>,
}

impl std::fmt::Debug for AnsiStripper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnsiStripper").finish_non_exhaustive()
    }
}

struct Keep<'a>(&'a mut String);

impl vte::Perform for Keep<'_> {
    fn print(&mut self, c: char) {
        // C1 controls may arrive as characters when encoded in UTF-8.
        if !('\u{80}'..='\u{9f}').contains(&c) {
            self.0.push(c);
        }
    }

    fn execute(&mut self, byte: u8) {
        if matches!(byte, b'\n' | b'\t' | b'\r') {
            self.0.push(byte as char);
        }
    }
}

impl AnsiStripper {
    /// Strips `text`, appending what remains to `out`. Sequences split across
    /// calls are handled: the parser keeps its state.
    pub fn push(&mut self, text: &str, out: &mut String) {
        let bytes = self.limit.filter(text.as_bytes(), &mut self.buf);
        self.parser.advance(&mut Keep(out), bytes);
    }
}

/// Folds `\r\n` into `\n` across chunk boundaries.
#[derive(Debug, Default)]
pub struct CrLfFolder {
    held_cr: bool,
}

impl CrLfFolder {
    /// Appends `text` to `out` with every `\r\n` folded to `\n`.
    pub fn push(&mut self, text: &str, out: &mut String) {
        let mut rest = text;
        if self.held_cr {
            self.held_cr = false;
            if !rest.starts_with('\n') {
                out.push('\r');
            }
        }
        if let Some(stripped) = rest.strip_suffix('\r') {
            self.held_cr = true;
            rest = stripped;
        }
        if rest.contains("\r\n") {
            out.push_str(&rest.replace("\r\n", "\n"));
        } else {
            out.push_str(rest);
        }
    }

    /// Emits a `\r` held back at the end of the stream.
    pub fn finish(&mut self, out: &mut String) {
        if std::mem::take(&mut self.held_cr) {
            out.push('\r');
        }
    }
}

/// Raw terminal bytes in, clean text out: UTF-8 decode, strip escapes, fold
/// `\r\n`.
#[derive(Debug, Default)]
pub struct OutputCleaner {
    utf8: Utf8Decoder,
    ansi: AnsiStripper,
    crlf: CrLfFolder,
    decoded: String,
    stripped: String,
    /// An escape or control character has been seen: the terminal parser
    /// may be inside a sequence, so every later chunk goes through it.
    escaped: bool,
}

impl OutputCleaner {
    /// Cleans one chunk of raw bytes, appending the text to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut String) {
        self.decoded.clear();
        self.utf8.push(bytes, &mut self.decoded);
        self.stage2(out);
    }

    /// Flushes whatever is held back at the end of the stream.
    pub fn finish(&mut self, out: &mut String) {
        self.decoded.clear();
        self.utf8.finish(&mut self.decoded);
        self.stage2(out);
        self.crlf.finish(out);
    }

    fn stage2(&mut self, out: &mut String) {
        if !self.escaped && !self.crlf.held_cr && is_simple(&self.decoded) {
            // Fastest path: printable ASCII, `\n` and `\t` only.
            out.push_str(&self.decoded);
            return;
        }
        if !self.escaped && is_plain(&self.decoded) {
            // Fast path: nothing the parser would remove, and it is known
            // to be in its ground state.
            self.crlf.push(&self.decoded, out);
            return;
        }
        self.escaped = true;
        self.stripped.clear();
        self.ansi.push(&self.decoded, &mut self.stripped);
        self.crlf.push(&self.stripped, out);
    }
}

/// Printable ASCII plus `\n` and `\t`: nothing to strip or fold. Written
/// as one branch-free pass so it vectorises.
fn is_simple(text: &str) -> bool {
    text.bytes().fold(true, |ok, c| {
        ok & (((0x20..0x7f).contains(&c)) | (c == b'\n') | (c == b'\t'))
    })
}

/// Text with no escape, no control character but `\t` `\n` `\r`, and no C1
/// control (U+0080–U+009F, encoded as 0xC2 0x80–0x9F).
fn is_plain(text: &str) -> bool {
    let b = text.as_bytes();
    !b.iter().enumerate().any(|(i, &c)| {
        (c < 0x20 && !matches!(c, b'\n' | b'\t' | b'\r'))
            || c == 0x7f
            || (c == 0xc2 && b.get(i + 1).is_some_and(|&n| (0x80..=0x9f).contains(&n)))
    })
}

/// Cleans a complete byte string in one go.
pub fn clean(bytes: &[u8]) -> String {
    let mut c = OutputCleaner::default();
    let mut out = String::new();
    c.push(bytes, &mut out);
    c.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(bytes: &[u8], split: usize) -> String {
        let mut c = OutputCleaner::default();
        let mut out = String::new();
        for part in bytes.chunks(split.max(1)) {
            c.push(part, &mut out);
        }
        c.finish(&mut out);
        out
    }

    #[test]
    fn strips_csi_osc_and_keeps_tabs() {
        let raw = b"\x1b[1;31mred\x1b[0m\tplain\x1b]0;title\x07 end\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\\n";
        assert_eq!(clean(raw), "red\tplain endlink\n");
    }

    #[test]
    fn folds_crlf_but_keeps_lone_cr() {
        assert_eq!(clean(b"a\r\nb\rc\r\n"), "a\nb\rc\n");
        for split in 1..6 {
            assert_eq!(chunked(b"a\r\nb\rc\r\n", split), "a\nb\rc\n");
        }
    }

    #[test]
    fn utf8_split_everywhere_matches_lossy() {
        let raw = "héllo → 世界 🎉".as_bytes().to_vec();
        let mut bad = raw.clone();
        bad.insert(3, 0xff);
        bad.push(0xe4);
        for input in [raw, bad] {
            let expect = String::from_utf8_lossy(&input).into_owned();
            for split in 1..input.len() {
                let mut d = Utf8Decoder::default();
                let mut out = String::new();
                for part in input.chunks(split) {
                    d.push(part, &mut out);
                }
                d.finish(&mut out);
                assert_eq!(out, expect, "split {split}");
            }
        }
    }

    #[test]
    fn drops_nul_and_other_controls() {
        assert_eq!(clean(b"a\x00b\x07c\x08d"), "abcd");
        // A C1 CSI arriving as a character is dropped, not interpreted.
        assert_eq!(clean("x\u{9b}31my".as_bytes()), "x31my");
    }

    #[test]
    fn fast_path_matches_parser() {
        let plain = "plain text\twith tabs\r\nand é ü 世界\n";
        assert!(is_plain(plain));
        assert!(!is_plain("a\x1b[0m"));
        assert!(!is_plain("a\u{9b}b"));
        assert!(!is_plain("a\x07"));
        let mut p = AnsiStripper::default();
        let mut via_parser = String::new();
        p.push(plain, &mut via_parser);
        assert_eq!(via_parser, plain);
        // Once an escape was seen, later plain chunks still go through the
        // parser: here an unterminated OSC swallows them.
        assert_eq!(chunked(b"a\x1b]0;title still going", 3), "a");
    }

    #[test]
    fn escape_split_across_chunks() {
        let raw = b"A\x1b[38;5;196mB\x1b[0mC";
        for split in 1..raw.len() {
            assert_eq!(chunked(raw, split), "ABC", "split {split}");
        }
    }
}
