//! Broken keel.toml files, each refused with one exact message that names the file, the line and
//! the key, before anything starts. `$DIR` in an expected message stands for the directory the
//! file is in.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use keel_backend::config::Config;

/// A null disk with one line changed or added.
fn null(extra: &str) -> String {
    format!(
        "[[disk]]\nname = \"n\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n{extra}\n"
    )
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
            "$DIR/keel.toml: TOML parse error at line 1, column 8\n  |\n1 | [[disk]\n  |        ^\nunclosed array table, expected `]`",
        ),
        (
            "TOML syntax: missing value",
            null("queues ="),
            "$DIR/keel.toml: TOML parse error at line 6, column 9\n  |\n6 | queues =\n  |         ^\nstring values must be quoted, expected literal string",
        ),
        (
            "TOML syntax: duplicate key",
            null("size = \"2G\""),
            "$DIR/keel.toml: TOML parse error at line 6, column 1\n  |\n6 | size = \"2G\"\n  | ^^^^\nduplicate key",
        ),
        (
            "unknown top-level key",
            format!("colour = \"red\"\n{}", null("")),
            "$DIR/keel.toml: TOML parse error at line 1, column 1\n  |\n1 | colour = \"red\"\n  | ^^^^^^\nunknown field `colour`, expected `server` or `disk`",
        ),
        ("unknown disk key", null("colour = \"red\""), "$DIR/keel.toml: TOML parse error at line 6, column 1\n  |\n6 | colour = \"red\"\n  | ^^^^^^\nunknown field `colour`, expected one of `name`, `socket`, `engine`, `path`, `mirror`, `resync_chunk`, `size`, `resize`, `queues`, `queue_size`, `read_only`, `serial`, `direct`, `logical_block_size`, `poll_us`, `delay_us`, `max_size`, `space_warn`, `space_critical`, `space_wait_ms`, `spare`, `cleaner_policy`, `cleaner_io`, `iops_limit`, `read_iops_limit`, `write_iops_limit`, `bps_limit`, `read_bps_limit`, `write_bps_limit`, `iops_burst`, `burst_seconds`, `resync_bps_limit`, `import_from`, `import_rate`, `handover`, `encryption`, `key_file`, `compression`, `image`, `ceph_conf`, `ceph_id`, `keyring`, `osd_timeout_s`"),
        ("burst without a limit", null("iops_burst = 100"), "$DIR/keel.toml:6: `iops_burst`: a burst rises above `iops_limit`: set `iops_limit` too"),
        ("burst below the limit", null("iops_limit = 200\niops_burst = 100"), "$DIR/keel.toml:7: `iops_burst`: 100 is below iops_limit (200): the burst rate must be the higher one"),
        ("burst_seconds zero", null("burst_seconds = 0"), "$DIR/keel.toml:6: `burst_seconds`: 0 is outside 1..=3600"),
        ("bps_limit not a size", null("bps_limit = \"fast\""), "$DIR/keel.toml:6: `bps_limit`: \"fast\" is not a size (expected e.g. 4G, 512M, 1TiB or 65536)"),
        ("resync rate without a mirror", null("resync_bps_limit = \"10M\""), "$DIR/keel.toml:6: `resync_bps_limit`: only mirrored disks (`mirror = [...]`) resync"),
        ("unknown server key", format!("[server]\nport = 80\n{}", null("")), "$DIR/keel.toml: TOML parse error at line 2, column 1\n  |\n2 | port = 80\n  | ^^^^\nunknown field `port`, expected one of `control_socket`, `log_level`, `metrics_listen`, `log_format`, `nbd_socket`, `nbd_listen`"),
        ("bad nbd_listen", format!("[server]\nnbd_listen = \"localhost\"\n{}", null("")), "$DIR/keel.toml:2: `nbd_listen`: \"localhost\" is not an address:port such as \"127.0.0.1:10809\""),
        ("unknown section", format!("[disks]\n{}", null("")), "$DIR/keel.toml: TOML parse error at line 1, column 2\n  |\n1 | [disks]\n  |  ^^^^^\nunknown field `disks`, expected `server` or `disk`"),
        ("disk is not a table array", "disk = 5\n".into(), "$DIR/keel.toml: TOML parse error at line 1, column 8\n  |\n1 | disk = 5\n  |        ^\ninvalid type: integer `5`, expected a sequence"),
        ("missing name", "[[disk]]\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n".into(), "$DIR/keel.toml: TOML parse error at line 1, column 1\n  |\n1 | [[disk]]\n  | ^^^^^^^^\nmissing field `name`"),
        ("missing socket", "[[disk]]\nname = \"n\"\nengine = \"null\"\nsize = \"1G\"\n".into(), "$DIR/keel.toml: TOML parse error at line 1, column 1\n  |\n1 | [[disk]]\n  | ^^^^^^^^\nmissing field `socket`"),
        ("missing engine", "[[disk]]\nname = \"n\"\nsocket = \"n.sock\"\nsize = \"1G\"\n".into(), "$DIR/keel.toml: TOML parse error at line 1, column 1\n  |\n1 | [[disk]]\n  | ^^^^^^^^\nmissing field `engine`"),
        ("unknown engine", "[[disk]]\nname = \"n\"\nsocket = \"n.sock\"\nengine = \"qcow2\"\nsize = \"1G\"\n".into(), "$DIR/keel.toml: TOML parse error at line 4, column 10\n  |\n4 | engine = \"qcow2\"\n  |          ^^^^^^^\nunknown variant `qcow2`, expected one of `raw`, `null`, `keel`, `rbd`"),
        ("keel engine without path", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\nsize = \"1G\"\n".into(), "$DIR/keel.toml:1: `path`: missing: the keel engine needs a container file or block device"),
        ("space_warn above space_critical", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\npath = \"k.keel\"\nsize = \"1G\"\nspace_warn = \"96%\"\n".into(), "$DIR/keel.toml:7: `space_warn`: 96% is above space_critical (95%): the warning must come first"),
        ("space_critical not a percentage", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\npath = \"k.keel\"\nsize = \"1G\"\nspace_critical = \"lots\"\n".into(), "$DIR/keel.toml:7: `space_critical`: \"lots\" is not a percentage (expected e.g. \"85%\")"),
        ("space_wait_ms too long", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\npath = \"k.keel\"\nsize = \"1G\"\nspace_wait_ms = 600000\n".into(), "$DIR/keel.toml:7: `space_wait_ms`: 600000 is above the limit of 120000 (a guest would take the disk for hung)"),
        ("space_warn on a raw disk", raw("path = \"r.img\"\nsize = \"1G\"\nspace_warn = \"50%\""), "$DIR/keel.toml:7: `space_warn`: only the keel engine keeps a container whose space this sets (this disk uses the raw engine)"),
        ("max_size below the container", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\npath = \"k.keel\"\nsize = \"1G\"\nmax_size = \"1G\"\n".into(), "$DIR/keel.toml:7: `max_size`: 1073741824 bytes is below the 1455423488 bytes a container for a 1073741824-byte disk starts with"),
        ("max_size on a mirror", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\nmirror = [\"a.img\", \"b.img\"]\nsize = \"1G\"\nmax_size = \"4G\"\n".into(), "$DIR/keel.toml:7: `max_size`: a mirrored container keeps its size"),
        ("mirror of one component", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"raw\"\nmirror = [\"a.img\"]\nsize = \"1G\"\n".into(), "$DIR/keel.toml:5: `mirror`: needs at least 2 components, got 1"),
        ("mirror of remote components only", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"raw\"\nmirror = [\"nbd://h1/d\", \"nbd://h2/d\"]\nsize = \"1G\"\n".into(), "$DIR/keel.toml:5: `mirror`: needs at least one local component (remote components' metadata is kept beside the first local one)"),
        ("mirror with a malformed NBD URI", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"raw\"\nmirror = [\"a.img\", \"nbd+unix:///d\"]\nsize = \"1G\"\n".into(), "$DIR/keel.toml:5: `mirror`: \"nbd+unix:///d\" is not an NBD URI: no ?socket= query (nbd://host[:port]/export or nbd+unix:///export?socket=/path)"),
        ("mirror names a component twice", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"raw\"\nmirror = [\"a.img\", \"a.img\"]\nsize = \"1G\"\n".into(), "$DIR/keel.toml:5: `mirror`: $DIR/a.img is named twice"),
        ("mirror and path together", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\npath = \"k.keel\"\nmirror = [\"a.img\", \"b.img\"]\nsize = \"1G\"\n".into(), "$DIR/keel.toml:5: `path`: give either `path` or `mirror`, not both"),
        ("mirror on the null engine", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"null\"\nmirror = [\"a.img\", \"b.img\"]\nsize = \"1G\"\n".into(), "$DIR/keel.toml:5: `mirror`: the null engine stores nothing"),
        ("resync_chunk without a mirror", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"raw\"\npath = \"r.img\"\nresync_chunk = \"64K\"\nsize = \"1G\"\n".into(), "$DIR/keel.toml:6: `resync_chunk`: only mirrored disks (`mirror = [...]`) have a resync chunk"),
        ("resync_chunk not a power of two", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"raw\"\nmirror = [\"a.img\", \"b.img\"]\nresync_chunk = \"48K\"\nsize = \"1G\"\n".into(), "$DIR/keel.toml:6: `resync_chunk`: 49152 bytes is not a power of two between 4K and 64M"),
        ("mirror without a size", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"raw\"\nmirror = [\"a.img\", \"b.img\"]\n".into(), "$DIR/keel.toml:5: `size`: missing: a mirrored disk needs a size"),
        ("wrong type: queues as string", null("queues = \"two\""), "$DIR/keel.toml: TOML parse error at line 6, column 10\n  |\n6 | queues = \"two\"\n  |          ^^^^^\ninvalid type: string \"two\", expected u16"),
        ("wrong type: read_only as string", null("read_only = \"yes\""), "$DIR/keel.toml: TOML parse error at line 6, column 13\n  |\n6 | read_only = \"yes\"\n  |             ^^^^^\ninvalid type: string \"yes\", expected a boolean"),
        ("wrong type: name as integer", "[[disk]]\nname = 7\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n".into(), "$DIR/keel.toml: TOML parse error at line 2, column 8\n  |\n2 | name = 7\n  |        ^\ninvalid type: integer `7`, expected a string"),
        ("wrong type: size as float", null_with("size = 1.5"), "$DIR/keel.toml: TOML parse error at line 5, column 8\n  |\n5 | size = 1.5\n  |        ^^^\n1.5 is not a whole number of bytes; expected a size: a byte count or a string such as \"4G\", \"512M\" or \"64K\""),
        ("negative size", null_with("size = -4096"), "$DIR/keel.toml: TOML parse error at line 5, column 8\n  |\n5 | size = -4096\n  |        ^^^^^\n-4096 is negative; expected a size: a byte count or a string such as \"4G\", \"512M\" or \"64K\""),
        ("bad size unit", null_with("size = \"4X\""), "$DIR/keel.toml:5: `size`: \"4X\" has an unknown unit \"x\" (use K, M, G, T or P)"),
        ("size without digits", null_with("size = \"G\""), "$DIR/keel.toml:5: `size`: \"G\" is not a size (expected e.g. 4G, 512M, 1TiB or 65536)"),
        ("empty size", null_with("size = \"\""), "$DIR/keel.toml:5: `size`: \"\" is not a size (expected e.g. 4G, 512M, 1TiB or 65536)"),
        ("size overflows u64", null_with("size = \"99999999999999999999\""), "$DIR/keel.toml:5: `size`: \"99999999999999999999\" is too large"),
        ("size overflows with its unit", null_with("size = \"17000000P\""), "$DIR/keel.toml:5: `size`: \"17000000P\" is too large"),
        ("zero size", null_with("size = 0"), "$DIR/keel.toml:5: `size`: 0 bytes is not a positive multiple of the logical block size (512)"),
        ("size not a multiple of 512", null_with("size = 1000"), "$DIR/keel.toml:5: `size`: 1000 bytes is not a positive multiple of the logical block size (512)"),
        (
            "size not a multiple of the logical block size",
            null_with("size = \"6K\"\nlogical_block_size = 4096"),
            "$DIR/keel.toml:5: `size`: 6144 bytes is not a positive multiple of the logical block size (4096)",
        ),
        ("zero queues", null("queues = 0"), "$DIR/keel.toml:6: `queues`: 0 is outside 1..=64"),
        ("too many queues", null("queues = 65"), "$DIR/keel.toml:6: `queues`: 65 is outside 1..=64"),
        ("queues beyond u16", null("queues = 70000"), "$DIR/keel.toml: TOML parse error at line 6, column 10\n  |\n6 | queues = 70000\n  |          ^^^^^\ninvalid value: integer `70000`, expected u16"),
        ("queue_size not a power of two", null("queue_size = 100"), "$DIR/keel.toml:6: `queue_size`: 100 is not a power of two between 2 and 32768"),
        ("queue_size of one", null("queue_size = 1"), "$DIR/keel.toml:6: `queue_size`: 1 is not a power of two between 2 and 32768"),
        ("queue_size beyond u16", null("queue_size = 65536"), "$DIR/keel.toml: TOML parse error at line 6, column 14\n  |\n6 | queue_size = 65536\n  |              ^^^^^\ninvalid value: integer `65536`, expected u16"),
        ("logical_block_size not a power of two", null("logical_block_size = 1000"), "$DIR/keel.toml:6: `logical_block_size`: 1000 is not a power of two between 512 and 65536"),
        ("logical_block_size too small", null("logical_block_size = 256"), "$DIR/keel.toml:6: `logical_block_size`: 256 is not a power of two between 512 and 65536"),
        ("logical_block_size too large", null("logical_block_size = 131072"), "$DIR/keel.toml:6: `logical_block_size`: 131072 is not a power of two between 512 and 65536"),
        ("poll_us too large", null("poll_us = 2000000"), "$DIR/keel.toml:6: `poll_us`: 2000000 is above the limit of 1000000"),
        ("serial too long", null("serial = \"abcdefghijklmnopqrstu\""), "$DIR/keel.toml:6: `serial`: \"abcdefghijklmnopqrstu\" is longer than 20 bytes"),
        (
            "long name without a serial",
            "[[disk]]\nname = \"abcdefghijklmnopqrstu\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n".into(),
            "$DIR/keel.toml:2: `name`: \"abcdefghijklmnopqrstu\" is longer than 20 bytes and so cannot be the serial: set `serial`",
        ),
        ("empty name", "[[disk]]\nname = \"\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n".into(), "$DIR/keel.toml:2: `name`: \"\" is not a disk name: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"),
        ("name with a slash", "[[disk]]\nname = \"a/b\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n".into(), "$DIR/keel.toml:2: `name`: \"a/b\" is not a disk name: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"),
        ("name with a space", "[[disk]]\nname = \"vm one\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n".into(), "$DIR/keel.toml:2: `name`: \"vm one\" is not a disk name: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"),
        ("name with URL syntax", "[[disk]]\nname = \"vm:1?x\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n".into(), "$DIR/keel.toml:2: `name`: \"vm:1?x\" is not a disk name: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"),
        ("log_level that is no filter", format!("[server]\nlog_level = \"verbose!!\"\n{}", null("")), "$DIR/keel.toml:2: `log_level`: \"verbose!!\" is not a log filter (\"verbose!!\" is neither a level nor module=level); use one of off, error, warn, info, debug, trace or module=level, comma-separated"),
        ("control socket directory missing", format!("[server]\ncontrol_socket = \"nodir/c.sock\"\n{}", null("")), "$DIR/keel.toml:2: `control_socket`: directory $DIR/nodir: No such file or directory (os error 2)"),
        ("control socket is a disk socket", format!("[server]\ncontrol_socket = \"n.sock\"\n{}", null("")), "$DIR/keel.toml:5: `socket`: \"$DIR/n.sock\" is already used at line 2"),
        ("one socket spelled two ways", format!("{}{}", null("").replace("n.sock", "adir/n.sock"), null("").replace("name = \"n\"", "name = \"m\"").replace("n.sock", "./adir/../adir/n.sock")), "$DIR/keel.toml:9: `socket`: \"$DIR/adir/n.sock\" is already used at line 3"),
        ("duplicate name", format!("{}{}", null(""), null("").replace("n.sock", "m.sock").replace("name = \"n\"", "name = \"n\"\nserial = \"m\"")), "$DIR/keel.toml:8: `name`: \"n\" is already used at line 2"),
        ("duplicate socket", format!("{}{}", null(""), null("").replace("name = \"n\"", "name = \"m\"")), "$DIR/keel.toml:9: `socket`: \"$DIR/n.sock\" is already used at line 3"),
        ("duplicate serial", format!("{}{}", null("serial = \"s\""), null("serial = \"s\"").replace("n.sock", "m.sock").replace("name = \"n\"", "name = \"m\"")), "$DIR/keel.toml:12: `serial`: \"s\" is already used at line 6"),
        (
            "duplicate image path",
            format!("{}{}", raw("path = \"x.img\"\nsize = \"1M\""), raw("path = \"x.img\"\nsize = \"1M\"").replace("r.sock", "s.sock").replace("name = \"r\"", "name = \"s\"")),
            "$DIR/keel.toml:11: `path`: \"$DIR/x.img\" is already used at line 5",
        ),
        ("null engine with a path", null("path = \"x.img\""), "$DIR/keel.toml:6: `path`: the null engine stores nothing; remove `path`"),
        ("null engine without a size", null_with(""), "$DIR/keel.toml:1: `size`: missing: the null engine needs a size"),
        ("raw engine without a path", raw("size = \"1M\""), "$DIR/keel.toml:1: `path`: missing: the raw engine needs a file or block device"),
        ("raw image missing and no size", raw("path = \"missing.img\""), "$DIR/keel.toml:5: `size`: $DIR/missing.img does not exist and no `size` is given"),
        ("raw image is a directory", raw("path = \"adir\""), "$DIR/keel.toml:5: `path`: $DIR/adir is neither a regular file nor a block device"),
        ("raw image of another size", raw("path = \"small.img\"\nsize = \"1M\""), "$DIR/keel.toml:6: `size`: $DIR/small.img is 4096 bytes, less than 1048576; set `resize = true` to grow it, or size = 4096"),
        ("resize asked to shrink", raw("path = \"small.img\"\nsize = 2048\nresize = true"), "$DIR/keel.toml:6: `size`: $DIR/small.img is 4096 bytes, more than 2048: `resize` only grows an image (shrinking would drop the guest's data past the new end); set size = 4096"),
        ("keel engine on a raw image", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\npath = \"small.img\"\n".into(), "$DIR/keel.toml:5: `path`: $DIR/small.img is not a Keel container (no Keel superblock); copy a raw image into a new one with `keel import`, or serve it with engine = \"raw\""),
        ("keel size not a multiple of 4K", "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\npath = \"k.keel\"\nsize = 1536\n".into(), "$DIR/keel.toml:6: `size`: 1536 bytes is not a multiple of 4K, a keel disk's block"),
        ("raw image not a multiple of the block size", raw("path = \"odd.img\""), "$DIR/keel.toml:5: `path`: $DIR/odd.img is 1000 bytes, not a positive multiple of the logical block size (512)"),
        ("raw image directory missing", raw("path = \"nodir/x.img\"\nsize = \"1M\""), "$DIR/keel.toml:5: `path`: directory $DIR/nodir: No such file or directory (os error 2)"),
        ("raw image through a dangling symlink", raw("path = \"dangling\""), "$DIR/keel.toml:5: `size`: $DIR/dangling does not exist and no `size` is given"),
        ("socket directory missing", null("").replace("n.sock", "nodir/n.sock"), "$DIR/keel.toml:3: `socket`: directory $DIR/nodir: No such file or directory (os error 2)"),
        ("socket directory is a file", null("").replace("n.sock", "afile/n.sock"), "$DIR/keel.toml:3: `socket`: $DIR/afile is not a directory"),
        ("socket directory not writable", null("").replace("n.sock", "/proc/1/n.sock"), "$DIR/keel.toml:3: `socket`: directory /proc/1 is not writable: Operation not permitted (os error 1)"),
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
            Err(e) => e
                .to_string()
                .replace(&dir.path().display().to_string(), "$DIR"),
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

#[test]
fn a_socket_path_too_long_to_bind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keel.toml");
    let name = format!("{}.sock", "s".repeat(110));
    fs::write(&file, null("").replace("n.sock", &name)).unwrap();
    let path = dir.path().join(&name);
    let e = Config::load(&file).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:3: `socket`: {} is {} bytes long; a unix socket path holds at most 107 (use a \
             shorter directory)",
            file.display(),
            path.display(),
            path.as_os_str().len()
        )
    );
}

#[test]
fn a_container_grown_past_its_size_is_served_and_a_smaller_one_is_refused() {
    use keel_backend::store::{CreateOptions, Store};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keel.toml");
    let container = dir.path().join("k.keel");
    Store::create_path(&container, &CreateOptions::new(16 << 20)).unwrap();
    let disk = |size: &str| {
        format!(
            "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\npath = \"k.keel\"\n\
             size = \"{size}\"\n"
        )
    };
    fs::write(&file, disk("8M")).unwrap();
    assert_eq!(Config::load(&file).unwrap().disks[0].size, Some(8 << 20));
    fs::write(&file, disk("32M")).unwrap();
    let e = Config::load(&file).unwrap_err().to_string();
    let c = container.display();
    assert_eq!(
        e,
        format!(
            "{}:6: `size`: {c} holds a 16777216-byte disk, less than 33554432: grow it with \
             `keel resize {c} 33554432` while keeld is stopped, or set size = 16777216",
            file.display()
        )
    );
}
