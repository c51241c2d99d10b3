//! Replays the committed corpus and every saved crash through the harnesses on stable Rust, so a
//! fixed bug stays fixed even where libFuzzer cannot run.

use std::fs;
use std::path::Path;

fn replay(target: &str, run: impl Fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let bytes = fs::read(&path).expect("corpus file");
            eprintln!("replaying {}", path.display());
            run(&bytes);
            n += 1;
        }
    }
    n
}

#[test]
fn desc_chain_corpus() {
    let n = replay("desc_chain", |b| {
        keel_fuzz::chain::run(b);
    });
    assert!(n > 0, "no desc_chain inputs found");
}

#[test]
fn vhost_frontend_corpus() {
    let n = replay("vhost_frontend", keel_fuzz::frontend::run);
    assert!(n > 0, "no vhost_frontend inputs found");
}

#[test]
fn container_corpus() {
    let n = replay("container", keel_fuzz::container::run);
    assert!(n > 0, "no container inputs found");
}

#[test]
fn nbd_server_corpus() {
    let n = replay("nbd_server", keel_fuzz::nbd::run_server);
    assert!(n > 0, "no nbd_server inputs found");
}

#[test]
fn nbd_reply_corpus() {
    let n = replay("nbd_reply", keel_fuzz::nbd::run_replies);
    assert!(n > 0, "no nbd_reply inputs found");
}
