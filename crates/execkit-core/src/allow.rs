//! The target allow list (`--allow-target` of `serve` and `mcp`).
//!
//! The grammar is documented on [`TargetPattern`].

use std::fmt;

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks `target` (opened with `shell`, when the request names one)
/// against the allow list `patterns`; an empty list admits everything.
/// Patterns that do not parse admit nothing. `shell_in_target`: the
/// target's opaque form names the shell, so `shell` replaces it.
pub fn check(
    patterns: &[String],
    target: &str,
    shell: Option<&str>,
    shell_in_target: bool,
) -> Result<(), Refusal> {
    if patterns.is_empty() {
        return Ok(());
    }
    let parsed: Vec<TargetPattern> = patterns
        .iter()
        .filter_map(|p| TargetPattern::parse(p).ok())
        .collect();
    if parsed.iter().any(|p| p.everything) {
        return Ok(());
    }
    let effective = effective_target(target, shell, shell_in_target);
    let parts = Parts::parse(&effective)
        .map_err(|why| Refusal(format!("it cannot be read as a target ({why})")))?;
    let mut param = None;
    let mut wrong_shell = false;
    for p in &parsed {
        match p.admits(&parts, shell) {
            Ok(()) => return Ok(()),
            Err(Miss::Param(k)) => param = param.or(Some(k)),
            Err(Miss::Shell) => wrong_shell = true,
            Err(Miss::Target) => {}
        }
    }
    Err(Refusal(match (param, wrong_shell) {
        (Some(k), _) => format!(
            "no pattern allows its parameter `{k}` (parameters such as known_hosts, \
             host_key and identity are for the server to allow, in the pattern)"
        ),
        (None, true) => "the shell is not one a pattern names".into(),
        (None, false) => "no pattern admits it".into(),
    }))
}

/// Whether `target` (with no shell of its own) matches `pattern`.
pub fn matches(pattern: &str, target: &str) -> bool {
    check(&[pattern.to_string()], target, None, false).is_ok()
}

/// The target as it will run: on `local`, a requested shell replaces the
/// target's own (the transport starts the requested one).
fn effective_target(target: &str, shell: Option<&str>, shell_in_target: bool) -> String {
    let scheme = target.split_once(':').map_or(target, |(s, _)| s);
    match shell {
        Some(sh) if shell_in_target => format!("{scheme}:{sh}"),
        _ => target.to_string(),
    }
}

/// Why one pattern did not admit a target.
#[derive(Debug, PartialEq, Eq)]
enum Miss {
    /// Scheme, form or a part of the target differs.
    Target,
    /// The target matches but for this parameter.
    Param(String),
    /// The target matches but the requested shell is not the pattern's.
    Shell,
}

/// A target (or pattern) split into its parts. Globs are not special here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parts {
    /// Lower case.
    scheme: String,
    form: Form,
    /// `None`: no `?`. Each `&`-separated piece, empty ones included: key
    /// as written, value percent-decoded.
    query: Option<Vec<(String, String)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// `local`
    Bare,
    /// `docker:web`, `local:/bin/dash`: everything after the first `:`.
    Opaque(String),
    /// `scheme://[user@]host[:port][/path]`.
    Url {
        user: Option<String>,
        /// As written (`[::1]` keeps its brackets); may be empty.
        host: String,
        port: Option<String>,
        /// From the first `/` after the authority on.
        path: Option<String>,
    },
}

