//! Compression, end to end: compressible data written through keeld (keel-client as the
//! guest, default config, O_DIRECT) takes less room in the container than it maps, survives
//! kill -9 once flushed, and on a compressed and encrypted disk appears nowhere in the file;
//! a zstd container trains its dictionary, and fsck refuses it damaged;
//! a change of compression on an existing container is refused with the way to do it, and a
//! disk without the key serves its container as it was made.

use std::path::Path;
use std::time::Duration;

use keel_client::{Disk, DiskOptions, Queue};
use keel_tests::keeld::{InProcess, LoggedKeeld, run_expecting_failure, run_keel, wait_for_socket};

const MIB: usize = 1 << 20;
/// What the guest writes: text that would stand out in the container file.
const TEXT: &[u8] = b"KEEL-PLAINTEXT-CANARY the quick brown fox jumps over the lazy dog. ";

/// Compressible text, a counter at the start of every 4 KiB block keeping blocks distinct.
fn text(len: usize) -> Vec<u8> {
    let mut out: Vec<u8> = TEXT.iter().copied().cycle().take(len).collect();
    for (i, block) in out.chunks_mut(4096).enumerate() {
        block[..12].copy_from_slice(format!("{i:012}").as_bytes());
    }
    out
}

fn file_contains(file: &Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(file).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle)
}

fn write_all(q: &mut Queue, at: usize, data: &[u8]) {
    for (i, chunk) in data.chunks(256 << 10).enumerate() {
        q.write_slice((at + i * (256 << 10)) as u64, chunk).unwrap();
    }
}

fn read_all(q: &mut Queue, at: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for off in (0..len).step_by(256 << 10) {
        let n = (256 << 10).min(len - off);
        out.extend(q.read_vec((at + off) as u64, n).unwrap());
    }
    out
}

fn start(dir: &Path) -> (LoggedKeeld, Disk) {
    let keeld = LoggedKeeld::spawn(dir);
    assert!(
        wait_for_socket(&dir.join("c.sock"), Duration::from_secs(30)),
        "keeld did not start: {}",
        std::fs::read_to_string(dir.join("keeld.log")).unwrap_or_default()
    );
    let disk = Disk::connect(dir.join("c.sock"), &DiskOptions::default()).unwrap();
    (keeld, disk)
}

