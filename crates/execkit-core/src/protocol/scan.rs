//! Reading the output: [`SentinelScanner`] finds a command's start marker
//! and its sentinel in chunks of any size, holding back only what could be
//! the start of one.

/// What the sentinel reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinel {
    /// `$?` of the command.
    pub status: i32,
    /// The shell's option flags (`$-`) after the command.
    pub flags: String,
    /// `PS1`, `PS2`, `PS0`, `PROMPT_COMMAND` or `TMOUT` is set: the shell
    /// prints something between commands.
    pub prompts: bool,
    /// The shell's `$PWD` after the command.
    pub cwd: String,
}

impl Sentinel {
    /// Whether the shell traces commands (`set -x`).
    pub fn xtrace(&self) -> bool {
        self.flags.contains('x')
    }
}

/// Most bytes kept from before a start marker, for a command whose marker
/// never came (a syntax error on its first line stops it being printed).
const MAX_BEFORE_START: usize = 64 * 1024;

/// Finds one nonce's sentinel in a byte stream fed in arbitrary chunks and,
/// for a command, its start marker first.
///
/// Bytes before the start marker are not the command's and are dropped
/// (kept, bounded, only in case the marker never comes: then the sentinel
/// alone delimits the output). Bytes between marker and sentinel are command
/// output and are released as soon as they cannot be part of a sentinel; at
/// most a sentinel-prefix-long tail is held back.
#[derive(Debug)]
pub struct SentinelScanner {
    /// The start marker, until it has been seen.
    marker: Option<Vec<u8>>,
    /// Bytes that preceded the start marker so far.
    before_start: Vec<u8>,
    start: Vec<u8>,
    end: Vec<u8>,
    buf: Vec<u8>,
    done: Option<Sentinel>,
    after: Vec<u8>,
    /// The sentinel carries flags and prompts (else only status and cwd).
    full: bool,
}

/// Result of feeding bytes to a [`SentinelScanner`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Bytes that are definitely command output.
    pub output: Vec<u8>,
    /// The sentinel, once complete.
    pub sentinel: Option<Sentinel>,
}

impl SentinelScanner {
    /// A scanner for `nonce`'s sentinel alone (start-up, resync): every
    /// byte before it is output.
    pub fn new(nonce: &str) -> Self {
        SentinelScanner {
            marker: None,
            before_start: Vec::new(),
            start: format!("__EK_{nonce}:").into_bytes(),
            end: format!(":{nonce}_EK__\n").into_bytes(),
            buf: Vec::new(),
            done: None,
            after: Vec::new(),
            full: true,
        }
    }

    /// Expects the short sentinel ([`sentinel_source_as`] with `full`
    /// false): it reports no flags and no prompts.
    pub fn short(mut self) -> Self {
        self.full = false;
        self
    }

    /// A scanner for a command encoded by [`encode_command`]: output starts
    /// after `nonce`'s start marker.
    pub fn with_start(nonce: &str) -> Self {
        SentinelScanner {
            marker: Some(format!("__EKS_{nonce}\n").into_bytes()),
            ..SentinelScanner::new(nonce)
        }
    }

