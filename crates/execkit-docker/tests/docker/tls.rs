//! The TLS engine `cargo xtask` provisions (`dockerd --tlsverify` on a
//! loopback port; `EXECKIT_TEST_DOCKER_TLS_*`) and Docker contexts that
//! point at it.
//!
//! The environment (`DOCKER_HOST`, `DOCKER_TLS_VERIFY`, `DOCKER_CONTEXT`,
//! …) is process-global, so every case that chooses the engine through it
//! runs in a child process of this binary ([`child`]): the same
//! `Session::open(target)` a user's program makes, in an environment of
//! its own. Cases that give the engine explicitly
//! ([`DockerTransport::with_endpoint`]) run here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use execkit_core::raw::Transport;
use execkit_core::{ErrorKind, RunOptions, Session, SessionError, TransportError};
use execkit_docker::{DockerTransport, Endpoint, TlsEndpoint};

use super::{config, ok, Env};

/// What the TLS engine's provisioning exported.
#[derive(Debug, Clone)]
pub(crate) struct TlsEnv {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `ca.pem`, `cert.pem`, `key.pem` the engine accepts.
    pub certs: PathBuf,
    /// The same files from another CA.
    pub wrong: PathBuf,
    /// The test container on the TLS engine (not on the plain one).
    pub container: String,
}

impl TlsEnv {
    pub(crate) fn from_env() -> Option<TlsEnv> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(TlsEnv {
            addr: var("EXECKIT_TEST_DOCKER_TLS_HOST")?
                .trim_start_matches("tcp://")
                .to_string(),
            certs: var("EXECKIT_TEST_DOCKER_TLS_CERTS")?.into(),
            wrong: var("EXECKIT_TEST_DOCKER_TLS_WRONG")?.into(),
            container: var("EXECKIT_TEST_DOCKER_TLS_CONTAINER")?,
        })
    }
}

/// Why a case cannot run without the TLS engine.
pub(crate) fn needs_tls(e: &Env) -> Option<&'static str> {
    e.tls
        .is_none()
        .then_some("EXECKIT_TEST_DOCKER_TLS_* (the TLS engine of cargo xtask)")
}

fn tls(env: &Env) -> anyhow::Result<&TlsEnv> {
    env.tls.as_ref().context("no TLS engine")
}

