//! Test infrastructure for the `ssh` transport: a private `sshd` on a free
//! loopback port with freshly generated host and user keys, its own config,
//! pidfile and known_hosts. Stopped by PID after the tests.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{apt_install, ci, Provision};

const SSHD: &str = "/usr/sbin/sshd";

/// The build of `execkit-ssh` needs OpenSSL headers (`ssh2` links the
/// system OpenSSL); install them when missing.
pub(crate) fn ensure_build_deps() -> Result<()> {
    let have_ssl = Path::new("/usr/include/openssl/ssl.h").exists();
    let have_pkg_config = which("pkg-config").is_some();
    let mut missing = Vec::new();
    if !have_ssl {
        missing.push("libssl-dev");
    }
    if !have_pkg_config {
        missing.push("pkg-config");
    }
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing {} with apt-get", missing.join(" "));
    match apt_install(&missing) {
        Ok(()) => Ok(()),
        Err(e) if ci() => Err(e.context("installing the build dependencies of execkit-ssh")),
        Err(e) => {
            eprintln!("xtask: warning: {e:#}; execkit-ssh may not build");
            Ok(())
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn keygen(path: &Path, kind: &str, comment: &str) -> Result<()> {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", comment, "-f"])
        .arg(path);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    run(&mut cmd)
}

fn user_name() -> Result<String> {
    let out = Command::new("id")
        .arg("-un")
        .output()
        .context("running id -un")?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || name.is_empty() {
        bail!("cannot tell the current user name");
    }
    Ok(name)
}

/// The sshd_config for a test daemon. Key-only auth, loopback only.
/// Forwarding is local only (`-L`, `-W`, streamlocal): what a jump host
/// and a Docker engine reached over SSH need — OpenSSH's sshd refuses
/// forwarded Unix sockets, too, under `AllowTcpForwarding no`.
/// `SHLVL=1` keeps Debian's bash from sourcing the test user's ~/.bashrc
/// for every channel (it does so when SSH_CLIENT is set and SHLVL < 2): a
/// developer's rc file (pyenv init, say) must not make the tests slow or
/// nondeterministic.
pub(crate) fn sshd_config(dir: &Path, port: u16, pidfile: &Path, authorized: &Path) -> String {
    let d = dir.display();
    format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {d}/host_ed25519\n\
         HostKey {d}/host_rsa\n\
         PidFile {}\n\
         AuthorizedKeysFile {}\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         UsePAM no\n\
         StrictModes no\n\
         PermitRootLogin prohibit-password\n\
         X11Forwarding no\n\
         AllowAgentForwarding no\n\
         AllowTcpForwarding local\n\
         AllowStreamLocalForwarding local\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         UseDNS no\n\
         SetEnv SHLVL=1\n\
         MaxStartups 100:30:200\n\
         LogLevel ERROR\n",
        pidfile.display(),
        authorized.display()
    )
}

/// Starts `sshd -D -e -f CONFIG` and waits until its port accepts.
pub(crate) fn start_sshd(config: &Path, port: u16, log: &Path) -> Result<Child> {
    let _ = std::fs::create_dir_all("/run/sshd");
    run(Command::new(SSHD).arg("-t").arg("-f").arg(config)).context("checking the sshd config")?;
    let log_file = std::fs::File::create(log)?;
    let mut child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("starting sshd")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            bail!("sshd exited with {st}: {}", text.trim());
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            stop(&mut child);
            bail!("sshd did not accept connections on 127.0.0.1:{port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops a daemon we started, by its PID: SIGTERM, then SIGKILL.
pub(crate) fn stop(child: &mut Child) {
    let pid = child.id().to_string();
    let _ = Command::new("kill")
        .args(["-TERM", &pid])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Users whose login shell is not sh-like, for the cases that check a
/// session starts under any login shell (sshd runs every channel's command
/// as `$SHELL -c …`): `execkit-fish` (fish), `execkit-slowrc` (tcsh whose
/// `~/.tcshrc` sleeps 8 s, as a slow rc file would) and `execkit-nproc`
/// (tcsh limiting the user to 16 processes, so a command can leave the
/// clean-up no process to run in). Created once, as root only (the test
/// sshd accepts the test key for every user); their names go to the tests
/// as `EXECKIT_TEST_SSH_FISH_USER` / `_SLOWRC_USER` / `_NPROC_USER`.
fn login_shell_users() -> Result<Vec<(String, String)>> {
    if !crate::nix_is_root() {
        bail!("not root: cannot create test users");
    }
    let missing: Vec<&str> = [("fish", "/usr/bin/fish"), ("tcsh", "/usr/bin/tcsh")]
        .into_iter()
        .filter(|(_, p)| !Path::new(p).exists())
        .map(|(pkg, _)| pkg)
        .collect();
    if !missing.is_empty() {
        println!("xtask: installing {} with apt-get", missing.join(" "));
        apt_install(&missing)?;
    }
    let mut env = Vec::new();
    for (user, shell, rc, text, var) in [
        (
            "execkit-fish",
            "/usr/bin/fish",
            ".config/fish/config.fish",
            "",
            "EXECKIT_TEST_SSH_FISH_USER",
        ),
        (
            "execkit-slowrc",
            "/usr/bin/tcsh",
            ".tcshrc",
            "sleep 8\n",
            "EXECKIT_TEST_SSH_SLOWRC_USER",
        ),
        (
            "execkit-nproc",
            "/usr/bin/tcsh",
            ".tcshrc",
            "limit maxproc 16\n",
            "EXECKIT_TEST_SSH_NPROC_USER",
        ),
    ] {
        let home = PathBuf::from("/home").join(user);
        let exists = Command::new("id")
            .arg(user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            run(Command::new("useradd")
                .args(["--create-home", "--shell", shell, "--home-dir"])
                .arg(&home)
                .arg(user))?;
        }
        // A locked account ("!") is refused by sshd even with a key.
        run(Command::new("usermod").args(["--password", "*", user]))?;
        let rc = home.join(rc);
        std::fs::create_dir_all(rc.parent().expect("rc file has a parent"))?;
        std::fs::write(&rc, text)?;
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:"))
            .arg(&home))?;
        env.push((var.to_string(), user.to_string()));
    }
    Ok(env)
}

/// The test user keys of `dir` as an `authorized_keys` file: the directory
/// holding it (removed at teardown) and its path. sshd reads a user's keys
/// as that user: outside the checkout, whose directory may be private (a
/// `mktemp -d` clone), so the login-shell test users can read them too.
fn authorized_keys(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let mut authorized = String::new();
    for k in ["user_ed25519.pub", "user_rsa.pub", "user_enc_ed25519.pub"] {
        authorized.push_str(&std::fs::read_to_string(dir.join(k))?);
    }
    let keys_dir = std::env::temp_dir().join(format!("execkit-sshd-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&keys_dir);
    std::fs::create_dir_all(&keys_dir)?;
    std::fs::set_permissions(&keys_dir, PermissionsExt::from_mode(0o755))?;
    let path = keys_dir.join("authorized_keys");
    std::fs::write(&path, authorized)?;
    std::fs::set_permissions(&path, PermissionsExt::from_mode(0o644))?;
    Ok((keys_dir, path))
}

/// `known_hosts` lines naming the public host keys `keys` (files in
/// `dir`) for `[127.0.0.1]:port`.
fn known_hosts_lines(dir: &Path, port: u16, keys: &[&str]) -> Result<String> {
    let mut known = String::new();
    for k in keys {
        let pubkey = std::fs::read_to_string(dir.join(k))?;
        let mut fields = pubkey.split_whitespace();
        let (Some(alg), Some(key)) = (fields.next(), fields.next()) else {
            bail!("unexpected public key format in {k}");
        };
        known.push_str(&format!("[127.0.0.1]:{port} {alg} {key}\n"));
    }
    Ok(known)
}

/// The passphrase of the encrypted test key (`EXECKIT_TEST_SSH_ENC_PASS`).
const ENC_PASSPHRASE: &str = "execkit test passphrase";

/// The jump host: a second sshd on its own port with its own host key and
/// the same authorized keys (local forwarding, what `ProxyJump` needs, is
/// on in both). Its known_hosts line is in a file of its own, so a test can
/// leave it out.
fn start_jump_host(dir: &Path, authorized: &Path) -> Result<(Child, u16, PathBuf)> {
    let port = crate::daemon_port()?;
    let config = dir.join("jump_sshd_config");
    let text = sshd_config(dir, port, &dir.join("jump_sshd.pid"), authorized).replace(
        &format!(
            "HostKey {d}/host_ed25519\nHostKey {d}/host_rsa\n",
            d = dir.display()
        ),
        &format!("HostKey {}/jump_host_ed25519\n", dir.display()),
    );
    std::fs::write(&config, text)?;
    let child = start_sshd(&config, port, &dir.join("jump_sshd.log"))?;
    let known = dir.join("jump_known_hosts");
    std::fs::write(
        &known,
        known_hosts_lines(dir, port, &["jump_host_ed25519.pub"])?,
    )?;
    Ok((child, port, known))
}

/// An `ssh_config` naming the test sshd `execkit-target` behind the jump
/// host `execkit-jump`, the way a user's `~/.ssh/config` names hosts
/// behind a bastion; the conformance suite runs once more through it.
fn alias_config(dir: &Path, user: &str, port: u16, jump_port: u16) -> Result<PathBuf> {
    let d = dir.display();
    let text = format!(
        "# written by cargo xtask test\n\
         Host execkit-jump\n\
         \x20   HostName 127.0.0.1\n\
         \x20   Port {jump_port}\n\
         \n\
         Host execkit-target\n\
         \x20   HostName 127.0.0.1\n\
         \x20   Port {port}\n\
         \x20   ProxyJump execkit-jump\n\
         \n\
         Host execkit-*\n\
         \x20   User {user}\n\
         \x20   IdentityFile {d}/user_ed25519\n\
         \x20   IdentitiesOnly yes\n\
         \x20   UserKnownHostsFile {d}/known_hosts {d}/jump_known_hosts\n\
         \x20   StrictHostKeyChecking yes\n"
    );
    let path = dir.join("ssh_config");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Installs openssh-server if needed, makes keys, starts a private sshd
/// and tells the tests where it is.
pub(crate) fn provision(out_dir: &Path) -> Result<Provision> {
    if !Path::new(SSHD).exists() || which("ssh-keygen").is_none() {
        println!("xtask: installing openssh-server with apt-get");
        apt_install(&["openssh-server", "openssh-client"])?;
    }
    if !Path::new(SSHD).exists() {
        bail!("{SSHD} is missing after installing openssh-server");
    }
    // Per run: concurrent `cargo xtask test` runs must not swap keys.
    let dir = out_dir.join(format!("sshd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    for (name, kind) in [
        ("host_ed25519", "ed25519"),
        ("host_rsa", "rsa"),
        ("user_ed25519", "ed25519"),
        ("user_rsa", "rsa"),
        ("wrong_ed25519", "ed25519"),
        ("jump_host_ed25519", "ed25519"),
    ] {
        keygen(&dir.join(name), kind, &format!("execkit-test-{name}"))?;
    }
    // An encrypted user key: its passphrase reaches the tests in an
    // environment variable they name with `passphrase_env=`.
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", ENC_PASSPHRASE, "-C"])
        .arg("execkit-test-encrypted")
        .arg("-f")
        .arg(dir.join("user_enc_ed25519")))?;
    let (keys_dir, authorized_path) = authorized_keys(&dir)?;
    let port = crate::daemon_port()?;
    let pidfile = dir.join("sshd.pid");
    let config = dir.join("sshd_config");
    std::fs::write(&config, sshd_config(&dir, port, &pidfile, &authorized_path))?;
    let known_hosts = dir.join("known_hosts");
    std::fs::write(
        &known_hosts,
        known_hosts_lines(&dir, port, &["host_ed25519.pub", "host_rsa.pub"])?,
    )?;

    let child = start_sshd(&config, port, &dir.join("sshd.log"))?;
    let pid = child.id();
    println!("xtask: sshd (pid {pid}) listening on 127.0.0.1:{port}");
    let mut child = child;
    let (jump, jump_port, jump_known) = match start_jump_host(&dir, &authorized_path) {
        Ok(j) => j,
        Err(e) => {
            stop(&mut child);
            return Err(e.context("starting the jump host's sshd"));
        }
    };
    let jump_pid = jump.id();
    println!("xtask: jump host sshd (pid {jump_pid}) listening on 127.0.0.1:{jump_port}");
    let user = user_name()?;
    let ssh_config = alias_config(&dir, &user, port, jump_port)?;
    let url = format!(
        "ssh://{user}@127.0.0.1:{port}?identity={}&known_hosts={}",
        dir.join("user_ed25519").display(),
        known_hosts.display()
    );
    let env = vec![
        ("EXECKIT_TEST_SSH_URL".to_string(), url),
        (
            "EXECKIT_TEST_SSH_DIR".to_string(),
            dir.display().to_string(),
        ),
        (
            "EXECKIT_TEST_SSH_RSA_KEY".to_string(),
            dir.join("user_rsa").display().to_string(),
        ),
        (
            "EXECKIT_TEST_SSH_WRONG_KEY".to_string(),
            dir.join("wrong_ed25519").display().to_string(),
        ),
        (
            "EXECKIT_TEST_SSH_CONFIG".to_string(),
            config.display().to_string(),
        ),
        ("EXECKIT_TEST_SSH_JUMP_PORT".into(), jump_port.to_string()),
        (
            "EXECKIT_TEST_SSH_JUMP_KNOWN_HOSTS".into(),
            jump_known.display().to_string(),
        ),
        (
            "EXECKIT_TEST_SSH_ALIAS_URL".into(),
            format!("ssh://execkit-target?config={}", ssh_config.display()),
        ),
        (
            "EXECKIT_TEST_SSH_ENC_KEY".into(),
            dir.join("user_enc_ed25519").display().to_string(),
        ),
        ("EXECKIT_TEST_SSH_ENC_PASS".into(), ENC_PASSPHRASE.into()),
    ];
    let mut env = env;
    match login_shell_users() {
        Ok(users) => env.extend(users),
        Err(e) if ci() => {
            let mut jump = jump;
            stop(&mut jump);
            stop(&mut child);
            return Err(e.context("creating the login-shell test users"));
        }
        Err(e) => eprintln!("xtask: warning: {e:#}; the login-shell cases will be skipped"),
    }
    let mut jump = jump;
    let dir = dir.clone();
    Ok(Provision {
        env,
        teardown: Some(Box::new(move || {
            stop(&mut jump);
            println!("xtask: jump host sshd (pid {jump_pid}) stopped");
            stop(&mut child);
            println!("xtask: sshd (pid {pid}) stopped");
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_dir_all(&keys_dir);
        })),
    })
}
