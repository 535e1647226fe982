//! What may reach a person's terminal from text execkit did not write.
//!
//! Fields (command text, session ids, targets, typed input) are
//! *escaped*: every character that could steer a terminal is shown as an
//! escape (`\e`, `\r`, `\x07`, `\u{9b}`, `\u{202e}`), so text cannot erase,
//! recolour or reorder what is printed around it. Command output shown
//! live (`execkit watch`) is *filtered* by [`PaneFilter`]: what stays inside
//! the pane (colours, moves and erases on the current line) is kept, what
//! acts outside it is dropped.

use std::borrow::Cow;

/// Whether `c` is shown escaped in a field: C0 controls, DEL, C1
/// controls, and the invisible characters that reorder or break lines
/// (bidirectional embeddings, overrides, isolates and marks; the Unicode
/// line and paragraph separators).
fn steers(c: char) -> bool {
    matches!(c,
        '\0'..='\x1f' | '\x7f' | '\u{80}'..='\u{9f}'
        | '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Appends `text` to `out` with every character that could steer a
/// terminal escaped: `\e` (ESC), `\r`, `\n`, `\t` (kept as it is when
/// `keep_tab`: it only moves right), `\a`, `\b`, `\xNN` for the other C0
/// controls and DEL, `\u{NN}` for C1 controls and the invisible
/// reordering characters. `marks` wraps each escape (e.g. in reverse
/// video) so it reads differently from typed text.
pub fn escape_into(text: &str, out: &mut String, keep_tab: bool, marks: Option<(&str, &str)>) {
    let mut rest = text;
    while let Some(at) = rest.find(|c: char| steers(c) && !(keep_tab && c == '\t')) {
        out.push_str(&rest[..at]);
        let c = rest[at..].chars().next().unwrap_or('\0');
        rest = &rest[at + c.len_utf8()..];
        if let Some((on, _)) = marks {
            out.push_str(on);
        }
        match c {
            '\x1b' => out.push_str("\\e"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\0'..='\x1f' | '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            _ => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
        if let Some((_, off)) = marks {
            out.push_str(off);
        }
    }
    out.push_str(rest);
}

/// `text` with every character that could steer a terminal escaped (see
/// [`escape_into`]; tabs escaped too, no marks).
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(steers) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    escape_into(text, &mut out, false, None);
    Cow::Owned(out)
}

/// A JSON text (as produced by a JSON serializer: C0 controls already
/// escaped inside strings) with DEL, C1 controls and the invisible
/// reordering characters written as `\uXXXX` escapes too. It means the
/// same JSON: those characters can only occur inside strings.
pub fn json_safe(json: &str) -> Cow<'_, str> {
    if !json.chars().any(steers) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if steers(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Where the terminal stands after what was written to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineState {
    /// The cursor is not at the start of an empty line (something was
    /// printed, or it moved right, since the last newline).
    pub dirty: bool,
    /// Colours or other attributes may be set.
    pub styled: bool,
}

/// Filters command output for a person's terminal, streaming (a sequence
/// split across calls is held until it is complete; only complete,
/// allowed sequences are written, rebuilt from their parsed parameters).
///
/// Kept: printable text, `\n`, `\r`, `\t`, backspace; SGR (colours and
/// attributes, `CSI … m`); erase and insert/delete characters on the
/// current line (`CSI K`, `X`, `P`, `@`); horizontal moves (`CSI C`, `D`,
/// `G`, `` ` ``, `a`) — what progress bars and coloured output use.
///
/// Dropped, because it acts outside the pane or outlives it:
/// every OSC (window and icon titles, clipboard 52, hyperlinks 8 — their
/// text is kept —, palette and colour queries, notifications, cwd), every
/// DCS, APC, PM and SOS string (XTGETTCAP, DECRQSS, sixel, kitty graphics,
/// tmux passthrough), every ESC sequence (RIS `ESC c`, keypad modes,
/// charset switches, save/restore cursor, index), every CSI with a private
/// marker or intermediate (`?`, `>`, `=`, `$`, space: mode set/reset,
/// mouse and focus reporting, bracketed paste, alternate screen,
/// modifyOtherKeys, cursor style, DECRQM), every query that makes the
/// terminal answer into its input (DSR `CSI 5n`/`6n`, DA `CSI c`, window
/// reports `CSI … t`), ANSI modes (`CSI … h`/`l`), moves that leave the
/// current line or the screen's layout (up, absolute positioning, scroll
/// regions, scrolling, erase display, insert/delete lines), BEL and every
/// other control character, and C1 controls (as bytes or characters).
#[derive(Default)]
pub struct PaneFilter {
    parser: vte::Parser,
    limit: crate::osc_limit::OscLimit,
    buf: Vec<u8>,
}

impl std::fmt::Debug for PaneFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaneFilter").finish_non_exhaustive()
    }
}

impl PaneFilter {
    /// Filters `bytes`, appending what may be shown to `out`; `state`
    /// follows what was written.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>, state: &mut LineState) {
        let bytes = self.limit.filter(bytes, &mut self.buf);
        self.parser.advance(&mut Emit { out, state }, bytes);
    }
}

struct Emit<'a> {
    out: &'a mut Vec<u8>,
    state: &'a mut LineState,
}