/// A scratch directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> anyhow::Result<Dir> {
        let d = std::env::temp_dir().join(format!("execkit-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        Ok(Dir(d))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies `files` (`(from, to)` names) from `src` into `dst`.
fn copy(src: &Path, dst: &Path, files: &[(&str, &str)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst)?;
    for (from, to) in files {
        std::fs::copy(src.join(from), dst.join(to))
            .with_context(|| format!("copying {}", src.join(from).display()))?;
    }
    Ok(())
}

const ALL: &[(&str, &str)] = &[
    ("ca.pem", "ca.pem"),
    ("cert.pem", "cert.pem"),
    ("key.pem", "key.pem"),
];

/// A transport for the TLS engine's container with the files in `dir`.
fn transport(t: &TlsEnv, dir: &Path) -> anyhow::Result<Arc<dyn Transport>> {
    let endpoint = Endpoint::Tls(TlsEndpoint::from_cert_dir(&t.addr, dir));
    Ok(Arc::new(DockerTransport::with_endpoint(
        &format!("docker://{}/{}", t.addr, t.container),
        &t.container,
        endpoint,
    )?))
}

/// Opening must fail as Unreachable; returns the one-line message.
async fn refused(t: Arc<dyn Transport>) -> anyhow::Result<(String, TransportError)> {
    match tokio::time::timeout(Duration::from_secs(20), Session::open_with(t, config())).await {
        Err(_) => bail!("opening did not fail within 20 s"),
        Ok(Ok(_)) => bail!("opened a session, expected a refusal"),
        Ok(Err(SessionError::Transport(e @ TransportError::Unreachable { .. }))) => {
            let msg = e.to_string();
            ensure!(!msg.contains('\n'), "not one line: {msg:?}");
            println!("    refused as expected: {msg}");
            Ok((msg, e))
        }
        Ok(Err(other)) => bail!("expected Unreachable, got {other:?}"),
    }
}

/// With the engine's CA and a client certificate it trusts: a session
/// that keeps its state, binary-safe output, and native files, all over TLS.
pub(crate) async fn tls_engine_with_a_trusted_client_certificate(env: Env) -> anyhow::Result<()> {
    let t = tls(&env)?;
    let transport = transport(t, &t.certs)?;
    let mut s = Session::open_with(transport.clone(), config()).await?;
    ok(&mut s, "cd /tmp; export V=tls").await?;
    let out = ok(&mut s, "echo \"$V $PWD $(hostname)\"").await?;
    ensure!(out.starts_with("tls /tmp "), "{out:?}");
    let out = ok(&mut s, "printf '\\001\\002abc'; echo def").await?;
    ensure!(out == "abcdef", "{out:?}");
    // Output over many TLS records.
    let out = ok(
        &mut s,
        "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done",
    )
    .await?;
    ensure!(
        out.lines().count() == 3000 && out.ends_with("line-2999"),
        "{} lines",
        out.lines().count()
    );
    let r = s
        .run("sleep 30", RunOptions::timeout(Duration::from_millis(500)))
        .await?;
    ensure!(r.timed_out && !r.session_lost, "{r:?}");
    ok(&mut s, "true").await?;
    s.close().await?;
    let files = transport.files().context("no native files")?;
    let path = format!("/tmp/execkit-tls-{}.bin", std::process::id());
    let bytes: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    execkit_core::raw::write_file(&*files, &path, &bytes).await?;
    ensure!(
        execkit_core::raw::read_file(&*files, &path).await? == bytes,
        "read back over TLS"
    );
    Ok(())
}

/// The engine's certificate checked against another CA: refused before a
/// byte of the API is sent, naming the CA file.
pub(crate) async fn tls_engine_not_trusted_by_a_wrong_ca(env: Env) -> anyhow::Result<()> {
    let t = tls(&env)?;
    let (msg, e) = refused(transport(t, &t.wrong)?).await?;
    let ca = t.wrong.join("ca.pem");
    ensure!(
        msg.contains("not trusted by the CA at") && msg.contains(&*ca.to_string_lossy()),
        "{msg}"
    );
    ensure!(msg.contains(&t.addr), "{msg}");
    ensure!(std::error::Error::source(&e).is_some(), "no source: {e:?}");
    Ok(())
}

/// No client certificate: the engine (`--tlsverify`) refuses, and the
/// error says none was presented and where it was looked for.
pub(crate) async fn tls_engine_refuses_no_client_certificate(env: Env) -> anyhow::Result<()> {
    let t = tls(&env)?;
    let dir = Dir::new("nocert")?;
    copy(&t.certs, &dir.0, &[("ca.pem", "ca.pem")])?;
    let (msg, e) = refused(transport(t, &dir.0)?).await?;
    ensure!(
        e.kind() == ErrorKind::PermissionDenied,
        "{:?}: {msg}",
        e.kind()
    );
    ensure!(
        msg.contains("none was presented") && msg.contains(&*dir.0.to_string_lossy()),
        "{msg}"
    );
    Ok(())
}

/// A client certificate of another CA: the engine refuses it, and the
/// error names the certificate.
pub(crate) async fn tls_engine_refuses_a_client_certificate_of_another_ca(
    env: Env,
) -> anyhow::Result<()> {
    let t = tls(&env)?;
    let dir = Dir::new("stranger")?;
    copy(&t.certs, &dir.0, &[("ca.pem", "ca.pem")])?;
    copy(
        &t.wrong,
        &dir.0,
        &[("cert.pem", "cert.pem"), ("key.pem", "key.pem")],
    )?;
    let (msg, e) = refused(transport(t, &dir.0)?).await?;
    ensure!(
        e.kind() == ErrorKind::PermissionDenied,
        "{:?}: {msg}",
        e.kind()
    );
    let cert = dir.0.join("cert.pem");
    ensure!(
        msg.contains("refused our client certificate") && msg.contains(&*cert.to_string_lossy()),
        "{msg}"
    );
    Ok(())
}

/// Missing or unusable files are named with their path, before anything
/// is sent; plain HTTP to the TLS port says what to set.
pub(crate) async fn tls_files_that_are_missing_are_named(env: Env) -> anyhow::Result<()> {
    let t = tls(&env)?;
    let dir = Dir::new("missing")?;
    let (msg, _) = refused(transport(t, &dir.0)?).await?;
    let ca = dir.0.join("ca.pem");
    ensure!(
        msg.contains(&*ca.to_string_lossy()) && msg.contains("no such file"),
        "{msg}"
    );
    copy(
        &t.certs,
        &dir.0,
        &[("ca.pem", "ca.pem"), ("cert.pem", "cert.pem")],
    )?;
    let (msg, _) = refused(transport(t, &dir.0)?).await?;
    let key = dir.0.join("key.pem");
    ensure!(
        msg.contains(&*key.to_string_lossy()) && msg.contains("missing"),
        "{msg}"
    );
    std::fs::write(&key, "not a key\n")?;
    let (msg, _) = refused(transport(t, &dir.0)?).await?;
    ensure!(msg.contains(&*key.to_string_lossy()), "{msg}");
    std::fs::write(&ca, "not a certificate\n")?;
    let (msg, _) = refused(transport(t, &dir.0)?).await?;
    ensure!(
        msg.contains(&*ca.to_string_lossy()) && msg.contains("no certificate"),
        "{msg}"
    );
    // Plain HTTP to the TLS port.
    let plain: Arc<dyn Transport> = Arc::new(DockerTransport::with_endpoint(
        &format!("docker://{}/{}", t.addr, t.container),
        &t.container,
        Endpoint::Tcp(t.addr.clone()),
    )?);
    let (msg, _) = refused(plain).await?;
    ensure!(msg.contains("DOCKER_TLS_VERIFY"), "{msg}");
    Ok(())
}

// ------------------------------------------------ the environment's way

/// Variables a child starts with cleared (and `DOCKER_CONFIG` pointed at
/// an empty directory unless a case sets it): a developer's own Docker
/// set-up must not leak into a case.
const DOCKER_VARS: &[&str] = &[
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_TLS_VERIFY",
    "DOCKER_TLS",
    "DOCKER_CERT_PATH",
    "DOCKER_CONFIG",
];

/// The child's part (`EXECKIT_DOCKER_TEST_CHILD=TARGET`): opens TARGET,
/// runs `echo child-$((6*7))`, prints `OK <output>` or `ERR <kind> <error>`.
pub(crate) fn child_main(target: &str) -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let line = rt.block_on(async {
        let mut s = match Session::open(target, config()).await {
            Ok(s) => s,
            Err(SessionError::Transport(e)) => return format!("ERR {} {e}", e.kind().as_str()),
            Err(e) => return format!("ERR other {e}"),
        };
        let line = match s
            .run(
                "echo child-$((6*7))",
                RunOptions::timeout(Duration::from_secs(30)),
            )
            .await
        {
            Ok(r) => format!("OK {}", r.output),
            Err(e) => format!("ERR run {e}"),
        };
        let _ = s.close().await;
        line
    });
    println!("{line}");
    std::process::ExitCode::SUCCESS
}

/// Runs this binary as a child opening `target` with the Docker variables
/// `vars` (and no others); `Ok(output)` or `Err("KIND message")`.
async fn child(
    target: &str,
    vars: &[(&str, &Path)],
    strs: &[(&str, &str)],
    empty_config: &Path,
) -> anyhow::Result<Result<String, String>> {
    let mut c = tokio::process::Command::new(std::env::current_exe()?);
    c.env("EXECKIT_DOCKER_TEST_CHILD", target)
        .stdin(std::process::Stdio::null());
    for v in DOCKER_VARS {
        c.env_remove(v);
    }
    c.env("DOCKER_CONFIG", empty_config);
    for (k, v) in vars {
        c.env(k, v);
    }
    for (k, v) in strs {
        c.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .context("the child did not finish within 60 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("OK ") || l.starts_with("ERR "))
        .with_context(|| {
            format!(
                "no result from the child: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    Ok(match line.strip_prefix("OK ") {
        Some(o) => Ok(o.to_string()),
        None => Err(line["ERR ".len()..].to_string()),
    })
}

fn expect_ok(what: &str, r: Result<String, String>) -> anyhow::Result<()> {
    match r {
        Ok(o) if o == "child-42" => Ok(()),
        Ok(o) => bail!("{what}: ran, but printed {o:?}"),
        Err(e) => bail!("{what}: {e}"),
    }
}

fn expect_err(what: &str, r: Result<String, String>) -> anyhow::Result<String> {
    match r {
        Ok(o) => bail!("{what}: opened and printed {o:?}, expected an error"),
        Err(e) => {
            println!("    {what}: refused as expected: {e}");
            Ok(e)
        }
    }
}

/// `DOCKER_HOST=tcp://…` with `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`
/// (or the config directory as the cert path), and `docker://HOST:PORT/…`
/// with the same variables: TLS, as the docker CLI does it.
pub(crate) async fn tls_from_docker_host_and_cert_path(env: Env) -> anyhow::Result<()> {
    let t = tls(&env)?;
    let empty = Dir::new("empty-config")?;
    let host = format!("tcp://{}", t.addr);
    let target = format!("docker:{}", t.container);
    let r = child(
        &target,
        &[("DOCKER_CERT_PATH", &t.certs)],
        &[("DOCKER_HOST", &host), ("DOCKER_TLS_VERIFY", "1")],
        &empty.0,
    )
    .await?;
    expect_ok("DOCKER_HOST + DOCKER_TLS_VERIFY + DOCKER_CERT_PATH", r)?;
    // Without DOCKER_CERT_PATH the files are looked for in DOCKER_CONFIG.
    let cfg = Dir::new("cert-config")?;
    copy(&t.certs, &cfg.0, ALL)?;
    let r = child(
        &target,
        &[("DOCKER_CONFIG", &cfg.0)],
        &[("DOCKER_HOST", &host), ("DOCKER_TLS_VERIFY", "1")],
        &empty.0,
    )
    .await?;
    expect_ok("the certificates in DOCKER_CONFIG", r)?;
    // `docker -H tcp://… --tlsverify`: the explicit form takes the variables.
    let r = child(
        &format!("docker://{}/{}", t.addr, t.container),
        &[("DOCKER_CERT_PATH", &t.certs)],
        &[("DOCKER_TLS_VERIFY", "1")],
        &empty.0,
    )
    .await?;
    expect_ok("docker://HOST:PORT/NAME with DOCKER_TLS_VERIFY", r)?;
    // Without DOCKER_TLS_VERIFY: plain HTTP, and the error says what to set.
    let r = child(&target, &[], &[("DOCKER_HOST", &host)], &empty.0).await?;
    let e = expect_err("DOCKER_HOST without DOCKER_TLS_VERIFY", r)?;
    ensure!(e.contains("DOCKER_TLS_VERIFY"), "{e}");
    // TLS that verifies nothing is refused.
    let r = child(
        &target,
        &[("DOCKER_CERT_PATH", &t.certs)],
        &[("DOCKER_HOST", &host), ("DOCKER_TLS", "1")],
        &empty.0,
    )
    .await?;
    let e = expect_err("DOCKER_TLS without DOCKER_TLS_VERIFY", r)?;
    ensure!(
        e.starts_with("invalid_target") && e.contains("refused"),
        "{e}"
    );
    // The wrong CA through the environment: the file is named.
    let r = child(
        &target,
        &[("DOCKER_CERT_PATH", &t.wrong)],
        &[("DOCKER_HOST", &host), ("DOCKER_TLS_VERIFY", "1")],
        &empty.0,
    )
    .await?;
    let e = expect_err("DOCKER_CERT_PATH of a wrong CA", r)?;
    ensure!(
        e.contains(&*t.wrong.join("ca.pem").to_string_lossy()),
        "{e}"
    );
    Ok(())
}

/// `sha256` of the context names below, as `printf NAME | sha256sum`
/// prints them: the directory names `docker context create` uses.
const TLS_CONTEXT: (&str, &str) = (
    "execkit-tls",
    "fc08fc84c36c3abab78631e43ca11ae6c21b941b16e562983f6b6185f738879f",
);
const SKIP_CONTEXT: (&str, &str) = (
    "execkit-skip",
    "176ff07d50ead45e9350270d8a485fc24690e00f096e2c2c4f86567b83018400",
);
const WRONG_CONTEXT: (&str, &str) = (
    "execkit-wrong",
    "ea0004cdc5937ab31258b04844805394e26a8152deb90cdd501c2a2b393107bb",
);

/// Writes a context as `docker context create NAME --docker
/// host=HOST,ca=…,cert=…,key=…` does: its meta file and, with `certs`,
/// its TLS directory. Returns the meta file.
fn write_context(
    cfg: &Path,
    (name, id): (&str, &str),
    host: &str,
    skip_verify: bool,
    certs: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let meta = cfg.join("contexts/meta").join(id);
    std::fs::create_dir_all(&meta)?;
    let json = serde_json::json!({
        "Name": name,
        "Metadata": {"Description": "execkit test"},
        "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": skip_verify}},
    });
    std::fs::write(meta.join("meta.json"), json.to_string())?;
    if let Some(certs) = certs {
        copy(
            certs,
            &cfg.join("contexts/tls").join(id).join("docker"),
            ALL,
        )?;
    }
    Ok(meta.join("meta.json"))
}

/// A Docker context pointing at the TLS engine, chosen by `DOCKER_CONTEXT`,
/// by `currentContext` in config.json and by the target's `?context=`;
/// `DOCKER_HOST` wins over the first two (the docker CLI's order) but not
/// over the target's own; a context that skips verification is refused
/// and a wrong CA names the context's file.
pub(crate) async fn contexts_select_the_tls_engine(env: Env) -> anyhow::Result<()> {
    let t = tls(&env)?;
    let cfg = Dir::new("contexts")?;
    let host = format!("tcp://{}", t.addr);
    write_context(&cfg.0, TLS_CONTEXT, &host, false, Some(&t.certs))?;
    let skip_meta = write_context(&cfg.0, SKIP_CONTEXT, &host, true, None)?;
    let wrong_meta = write_context(&cfg.0, WRONG_CONTEXT, &host, false, Some(&t.wrong))?;
    let target = format!("docker:{}", t.container);
    let with_cfg: &[(&str, &Path)] = &[("DOCKER_CONFIG", &cfg.0)];
    // The plain engine (the one DOCKER_HOST names in these tests) has no
    // container of the TLS engine's name: reaching it proves the context
    // was used.
    let plain_host = std::env::var("DOCKER_HOST").unwrap_or_default();

    let r = child(
        &target,
        with_cfg,
        &[("DOCKER_CONTEXT", TLS_CONTEXT.0)],
        &cfg.0,
    )
    .await?;
    expect_ok("DOCKER_CONTEXT", r)?;

    std::fs::write(
        cfg.0.join("config.json"),
        serde_json::json!({"currentContext": TLS_CONTEXT.0}).to_string(),
    )?;
    let r = child(&target, with_cfg, &[], &cfg.0).await?;
    expect_ok("currentContext in config.json", r)?;

    let explicit = format!("docker:///{}?context={}", t.container, TLS_CONTEXT.0);
    if !plain_host.is_empty() {
        let r = child(&target, with_cfg, &[("DOCKER_HOST", &plain_host)], &cfg.0).await?;
        let e = expect_err("DOCKER_HOST over currentContext", r)?;
        ensure!(e.starts_with("not_found"), "DOCKER_HOST must win: {e}");
        let r = child(
            &target,
            with_cfg,
            &[
                ("DOCKER_HOST", &plain_host),
                ("DOCKER_CONTEXT", TLS_CONTEXT.0),
            ],
            &cfg.0,
        )
        .await?;
        let e = expect_err("DOCKER_HOST over DOCKER_CONTEXT", r)?;
        ensure!(e.starts_with("not_found"), "DOCKER_HOST must win: {e}");
        let r = child(&explicit, with_cfg, &[("DOCKER_HOST", &plain_host)], &cfg.0).await?;
        expect_ok("?context= over DOCKER_HOST", r)?;
    }
    std::fs::remove_file(cfg.0.join("config.json"))?;
    let r = child(&explicit, with_cfg, &[], &cfg.0).await?;
    expect_ok("docker:///NAME?context=CTX", r)?;

    let r = child(
        &target,
        with_cfg,
        &[("DOCKER_CONTEXT", SKIP_CONTEXT.0)],
        &cfg.0,
    )
    .await?;
    let e = expect_err("SkipTLSVerify", r)?;
    ensure!(
        e.contains("SkipTLSVerify") && e.contains(&*skip_meta.to_string_lossy()),
        "{e}"
    );
    let r = child(
        &target,
        with_cfg,
        &[("DOCKER_CONTEXT", WRONG_CONTEXT.0)],
        &cfg.0,
    )
    .await?;
    let e = expect_err("a context with a wrong CA", r)?;
    let wrong_ca = cfg
        .0
        .join("contexts/tls")
        .join(WRONG_CONTEXT.1)
        .join("docker/ca.pem");
    ensure!(
        e.contains(&*wrong_meta.to_string_lossy())
            && e.contains(&*wrong_ca.to_string_lossy())
            && e.contains("`execkit-wrong`"),
        "{e}"
    );
    let r = child(
        &target,
        with_cfg,
        &[("DOCKER_CONTEXT", "execkit-none")],
        &cfg.0,
    )
    .await?;
    let e = expect_err("a context that does not exist", r)?;
    ensure!(
        e.starts_with("invalid_target") && e.contains("`execkit-none`") && e.contains("meta.json"),
        "{e}"
    );
    Ok(())
}

/// Opens each connection to the plain engine's Unix socket itself and
/// counts them: the hook an `ssh://` engine will use.
struct CountingConnector {
    socket: PathBuf,
    opened: std::sync::atomic::AtomicUsize,
}

impl execkit_docker::EngineConnector for CountingConnector {
    fn connect(&self) -> execkit_docker::ConnectFuture<'_> {
        Box::pin(async move {
            self.opened
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let s = tokio::net::UnixStream::connect(&self.socket).await?;
            Ok(Box::new(s) as Box<dyn execkit_docker::EngineStream>)
        })
    }
}

/// An engine behind a connector of the caller's ([`Endpoint::Tunnel`]):
/// the API calls, the shell's stream and a file transfer all go through
/// it, and a connector that fails is reported with its name.
pub(crate) async fn a_tunnel_carries_every_connection(env: Env) -> anyhow::Result<()> {
    let socket = match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
        _ => PathBuf::from("/var/run/docker.sock"),
    };
    let connector = Arc::new(CountingConnector {
        socket,
        opened: 0.into(),
    });
    let tunnel = |connector: Arc<dyn execkit_docker::EngineConnector>| {
        Endpoint::Tunnel(execkit_docker::Tunnel {
            name: "ssh://tester@engine-host (test tunnel)".into(),
            connector,
        })
    };
    let transport: Arc<dyn Transport> = Arc::new(DockerTransport::with_endpoint(
        &format!("docker:{}", env.container),
        &env.container,
        tunnel(connector.clone()),
    )?);
    let mut s = Session::open_with(transport.clone(), config()).await?;
    ok(&mut s, "cd /tmp").await?;
    let out = ok(&mut s, "pwd").await?;
    ensure!(out == "/tmp", "{out:?}");
    s.close().await?;
    let files = transport.files().context("no native files")?;
    let path = format!("/tmp/execkit-tunnel-{}.txt", std::process::id());
    execkit_core::raw::write_file(&*files, &path, b"through the tunnel").await?;
    ensure!(execkit_core::raw::read_file(&*files, &path).await? == b"through the tunnel");
    let opened = connector.opened.load(std::sync::atomic::Ordering::SeqCst);
    // Inspect, exec create, start, resize, … — at least the shell's stream
    // and the transfer's.
    ensure!(
        opened >= 4,
        "only {opened} connections went through the tunnel"
    );

    struct Failing;
    impl execkit_docker::EngineConnector for Failing {
        fn connect(&self) -> execkit_docker::ConnectFuture<'_> {
            Box::pin(async {
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "the SSH server said no",
                ))
            })
        }
    }
    let failing: Arc<dyn Transport> = Arc::new(DockerTransport::with_endpoint(
        &format!("docker:{}", env.container),
        &env.container,
        Endpoint::Tunnel(execkit_docker::Tunnel {
            name: "ssh://tester@nowhere".into(),
            connector: Arc::new(Failing),
        }),
    )?);
    let (msg, e) = refused(failing).await?;
    ensure!(
        msg.contains("ssh://tester@nowhere") && msg.contains("the SSH server said no"),
        "{msg}"
    );
    ensure!(
        e.kind() == ErrorKind::ConnectionRefused,
        "{:?}: {msg}",
        e.kind()
    );
    Ok(())
}

