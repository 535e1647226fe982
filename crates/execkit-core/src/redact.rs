//! Masks secrets in text before it is journaled or shown on the console:
//! built-in token shapes, the user's `--redact REGEX` patterns, and secret
//! values the redactor has *learned* — the values of variables with
//! secret-like names (`*TOKEN*`, `*SECRET*`, `*PASSWORD*`, `*PASSWD*`,
//! `*API_KEY*`, `*APIKEY*`, `*PRIVATE_KEY*`), seen in an assignment
//! (`export GH_TOKEN=…`, `DB_PASSWORD=… cmd`), in a session's configured
//! environment or in execkit's own, or handed over with
//! [`Redactor::learn_secret`] (hidden input). A learned value is masked
//! wherever it shows up later, in commands and in output.
//!
//! Clones share what was learned, so the journal and the console of one
//! host mask the same values.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use regex::{Regex, RegexSet};

/// What replaces a secret.
pub const MASK: &str = "[REDACTED]";

/// Learned values shorter than this are not learned (`true`, `1`, `yes`
/// would otherwise be masked everywhere); they are still masked where they
/// are assigned.
pub const LEARN_MIN_CHARS: usize = 6;

/// At most this many learned values are kept (the first ones win).
pub const LEARN_MAX: usize = 512;

/// A variable name that holds a secret: a name containing one of these
/// words, case-insensitive.
const SECRET_NAME: &str =
    r"[A-Za-z0-9_]*(?i:TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY)[A-Za-z0-9_]*";

/// A value: quoted, or a shell word up to a separator.
const VALUE: &str = r#"(?:"[^"\n]*"|'[^'\n]*'|[^\s;&|'"`]+)"#;

