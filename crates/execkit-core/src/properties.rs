//! Property tests of the pure parts: the sentinel scanner, the UTF-8
//! decoder, the ANSI stripper and the output cap, over arbitrary inputs and
//! arbitrary chunk boundaries.

use crate::output_cap::OutputCap;
use crate::output_clean::{clean, OutputCleaner, Utf8Decoder};
use crate::protocol::{Sentinel, SentinelScanner};
use proptest::prelude::*;

/// Splits `data` at the given cut points (taken modulo its length).
fn chunks(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| if data.is_empty() { 0 } else { c % data.len() })
        .collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| data[w[0]..w[1]].to_vec())
        .collect()
}

fn scan(nonce: &str, parts: &[Vec<u8>]) -> (Vec<u8>, Option<Sentinel>) {
    let mut s = SentinelScanner::new(nonce);
    let mut out = Vec::new();
    let mut found = None;
    for p in parts {
        let r = s.push(p);
        out.extend(r.output);
        if let Some(x) = r.sentinel {
            assert!(found.is_none(), "two sentinels reported");
            found = Some(x);
        }
    }
    (out, found)
}

/// Text that looks like sentinels and their pieces, with wrong nonces.
fn adversarial() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"__EK_".to_vec()),
        Just(b"_EK__\n".to_vec()),
        Just(b"__EK_0000000000000000:0:i::/x:0000000000000000_EK__\n".to_vec()),
        Just(b"__EKS_0000000000000000\n".to_vec()),
        Just(b"__EK_0123456789abcdee:7:/".to_vec()),
        Just(b":0123456789abcdef_EK__\n".to_vec()),
        Just(b"__EK''_".to_vec()),
        prop::collection::vec(any::<u8>(), 0..20),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

const NONCE: &str = "0123456789abcdef";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn scanner_finds_the_real_sentinel_at_any_split(
        before in adversarial(),
        after in adversarial(),
        status in -1000i32..1000,
        cwd in "[^\0]{0,40}",
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stream = before.clone();
        stream.extend(format!("__EK_{NONCE}:{status}:him::{cwd}:{NONCE}_EK__\n").as_bytes());
        stream.extend(&after);
        let (out, found) = scan(NONCE, &chunks(&stream, &cuts));
        // The first genuine sentinel wins; output is exactly what preceded it
        // (the adversarial prefix cannot contain the nonce).
        prop_assert_eq!(found, Some(Sentinel { status, flags: "him".into(), prompts: false, cwd: cwd.clone() }));
        prop_assert_eq!(out, before);
    }

    #[test]
    fn scanner_never_invents_a_sentinel(
        stream in adversarial(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let (out, found) = scan(NONCE, &chunks(&stream, &cuts));
        prop_assert_eq!(found, None);
        // Everything but a possible held-back prefix of the sentinel start is released.
        prop_assert!(stream.starts_with(&out));
        let start_len = format!("__EK_{NONCE}:").len();
        let held = stream.len() - out.len();
        prop_assert!(held < start_len, "held back {} bytes", held);
    }

    #[test]
    fn utf8_decoder_equals_lossy_for_any_split(
        data in prop::collection::vec(any::<u8>(), 0..200),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut d = Utf8Decoder::default();
        let mut out = String::new();
        for part in chunks(&data, &cuts) {
            d.push(&part, &mut out);
        }
        d.finish(&mut out);
        prop_assert_eq!(out, String::from_utf8_lossy(&data).into_owned());
    }

    #[test]
    fn stripper_emits_no_escape_or_c1_and_is_split_invariant(
        data in prop::collection::vec(any::<u8>(), 0..300),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let whole = clean(&data);
        let has_esc = whole.contains('\u{1b}');
        let has_c1 = whole.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c));
        let has_c0 = whole.chars().any(|c| (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r'));
        prop_assert!(!has_esc && !has_c1 && !has_c0, "controls left in {:?}", whole);
        let mut c = OutputCleaner::default();
        let mut split = String::new();
        for part in chunks(&data, &cuts) {
            c.push(&part, &mut split);
        }
        c.finish(&mut split);
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn stripper_keeps_printable_text(text in "[a-zA-Z0-9 .,:;éü世界🎉\t\n-]{0,200}") {
        prop_assert_eq!(clean(text.as_bytes()), text);
    }

    #[test]
    fn cap_keeps_exact_head_and_tail(
        text in "[a-zé世\n]{0,400}",
        limit in 2usize..120,
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let chars: Vec<char> = text.chars().collect();
        let mut cap = OutputCap::memory_only(limit);
        // Feed at char boundaries.
        let mut points: Vec<usize> = cuts.iter().map(|c| if chars.is_empty() { 0 } else { c % chars.len() }).collect();
        points.extend([0, chars.len()]);
        points.sort_unstable();
        points.dedup();
        for w in points.windows(2) {
            cap.push(&chars[w[0]..w[1]].iter().collect::<String>());
        }
        let out = cap.finish();
        if chars.len() <= limit {
            prop_assert!(!out.truncated);
            prop_assert_eq!(out.text, text);
        } else {
            prop_assert!(out.truncated);
            let head: String = chars[..limit / 2].iter().collect();
            let tail: String = chars[chars.len() - (limit - limit / 2)..].iter().collect();
            prop_assert!(out.text.starts_with(&head));
            prop_assert!(out.text.ends_with(&tail));
            prop_assert!(out.text.contains("characters elided"));
        }
    }
}