fn info_json(dir: &Path, key: &[&str]) -> serde_json::Value {
    let mut args = key.to_vec();
    args.extend(["info", "--json", "c.keel"]);
    let (code, out) = run_keel(dir, &args);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// One disk, compressed with `codec`, encrypted when `key` is given.
fn check_disk(codec: &str, key: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut table = format!(
        "[[disk]]\nname = \"c\"\nsocket = \"c.sock\"\nengine = \"keel\"\npath = \"c.keel\"\n\
         size = \"64M\"\ncompression = \"{codec}\"\n"
    );
    if key {
        let k: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(31).wrapping_add(5))
            .collect();
        std::fs::write(d.join("c.key"), k).unwrap();
        table.push_str("encryption = \"aes-xts-256\"\nkey_file = \"c.key\"\n");
    }
    std::fs::write(d.join("keel.toml"), &table).unwrap();
    let words = text(4 * MIB);
    let random = keel_tests::pattern(7, MIB);
    let (keeld, mut disk) = start(d);
    {
        let mut q = disk.take_queue(0).unwrap();
        write_all(&mut q, 0, &words);
        write_all(&mut q, 8 * MIB, &random);
        q.flush().unwrap();
        // Partial-block writes over packed blocks: read, modify, write again.
        q.write_slice(4096 + 512, &[0xee; 1024]).unwrap();
        q.flush().unwrap();
    }
    drop(disk);
    keeld.kill();
    let mut want = words.clone();
    want[4096 + 512..4096 + 1536].fill(0xee);
    let container = d.join("c.keel");
    if key {
        assert!(!file_contains(&container, &TEXT[..24]));
        assert!(!file_contains(&container, b"000000000001"));
    }

    // Everything flushed before the kill reads back.
    let (keeld, mut disk) = start(d);
    {
        let mut q = disk.take_queue(0).unwrap();
        assert!(read_all(&mut q, 0, want.len()) == want);
        assert!(read_all(&mut q, 8 * MIB, random.len()) == random);
        // More text: a zstd container that lost its dictionary's training to the kill
        // gathers its sample again and has it written by the time keeld stops.
        write_all(&mut q, 16 * MIB, &words[..2 * MIB]);
        q.flush().unwrap();
        assert!(read_all(&mut q, 16 * MIB, 2 * MIB) == words[..2 * MIB]);
    }
    drop(disk);
    assert!(keeld.terminate().success());

    let key_args: &[&str] = if key { &["--key-file", "c.key"] } else { &[] };
    let info = info_json(d, key_args);
    assert_eq!(info["compression"], codec, "{info}");
    let logical = info["data_bytes_logical"].as_u64().unwrap();
    let stored = info["data_bytes_stored"].as_u64().unwrap();
    assert_eq!(logical, (7 * MIB) as u64, "{info}");
    let dictionary = info["dictionary_bytes"].as_u64();
    if codec == "zstd" {
        assert!(dictionary.is_some_and(|n| n > 0 && n <= 32 << 10), "{info}");
    } else {
        assert_eq!(dictionary, None, "{info}");
    }
    // The text packs several blocks to one; the noise is stored as it is.
    assert!(stored < logical / 2, "{info}");
    assert!(stored >= MIB as u64, "{info}");
    assert!(info["compression_ratio"].as_f64().unwrap() > 2.0, "{info}");
    let mut args = key_args.to_vec();
    args.extend(["fsck", "c.keel"]);
    let (code, out) = run_keel(d, &args);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(", 0 problems"), "{out}");
    if codec == "zstd" {
        // A flipped bit in the dictionary (block 3 of the file): fsck names it and fails.
        let mut bytes = std::fs::read(&container).unwrap();
        bytes[3 * 4096 + 100] ^= 0x10;
        std::fs::write(&container, bytes).unwrap();
        let (code, out) = run_keel(d, &args);
        assert_ne!(code, 0, "{out}");
        assert!(out.contains("dictionary"), "{out}");
    }
}

#[test]
fn zstd_and_encrypted_packs_survives_kill9_and_keeps_no_plaintext() {
    check_disk("zstd", true);
}

#[test]
fn lz4_packs_and_survives_kill9() {
    check_disk("lz4", false);
}

#[test]
fn a_change_of_compression_is_refused_with_the_way_to_do_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, out) = run_keel(
        d,
        &["create", "--compression", "lz4", "--size", "16M", "p.keel"],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_keel(d, &["info", "p.keel"]);
    assert!(code == 0 && out.contains("lz4"), "{out}");
    let table = |setting: &str| {
        format!(
            "[[disk]]\nname = \"p\"\nsocket = \"p.sock\"\nengine = \"keel\"\n\
             path = \"{}\"\n{setting}",
            d.join("p.keel").display()
        )
    };
    for setting in ["compression = \"zstd\"\n", "compression = \"none\"\n"] {
        std::fs::write(d.join("p.toml"), table(setting)).unwrap();
        let (code, stderr) = run_expecting_failure(&d.join("p.toml"));
        assert_ne!(code, Some(0));
        assert!(
            stderr.contains("compressed with \"lz4\"") && stderr.contains("keel export"),
            "{stderr}"
        );
    }
    // Without the key the container is served as it was made, and stays lz4.
    let keeld = InProcess::start(&table(""));
    let data = text(64 * 1024);
    {
        let mut disk = Disk::connect(keeld.socket("p"), &DiskOptions::default()).unwrap();
        let mut q = disk.take_queue(0).unwrap();
        q.write_slice(0, &data).unwrap();
        q.flush().unwrap();
        assert!(q.read_vec(0, data.len()).unwrap() == data);
    }
    drop(keeld.stop());
    let (code, out) = run_keel(d, &["info", "p.keel"]);
    assert!(code == 0 && out.contains("lz4"), "{out}");
    let (code, out) = run_keel(
        d,
        &["create", "--compression", "gzip", "--size", "16M", "q.keel"],
    );
    assert!(code != 0 && out.contains("gzip"), "{out}");
    assert!(!d.join("q.keel").exists());
}
