//! Which engine a target means, by the docker CLI's rules.
//!
//! `docker:NAME` uses the current engine, chosen as `docker` chooses it
//! (`resolveContextName` in the docker CLI):
//!
//! 1. `DOCKER_HOST` set (non-empty): that engine — the `default` context,
//!    whatever `DOCKER_CONTEXT` or the config file say; TLS from
//!    `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`.
//! 2. else `DOCKER_CONTEXT` set: that context.
//! 3. else `currentContext` in `$DOCKER_CONFIG/config.json` (default
//!    `~/.docker/config.json`).
//! 4. else the `default` context: `/var/run/docker.sock`.
//!
//! `docker:///NAME?context=CTX` names the context itself (`docker --context
//! CTX`: it wins over all of the above); `docker://HOST:PORT/NAME` names
//! the engine (`docker -H tcp://HOST:PORT`: TLS when `DOCKER_TLS_VERIFY`
//! is set, with `DOCKER_CERT_PATH`).
//!
//! A context is `contexts/meta/<sha256 of its name>/meta.json` in the
//! config directory (`Endpoints.docker.Host`, `.SkipTLSVerify`), its TLS
//! files `contexts/tls/<sha256>/docker/{ca,cert,key}.pem`; the context
//! `default` is the engine of rule 1 or 4.
//!
//! Everything here reads the environment through a [`Lookup`], so tests
//! can resolve with an environment of their own.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::endpoint::{
    host_port, ConnectFuture, Endpoint, EngineConnector, EngineStream, TlsEndpoint, Tunnel,
    DEFAULT_SOCKET,
};

/// Reads an environment variable (the process's, or a test's).
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process's environment.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A variable, trimmed; empty counts as unset (as in the docker CLI).
fn var(env: Lookup<'_>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// An engine and how it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// Where it listens.
    pub endpoint: Endpoint,
    /// How it was chosen, for messages (`from DOCKER_HOST`, `context
    /// `staging` from DOCKER_CONTEXT, /…/meta.json`); `None` for the
    /// default socket.
    pub via: Option<String>,
}

/// The engine of `docker:NAME` (rules 1–4 above).
pub(crate) fn current(env: Lookup<'_>) -> Result<Resolved, String> {
    if var(env, "DOCKER_HOST").is_some() {
        return default_engine(env);
    }
    if let Some(name) = var(env, "DOCKER_CONTEXT") {
        return context(&name, env, "from DOCKER_CONTEXT");
    }
    if let Some(dir) = config_dir(env) {
        let file = dir.join("config.json");
        match std::fs::read(&file) {
            Ok(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                    format!(
                        "cannot tell the current Docker context: {} is not valid JSON ({e})",
                        file.display()
                    )
                })?;
                match v.get("currentContext") {
                    None | Some(serde_json::Value::Null) => {}
                    Some(serde_json::Value::String(name)) if name.trim().is_empty() => {}
                    Some(serde_json::Value::String(name)) => {
                        let why = format!("currentContext of {}", file.display());
                        return context(name.trim(), env, &why);
                    }
                    Some(_) => {
                        return Err(format!(
                            "cannot tell the current Docker context: currentContext in {} is not a string",
                            file.display()
                        ))
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot tell the current Docker context: reading {}: {e}",
                    file.display()
                ))
            }
        }
    }
    default_engine(env)
}

/// The `default` context: `DOCKER_HOST` (TLS per `DOCKER_TLS_VERIFY`),
/// else the local socket.
pub(crate) fn default_engine(env: Lookup<'_>) -> Result<Resolved, String> {
    match var(env, "DOCKER_HOST") {
        Some(host) => {
            let endpoint = host_endpoint(&host, env)?;
            let via = match &endpoint {
                Endpoint::Tls(t) => format!(
                    "from DOCKER_HOST, DOCKER_TLS_VERIFY with the certificates in {}",
                    t.ca.parent().unwrap_or(Path::new("/")).display()
                ),
                _ => "from DOCKER_HOST".to_string(),
            };
            Ok(Resolved {
                endpoint,
                via: Some(via),
            })
        }
        None => Ok(Resolved {
            endpoint: Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET)),
            via: None,
        }),
    }
}