    /// Whether the sentinel has been seen.
    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }

    /// Whether the command has started (its start marker was seen, or the
    /// scanner expects none).
    pub fn started(&self) -> bool {
        self.marker.is_none()
    }

    /// Bytes that arrived after the sentinel (none in normal operation).
    pub fn take_after(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.after)
    }

    /// Feeds a chunk; returns output released by it and the sentinel if it
    /// completed in this chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Scan {
        let mut output = Vec::new();
        let sentinel = self.feed(chunk, &mut |b| output.extend_from_slice(b));
        Scan { output, sentinel }
    }

    /// Like [`push`](Self::push), handing output to `sink` without copying
    /// it when the chunk cannot hold a sentinel (the common case).
    pub fn feed(&mut self, chunk: &[u8], sink: &mut dyn FnMut(&[u8])) -> Option<Sentinel> {
        if self.marker.is_some() && self.done.is_none() {
            let rest = self.seek_start(chunk)?;
            return self.feed(&rest, sink);
        }
        if self.done.is_none() && self.buf.is_empty() && !chunk.contains(&b'_') {
            sink(chunk);
            return None;
        }
        let scan = self.push_slow(chunk);
        if !scan.output.is_empty() {
            sink(&scan.output);
        }
        scan.sentinel
    }

    /// Before the start marker: drops what precedes it. Returns the bytes
    /// to scan as output once the command has started — what follows the
    /// marker, or, when the sentinel comes first (no marker was printed),
    /// everything seen so far.
    fn seek_start(&mut self, chunk: &[u8]) -> Option<Vec<u8>> {
        let marker = self.marker.as_deref().expect("seeking the start");
        self.buf.extend_from_slice(chunk);
        let m = find(&self.buf, marker);
        let e = find(&self.buf, &self.start);
        match (m, e) {
            (Some(m), e) if e.is_none_or(|e| m < e) => {
                let rest = self.buf.split_off(m + marker.len());
                self.buf.clear();
                self.before_start = Vec::new();
                self.marker = None;
                Some(rest)
            }
            (_, Some(_)) => {
                // The sentinel came first: no marker was printed.
                let mut all = std::mem::take(&mut self.before_start);
                all.append(&mut self.buf);
                self.marker = None;
                Some(all)
            }
            _ => {
                let keep =
                    partial_suffix(&self.buf, marker).max(partial_suffix(&self.buf, &self.start));
                let release = self.buf.len() - keep;
                self.before_start.extend(self.buf.drain(..release));
                if self.before_start.len() > MAX_BEFORE_START {
                    let excess = self.before_start.len() - MAX_BEFORE_START;
                    self.before_start.drain(..excess);
                }
                None
            }
        }
    }

    fn push_slow(&mut self, chunk: &[u8]) -> Scan {
        let mut scan = Scan::default();
        if self.done.is_some() {
            self.after.extend_from_slice(chunk);
            return scan;
        }
        self.buf.extend_from_slice(chunk);
        match find(&self.buf, &self.start) {
            Some(at) => {
                let body_start = at + self.start.len();
                if let Some(rel) = find(&self.buf[body_start..], &self.end) {
                    let body = &self.buf[body_start..body_start + rel];
                    if let Some(s) = parse_body(body, self.full) {
                        scan.output = self.buf[..at].to_vec();
                        self.after = self.buf[body_start + rel + self.end.len()..].to_vec();
                        self.buf.clear();
                        scan.sentinel = Some(s.clone());
                        self.done = Some(s);
                        return scan;
                    }
                    // Malformed body after a genuine start: not ours; release it.
                    scan.output = self.buf.drain(..body_start).collect();
                    return scan;
                }
                // Wait for the rest; release what precedes the start.
                scan.output = self.buf.drain(..at).collect();
            }
            None => {
                let keep = partial_suffix(&self.buf, &self.start);
                let release = self.buf.len() - keep;
                scan.output = self.buf.drain(..release).collect();
            }
        }
        scan
    }
}