/// Built-in shapes: (pattern, replacement). `$1`/`$2` keep context around
/// the secret.
const BUILTIN: &[(&str, &str)] = &[
    // AWS access key ids and secret assignments.
    (r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b", MASK),
    (
        r"(?i)(aws_secret_access_key\s*[=:]\s*)\S+",
        "${1}[REDACTED]",
    ),
    // GitHub and GitLab tokens.
    (r"\bgh[pousr]_[A-Za-z0-9]{30,}\b", MASK),
    (r"\bgithub_pat_[A-Za-z0-9_]{22,}\b", MASK),
    (r"\bglpat-[A-Za-z0-9_\-]{20,}", MASK),
    // Slack tokens.
    (r"\bxox[abposr]-[A-Za-z0-9\-]{10,}", MASK),
    // OpenAI (`sk-…`, `sk-proj-…`, `sk-svcacct-…`) and Anthropic
    // (`sk-ant-api03-…`) keys.
    (r"\bsk-[A-Za-z0-9_\-]{20,}", MASK),
    // Stripe secret and restricted keys.
    (r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{10,}", MASK),
    // Google API keys.
    (r"\bAIza[0-9A-Za-z_\-]{35}", MASK),
    // HTTP bearer credentials.
    (r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]+=*", "${1}[REDACTED]"),
    // Credentials in URLs: scheme://user:PASS@host.
    (
        r"(?i)(\b[a-z][a-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@",
        "${1}[REDACTED]@",
    ),
    // Secret flags: --password X, --password=X, --db-token X, --api-key=X, …
    (
        r#"(?i)(--(?:[a-z0-9]+-)?(?:password|passwd|pass|token|secret|api[-_]?key)(?:=|\s+))(?:"[^"\n]*"|'[^'\n]*'|[^\s'"]+)"#,
        "${1}[REDACTED]",
    ),
    // -pSECRET for the tools where -p means password (not `mkdir -p`).
    (
        r#"(\b(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlcheck|mysqlshow|mysqlpump|mariadb|mariadb-dump|mariadb-admin)\b[^\n;|&]*?\s-p)(?:"[^"\n]*"|'[^'\n]*'|[^\s'"]+)"#,
        "${1}[REDACTED]",
    ),
    (r"(\bsshpass\s+-p\s*)\S+", "${1}[REDACTED]"),
    // key=value / key: value secrets.
    (
        r#"(?i)(\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret)\b\s*[=:]\s*)(?:"[^"]*"|'[^']*'|[^\s&;]+)"#,
        "${1}[REDACTED]",
    ),
    // Private key blocks.
    (
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
        MASK,
    ),
];

/// `NAME=value` / `"NAME": value` where NAME looks like it holds a secret.
fn assignment_pattern() -> String {
    format!(r#"(\b{SECRET_NAME}["']?\s*(?:=|:\s))\s*({VALUE})"#)
}

/// A set of secret patterns plus the values learned so far.
#[derive(Debug, Clone)]
pub struct Redactor {
    rules: Vec<(Regex, String)>,
    /// All of `rules` in one automaton: text that matches none (nearly all
    /// of it) costs one scan.
    any: RegexSet,
    assignment: Regex,
    learned: Arc<RwLock<Learned>>,
}

#[derive(Debug, Default)]
struct Learned {
    values: Vec<String>,
    /// The values as one alternation, longest first.
    re: Option<Regex>,
}

impl Default for Redactor {
    /// The built-in rules, compiled once per process (6–12 ms of regex
    /// compilation; a Python program opens a session per thread) and
    /// shared: a clone of a compiled `Regex` is a reference count.
    fn default() -> Self {
        /// The rules, their set, the assignment rule.
        type Compiled = (Vec<(Regex, String)>, RegexSet, Regex);
        static BUILT_IN: std::sync::OnceLock<Compiled> = std::sync::OnceLock::new();
        let (rules, any, assignment) = BUILT_IN.get_or_init(|| {
            let mut rules: Vec<(Regex, String)> = BUILTIN
                .iter()
                .map(|(p, r)| (Regex::new(p).expect("built-in pattern"), (*r).to_string()))
                .collect();
            let assignment = Regex::new(&assignment_pattern()).expect("assignment pattern");
            rules.push((assignment.clone(), "${1}[REDACTED]".into()));
            let any = set_of(&rules);
            (rules, any, assignment)
        });
        Redactor {
            any: any.clone(),
            rules: rules.clone(),
            assignment: assignment.clone(),
            learned: Arc::default(),
        }
    }
}

fn set_of(rules: &[(Regex, String)]) -> RegexSet {
    RegexSet::new(rules.iter().map(|(re, _)| re.as_str())).expect("patterns that compiled alone")
}

/// Whether an environment variable name looks like it holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "PRIVATE_KEY",
        "PRIVATEKEY",
    ]
    .iter()
    .any(|w| up.contains(w))
        || up.contains("API_KEY")
        || up.contains("APIKEY")
}

impl Redactor {
    /// The built-in shapes plus `extra` user patterns.
    pub fn with_patterns<I, S>(extra: I) -> Result<Redactor, regex::Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut r = Redactor::default();
        for p in extra {
            r.rules.push((Regex::new(p.as_ref())?, MASK.to_string()));
        }
        r.any = set_of(&r.rules);
        Ok(r)
    }

    /// Masks `value` wherever it appears from now on (in this redactor and
    /// its clones). Values shorter than [`LEARN_MIN_CHARS`] characters, or
    /// that hold only `[REDACTED]`, are ignored; returns whether it was learned.
    pub fn learn_secret(&self, value: &str) -> bool {
        let value = value.trim_matches(|c| c == '\n' || c == '\r');
        if value.chars().count() < LEARN_MIN_CHARS || value.contains(MASK) {
            return false;
        }
        {
            let l = self.learned.read().unwrap_or_else(|e| e.into_inner());
            if l.values.iter().any(|v| v == value) || l.values.len() >= LEARN_MAX {
                return false;
            }
        }
        let mut l = self.learned.write().unwrap_or_else(|e| e.into_inner());
        if l.values.iter().any(|v| v == value) || l.values.len() >= LEARN_MAX {
            return false;
        }
        l.values.push(value.to_string());
        let mut sorted: Vec<&String> = l.values.iter().collect();
        sorted.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let alternation = sorted
            .iter()
            .map(|v| regex::escape(v))
            .collect::<Vec<_>>()
            .join("|");
        l.re = Regex::new(&alternation).ok();
        true
    }

    /// Learns the values of secret-named variables assigned in `text`
    /// (`export GH_TOKEN=…`, `DB_PASSWORD='…' cmd`, `"api_key": "…"`; after
    /// a colon only quoted values).
    /// Values that are expansions (`$OTHER`, `$(cat f)`) are not learned.
    /// Returns how many new values were learned.
    pub fn learn_from_assignment(&self, text: &str) -> usize {
        if !self.assignment.is_match(text) {
            return 0;
        }
        let mut n = 0;
        for c in self.assignment.captures_iter(text) {
            let raw = &c[2];
            let quoted = raw.len() >= 2 && (raw.starts_with('"') || raw.starts_with('\''));
            if c[1].contains(':') && !quoted {
                // `API_KEY: please check` is prose, not a value; JSON and
                // YAML secrets are quoted.
                continue;
            }
            let value = raw
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| raw.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(raw);
            if value.contains('$') || value.contains('`') {
                continue;
            }
            n += usize::from(self.learn_secret(value));
        }
        n
    }

    /// Learns the values of secret-named variables among `vars` (a
    /// session's configured environment, or execkit's own).
    pub fn learn_env<'a, I>(&self, vars: I) -> usize
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        vars.into_iter()
            .filter(|(k, _)| is_secret_name(k))
            .map(|(_, v)| usize::from(self.learn_secret(v)))
            .sum()
    }

    /// How many values were learned.
    pub fn learned_count(&self) -> usize {
        self.learned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values
            .len()
    }

    /// `text` with every match masked.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        {
            let l = self.learned.read().unwrap_or_else(|e| e.into_inner());
            if let Some(re) = &l.re {
                if re.is_match(&out) {
                    out = Cow::Owned(re.replace_all(&out, MASK).into_owned());
                }
            }
        }
        if !self.any.is_match(&out) {
            return out;
        }
        for (re, with) in &self.rules {
            if !re.is_match(&out) {
                continue;
            }
            out = Cow::Owned(re.replace_all(&out, with.as_str()).into_owned());
        }
        out
    }

    /// Raw terminal bytes with every match masked: valid UTF-8 is redacted
    /// as text; other bytes are kept as they are around the redacted text.
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        match std::str::from_utf8(bytes) {
            Ok(s) => match self.redact(s) {
                Cow::Borrowed(_) => Cow::Borrowed(bytes),
                Cow::Owned(o) => Cow::Owned(o.into_bytes()),
            },
            Err(_) => {
                let mut out = Vec::with_capacity(bytes.len());
                let mut changed = false;
                for chunk in bytes.utf8_chunks() {
                    let r = self.redact(chunk.valid());
                    changed |= matches!(r, Cow::Owned(_));
                    out.extend_from_slice(r.as_bytes());
                    out.extend_from_slice(chunk.invalid());
                }
                if changed {
                    Cow::Owned(out)
                } else {
                    Cow::Borrowed(bytes)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(r: &Redactor, text: &str, secret: &str) {
        let out = r.redact(text);
        assert!(!out.contains(secret), "{text} -> {out}");
        assert!(out.contains(MASK), "{text} -> {out}");
    }

    #[test]
    fn masks_real_token_shapes() {
        let r = Redactor::default();
        let cases = [
            (
                "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
                "AKIAIOSFODNN7EXAMPLE",
            ),
            (
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "wJalrXUtnFEMI",
            ),
            (
                "git clone https://ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789@github.com/x",
                "ghp_aBcD",
            ),
            ("TOKEN=glpat-xxxxxxxxxxxxxxxxxxxx1234 make", "glpat-"),
            (
                "curl -H 'Authorization: Bearer eyJhbGciOi.J9.abc'",
                "eyJhbGciOi",
            ),
            ("mysql --password=hunter2 db", "hunter2"),
            ("api_key: 'sk-live-123'", "sk-live-123"),
        ];
        for (text, secret) in cases {
            masked(&r, text, secret);
        }
        assert_eq!(r.redact("ls -la /tmp"), "ls -la /tmp");
        assert_eq!(r.redact("password=x y"), "password=[REDACTED] y");
    }

    #[test]
    fn masks_ai_and_payment_keys() {
        let r = Redactor::default();
        let proj = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0fGh3iJk6lMn9o";
        let ant = "sk-ant-api03-Zx9yW8vU7tS6rQ5pO4nM3lK2jI1hG0fE-dCbA_9876543210abcdEFG";
        let old = "sk-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKl";
        for key in [proj, ant, old] {
            masked(&r, &format!("curl -H 'x-api-key: {key}' https://api"), key);
            masked(&r, &format!("echo {key}"), key);
        }
        for key in [
            "sk_live_51HqLyjWDarjtT1zdp7dcXYZ0123456789",
            "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
            "rk_live_51HqLyjWDarjtT1zdp7dcXYZ",
        ] {
            masked(&r, &format!("stripe --api-key={key} charges"), key);
            masked(&r, &format!("key is {key}."), key);
        }
        let g = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY";
        masked(
            &r,
            &format!("curl 'https://maps.googleapis.com/x?key={g}'"),
            g,
        );
        masked(&r, &format!("GOOGLE={g}"), g);
        // Not keys.
        for text in [
            "task-runner --sk-mode",
            "sk-learn",
            "pip install scikit-learn",
        ] {
            assert_eq!(r.redact(text), text);
        }
    }

    #[test]
    fn masks_url_credentials_but_not_the_rest_of_the_url() {
        let r = Redactor::default();
        assert_eq!(
            r.redact("git clone https://alice:s3cr3t-Pw@git.example.com/repo.git"),
            "git clone https://alice:[REDACTED]@git.example.com/repo.git"
        );
        assert_eq!(
            r.redact("psql postgres://app:p%40ss@db:5432/app"),
            "psql postgres://app:[REDACTED]@db:5432/app"
        );
        assert_eq!(
            r.redact("redis-cli -u redis://:hunter22@cache:6379"),
            "redis-cli -u redis://:[REDACTED]@cache:6379"
        );
        for text in [
            "curl https://example.com:8443/path",
            "ssh://git@github.com/x",
            "see http://host/a@b",
        ] {
            assert_eq!(r.redact(text), text);
        }
    }

    #[test]
    fn masks_password_flags_but_not_mkdir_p() {
        let r = Redactor::default();
        let cases = [
            ("mysql -u root --password hunter22 db", "hunter22"),
            ("tool --password='a b c d' run", "a b c d"),
            ("tool --passwd=opensesame", "opensesame"),
            ("tool --pass letmein1", "letmein1"),
            ("vault login --token s.AbCdEf123", "s.AbCdEf123"),
            ("cli --secret \"q w e r\"", "q w e r"),
            ("cli --api-key abcdef123456", "abcdef123456"),
            ("gh --auth-token=tok123456", "tok123456"),
            ("mysql -u root -phunter22 db", "hunter22"),
            ("mysqldump -h db -u app -p's3 cr3t' app", "s3 cr3t"),
            ("mariadb -uroot -pSup3rS3cret", "Sup3rS3cret"),
            ("sshpass -p Pa55word ssh host", "Pa55word"),
        ];
        for (text, secret) in cases {
            masked(&r, text, secret);
        }
        for text in [
            "mkdir -p /tmp/a/b",
            "ssh -p2222 host",
            "cp -pr a b",
            "mysql -p db",
            "git log -p2",
            "tar --pass-through x",
        ] {
            assert_eq!(r.redact(text), text, "{text}");
        }
    }

    #[test]
    fn masks_and_learns_secret_named_assignments() {
        let r = Redactor::default();
        assert_eq!(
            r.redact("export GITHUB_TOKEN=abcdef123456"),
            "export GITHUB_TOKEN=[REDACTED]"
        );
        assert_eq!(
            r.redact("DB_Password='x y z' ./migrate"),
            "DB_Password=[REDACTED] ./migrate"
        );
        assert_eq!(r.learn_from_assignment("export MY_API_KEY=zq81kd0a7e"), 1);
        assert_eq!(
            r.learn_from_assignment(
                r#"STRIPE_SECRET="wh sec 998877" OPENAI_APIKEY=0123456789 cmd"#
            ),
            2
        );
        // Too short, expansions and repeats are not learned.
        assert_eq!(
            r.learn_from_assignment(
                "X_TOKEN=abc Y_TOKEN=$OTHER Z_SECRET=$(cat f) MY_API_KEY=zq81kd0a7e"
            ),
            0
        );
        assert_eq!(
            r.learn_from_assignment("error: API_KEY: please check it"),
            0
        );
        assert_eq!(
            r.learn_from_assignment(r#"{"api_key": "json-secret-1"}"#),
            1
        );
        assert_eq!(r.learned_count(), 4);
        // Learned values are masked wherever they appear later, in clones too.
        let clone = r.clone();
        assert_eq!(
            clone.redact("curl -u me:zq81kd0a7e x; echo wh sec 998877; 0123456789"),
            "curl -u me:[REDACTED] x; echo [REDACTED]; [REDACTED]"
        );
        assert_eq!(r.redact("unrelated text"), "unrelated text");
    }

    #[test]
    fn learns_from_environment_pairs_and_plain_values() {
        let r = Redactor::default();
        let env = [
            ("ANTHROPIC_API_KEY", "k-env-0001"),
            ("PATH", "/usr/local/bin:/usr/bin"),
            ("My_Private_Key", "k-env-0002"),
            ("SHORT_TOKEN", "abc"),
        ];
        assert_eq!(r.learn_env(env), 2);
        assert_eq!(
            r.redact("k-env-0001 k-env-0002 /usr/local/bin abc"),
            "[REDACTED] [REDACTED] /usr/local/bin abc"
        );
        assert!(r.learn_secret("hunter2-typed\n"));
        assert!(!r.learn_secret("12345"));
        assert_eq!(r.redact("pw was hunter2-typed"), "pw was [REDACTED]");
        assert!(is_secret_name("aws_session_token") && !is_secret_name("HOME"));
    }

    #[test]
    fn redacts_bytes_around_invalid_utf8() {
        let r = Redactor::default();
        let mut raw = b"\x1b[31mkey ".to_vec();
        raw.extend_from_slice(b"sk_live_51HqLyjWDarjtT1zdp7dc\xff\n");
        let out = r.redact_bytes(&raw);
        assert_eq!(&*out, b"\x1b[31mkey [REDACTED]\xff\n");
        assert!(matches!(r.redact_bytes(b"plain\xfe"), Cow::Borrowed(_)));
    }

    #[test]
    fn user_patterns() {
        let r = Redactor::with_patterns(["corp-[0-9]{4}"]).unwrap();
        assert_eq!(r.redact("id corp-1234 ok"), "id [REDACTED] ok");
        assert!(Redactor::with_patterns(["("]).is_err());
    }
}