/// The engine of `docker://HOST:PORT/NAME` (`docker -H tcp://HOST:PORT`):
/// TLS when the environment asks for it, as for `DOCKER_HOST`.
pub(crate) fn explicit_tcp(addr: &str, env: Lookup<'_>) -> Result<Resolved, String> {
    let endpoint = tcp_endpoint(addr, env)?;
    let via = match &endpoint {
        Endpoint::Tls(t) => Some(format!(
            "DOCKER_TLS_VERIFY with the certificates in {}",
            t.ca.parent().unwrap_or(Path::new("/")).display()
        )),
        _ => None,
    };
    Ok(Resolved { endpoint, via })
}

/// A `DOCKER_HOST` value: `unix:///path`, `tcp://host:port` (TLS when
/// `DOCKER_TLS_VERIFY` is set), `http://host:port` (plain).
pub(crate) fn host_endpoint(host: &str, env: Lookup<'_>) -> Result<Endpoint, String> {
    if let Some(path) = host.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(format!("DOCKER_HOST={host} names no socket path"));
        }
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    if let Some(rest) = host.strip_prefix("tcp://") {
        let addr = host_port(rest.trim_end_matches('/'))
            .map_err(|e| format!("DOCKER_HOST={host}: {e}"))?;
        return tcp_endpoint(&addr, env);
    }
    if let Some(rest) = host.strip_prefix("http://") {
        if var(env, "DOCKER_TLS_VERIFY").is_some() {
            return Err(format!(
                "DOCKER_HOST={host} is plain HTTP but DOCKER_TLS_VERIFY asks for TLS (write tcp://)"
            ));
        }
        let addr = host_port(rest.trim_end_matches('/'))
            .map_err(|e| format!("DOCKER_HOST={host}: {e}"))?;
        return Ok(Endpoint::Tcp(addr));
    }
    if host.starts_with("ssh://") {
        return ssh_endpoint(host);
    }
    Err(format!(
        "DOCKER_HOST={host} is not supported (use unix:///PATH or tcp://HOST:PORT)"
    ))
}

/// `host:port` over TCP: TLS verified against `DOCKER_CERT_PATH` when
/// `DOCKER_TLS_VERIFY` is set (any non-empty value, as the docker CLI);
/// `DOCKER_TLS` alone (TLS without checking the engine) is refused.
fn tcp_endpoint(addr: &str, env: Lookup<'_>) -> Result<Endpoint, String> {
    if var(env, "DOCKER_TLS_VERIFY").is_some() {
        let dir = match var(env, "DOCKER_CERT_PATH") {
            Some(d) => PathBuf::from(d),
            None => config_dir(env).ok_or(
                "DOCKER_TLS_VERIFY is set but neither DOCKER_CERT_PATH, DOCKER_CONFIG nor HOME says where ca.pem, cert.pem and key.pem are",
            )?,
        };
        return Ok(Endpoint::Tls(TlsEndpoint::from_cert_dir(addr, &dir)));
    }
    if var(env, "DOCKER_TLS").is_some() {
        return Err(format!(
            "DOCKER_TLS is set without DOCKER_TLS_VERIFY: TLS that does not verify the engine at {addr} is refused \
             (anyone on the way could pose as the engine); set DOCKER_TLS_VERIFY=1 with the engine's CA in \
             DOCKER_CERT_PATH/ca.pem"
        ));
    }
    Ok(Endpoint::Tcp(addr.to_string()))
}

