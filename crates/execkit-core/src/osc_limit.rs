//! A bound on OSC strings before any terminal parser sees them.
//!
//! `vte` keeps an OSC string's payload until its terminator; without its
//! `std` feature that buffer is a fixed 1 KiB, with it a `Vec` that grows
//! with the output. Cargo unifies features, so a dependency that enables
//! `std` (the `vt100` screen of `host`) would make every parser here grow
//! with a command that opens an OSC and never ends it. This filter drops
//! an OSC string's bytes past [`OSC_KEEP`], keeping its terminator, so
//! memory stays bounded whatever the parser's build.

/// Payload bytes of one OSC string passed on; the rest are dropped.
pub(crate) const OSC_KEEP: usize = 1024;

/// Where the filter is in the byte stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Ground,
    /// After ESC.
    Esc,
    /// In an OSC string, this many payload bytes passed on.
    Osc(usize),
    /// ESC inside an OSC string (`ESC \` ends it).
    OscEsc,
}

/// The filter; it keeps its state across chunks.
#[derive(Debug, Default)]
pub(crate) struct OscLimit {
    state: State,
}

impl OscLimit {
    /// `bytes` with OSC payload past [`OSC_KEEP`] removed: borrowed when
    /// nothing had to go (the common case), else a copy in `buf`.
    pub(crate) fn filter<'a>(&mut self, bytes: &'a [u8], buf: &'a mut Vec<u8>) -> &'a [u8] {
        let mut drop_from = None;
        for (i, &b) in bytes.iter().enumerate() {
            if !self.step(b) {
                drop_from = Some(i);
                break;
            }
        }
        let Some(first) = drop_from else {
            return bytes;
        };
        buf.clear();
        buf.extend_from_slice(&bytes[..first]);
        for &b in &bytes[first + 1..] {
            if self.step(b) {
                buf.push(b);
            }
        }
        buf
    }

    /// Advances over `b`; false when `b` is dropped.
    fn step(&mut self, b: u8) -> bool {
        self.state = match (self.state, b) {
            (State::Ground, 0x1b) => State::Esc,
            (State::Ground, _) => State::Ground,
            (State::Esc, b']') => State::Osc(0),
            (State::Esc, 0x1b) => State::Esc,
            (State::Esc, _) => State::Ground,
            // BEL ends it, CAN and SUB abort it.
            (State::Osc(_), 0x07 | 0x18 | 0x1a) => State::Ground,
            (State::Osc(_), 0x1b) => State::OscEsc,
            (State::Osc(n), _) if n >= OSC_KEEP => return false,
            (State::Osc(n), _) => State::Osc(n + 1),
            // `ESC \` ends it; ESC anything else ends it and starts an
            // escape sequence with that byte.
            (State::OscEsc, b']') => State::Osc(0),
            (State::OscEsc, 0x1b) => State::Esc,
            (State::OscEsc, _) => State::Ground,
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: &mut OscLimit, input: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        f.filter(input, &mut buf).to_vec()
    }

    #[test]
    fn text_and_short_sequences_pass_untouched() {
        let mut f = OscLimit::default();
        let s = b"plain \x1b[31mred\x1b[0m \x1b]0;title\x07 \x1b]8;;http://x\x1b\\link";
        assert_eq!(run(&mut f, s), s.to_vec());
    }

    #[test]
    fn a_long_osc_keeps_its_head_and_terminator_across_chunks() {
        let mut f = OscLimit::default();
        let mut out = run(&mut f, b"a\x1b]0;");
        for _ in 0..100 {
            out.extend(run(&mut f, &[b'y'; 1000]));
        }
        out.extend(run(&mut f, b"\x07after"));
        let ys = out.iter().filter(|&&b| b == b'y').count();
        assert_eq!(ys, OSC_KEEP - 2, "`0;` counts as payload");
        assert!(out.starts_with(b"a\x1b]0;y"));
        assert!(out.ends_with(b"y\x07after"));
    }
}
