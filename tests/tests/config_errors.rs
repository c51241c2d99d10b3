//! Broken keel.toml files, each refused with one exact message that names the file, the line and
//! the key, before anything starts. `$DIR` in an expected message stands for the directory the
//! file is in.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use keel_backend::config::Config;

/// A null disk with one line changed or added.
fn null(extra: &str) -> String {
    format!("[[disk]]\nname = \"n\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n{extra}\n")
}

/// A null disk table without its `size` line and with `lines` instead.
fn null_with(lines: &str) -> String {
    format!("[[disk]]\nname = \"n\"\nsocket = \"n.sock\"\nengine = \"null\"\n{lines}\n")
}

fn raw(lines: &str) -> String {
    format!("[[disk]]\nname = \"r\"\nsocket = \"r.sock\"\nengine = \"raw\"\n{lines}\n")
}

/// Files some cases need next to keel.toml.
fn prepare(dir: &Path) {
    fs::write(dir.join("odd.img"), vec![0u8; 1000]).unwrap();
    fs::write(dir.join("small.img"), vec![0u8; 4096]).unwrap();
    fs::create_dir(dir.join("adir")).unwrap();
    fs::write(dir.join("afile"), b"").unwrap();
    symlink("/nonexistent-target", dir.join("dangling")).unwrap();
}