/// An engine over SSH (`DOCKER_HOST=ssh://[user@]host[:port][/SOCKET][?PARAMS]`,
/// or a context whose host is one): each connection is a fresh channel to
/// the engine's socket on that host (`/var/run/docker.sock` unless a path
/// follows the host), forwarded by the linked `ssh` transport — the same
/// connection pool, `~/.ssh/config`, jump hosts and host-key checks as an
/// `ssh://` target; `PARAMS` are that target's (`identity=`, …).
fn ssh_endpoint(host: &str) -> Result<Endpoint, String> {
    let rest = &host["ssh://".len()..];
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, socket) = match before_query.find('/') {
        Some(i) if i + 1 < before_query.len() => (&before_query[..i], &before_query[i..]),
        Some(i) => (&before_query[..i], DEFAULT_SOCKET),
        None => (before_query, DEFAULT_SOCKET),
    };
    if authority.is_empty() {
        return Err(format!("{host}: no host after ssh://"));
    }
    let target = match query {
        Some(q) => format!("ssh://{authority}?{q}"),
        None => format!("ssh://{authority}"),
    };
    let forwarder = execkit_core::socket_forwarder("ssh").ok_or_else(|| {
        format!(
            "{host}: a Docker engine over SSH needs the ssh transport, which this program does not link \
             (execkit-ssh)"
        )
    })?;
    Ok(Endpoint::Tunnel(Tunnel {
        name: format!("{target} ({socket})"),
        connector: Arc::new(SshSocket {
            target,
            socket: socket.to_string(),
            connect: forwarder.connect,
        }),
    }))
}

/// Connections to an engine's socket on an SSH host, through the linked
/// `ssh` transport's forwarder.
struct SshSocket {
    target: String,
    socket: String,
    connect: fn(String, String) -> execkit_core::ForwardFuture,
}

impl EngineConnector for SshSocket {
    fn connect(&self) -> ConnectFuture<'_> {
        Box::pin(async move {
            match (self.connect)(self.target.clone(), self.socket.clone()).await {
                Ok(s) => Ok(Box::new(s) as Box<dyn EngineStream>),
                Err(e) => {
                    use execkit_core::ErrorKind as K;
                    let kind = match e.kind() {
                        K::ConnectionRefused | K::NotFound => std::io::ErrorKind::ConnectionRefused,
                        K::AuthRefused | K::HostKeyMismatch | K::HostKeyUnknown => {
                            std::io::ErrorKind::PermissionDenied
                        }
                        K::Timeout => std::io::ErrorKind::TimedOut,
                        _ => std::io::ErrorKind::Other,
                    };
                    let why = match &e {
                        execkit_core::TransportError::Unreachable { reason, .. } => reason.clone(),
                        other => other.to_string(),
                    };
                    Err(std::io::Error::new(kind, format!("over SSH: {why}")))
                }
            }
        })
    }
}

/// The docker CLI's configuration directory: `DOCKER_CONFIG`, else
/// `~/.docker`.
fn config_dir(env: Lookup<'_>) -> Option<PathBuf> {
    var(env, "DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| var(env, "HOME").map(|h| Path::new(&h).join(".docker")))
}

/// Checks a context name as the docker CLI spells them: a letter or
/// digit, then letters, digits, `_`, `.`, `+`, `-`.
pub(crate) fn valid_context_name(name: &str) -> Result<(), String> {
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'))
        && name.len() <= 255;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a Docker context name (a letter or digit, then letters, digits, `_`, `.`, `+` or `-`)"
        ))
    }
}