impl vte::Perform for Emit<'_> {
    fn print(&mut self, c: char) {
        // C1 controls come here when their UTF-8 encoding was split
        // across calls (whole, they go to `execute`).
        if ('\u{80}'..='\u{9f}').contains(&c) {
            return;
        }
        let mut buf = [0u8; 4];
        self.out
            .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        self.state.dirty = true;
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\n' => self.state.dirty = false,
            b'\t' => self.state.dirty = true,
            // At the start of a line they stay there.
            b'\r' | 0x08 => {}
            _ => return,
        }
        self.out.push(byte);
    }

    fn csi_dispatch(
        &mut self,
        params: &vte::Params,
        intermediates: &[u8],
        ignore: bool,
        action: char,
    ) {
        if ignore || !intermediates.is_empty() {
            return;
        }
        let moves = match action {
            'm' => false,
            'K' | 'X' | 'P' | '@' => false,
            'C' | 'D' | 'G' | '`' | 'a' => true,
            _ => return,
        };
        self.out.extend_from_slice(b"\x1b[");
        // A lone 0 means the same as no parameter, for all of these.
        let lone_zero = params.len() == 1 && params.iter().next() == Some(&[0u16][..]);
        if !lone_zero {
            for (i, param) in params.iter().enumerate() {
                if i > 0 {
                    self.out.push(b';');
                }
                for (j, sub) in param.iter().enumerate() {
                    if j > 0 {
                        self.out.push(b':');
                    }
                    self.out.extend_from_slice(sub.to_string().as_bytes());
                }
            }
        }
        self.out.push(action as u8);
        if action == 'm' {
            self.state.styled = true;
        }
        if moves {
            self.state.dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(bytes: &[u8]) -> (String, LineState) {
        let mut f = PaneFilter::default();
        let mut out = Vec::new();
        let mut state = LineState::default();
        f.push(bytes, &mut out, &mut state);
        (String::from_utf8(out).unwrap(), state)
    }

    #[test]
    fn escapes_every_steering_character() {
        assert_eq!(escape("plain text, é 世界"), "plain text, é 世界");
        assert_eq!(
            escape("a\x1b[2K\r\x1b[1;36m$ ls\n\t\x07\x08\x00\x7f"),
            "a\\e[2K\\r\\e[1;36m$ ls\\n\\t\\a\\b\\x00\\x7f"
        );
        assert_eq!(escape("x\u{9b}6n \u{202e}sl"), "x\\u{9b}6n \\u{202e}sl");
        let mut out = String::new();
        escape_into("a\tb\x1bc", &mut out, true, Some(("[", "]")));
        assert_eq!(out, "a\tb[\\e]c");
    }

    #[test]
    fn json_stays_json() {
        let v = serde_json::json!({"c": "a\u{9b}6n\u{202e}\x1b\x7f"});
        let safe = json_safe(&v.to_string()).into_owned();
        assert!(!safe.chars().any(steers), "{safe}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), v);
    }

    #[test]
    fn keeps_colours_and_line_moves() {
        // Rebuilt from the parsed parameters: an empty one reads as 0.
        let (out, state) = filter(b"A \x1b[1;38:2::255:0:0mred\x1b[0m\r\x1b[K50%\x1b[3D\x1b[2C");
        assert_eq!(
            out,
            "A \x1b[1;38:2:0:255:0:0mred\x1b[m\r\x1b[K50%\x1b[3D\x1b[2C"
        );
        assert_eq!(
            state,
            LineState {
                dirty: true,
                styled: true
            }
        );
        assert!(!filter(b"done\n").1.dirty);
    }

    #[test]
    fn drops_what_acts_outside_the_pane() {
        let hostile: &[&[u8]] = &[
            b"\x1b]52;c;UFdORUQ=\x07",
            b"\x1b]0;t\x07\x1b]2;t\x1b\\",
            b"\x1bc\x1b[3J\x1b[2J\x1b[H\x1b[5A\x1bM\x1b7\x1b8\x1b[s\x1b[u",
            b"\x1bP+q544e\x1b\\\x1b_Gi=1\x1b\\\x1b^pm\x1b\\\x1bXsos\x1b\\",
            b"\x1b[6n\x1b[5n\x1b[c\x1b[>c\x1b[=c\x1b[?1$p\x1b[18t\x1b[?u\x1b[>0q",
            b"\x1b[?1000h\x1b[?2004h\x1b[?1049h\x1b[?1h\x1b=\x1b[>4;1m\x1b[20h\x1b(0\x0e",
            b"\x1b[2 q\x1b[1;5r\x1b[2S\x1b[3L\x07\x0b\x0c",
            "\u{9b}6n\u{9d}0;x\u{7}".as_bytes(),
            b"\x9b6n\x90q\x9c",
        ];
        for h in hostile {
            let mut f = PaneFilter::default();
            let mut out = Vec::new();
            let mut state = LineState::default();
            // Whole, and split at every byte.
            f.push(h, &mut out, &mut state);
            for b in h.iter() {
                f.push(&[*b], &mut out, &mut state);
            }
            let text = String::from_utf8_lossy(&out);
            // At most the printable leftovers of what C1 controls began.
            assert!(!text.chars().any(steers), "{h:?} -> {text:?}");
        }
        // A hyperlink's text stays, its target does not.
        let (out, _) = filter(b"see \x1b]8;;http://evil/\x1b\\docs\x1b]8;;\x1b\\.");
        assert_eq!(out, "see docs.");
    }
}
