//! Test infrastructure of the `docker` transport: a Docker engine (reused if
//! one answers, else a `dockerd` of our own with vfs storage, no iptables,
//! no bridge, on a Unix socket plus a loopback TCP port), a tiny busybox
//! image made by `docker import` (no registry is reachable), and a test
//! container. Teardown removes the container and stops, by PID, only the
//! daemon we started.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Provision;

/// Tag of the test image.
const IMAGE: &str = "execkit-test-busybox:1";

/// What we started, to be undone in reverse.
#[derive(Default)]
struct Started {
    host: String,
    daemon: Option<Child>,
    dir: Option<PathBuf>,
    containers: Vec<String>,
}

impl Started {
    fn teardown(mut self) {
        for c in &self.containers {
            let _ = docker(&self.host, &["rm", "-f", "-v", c]);
        }
        if let Some(mut d) = self.daemon.take() {
            let pid = d.id();
            println!("xtask: stopping dockerd (pid {pid})");
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if !wait_exit(&mut d, Duration::from_secs(20)) {
                let _ = d.kill();
                let _ = d.wait();
            }
            // dockerd stops the containerd it started; if it could not
            // (killed), stop that one by its PID file.
            if let Some(dir) = &self.dir {
                let pidfile = dir.join("exec/containerd/containerd.pid");
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
            }
        }
        if let Some(dir) = self.dir.take() {
            if std::fs::remove_dir_all(&dir).is_err() {
                // vfs layers hold read-only dirs; a second pass after chmod.
                let _ = Command::new("chmod").args(["-R", "u+w"]).arg(&dir).status();
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
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

/// Starts our own dockerd; returns its Unix and TCP hosts.
fn start_daemon(started: &mut Started) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("execkit-dockerd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    started.dir = Some(dir.clone());
    let sock = dir.join("docker.sock");
    let port = crate::daemon_port()?;
    let host = format!("unix://{}", sock.display());
    let tcp = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("dockerd.log"))?;
    println!("xtask: starting dockerd (vfs, no iptables, no bridge) on {host} and tcp://{tcp}");
    let child = Command::new("dockerd")
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
        .arg("-H")
        .arg(format!("tcp://{tcp}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting dockerd")?;
    started.daemon = Some(child);
    started.host = host.clone();
    let t = Instant::now();
    loop {
        if answers(&host) {
            println!(
                "xtask: dockerd answers after {:.1} s",
                t.elapsed().as_secs_f64()
            );
            return Ok(tcp);
        }
        let exited = started
            .daemon
            .as_mut()
            .and_then(|d| d.try_wait().ok().flatten());
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
    if answers(&existing) {
        println!("xtask: reusing the Docker engine at {existing}");
        started.host = existing;
        // Its TCP side (if any) is unknown: the remote-engine test is skipped.
    } else {
        let tcp = start_daemon(started)?;
        env.push(("EXECKIT_TEST_DOCKER_TCP".to_string(), tcp));
    }
    let host = started.host.clone();
    std::fs::create_dir_all(out_dir)?;
    build_image(&host, out_dir)?;
    let name = format!("execkit-test-{}", std::process::id());
    let _ = docker(&host, &["rm", "-f", &name]);
    docker(
        &host,
        &[
            "run",
            "-d",
            "--init",
            "--network",
            "none",
            "--name",
            &name,
            IMAGE,
            "sleep",
            "infinity",
        ],
    )?;
    started.containers.push(name.clone());
    let probe = docker(&host, &["exec", &name, "sh", "-c", "echo ok"])?;
    if probe != "ok" {
        bail!("the test container does not run commands (got {probe:?})");
    }
    let _ = std::io::stdout().flush();
    env.push(("DOCKER_HOST".to_string(), host));
    env.push(("EXECKIT_TEST_DOCKER_CONTAINER".to_string(), name));
    env.push(("EXECKIT_TEST_DOCKER_IMAGE".to_string(), IMAGE.to_string()));
    Ok(env)
}