/// The context `name`, chosen `why` (`from DOCKER_CONTEXT`, …).
pub(crate) fn context(name: &str, env: Lookup<'_>, why: &str) -> Result<Resolved, String> {
    if name == "default" {
        return default_engine(env);
    }
    valid_context_name(name)?;
    let dir = config_dir(env).ok_or_else(|| {
        format!("Docker context `{name}` ({why}): neither DOCKER_CONFIG nor HOME says where contexts are")
    })?;
    let id = sha256_hex(name.as_bytes());
    let meta = dir.join("contexts/meta").join(&id).join("meta.json");
    let about = format!("Docker context `{name}` ({why}; {})", meta.display());
    let bytes = std::fs::read(&meta).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "Docker context `{name}` ({why}) does not exist: no {} (docker context ls lists them)",
            meta.display()
        ),
        _ => format!("{about}: cannot read it: {e}"),
    })?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{about}: not valid JSON ({e})"))?;
    let ep = &v["Endpoints"]["docker"];
    let host = ep["Host"]
        .as_str()
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{about}: it names no Docker engine (Endpoints.docker.Host)"))?;
    let skip_verify = ep["SkipTLSVerify"].as_bool().unwrap_or(false);
    let tls_dir = dir.join("contexts/tls").join(&id).join("docker");
    let endpoint = if let Some(path) = host.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(format!("{about}: Host {host} names no socket path"));
        }
        Endpoint::Unix(PathBuf::from(path))
    } else if let Some(rest) = host.strip_prefix("tcp://") {
        let addr = host_port(rest.trim_end_matches('/'))
            .map_err(|e| format!("{about}: Host {host}: {e}"))?;
        if skip_verify {
            return Err(format!(
                "{about}: SkipTLSVerify is set: TLS that does not verify the engine at {addr} is refused \
                 (anyone on the way could pose as the engine); give the context the engine's CA \
                 (docker context update {name} --docker \"host={host},ca=CA.pem,cert=…,key=…\")"
            ));
        }
        if tls_dir.is_dir() {
            Endpoint::Tls(TlsEndpoint::from_cert_dir(addr, &tls_dir))
        } else {
            Endpoint::Tcp(addr)
        }
    } else if host.starts_with("ssh://") {
        ssh_endpoint(host).map_err(|e| format!("{about}: {e}"))?
    } else {
        return Err(format!(
            "{about}: Host {host} is not supported (unix:///PATH or tcp://HOST:PORT)"
        ));
    };
    Ok(Resolved {
        endpoint,
        via: Some(format!("context `{name}` {why}, {}", meta.display())),
    })
}

