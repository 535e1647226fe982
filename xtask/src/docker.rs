//! Test infrastructure of the `docker` transport: a Docker engine (reused if
//! one answers, else a `dockerd` of our own with vfs storage, no iptables,
//! no bridge, on a Unix socket plus a loopback TCP port), a tiny busybox
//! image made by `docker import` (no registry is reachable), and a test
//! container; then a second `dockerd` whose TCP port takes only TLS with a
//! client certificate (`--tlsverify`; certificates made here with the
//! `openssl` CLI, a wrong CA's too), with its own image and test container.
//! Teardown removes the containers and stops, by PID, only the daemons we
//! started.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Provision;

/// Tag of the test image.
const IMAGE: &str = "execkit-test-busybox:1";

/// A `dockerd` we started.
struct Daemon {
    child: Child,
    /// Its data, exec root, sockets and log: removed at teardown.
    dir: PathBuf,
}

/// What we started, to be undone in reverse.
#[derive(Default)]
struct Started {
    /// The engine the plain-socket tests use.
    host: String,
    /// In start order; stopped in reverse (the TLS daemon may use the
    /// first one's containerd).
    daemons: Vec<Daemon>,
    /// Containers as `(engine host, name)`.
    containers: Vec<(String, String)>,
    /// Scratch directories of ours (certificates).
    dirs: Vec<PathBuf>,
}

impl Started {
    fn teardown(mut self) {
        for (host, c) in &self.containers {
            let _ = docker(host, &["rm", "-f", "-v", c]);
        }
        while let Some(mut d) = self.daemons.pop() {
            let pid = d.child.id();
            println!("xtask: stopping dockerd (pid {pid})");
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if !wait_exit(&mut d.child, Duration::from_secs(20)) {
                let _ = d.child.kill();
                let _ = d.child.wait();
            }
            // dockerd stops the containerd it started; if it could not
            // (killed), stop that one by its PID file.
            let pidfile = d.dir.join("exec/containerd/containerd.pid");
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                if Path::new(&format!("/proc/{pid}")).exists()
                    && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "containerd")
                {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
            remove_tree(&d.dir);
        }
        for dir in self.dirs.drain(..) {
            remove_tree(&dir);
        }
    }
}

