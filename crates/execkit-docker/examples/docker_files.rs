//! Time of whole-file transfer through `Transport::files` (an exec of
//! `cat` in the container) next to `docker cp` (the engine's archive API),
//! 100 bytes, 10 MB and 100 MB each way, measured in the same run.
//!
//! `cargo run --release -p execkit-docker --example docker_files -- CONTAINER [ROUNDS]`
//! (the engine is `DOCKER_HOST`'s, else `/var/run/docker.sock`; files go to
//! the container's `/tmp`; `docker cp` needs the docker CLI).

use std::process::Command;
use std::time::Instant;

use execkit_core::raw::{FileTransfer, Transport, FILE_CHUNK};
use tokio::sync::mpsc;

/// Writes `total` bytes to `path`, the length given up front or not.
async fn write(files: &dyn FileTransfer, path: &str, total: usize, known: bool) -> f64 {
    let block: Vec<u8> = (0..FILE_CHUNK).map(|i| (i * 7 + i / 251) as u8).collect();
    let (tx, rx) = mpsc::channel(4);
    let t = Instant::now();
    let feed = async {
        let mut left = total;
        while left > 0 {
            let n = left.min(FILE_CHUNK);
            if tx.send(Ok(block[..n].to_vec())).await.is_err() {
                break;
            }
            left -= n;
        }
        drop(tx);
    };
    let (r, ()) = tokio::join!(files.write(path, known.then_some(total as u64), rx), feed);
    assert_eq!(r.expect("write"), total as u64);
    t.elapsed().as_secs_f64()
}

/// Reads `path` (`total` bytes long) and drops the bytes.
async fn read(files: &dyn FileTransfer, path: &str, total: usize) -> f64 {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let t = Instant::now();
    let sink = async {
        let mut n = 0;
        while let Some(c) = rx.recv().await {
            n += c.len();
        }
        n
    };
    let (r, n) = tokio::join!(files.read(path, tx), sink);
    assert_eq!(r.expect("read"), total as u64);
    assert_eq!(n, total);
    t.elapsed().as_secs_f64()
}

/// `docker cp ARGS…`, timed.
fn docker_cp(args: &[&str]) -> f64 {
    let t = Instant::now();
    let out = Command::new("docker")
        .arg("cp")
        .args(args)
        .output()
        .expect("docker cp");
    assert!(out.status.success(), "docker cp {args:?}: {out:?}");
    t.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let container = args.next().expect("usage: docker_files CONTAINER [ROUNDS]");
    let rounds: usize = args.next().map_or(3, |r| r.parse().expect("ROUNDS"));
    let transport =
        execkit_docker::DockerTransport::new(&format!("docker:{container}")).expect("target");
    let files = transport.files().expect("no native file transfer");
    let _ = write(&*files, "/tmp/execkit-files-warm", 10, true).await;
    // A small file: the fixed cost of one transfer (an exec made and started).
    for round in 0..rounds {
        let w = write(&*files, "/tmp/execkit-files-small", 100, true).await;
        let r = read(&*files, "/tmp/execkit-files-small", 100).await;
        println!(
            "100 B, round {round}: files() write {:.1} ms, read {:.1} ms",
            w * 1e3,
            r * 1e3
        );
    }
    let here = std::env::temp_dir().join(format!("execkit-files-{}", std::process::id()));
    std::fs::create_dir_all(&here).expect("temp dir");
    for mb in [10usize, 100] {
        let total = mb * 1_000_000;
        let path = format!("/tmp/execkit-files-{mb}");
        let local = here.join(format!("f{mb}"));
        std::fs::write(&local, vec![7u8; total]).expect("local file");
        let remote = format!("{container}:/tmp/execkit-cp-{mb}");
        let back = here.join(format!("back{mb}"));
        for round in 0..rounds {
            let w = write(&*files, &path, total, true).await;
            let wu = write(&*files, &path, total, false).await;
            let r = read(&*files, &path, total).await;
            let cw = docker_cp(&[local.to_str().unwrap(), &remote]);
            let cr = docker_cp(&[&remote, back.to_str().unwrap()]);
            println!(
                "{mb} MB, round {round}: files() write {w:.2} s (length unknown {wu:.2} s), \
                 read {r:.2} s; docker cp in {cw:.2} s, out {cr:.2} s"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&here);
    let _ = Command::new("docker")
        .args([
            "exec",
            &container,
            "sh",
            "-c",
            "rm -f /tmp/execkit-files-* /tmp/execkit-cp-*",
        ])
        .status();
}