fn valid_scheme(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

impl Parts {
    /// Splits a target. Parameters (`?…`) exist in the URL form only: an
    /// opaque value such as a local shell path may hold a `?`.
    fn parse(s: &str) -> Result<Parts, String> {
        if s.contains('\0') {
            return Err("a NUL byte".into());
        }
        if s.chars().any(char::is_control) {
            return Err("a control character".into());
        }
        let Some((scheme, rest)) = s.split_once(':') else {
            if !valid_scheme(s) {
                return Err("no scheme such as `local`, `docker:` or `ssh://`".into());
            }
            return Ok(Parts {
                scheme: s.to_ascii_lowercase(),
                form: Form::Bare,
                query: None,
            });
        };
        if !valid_scheme(scheme) {
            return Err(format!("`{scheme}` is not a scheme"));
        }
        let scheme = scheme.to_ascii_lowercase();
        let Some(url) = rest.strip_prefix("//") else {
            return Ok(Parts {
                scheme,
                form: Form::Opaque(rest.to_string()),
                query: None,
            });
        };
        let (url, query) = match url.split_once('?') {
            Some((u, q)) => (u, Some(q)),
            None => (url, None),
        };
        let (authority, path) = match url.find('/') {
            Some(i) => (&url[..i], Some(url[i..].to_string())),
            None => (url, None),
        };
        let (user, host, port) = split_authority(authority)?;
        Ok(Parts {
            scheme,
            form: Form::Url {
                user,
                host,
                port,
                path,
            },
            query: query.map(split_query).transpose()?,
        })
    }
}

/// `[user@]host[:port]`, a bracketed IPv6 host kept with its brackets.
fn split_authority(authority: &str) -> Result<(Option<String>, String, Option<String>), String> {
    let (user, hostport) = match authority.split_once('@') {
        Some((u, h)) => {
            if h.contains('@') {
                return Err(format!(
                    "more than one `@` in `{authority}`: the host follows the last one, \
                     so a user name cannot hold one"
                ));
            }
            (Some(u.to_string()), h)
        }
        None => (None, authority),
    };
    let (host, port) = if let Some(after) = hostport.strip_prefix('[') {
        let (h, tail) = after
            .split_once(']')
            .ok_or_else(|| format!("unclosed `[` in `{hostport}`"))?;
        let port = match tail {
            "" => None,
            t => Some(
                t.strip_prefix(':')
                    .ok_or_else(|| format!("`{t}` after the host"))?
                    .to_string(),
            ),
        };
        (format!("[{h}]"), port)
    } else {
        match hostport.split_once(':') {
            Some((_, p)) if p.contains(':') => {
                return Err(format!(
                    "more than one `:` in `{hostport}` (write an IPv6 address in brackets)"
                ))
            }
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (hostport.to_string(), None),
        }
    };
    Ok((user, host, port))
}

fn split_query(q: &str) -> Result<Vec<(String, String)>, String> {
    q.split('&')
        .map(|piece| {
            let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
            Ok((k.to_string(), percent_decode(v)?))
        })
        .collect()
}

/// Decodes `%XX` escapes of a target's part (a user name, a parameter
/// value); the result must be UTF-8 without control characters. Shared with
/// the transports' own target parsers, so a target means one thing to the
/// allow list and to the transport that connects.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let byte = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("a bad percent escape in `{s}`"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let out = String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))?;
    if out.chars().any(char::is_control) {
        return Err(format!("`{s}` holds a control character once decoded"));
    }
    Ok(out)
}

/// One parsed `--allow-target` pattern.
///
/// A target is never matched as a raw string: it is split into its parts —
/// scheme, then either an opaque value (`docker:web`, `local:/bin/dash`) or
/// `//[user@]host[:port][/path][?name=value&…]` — and each part is compared
/// with the same part of a pattern, which is written like a target with `*`
/// allowed in its parts. The split is generic (core knows no transport's
/// grammar) and strict: whatever it cannot read unambiguously (two `@`, a
/// host with unbracketed `:`) is refused, and the transport's own parser
/// still decides whether the target is valid. Grammar, in brief (the user
/// documentation is `docs/SECURITY.md`, "Allowed targets"):
///
/// * `*` alone admits every target; `SCHEME*` (`local*`) every target of
///   that scheme, in any form.
/// * `SCHEME` admits the bare target (`local`); `SCHEME:VALUE` the opaque
///   form (`local:/bin/dash`, `docker:web-*`); `SCHEME://…` the URL form
///   (`ssh://deploy@*.example.com:22`, `docker://127.0.0.1:2375/*`).
///   `docker:NAME` and `docker://HOST/NAME` are different forms.
/// * A part that is exactly `*` admits any value, or the part being absent
///   (`ssh://*@host:*`; `local:*` admits `local` too). Otherwise `*` stays
///   inside one label of a host (`*.example.com` is one label deep) and one
///   segment of a path (never `.` or `..`), and never crosses `@`, `:`, `/`,
///   `?`, `&` or `=`. A part the pattern leaves out must be absent from the
///   target (`ssh://deploy@h` admits no `:PORT`). Hosts compare without
///   regard to case; everything else exactly, as written.
/// * A target's parameters (`?known_hosts=…`, in the URL form) must each be
///   named by the pattern (`?connect_timeout=*&host_key=accept_new`); a
///   pattern without `?` admits no parameter at all. Values are compared
///   percent-decoded.
/// * The `shell` of an open request is part of the match: on a scheme
///   whose target names the shell (`local`, which declares
///   `shell_in_target` in its registration) it replaces the target's shell (`local:/bin/dash` with shell `/bin/bash`
///   is matched as `local:/bin/bash`); on any scheme a pattern parameter
///   `shell=GLOB` (`docker:web?shell=/bin/sh`) admits only those shells.
#[derive(Debug, Clone)]
pub struct TargetPattern {
    /// `*`: every target.
    everything: bool,
    /// `SCHEME*`: every target of the scheme, in any form.
    any_form: bool,
    parts: Parts,
}