/// (name, file contents, expected message).
fn cases() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "TOML syntax: unclosed table header",
            "[[disk]\nname = \"n\"\n".into(),
            "$DIR/keel.toml: TOML parse error at line 1, column 7\n  |\n1 | [[disk]\n  |       ^\ninvalid table header\nexpected `.`, `]]`",
        ),
        (
            "TOML syntax: missing value",
            null("queues ="),
            "$DIR/keel.toml: TOML parse error at line 6, column 9\n  |\n6 | queues =\n  |         ^\nstring values must be quoted, expected literal string",
        ),
        (
            "TOML syntax: duplicate key",
            null("size = \"2G\""),
            "$DIR/keel.toml: TOML parse error at line 6, column 1\n  |\n6 | size = \"2G\"\n  | ^\nduplicate key `size` in table `disk`",
        ),
        (
            "unknown top-level key",
            format!("colour = \"red\"\n{}", null("")),
            "",
        ),
        ("unknown disk key", null("colour = \"red\""), ""),
        ("unknown server key", format!("[server]\nport = 80\n{}", null("")), ""),
        ("unknown section", format!("[disks]\n{}", null("")), ""),
        ("disk is not a table array", "disk = 5\n".into(), ""),
        ("missing name", "[[disk]]\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n".into(), ""),
        ("missing socket", "[[disk]]\nname = \"n\"\nengine = \"null\"\nsize = \"1G\"\n".into(), ""),
        ("missing engine", "[[disk]]\nname = \"n\"\nsocket = \"n.sock\"\nsize = \"1G\"\n".into(), ""),
        ("unknown engine", "[[disk]]\nname = \"n\"\nsocket = \"n.sock\"\nengine = \"qcow2\"\nsize = \"1G\"\n".into(), ""),
        ("wrong type: queues as string", null("queues = \"two\""), ""),
        ("wrong type: read_only as string", null("read_only = \"yes\""), ""),
        ("wrong type: name as integer", "[[disk]]\nname = 7\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n".into(), ""),
        ("wrong type: size as float", null_with("size = 1.5"), ""),
        ("negative size", null_with("size = -4096"), ""),
        ("bad size unit", null_with("size = \"4X\""), ""),
        ("size without digits", null_with("size = \"G\""), ""),
        ("empty size", null_with("size = \"\""), ""),
        ("size overflows u64", null_with("size = \"99999999999999999999\""), ""),
        ("size overflows with its unit", null_with("size = \"17000000P\""), ""),
        ("zero size", null_with("size = 0"), ""),
        ("size not a multiple of 512", null_with("size = 1000"), ""),
        (
            "size not a multiple of the logical block size",
            null_with("size = \"6K\"\nlogical_block_size = 4096"),
            "",
        ),
        ("zero queues", null("queues = 0"), ""),
        ("too many queues", null("queues = 65"), ""),
        ("queues beyond u16", null("queues = 70000"), ""),
        ("queue_size not a power of two", null("queue_size = 100"), ""),
        ("queue_size of one", null("queue_size = 1"), ""),
        ("queue_size beyond u16", null("queue_size = 65536"), ""),
        ("logical_block_size not a power of two", null("logical_block_size = 1000"), ""),
        ("logical_block_size too small", null("logical_block_size = 256"), ""),
        ("logical_block_size too large", null("logical_block_size = 131072"), ""),
        ("poll_us too large", null("poll_us = 2000000"), ""),
        ("serial too long", null("serial = \"abcdefghijklmnopqrstu\""), ""),
        (
            "long name without a serial",
            "[[disk]]\nname = \"abcdefghijklmnopqrstu\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n".into(),
            "",
        ),
        ("empty name", "[[disk]]\nname = \"\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n".into(), ""),
        ("name with a slash", "[[disk]]\nname = \"a/b\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n".into(), ""),
        ("duplicate name", format!("{}{}", null(""), null("").replace("n.sock", "m.sock").replace("name = \"n\"", "name = \"n\"\nserial = \"m\"")), ""),
        ("duplicate socket", format!("{}{}", null(""), null("").replace("name = \"n\"", "name = \"m\"")), ""),
        ("duplicate serial", format!("{}{}", null("serial = \"s\""), null("serial = \"s\"").replace("n.sock", "m.sock").replace("name = \"n\"", "name = \"m\"")), ""),
        (
            "duplicate image path",
            format!("{}{}", raw("path = \"x.img\"\nsize = \"1M\""), raw("path = \"x.img\"\nsize = \"1M\"").replace("r.sock", "s.sock").replace("name = \"r\"", "name = \"s\"")),
            "",
        ),
        ("null engine with a path", null("path = \"x.img\""), ""),
        ("null engine without a size", null_with(""), ""),
        ("raw engine without a path", raw("size = \"1M\""), ""),
        ("raw image missing and no size", raw("path = \"missing.img\""), ""),
        ("raw image is a directory", raw("path = \"adir\""), ""),
        ("raw image of another size", raw("path = \"small.img\"\nsize = \"1M\""), ""),
        ("raw image not a multiple of the block size", raw("path = \"odd.img\""), ""),
        ("raw image directory missing", raw("path = \"nodir/x.img\"\nsize = \"1M\""), ""),
        ("raw image through a dangling symlink", raw("path = \"dangling\""), ""),
        ("socket directory missing", null("").replace("n.sock", "nodir/n.sock"), ""),
        ("socket directory is a file", null("").replace("n.sock", "afile/n.sock"), ""),
        ("socket directory not writable", null("").replace("n.sock", "/proc/1/n.sock"), ""),
    ]
}

#[test]
fn every_broken_config_is_refused_with_its_message() {
    let print = std::env::var_os("KEEL_PRINT_MESSAGES").is_some();
    let mut failures = Vec::new();
    let all = cases();
    assert!(all.len() >= 30);
    for (name, text, want) in all {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let file = dir.path().join("keel.toml");
        fs::write(&file, &text).unwrap();
        let got = match Config::load(&file) {
            Ok(c) => format!("ACCEPTED: {c:?}"),
            Err(e) => e.to_string().replace(&dir.path().display().to_string(), "$DIR"),
        };
        if print {
            println!("{name:?} => {got:?}");
        }
        if got != want {
            failures.push(format!("{name}:\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn missing_file_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.toml");
    let e = Config::load(&file).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "cannot read config file {}: No such file or directory (os error 2)",
            file.display()
        )
    );
}