fn remove_tree(dir: &Path) {
    if std::fs::remove_dir_all(dir).is_err() {
        // vfs layers hold read-only dirs; a second pass after chmod.
        let _ = Command::new("chmod").args(["-R", "u+w"]).arg(dir).status();
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Runs the docker CLI against `host`; returns stdout.
fn docker(host: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .env("DOCKER_HOST", host)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "`docker {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether an engine answers at `host` (within a few seconds).
fn answers(host: &str) -> bool {
    let Ok(mut child) = Command::new("docker")
        .env("DOCKER_HOST", host)
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.success(),
            Ok(None) if t.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

fn package_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs docker.io and busybox-static when missing.
fn ensure_packages() -> Result<()> {
    let mut missing = Vec::new();
    if !on_path("docker") || !on_path("dockerd") {
        missing.push("docker.io");
    }
    if !package_installed("busybox-static") {
        missing.push("busybox-static");
    }
    if !missing.is_empty() {
        println!("xtask: installing {} with apt-get", missing.join(" "));
        crate::apt_install(&missing)?;
    }
    Ok(())
}

/// Starts a dockerd of ours (vfs, no iptables, no bridge) in a fresh
/// directory named `tag`, on a Unix socket there plus `extra` arguments
/// (its TCP listener); returns its Unix host and directory.
fn start_daemon(started: &mut Started, tag: &str, extra: &[String]) -> Result<(String, PathBuf)> {
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("docker.sock");
    let host = format!("unix://{}", sock.display());
    let log = std::fs::File::create(dir.join("dockerd.log"))?;
    println!(
        "xtask: starting dockerd (vfs, no iptables, no bridge) on {host} {}",
        extra.join(" ")
    );
    let spawned = Command::new("dockerd")
        .args([
            "--storage-driver=vfs",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--ip-masq=false",
        ])
        .arg(format!("--data-root={}", dir.join("data").display()))
        .arg(format!("--exec-root={}", dir.join("exec").display()))
        .arg(format!("--pidfile={}", dir.join("dockerd.pid").display()))
        .arg("-H")
        .arg(&host)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            remove_tree(&dir);
            return Err(e).context("starting dockerd");
        }
    };
    started.daemons.push(Daemon {
        child,
        dir: dir.clone(),
    });
    let t = Instant::now();
    loop {
        if answers(&host) {
            println!(
                "xtask: dockerd answers after {:.1} s",
                t.elapsed().as_secs_f64()
            );
            return Ok((host, dir));
        }
        let exited = started
            .daemons
            .last_mut()
            .and_then(|d| d.child.try_wait().ok().flatten());
        if exited.is_some() || t.elapsed() > Duration::from_secs(90) {
            let log = std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!(
                "dockerd {} ; its log ends:\n{}",
                if exited.is_some() {
                    "exited"
                } else {
                    "did not answer within 90 s"
                },
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `openssl ARGS` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running openssl (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "`openssl {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A P-256 key and a certificate signing request for `cn` in `dir`.
fn key_and_csr(dir: &Path, name: &str, cn: &str) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    )
}

/// A CA (`NAME-ca.pem`, `NAME-ca-key.pem`) in `dir`.
fn make_ca(dir: &Path, name: &str) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "7",
            "-keyout",
            &format!("{name}-ca-key.pem"),
            "-out",
            &format!("{name}-ca.pem"),
            "-subj",
            &format!("/CN=execkit test CA {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )
}

/// Signs `NAME.csr` with CA `ca` and the extensions `ext` into `NAME-cert.pem`.
fn sign(dir: &Path, name: &str, ca: &str, ext: &str, serial: u32) -> Result<()> {
    let ext_file = format!("{name}.ext");
    std::fs::write(dir.join(&ext_file), ext)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca-key.pem"),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "7",
            "-extfile",
            &ext_file,
            "-out",
            &format!("{name}-cert.pem"),
        ],
    )
}

/// Certificates for the TLS engine, made with the `openssl` CLI in `dir`:
/// `server/` (for dockerd: its CA, a certificate for 127.0.0.1 with an IP
/// SAN, its key), `client/` (the docker CLI's layout: `ca.pem`,
/// `cert.pem`, `key.pem`, a client certificate the engine trusts) and
/// `wrong/` (the same layout from another CA: the engine is not trusted
/// with its `ca.pem`, nor is its client certificate by the engine).
fn make_certs(dir: &Path) -> Result<()> {
    let work = dir.join("work");
    std::fs::create_dir_all(&work)?;
    make_ca(&work, "right")?;
    make_ca(&work, "wrong")?;
    key_and_csr(&work, "server", "127.0.0.1")?;
    sign(
        &work,
        "server",
        "right",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
        1,
    )?;
    for (name, ca, serial) in [("client", "right", 2), ("stranger", "wrong", 3)] {
        key_and_csr(&work, name, &format!("execkit {name}"))?;
        sign(
            &work,
            name,
            ca,
            "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
            serial,
        )?;
    }
    let place = |sub: &str, files: &[(&str, &str)]| -> Result<()> {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d)?;
        for (from, to) in files {
            std::fs::copy(work.join(from), d.join(to))
                .with_context(|| format!("copying {from}"))?;
        }
        Ok(())
    };
    place(
        "server",
        &[
            ("right-ca.pem", "ca.pem"),
            ("server-cert.pem", "cert.pem"),
            ("server-key.pem", "key.pem"),
        ],
    )?;
    place(
        "client",
        &[
            ("right-ca.pem", "ca.pem"),
            ("client-cert.pem", "cert.pem"),
            ("client-key.pem", "key.pem"),
        ],
    )?;
    place(
        "wrong",
        &[
            ("wrong-ca.pem", "ca.pem"),
            ("stranger-cert.pem", "cert.pem"),
            ("stranger-key.pem", "key.pem"),
        ],
    )?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// The second engine: a dockerd that listens on a loopback TCP port with
/// `--tlsverify` (only clients with a certificate of its CA get in), its
/// busybox image and a test container. It shares the first dockerd's
/// containerd (a namespace of its own) when we started that one.
fn provision_tls(
    out_dir: &Path,
    started: &mut Started,
    containerd: Option<PathBuf>,
) -> Result<Vec<(String, String)>> {
    let certs = std::env::temp_dir().join(format!("execkit-docker-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&certs);
    std::fs::create_dir_all(&certs)?;
    started.dirs.push(certs.clone());
    make_certs(&certs)?;
    let port = crate::daemon_port()?;
    let server = certs.join("server");
    let mut extra = vec![
        "-H".to_string(),
        format!("tcp://127.0.0.1:{port}"),
        "--tlsverify".to_string(),
        format!("--tlscacert={}", server.join("ca.pem").display()),
        format!("--tlscert={}", server.join("cert.pem").display()),
        format!("--tlskey={}", server.join("key.pem").display()),
    ];
    if let Some(sock) = containerd {
        extra.push(format!("--containerd={}", sock.display()));
        extra.push("--containerd-namespace=execkit-tls".into());
        extra.push("--containerd-plugins-namespace=execkit-tls-plugins".into());
    }
    let (host, _) = start_daemon(started, "execkit-dockerd-tls", &extra)?;
    build_image(&host, out_dir)?;
    let name = format!("execkit-test-tls-{}", std::process::id());
    start_container(started, &host, &name)?;
    Ok(vec![
        (
            "EXECKIT_TEST_DOCKER_TLS_HOST".into(),
            format!("tcp://127.0.0.1:{port}"),
        ),
        (
            "EXECKIT_TEST_DOCKER_TLS_CERTS".into(),
            certs.join("client").display().to_string(),
        ),
        (
            "EXECKIT_TEST_DOCKER_TLS_WRONG".into(),
            certs.join("wrong").display().to_string(),
        ),
        ("EXECKIT_TEST_DOCKER_TLS_CONTAINER".into(), name),
        ("EXECKIT_TEST_DOCKER_TLS_SOCKET".into(), host),
    ])
}

/// Runs the test container `name` (busybox, `--init`, no network) on
/// `host` and checks that it runs commands.
fn start_container(started: &mut Started, host: &str, name: &str) -> Result<()> {
    let _ = docker(host, &["rm", "-f", name]);
    docker(
        host,
        &[
            "run",
            "-d",
            "--init",
            "--network",
            "none",
            "--name",
            name,
            IMAGE,
            "sleep",
            "infinity",
        ],
    )?;
    started
        .containers
        .push((host.to_string(), name.to_string()));
    let probe = docker(host, &["exec", name, "sh", "-c", "echo ok"])?;
    if probe != "ok" {
        bail!("the test container {name} does not run commands (got {probe:?})");
    }
    Ok(())
}

/// Builds the busybox image from the host's static busybox.
fn build_image(host: &str, scratch: &Path) -> Result<()> {
    if docker(host, &["image", "inspect", "--format", "{{.Id}}", IMAGE]).is_ok() {
        return Ok(());
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox-static is not installed")?;
    let root = scratch.join("rootfs");
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "tmp", "proc", "sys", "dev", "etc", "root"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    Command::new("chmod")
        .arg("1777")
        .arg(root.join("tmp"))
        .status()?;
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    let list = Command::new(busybox).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    println!("xtask: building {IMAGE} by docker import of a busybox rootfs");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("running tar")?;
    let out = Command::new("docker")
        .env("DOCKER_HOST", host)
        .args(["import", "--change", "ENV PATH=/bin", "-", IMAGE])
        .stdin(tar.stdout.context("tar stdout")?)
        .output()
        .context("docker import")?;
    let _ = std::fs::remove_dir_all(&root);
    if !out.status.success() {
        bail!(
            "docker import failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Provisions the engine, image and test container.
pub fn provision(out_dir: &Path) -> Result<Provision> {
    ensure_packages()?;
    let mut started = Started::default();
    match provision_inner(out_dir, &mut started) {
        Ok(env) => Ok(Provision {
            env,
            teardown: Some(Box::new(move || started.teardown())),
        }),
        Err(e) => {
            started.teardown();
            Err(e)
        }
    }
}

fn provision_inner(out_dir: &Path, started: &mut Started) -> Result<Vec<(String, String)>> {
    let existing = std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    let mut env = Vec::new();
    let mut containerd = None;
    if answers(&existing) {
        println!("xtask: reusing the Docker engine at {existing}");
        started.host = existing;
        // Its TCP side (if any) is unknown: the remote-engine test is skipped.
    } else {
        let port = crate::daemon_port()?;
        let tcp = format!("127.0.0.1:{port}");
        let (host, dir) = start_daemon(
            started,
            "execkit-dockerd",
            &["-H".to_string(), format!("tcp://{tcp}")],
        )?;
        started.host = host;
        containerd = Some(dir.join("exec/containerd/containerd.sock")).filter(|s| s.exists());
        env.push(("EXECKIT_TEST_DOCKER_TCP".to_string(), tcp));
    }
    let host = started.host.clone();
    std::fs::create_dir_all(out_dir)?;
    build_image(&host, out_dir)?;
    let name = format!("execkit-test-{}", std::process::id());
    start_container(started, &host, &name)?;
    // The TLS engine: required under CI=true, else its tests are skipped.
    match provision_tls(out_dir, started, containerd) {
        Ok(tls) => env.extend(tls),
        Err(e) if !crate::ci() => {
            eprintln!("xtask: warning: no TLS Docker engine (its tests are skipped): {e:#}")
        }
        Err(e) => return Err(e.context("provisioning the TLS Docker engine")),
    }
    let _ = std::io::stdout().flush();
    env.push(("DOCKER_HOST".to_string(), host));
    env.push(("EXECKIT_TEST_DOCKER_CONTAINER".to_string(), name));
    env.push(("EXECKIT_TEST_DOCKER_IMAGE".to_string(), IMAGE.to_string()));
    Ok(env)
}
