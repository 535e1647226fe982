//! Masks secrets in text before it is journaled: built-in token shapes plus
//! the user's `--redact REGEX` patterns.

use std::borrow::Cow;

use regex::Regex;

/// What replaces a secret.
pub const MASK: &str = "[REDACTED]";

/// Built-in shapes: (pattern, whether group 1 is a prefix to keep).
const BUILTIN: &[(&str, bool)] = &[
    // AWS access key ids and secret assignments.
    (r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b", false),
    (r"(?i)(aws_secret_access_key\s*[=:]\s*)\S+", true),
    // GitHub and GitLab tokens.
    (r"\bgh[pousr]_[A-Za-z0-9]{30,}\b", false),
    (r"\bgithub_pat_[A-Za-z0-9_]{22,}\b", false),
    (r"\bglpat-[A-Za-z0-9_\-]{20,}", false),
    // Slack tokens.
    (r"\bxox[abposr]-[A-Za-z0-9\-]{10,}", false),
    // HTTP bearer credentials.
    (r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]+=*", true),
    // key=value / key: value secrets.
    (
        r#"(?i)(\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret)\b\s*[=:]\s*)(?:"[^"]*"|'[^']*'|[^\s&;]+)"#,
        true,
    ),
    // Private key blocks.
    (
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
        false,
    ),
];

/// A set of secret patterns.
#[derive(Debug, Clone)]
pub struct Redactor {
    rules: Vec<(Regex, bool)>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor {
            rules: BUILTIN
                .iter()
                .map(|(p, keep)| (Regex::new(p).expect("built-in pattern"), *keep))
                .collect(),
        }
    }
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
            r.rules.push((Regex::new(p.as_ref())?, false));
        }
        Ok(r)
    }

    /// `text` with every match masked.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for (re, keep_prefix) in &self.rules {
            if !re.is_match(&out) {
                continue;
            }
            let replaced = if *keep_prefix {
                re.replace_all(&out, |c: &regex::Captures<'_>| format!("{}{MASK}", &c[1]))
                    .into_owned()
            } else {
                re.replace_all(&out, MASK).into_owned()
            };
            out = Cow::Owned(replaced);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let out = r.redact(text);
            assert!(!out.contains(secret), "{text} -> {out}");
            assert!(out.contains(MASK), "{text} -> {out}");
        }
        assert_eq!(r.redact("ls -la /tmp"), "ls -la /tmp");
        assert_eq!(r.redact("password=x y"), "password=[REDACTED] y");
    }

    #[test]
    fn user_patterns() {
        let r = Redactor::with_patterns(["corp-[0-9]{4}"]).unwrap();
        assert_eq!(r.redact("id corp-1234 ok"), "id [REDACTED] ok");
        assert!(Redactor::with_patterns(["("]).is_err());
    }
}