impl TargetPattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(pattern: &str) -> Result<TargetPattern, String> {
        let bad = |why: String| format!("`{pattern}` is not a target pattern: {why}");
        if pattern == "*" {
            return Ok(TargetPattern {
                everything: true,
                any_form: false,
                parts: Parts {
                    scheme: String::new(),
                    form: Form::Bare,
                    query: None,
                },
            });
        }
        let (body, query) = match pattern.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (pattern, None),
        };
        let any_form = !body.contains(':') && body.ends_with('*');
        let body = if any_form {
            &body[..body.len() - 1]
        } else {
            body
        };
        let mut parts = Parts::parse(body).map_err(bad)?;
        if any_form && parts.form != Form::Bare {
            return Err(bad("write `SCHEME*` with nothing between".into()));
        }
        if let Form::Url { user, host, .. } = &parts.form {
            if user.as_deref() == Some("") {
                return Err(bad("an empty user name before `@`".into()));
            }
            if host.is_empty() && user.is_some() {
                return Err(bad("no host after `@`".into()));
            }
        }
        if let Some(q) = query {
            let mut params = Vec::new();
            for piece in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = piece.split_once('=').ok_or_else(|| {
                    bad(format!(
                        "parameter `{piece}` needs a value (`{piece}=VALUE`, or `{piece}=*` for any)"
                    ))
                })?;
                if k.is_empty() || k.contains('*') {
                    return Err(bad(format!("`{k}` is not a parameter name")));
                }
                params.push((k.to_string(), percent_decode(v).map_err(bad)?));
            }
            parts.query = Some(params);
        }
        Ok(TargetPattern {
            everything: false,
            any_form,
            parts,
        })
    }

    fn admits(&self, t: &Parts, shell: Option<&str>) -> Result<(), Miss> {
        if self.everything {
            return Ok(());
        }
        let p = &self.parts;
        if p.scheme != t.scheme {
            return Err(Miss::Target);
        }
        if !self.any_form {
            let same = match (&p.form, &t.form) {
                (Form::Bare, Form::Bare) => true,
                (Form::Opaque(pv), Form::Bare) => pv == "*",
                (Form::Opaque(pv), Form::Opaque(tv)) => glob_path(pv, tv),
                (
                    Form::Url {
                        user: pu,
                        host: ph,
                        port: pp,
                        path: pa,
                    },
                    Form::Url {
                        user: tu,
                        host: th,
                        port: tp,
                        path: ta,
                    },
                ) => {
                    optional(pu, tu, glob_word)
                        && glob_host(ph, th)
                        && optional(pp, tp, glob_port)
                        && optional(pa, ta, glob_path)
                }
                _ => false,
            };
            if !same {
                return Err(Miss::Target);
            }
        }
        let allowed = p.query.as_deref().unwrap_or(&[]);
        for (k, v) in t.query.iter().flatten() {
            if !allowed.iter().any(|(pk, pv)| pk == k && glob_path(pv, v)) {
                return Err(Miss::Param(k.clone()));
            }
        }
        if let Some(sh) = shell {
            let shells: Vec<&str> = allowed
                .iter()
                .filter(|(k, _)| k == "shell")
                .map(|(_, v)| v.as_str())
                .collect();
            if !shells.is_empty() && !shells.iter().any(|g| glob_path(g, sh)) {
                return Err(Miss::Shell);
            }
        }
        Ok(())
    }
}

/// A part the pattern may leave out: absent matches absent, `*` anything.
fn optional(p: &Option<String>, t: &Option<String>, f: fn(&str, &str) -> bool) -> bool {
    match (p.as_deref(), t.as_deref()) {
        (None, None) | (Some("*"), _) => true,
        (Some(p), Some(t)) => f(p, t),
        _ => false,
    }
}

/// `*` = any run of characters (the text holds no separators).
fn glob_word(p: &str, t: &str) -> bool {
    let pieces: Vec<&str> = p.split('*').collect();
    if pieces.len() == 1 {
        return p == t;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if t.len() < first.len() + last.len() || !t.starts_with(first) || !t.ends_with(last) {
        return false;
    }
    let mut rest = &t[first.len()..t.len() - last.len()];
    for mid in &pieces[1..pieces.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Ports: digits only, whatever the glob.
fn glob_port(p: &str, t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) && glob_word(p, t)
}

/// Host names: `*` alone is any host; otherwise label by label (`.`), so
/// `*.example.com` admits `a.example.com`, not `a.b.example.com`, and a
/// `*` stands for name characters only (letters, digits, `-`, `_`).
fn glob_host(p: &str, t: &str) -> bool {
    if p == "*" {
        return true;
    }
    let (p, t) = (p.to_ascii_lowercase(), t.to_ascii_lowercase());
    let (pl, tl): (Vec<&str>, Vec<&str>) = (p.split('.').collect(), t.split('.').collect());
    pl.len() == tl.len()
        && pl.iter().zip(&tl).all(|(p, t)| {
            if p.contains('*')
                && !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            {
                return false;
            }
            glob_word(p, t)
        })
}

/// Paths and values: `*` alone is anything; otherwise segment by segment
/// (`/`), and a `*` never stands for `.` or `..`.
fn glob_path(p: &str, t: &str) -> bool {
    if p == "*" {
        return true;
    }
    let (ps, ts): (Vec<&str>, Vec<&str>) = (p.split('/').collect(), t.split('/').collect());
    ps.len() == ts.len()
        && ps.iter().zip(&ts).all(|(p, t)| {
            if p.contains('*') && matches!(*t, "." | "..") {
                return false;
            }
            glob_word(p, t)
        })
}

#[cfg(test)]
mod tests;