/// Lower-case hex SHA-256: a context's directory name.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn scratch(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("execkit-resolve-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn resolve(vars: &[(&str, &str)]) -> Result<Resolved, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        current(&move |k: &str| map.get(k).cloned())
    }

    /// Writes a context as `docker context create` does.
    fn write_context(cfg: &Path, name: &str, host: &str, skip: bool, tls: bool) -> PathBuf {
        let id = sha256_hex(name.as_bytes());
        let meta = cfg.join("contexts/meta").join(&id);
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            format!(
                r#"{{"Name":"{name}","Metadata":{{}},"Endpoints":{{"docker":{{"Host":"{host}","SkipTLSVerify":{skip}}}}}}}"#
            ),
        )
        .unwrap();
        let tls_dir = cfg.join("contexts/tls").join(&id).join("docker");
        if tls {
            std::fs::create_dir_all(&tls_dir).unwrap();
            for f in ["ca.pem", "cert.pem", "key.pem"] {
                std::fs::write(tls_dir.join(f), "").unwrap();
            }
        }
        tls_dir
    }

    #[test]
    fn context_ids_are_the_sha256_of_the_name() {
        // `docker context create default-like` → this directory name.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn nothing_set_is_the_local_socket() {
        let r = resolve(&[]).unwrap();
        assert_eq!(r.endpoint, Endpoint::Unix(DEFAULT_SOCKET.into()));
        assert_eq!(r.via, None);
    }

    #[test]
    fn docker_host_forms() {
        let r = resolve(&[("DOCKER_HOST", "unix:///run/d.sock")]).unwrap();
        assert_eq!(r.endpoint, Endpoint::Unix("/run/d.sock".into()));
        let r = resolve(&[("DOCKER_HOST", "tcp://127.0.0.1:2375")]).unwrap();
        assert_eq!(r.endpoint, Endpoint::Tcp("127.0.0.1:2375".into()));
        let r = resolve(&[("DOCKER_HOST", "tcp://engine")]).unwrap();
        assert_eq!(r.endpoint, Endpoint::Tcp("engine:2375".into()));
        assert!(resolve(&[("DOCKER_HOST", "unix://")]).is_err());
        assert!(resolve(&[("DOCKER_HOST", "fd://")]).is_err());
        // The unit tests do not link the ssh transport.
        let e = resolve(&[("DOCKER_HOST", "ssh://u@h")]).unwrap_err();
        assert!(e.contains("needs the ssh transport"), "{e}");
    }

    #[test]
    fn tls_verify_uses_the_cert_path_and_the_host_as_server_name() {
        let r = resolve(&[
            ("DOCKER_HOST", "tcp://127.0.0.1:2376"),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", "/certs"),
        ])
        .unwrap();
        let Endpoint::Tls(t) = r.endpoint else {
            panic!("{r:?}")
        };
        assert_eq!(t.addr, "127.0.0.1:2376");
        assert_eq!(t.server_name(), "127.0.0.1");
        assert_eq!(t.ca, Path::new("/certs/ca.pem"));
        assert!(r.via.unwrap().contains("/certs"));
        // The docker CLI's default cert path: the config directory.
        let r = resolve(&[
            ("DOCKER_HOST", "tcp://h:2376"),
            ("DOCKER_TLS_VERIFY", "yes"),
            ("HOME", "/home/u"),
        ])
        .unwrap();
        let Endpoint::Tls(t) = r.endpoint else {
            panic!()
        };
        assert_eq!(t.ca, Path::new("/home/u/.docker/ca.pem"));
        let r = resolve(&[
            ("DOCKER_HOST", "tcp://h:2376"),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CONFIG", "/cfg"),
            ("HOME", "/home/u"),
        ])
        .unwrap();
        let Endpoint::Tls(t) = r.endpoint else {
            panic!()
        };
        assert_eq!(t.ca, Path::new("/cfg/ca.pem"));
        // A Unix socket takes no TLS.
        let r = resolve(&[("DOCKER_HOST", "unix:///s"), ("DOCKER_TLS_VERIFY", "1")]).unwrap();
        assert_eq!(r.endpoint, Endpoint::Unix("/s".into()));
    }

    #[test]
    fn tls_without_verification_is_refused() {
        let e = resolve(&[("DOCKER_HOST", "tcp://h:2376"), ("DOCKER_TLS", "1")]).unwrap_err();
        assert!(e.contains("DOCKER_TLS_VERIFY"), "{e}");
        let e =
            resolve(&[("DOCKER_HOST", "http://h:2376"), ("DOCKER_TLS_VERIFY", "1")]).unwrap_err();
        assert!(e.contains("plain HTTP"), "{e}");
    }

    #[test]
    fn contexts_by_precedence() {
        let cfg = scratch("prec");
        let c = cfg.0.to_string_lossy().to_string();
        let tls_dir = write_context(&cfg.0, "staging", "tcp://10.0.0.5:2376", false, true);
        write_context(&cfg.0, "plain", "tcp://10.0.0.6:2375", false, false);
        write_context(&cfg.0, "sock", "unix:///run/other.sock", false, false);
        std::fs::write(cfg.0.join("config.json"), r#"{"currentContext":"plain"}"#).unwrap();

        // currentContext of config.json.
        let r = resolve(&[("DOCKER_CONFIG", &c)]).unwrap();
        assert_eq!(r.endpoint, Endpoint::Tcp("10.0.0.6:2375".into()));
        let via = r.via.unwrap();
        assert!(
            via.contains("`plain`") && via.contains("config.json"),
            "{via}"
        );
        // DOCKER_CONTEXT beats it.
        let r = resolve(&[("DOCKER_CONFIG", &c), ("DOCKER_CONTEXT", "staging")]).unwrap();
        assert_eq!(
            r.endpoint,
            Endpoint::Tls(TlsEndpoint {
                addr: "10.0.0.5:2376".into(),
                ca: tls_dir.join("ca.pem"),
                client: Some(crate::endpoint::ClientCert {
                    cert: tls_dir.join("cert.pem"),
                    key: tls_dir.join("key.pem"),
                }),
            })
        );
        assert!(r.via.unwrap().contains("meta.json"));
        // DOCKER_HOST beats both (the docker CLI's order).
        let r = resolve(&[
            ("DOCKER_CONFIG", &c),
            ("DOCKER_CONTEXT", "staging"),
            ("DOCKER_HOST", "unix:///x.sock"),
        ])
        .unwrap();
        assert_eq!(r.endpoint, Endpoint::Unix("/x.sock".into()));
        // `default` is DOCKER_HOST or the socket.
        let r = resolve(&[("DOCKER_CONFIG", &c), ("DOCKER_CONTEXT", "default")]).unwrap();
        assert_eq!(r.endpoint, Endpoint::Unix(DEFAULT_SOCKET.into()));
        let r = resolve(&[("DOCKER_CONFIG", &c), ("DOCKER_CONTEXT", "sock")]).unwrap();
        assert_eq!(r.endpoint, Endpoint::Unix("/run/other.sock".into()));
        // HOME/.docker when DOCKER_CONFIG is unset.
        let home = scratch("home");
        let dot = home.0.join(".docker");
        write_context(&dot, "staging", "tcp://10.0.0.7:2375", false, false);
        let r = resolve(&[
            ("HOME", &home.0.to_string_lossy()),
            ("DOCKER_CONTEXT", "staging"),
        ])
        .unwrap();
        assert_eq!(r.endpoint, Endpoint::Tcp("10.0.0.7:2375".into()));
    }

    #[test]
    fn context_errors_name_the_context_and_its_file() {
        let cfg = scratch("errs");
        let c = cfg.0.to_string_lossy().to_string();
        let e = resolve(&[("DOCKER_CONFIG", &c), ("DOCKER_CONTEXT", "nope")]).unwrap_err();
        let meta = cfg
            .0
            .join("contexts/meta")
            .join(sha256_hex(b"nope"))
            .join("meta.json");
        assert!(
            e.contains("`nope`") && e.contains(&*meta.to_string_lossy()),
            "{e}"
        );
        assert!(e.contains("DOCKER_CONTEXT"), "{e}");
        write_context(&cfg.0, "insecure", "tcp://h:2376", true, false);
        let e = resolve(&[("DOCKER_CONFIG", &c), ("DOCKER_CONTEXT", "insecure")]).unwrap_err();
        assert!(
            e.contains("SkipTLSVerify") && e.contains("meta.json"),
            "{e}"
        );
        write_context(&cfg.0, "viassh", "ssh://u@h", false, false);
        let e = resolve(&[("DOCKER_CONFIG", &c), ("DOCKER_CONTEXT", "viassh")]).unwrap_err();
        assert!(
            e.contains("needs the ssh transport") && e.contains("`viassh`"),
            "{e}"
        );
        std::fs::write(cfg.0.join("config.json"), "{").unwrap();
        let e = resolve(&[("DOCKER_CONFIG", &c)]).unwrap_err();
        assert!(e.contains("config.json"), "{e}");
        let e = resolve(&[("DOCKER_CONFIG", &c), ("DOCKER_CONTEXT", "../x")]).unwrap_err();
        assert!(e.contains("not a Docker context name"), "{e}");
    }

    #[test]
    fn explicit_tcp_follows_the_tls_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let r = explicit_tcp("h:2376", &env(&[])).unwrap();
        assert_eq!(r.endpoint, Endpoint::Tcp("h:2376".into()));
        let r = explicit_tcp(
            "h:2376",
            &env(&[("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", "/c")]),
        )
        .unwrap();
        assert!(matches!(r.endpoint, Endpoint::Tls(ref t) if t.ca == Path::new("/c/ca.pem")));
    }
}