/// `status:flags:prompts:cwd`, or `status:cwd` when not `full` (the cwd
/// may hold colons).
fn parse_body(body: &[u8], full: bool) -> Option<Sentinel> {
    if !full {
        let colon = body.iter().position(|&b| b == b':')?;
        return Some(Sentinel {
            status: std::str::from_utf8(&body[..colon]).ok()?.parse().ok()?,
            flags: String::new(),
            prompts: false,
            cwd: String::from_utf8_lossy(&body[colon + 1..]).into_owned(),
        });
    }
    let mut parts = body.splitn(4, |&b| b == b':');
    let status = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let flags = std::str::from_utf8(parts.next()?).ok()?;
    let prompts = parts.next()?;
    if !flags.bytes().all(|b| b.is_ascii_alphanumeric()) || !prompts.iter().all(|&b| b == b'1') {
        return None;
    }
    let cwd = String::from_utf8_lossy(parts.next()?).into_owned();
    Some(Sentinel {
        status,
        flags: flags.to_string(),
        prompts: !prompts.is_empty(),
        cwd,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// Length of the longest suffix of `hay` that is a proper prefix of `needle`.
fn partial_suffix(hay: &[u8], needle: &[u8]) -> usize {
    let max = needle.len().saturating_sub(1).min(hay.len());
    (1..=max)
        .rev()
        .find(|&n| hay[hay.len() - n..] == needle[..n])
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(nonce: &str, stream: &[u8], split: usize) -> (Vec<u8>, Option<Sentinel>) {
        let mut s = SentinelScanner::new(nonce);
        let mut out = Vec::new();
        let mut found = None;
        for part in stream.chunks(split.max(1)) {
            let r = s.push(part);
            out.extend(r.output);
            if r.sentinel.is_some() {
                found = r.sentinel;
            }
        }
        (out, found)
    }

    #[test]
    fn finds_sentinel_at_every_split() {
        let n = "0123456789abcdef";
        let stream = format!(
            "hello_world __EK_ffff:0:i::/x:ffff_EK__\nabc__EK_{n}:42:hB:1:/tmp/a b:c:{n}_EK__\n"
        );
        for split in 1..stream.len() {
            let (out, s) = scan_all(n, stream.as_bytes(), split);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "hello_world __EK_ffff:0:i::/x:ffff_EK__\nabc"
            );
            assert_eq!(
                s,
                Some(Sentinel {
                    status: 42,
                    flags: "hB".into(),
                    prompts: true,
                    cwd: "/tmp/a b:c".into()
                })
            );
        }
    }

    fn scan_command(nonce: &str, stream: &[u8], split: usize) -> (Vec<u8>, Option<Sentinel>) {
        let mut s = SentinelScanner::with_start(nonce);
        let mut out = Vec::new();
        let mut found = None;
        for part in stream.chunks(split.max(1)) {
            let r = s.push(part);
            out.extend(r.output);
            found = found.or(r.sentinel);
        }
        (out, found)
    }

    #[test]
    fn output_is_what_lies_between_start_and_sentinel() {
        let n = "0123456789abcdef";
        // A prompt, a PS0, a stale sentinel and a forged marker before the
        // start; the real start; output; the sentinel; a prompt after it.
        let stream = format!(
            "(venv) ps0__EK_ffff:0:i::/old:ffff_EK__\n__EKS_ffff\n__EKS_{n}\nhi\n__EKS_x\n__EK_{n}:0:i::/tmp:{n}_EK__\n(venv) "
        );
        for split in 1..stream.len() {
            let (out, s) = scan_command(n, stream.as_bytes(), split);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "hi\n__EKS_x\n",
                "split {split}"
            );
            assert_eq!(s.map(|s| s.cwd), Some("/tmp".into()));
        }
    }

    #[test]
    fn without_a_start_marker_the_sentinel_alone_delimits() {
        let n = "0123456789abcdef";
        let stream = format!("bash: syntax error\n__EK_{n}:2:i::/tmp:{n}_EK__\n");
        for split in 1..stream.len() {
            let (out, s) = scan_command(n, stream.as_bytes(), split);
            assert_eq!(String::from_utf8(out).unwrap(), "bash: syntax error\n");
            assert_eq!(s.map(|s| s.status), Some(2));
        }
    }

    #[test]
    fn forged_sentinels_are_output() {
        let n = "00112233aabbccdd";
        let fake = "__EK_00112233aabbccde:0:i::/:00112233aabbccde_EK__\n__EK''_x";
        let (out, s) = scan_all(n, fake.as_bytes(), 3);
        assert_eq!(s, None);
        assert_eq!(out, fake.as_bytes());
    }
}