/// The test sshd (`EXECKIT_TEST_SSH_URL`) and the socket of the plain
/// engine (`DOCKER_HOST`), for an engine reached over SSH.
fn ssh_and_socket() -> Option<(String, String)> {
    let url = std::env::var("EXECKIT_TEST_SSH_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let socket = match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => h["unix://".len()..].to_string(),
        Ok(h) if !h.is_empty() => return None,
        _ => "/var/run/docker.sock".to_string(),
    };
    Some((url, socket))
}

/// Why the SSH case cannot run.
pub(crate) fn needs_sshd(_: &Env) -> Option<&'static str> {
    ssh_and_socket()
        .is_none()
        .then_some("EXECKIT_TEST_SSH_URL and a plain engine on a Unix socket (cargo xtask test --transport all)")
}

/// `ssh://user@host:port/SOCKET?PARAMS` for the test sshd's `url`
/// (`ssh://user@host:port?PARAMS`).
fn over_ssh(url: &str, socket: &str) -> String {
    match url.split_once('?') {
        Some((a, q)) => format!("{a}{socket}?{q}"),
        None => format!("{url}{socket}"),
    }
}

/// Fails when `DOCKER_HOST=ssh://…` (old code: "not supported") does not
/// reach the engine through the test sshd — the API calls, the shell's
/// stream and the marker cleanup all over forwarded channels — or when
/// the sshd's host key is not checked; and the same through a Docker
/// context whose host is `ssh://…`, and through an `ssh_config` alias
/// behind the jump host.
pub(crate) async fn an_engine_over_ssh(env: Env) -> anyhow::Result<()> {
    let (url, socket) = ssh_and_socket().context("no sshd")?;
    let empty = Dir::new("over-ssh")?;
    let target = env.target();
    let host = over_ssh(&url, &socket);
    let r = child(&target, &[], &[("DOCKER_HOST", &host)], &empty.0).await?;
    expect_ok("DOCKER_HOST=ssh://…", r)?;

    // The sshd's key unknown: refused, and said why.
    let unknown = empty.0.join("no_known_hosts");
    std::fs::write(&unknown, "")?;
    let strict = format!(
        "{}&known_hosts={}",
        host.split("&known_hosts=").next().unwrap_or(&host),
        unknown.display()
    );
    let r = child(&target, &[], &[("DOCKER_HOST", &strict)], &empty.0).await?;
    let e = expect_err("an unknown sshd", r)?;
    ensure!(
        e.contains("is not in"),
        "the host key check must refuse: {e}"
    );
    ensure!(e.contains(&socket), "the error must name the engine: {e}");

    // A Docker context whose host is ssh://… (docker context create
    // NAME --docker host=ssh://…).
    let name = "execkit-over-ssh";
    let id = {
        let out = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().expect("stdin").write_all(name.as_bytes())?;
                c.wait_with_output()
            })?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .context("sha256sum")?
            .to_string()
    };
    let cfg = Dir::new("over-ssh-context")?;
    write_context(&cfg.0, (name, &id), &host, false, None)?;
    let r = child(
        &target,
        &[("DOCKER_CONFIG", &cfg.0)],
        &[("DOCKER_CONTEXT", name)],
        &cfg.0,
    )
    .await?;
    expect_ok("a context with an ssh:// host", r)?;

    // Through the jump host, by an ssh_config alias.
    if let Some(alias) = std::env::var("EXECKIT_TEST_SSH_ALIAS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        let r = child(
            &target,
            &[],
            &[("DOCKER_HOST", &over_ssh(&alias, &socket))],
            &empty.0,
        )
        .await?;
        expect_ok("DOCKER_HOST=ssh://ALIAS behind a jump host", r)?;
    }
    Ok(())
}
