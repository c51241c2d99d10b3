use super::*;

/// Parses `text` with paths relative to a fresh temporary directory.
fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &dir.join("keel.toml"), dir)
}

fn parse(text: &str) -> (tempfile::TempDir, Result<Config, ConfigError>) {
    let dir = tempfile::tempdir().unwrap();
    let r = parse_in(dir.path(), text);
    (dir, r)
}

/// Asserts the error names `key` at `line`.
fn assert_invalid(r: Result<Config, ConfigError>, key: &str, line: usize) -> String {
    match r {
        Err(ConfigError::Invalid {
            key: k,
            line: l,
            message,
            ..
        }) => {
            assert_eq!((k.as_str(), l), (key, line), "message: {message}");
            message
        }
        other => panic!("expected an error on `{key}` at line {line}, got {other:?}"),
    }
}

const NULL_DISK: &str =
    "[[disk]]\nname = \"n\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1G\"\n";

#[test]
fn minimal_null_disk_gets_defaults() {
    let (dir, r) = parse(NULL_DISK);
    let c = r.unwrap();
    assert_eq!(c.disks.len(), 1);
    let d = &c.disks[0];
    assert_eq!(d.name, "n");
    assert_eq!(d.socket, dir.path().join("n.sock"));
    assert_eq!(d.size, Some(1 << 30));
    assert_eq!((d.queues, d.queue_size), (1, 256));
    assert_eq!(d.serial, "n");
    assert!(d.direct && !d.read_only && !d.resize);
    assert_eq!((d.logical_block_size, d.poll_us), (512, 0));
    assert_eq!(c.server, ServerConfig::default());
}

#[test]
fn full_raw_disk_and_server_section() {
    let (dir, r) = parse(
        r#"
[server]
control_socket = "ctl/../keel.sock"
log_level = "debug"

[[disk]]
name = "vm1"
socket = "/tmp/vm1.sock"
engine = "raw"
path = "vm1.img"
size = 4194304
queues = 4
queue_size = 128
read_only = true
serial = "SER1"
direct = false
logical_block_size = 4096
poll_us = 50
"#,
    );
    let c = r.unwrap();
    assert_eq!(c.server.control_socket, Some(dir.path().join("keel.sock")));
    assert_eq!(c.server.log_level.as_deref(), Some("debug"));
    let d = &c.disks[0];
    assert_eq!(d.socket, PathBuf::from("/tmp/vm1.sock"));
    assert_eq!(d.path, Some(dir.path().join("vm1.img")));
    assert_eq!(d.size, Some(4 << 20));
    assert_eq!((d.queues, d.queue_size, d.poll_us), (4, 128, 50));
    assert!(d.read_only && !d.direct);
    assert_eq!((d.serial.as_str(), d.logical_block_size), ("SER1", 4096));
}

#[test]
fn load_resolves_against_the_file_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keel.toml");
    fs::write(&file, NULL_DISK).unwrap();
    let c = Config::load(&file).unwrap();
    assert_eq!(c.disks[0].socket, dir.path().join("n.sock"));
}

#[test]
fn missing_file_is_a_read_error() {
    let r = Config::load(Path::new("/nonexistent/keel.toml"));
    assert!(matches!(r, Err(ConfigError::Read { .. })));
}

#[test]
fn unknown_key_names_key_and_line() {
    let (_d, r) = parse(&format!("{NULL_DISK}colour = \"red\"\n"));
    match r {
        Err(e @ ConfigError::Syntax { .. }) => {
            let m = e.to_string();
            assert!(m.contains("colour") && m.contains("line 6"), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_section_is_refused() {
    let (_d, r) = parse("[srever]\n");
    assert!(matches!(r, Err(ConfigError::Syntax { .. })), "{r:?}");
}

#[test]
fn unknown_engine_is_refused() {
    let (_d, r) = parse("[[disk]]\nname = \"a\"\nsocket = \"a\"\nengine = \"fast\"\n");
    let m = r.unwrap_err().to_string();
    assert!(m.contains("fast") && m.contains("line 4"), "{m}");
}

#[test]
fn missing_required_key_is_refused() {
    let (_d, r) = parse("[[disk]]\nname = \"a\"\nengine = \"null\"\nsize = \"1M\"\n");
    let m = r.unwrap_err().to_string();
    assert!(m.contains("socket"), "{m}");
}

#[test]
fn duplicate_name() {
    let text = format!("{NULL_DISK}{}", NULL_DISK.replace("n.sock", "m.sock"));
    let (_d, r) = parse(&text);
    let m = assert_invalid(r, "name", 7);
    assert!(m.contains("line 2"), "{m}");
}

#[test]
fn duplicate_socket() {
    let text = format!(
        "{NULL_DISK}{}",
        NULL_DISK.replace("name = \"n\"", "name = \"m\"")
    );
    let (_d, r) = parse(&text);
    assert_invalid(r, "socket", 8);
}

#[test]
fn duplicate_serial() {
    let text = format!(
        "{NULL_DISK}serial = \"s\"\n{}serial = \"s\"\n",
        NULL_DISK
            .replace("name = \"n\"", "name = \"m\"")
            .replace("n.sock", "m.sock")
    );
    let (_d, r) = parse(&text);
    assert_invalid(r, "serial", 12);
}

#[test]
fn duplicate_path() {
    let disk = |n: &str| {
        format!(
            "[[disk]]\nname = \"{n}\"\nsocket = \"{n}.sock\"\nengine = \"raw\"\npath = \"x.img\"\n\
             size = \"1M\"\n"
        )
    };
    let (_d, r) = parse(&format!("{}{}", disk("a"), disk("b")));
    assert_invalid(r, "path", 11);
}

#[test]
fn bad_size_text() {
    let (_d, r) = parse(&NULL_DISK.replace("\"1G\"", "\"1Q\""));
    assert_invalid(r, "size", 5);
}

#[test]
fn size_not_a_multiple_of_the_block_size() {
    let (_d, r) = parse(&NULL_DISK.replace("\"1G\"", "1000"));
    assert_invalid(r, "size", 5);
    let (_d, r) =
        parse(&format!("{NULL_DISK}logical_block_size = 4096\n").replace("\"1G\"", "\"6K\""));
    assert_invalid(r, "size", 5);
}

#[test]
fn zero_size() {
    let (_d, r) = parse(&NULL_DISK.replace("\"1G\"", "0"));
    assert_invalid(r, "size", 5);
}

#[test]
fn null_without_size() {
    let (_d, r) = parse(&NULL_DISK.replace("size = \"1G\"\n", ""));
    assert_invalid(r, "size", 1);
}

#[test]
fn null_with_path() {
    let (_d, r) = parse(&format!("{NULL_DISK}path = \"x.img\"\n"));
    assert_invalid(r, "path", 6);
}

#[test]
fn raw_without_path() {
    let (_d, r) = parse(&NULL_DISK.replace("\"null\"", "\"raw\""));
    assert_invalid(r, "path", 1);
}

#[test]
fn raw_missing_file_without_size() {
    let (_d, r) =
        parse("[[disk]]\nname = \"a\"\nsocket = \"a.sock\"\nengine = \"raw\"\npath = \"a.img\"\n");
    assert_invalid(r, "size", 5);
}

#[test]
fn raw_existing_file_of_another_size() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.img"), vec![0u8; 4096]).unwrap();
    let text = "[[disk]]\nname = \"a\"\nsocket = \"a.sock\"\nengine = \"raw\"\npath = \"a.img\"\nsize = 8192\n";
    assert_invalid(parse_in(dir.path(), text), "size", 6);
    let resized = parse_in(dir.path(), &format!("{text}resize = true\n")).unwrap();
    assert_eq!(resized.disks[0].size, Some(8192));
    let sized_by_file = parse_in(dir.path(), &text.replace("size = 8192\n", "")).unwrap();
    assert_eq!(sized_by_file.disks[0].size, None);
}

#[test]
fn raw_existing_file_of_odd_size_without_size_key() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.img"), vec![0u8; 1000]).unwrap();
    let text = "[[disk]]\nname = \"a\"\nsocket = \"a.sock\"\nengine = \"raw\"\npath = \"a.img\"\n";
    assert_invalid(parse_in(dir.path(), text), "path", 5);
}

#[test]
fn raw_path_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("d")).unwrap();
    let text = "[[disk]]\nname = \"a\"\nsocket = \"a.sock\"\nengine = \"raw\"\npath = \"d\"\n";
    assert_invalid(parse_in(dir.path(), text), "path", 5);
}

#[test]
fn raw_image_directory_missing() {
    let (_d, r) = parse(
        "[[disk]]\nname = \"a\"\nsocket = \"a.sock\"\nengine = \"raw\"\npath = \"no/such/a.img\"\nsize = \"1M\"\n",
    );
    assert_invalid(r, "path", 5);
}

#[test]
fn socket_directory_missing() {
    let (_d, r) = parse(&NULL_DISK.replace("n.sock", "missing/n.sock"));
    assert_invalid(r, "socket", 3);
}

#[test]
fn socket_directory_not_writable() {
    // Root may write almost anywhere; procfs refuses even root new files in /proc/sys.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let (_d, r) = parse(&NULL_DISK.replace("n.sock", "/proc/sys/n.sock"));
        assert_invalid(r, "socket", 3);
        return;
    }
    let (_d, r) = parse(&NULL_DISK.replace("n.sock", "/n.sock"));
    assert_invalid(r, "socket", 3);
}

#[test]
fn queues_out_of_range() {
    let (_d, r) = parse(&format!("{NULL_DISK}queues = 0\n"));
    assert_invalid(r, "queues", 6);
    let (_d, r) = parse(&format!("{NULL_DISK}queues = 65\n"));
    assert_invalid(r, "queues", 6);
}

#[test]
fn queue_size_not_power_of_two() {
    let (_d, r) = parse(&format!("{NULL_DISK}queue_size = 100\n"));
    assert_invalid(r, "queue_size", 6);
}

#[test]
fn queue_size_wrong_type() {
    let (_d, r) = parse(&format!("{NULL_DISK}queue_size = \"big\"\n"));
    let m = r.unwrap_err().to_string();
    assert!(m.contains("line 6"), "{m}");
}

#[test]
fn serial_too_long() {
    let (_d, r) = parse(&format!("{NULL_DISK}serial = \"123456789012345678901\"\n"));
    assert_invalid(r, "serial", 6);
}

#[test]
fn long_name_needs_a_serial() {
    let text = NULL_DISK.replace("name = \"n\"", "name = \"a-very-long-disk-name-indeed\"");
    let (_d, r) = parse(&text);
    assert_invalid(r, "name", 2);
    let (_d, r) = parse(&format!("{text}serial = \"short\"\n"));
    assert_eq!(r.unwrap().disks[0].serial, "short");
}

#[test]
fn bad_name() {
    let (_d, r) = parse(&NULL_DISK.replace("name = \"n\"", "name = \"\""));
    assert_invalid(r, "name", 2);
    let (_d, r) = parse(&NULL_DISK.replace("name = \"n\"", "name = \"a/b\""));
    assert_invalid(r, "name", 2);
}

#[test]
fn bad_logical_block_size() {
    let (_d, r) = parse(&format!("{NULL_DISK}logical_block_size = 1000\n"));
    assert_invalid(r, "logical_block_size", 6);
    let (_d, r) = parse(&format!("{NULL_DISK}logical_block_size = 256\n"));
    assert_invalid(r, "logical_block_size", 6);
}

#[test]
fn delay_us_too_large() {
    let (_d, r) = parse(&format!("{NULL_DISK}delay_us = 1000001\n"));
    assert_invalid(r, "delay_us", 6);
}

#[test]
fn delay_us_is_read() {
    let (_d, r) = parse(&format!("{NULL_DISK}delay_us = 2500\n"));
    assert_eq!(r.unwrap().disks[0].delay_us, 2500);
}

#[test]
fn poll_us_too_large() {
    let (_d, r) = parse(&format!("{NULL_DISK}poll_us = 2000000\n"));
    assert_invalid(r, "poll_us", 6);
}

#[test]
fn error_message_is_one_line_with_file_line_and_key() {
    let (_d, r) = parse(&format!("{NULL_DISK}queues = 0\n"));
    let m = r.unwrap_err().to_string();
    assert!(m.contains("keel.toml:6: `queues`:"), "{m}");
    assert!(!m.contains('\n'), "{m}");
}

const KEEL_DISK: &str = "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\npath = \"k.keel\"\nsize = \"1G\"\n";

#[test]
fn keel_disk_space_defaults_and_keys() {
    let (_dir, r) = parse(KEEL_DISK);
    let d = &r.unwrap().disks[0];
    assert_eq!(d.space, DiskSpace::default());
    assert_eq!((d.space.warn_percent, d.space.critical_percent), (85, 95));
    assert_eq!(d.space.wait, std::time::Duration::from_secs(10));
    assert_eq!(d.space.max_size, None);

    let (_dir, r) = parse(&format!(
        "{KEEL_DISK}max_size = \"4G\"\nspace_warn = \"70%\"\nspace_critical = 90\nspace_wait_ms = 2500\n"
    ));
    let d = &r.unwrap().disks[0];
    assert_eq!(d.space.max_size, Some(4 << 30));
    assert_eq!((d.space.warn_percent, d.space.critical_percent), (70, 90));
    assert_eq!(d.space.wait, std::time::Duration::from_millis(2500));
}

#[test]
fn spare_is_a_percentage_or_bytes_checked_against_the_size() {
    use crate::store::Spare;
    let spare = |v: &str| {
        let (_dir, r) = parse(&format!("{KEEL_DISK}spare = {v}\n"));
        r.map(|c| c.disks[0].space.spare)
    };
    assert_eq!(spare("\"25%\"").unwrap(), Spare::Percent(25));
    assert_eq!(spare("\"256M\"").unwrap(), Spare::Bytes(256 << 20));
    assert_eq!(spare("268435456").unwrap(), Spare::Bytes(256 << 20));
    let bad = |v: &str| {
        let (_dir, r) = parse(&format!("{KEEL_DISK}spare = {v}\n"));
        assert_invalid(r, "spare", 7)
    };
    assert!(bad("\"5%\"").contains("outside 15%..=400%"));
    assert!(bad("\"plenty\"").contains("not a size"));
    let (_dir, r) = parse(&format!("{NULL_DISK}spare = \"25%\"\n"));
    assert!(assert_invalid(r, "spare", 6).contains("only the keel engine"));
    // A container made with more spare starts larger: max_size is checked against that.
    let (_dir, r) = parse(&format!(
        "{KEEL_DISK}spare = \"100%\"\nmax_size = \"1300M\"\n"
    ));
    assert!(assert_invalid(r, "max_size", 8).contains("starts with"));
}

#[test]
fn space_keys_are_checked() {
    let bad = |extra: &str, key: &str, line: usize| {
        let (_dir, r) = parse(&format!("{KEEL_DISK}{extra}"));
        assert_invalid(r, key, line)
    };
    let m = bad("space_warn = \"eighty\"\n", "space_warn", 7);
    assert!(m.contains("not a percentage"), "{m}");
    let m = bad("space_critical = \"101%\"\n", "space_critical", 7);
    assert!(m.contains("outside"), "{m}");
    let m = bad("space_warn = 96\n", "space_warn", 7);
    assert!(m.contains("above space_critical"), "{m}");
    let m = bad("space_wait_ms = 600000\n", "space_wait_ms", 7);
    assert!(m.contains("limit"), "{m}");
    let m = bad("max_size = \"1G\"\n", "max_size", 7);
    assert!(m.contains("below") && m.contains("starts with"), "{m}");
    let m = bad("max_size = \"lots\"\n", "max_size", 7);
    assert!(m.contains("not a size"), "{m}");

    let (_dir, r) = parse(&format!("{NULL_DISK}space_warn = \"50%\"\n"));
    let m = assert_invalid(r, "space_warn", 6);
    assert!(m.contains("only the keel engine"), "{m}");
    let (_dir, r) = parse(&format!("{NULL_DISK}max_size = \"2G\"\n"));
    let m = assert_invalid(r, "max_size", 6);
    assert!(m.contains("only a keel container grows"), "{m}");
}

#[test]
fn cleaner_policy_is_greedy_unless_cost_benefit_is_asked_for() {
    let (_dir, r) = parse(KEEL_DISK);
    assert_eq!(
        r.unwrap().disks[0].space.cleaner_policy,
        crate::store::VictimPolicy::Greedy
    );
    let (_dir, r) = parse(&format!("{KEEL_DISK}cleaner_policy = \"cost-benefit\"\n"));
    let c = r.unwrap();
    assert_eq!(
        c.disks[0].space.cleaner_policy,
        crate::store::VictimPolicy::CostBenefit
    );
    assert_eq!(
        c.disks[0].space.store_options().cleaner_policy,
        crate::store::VictimPolicy::CostBenefit
    );
    let (_dir, r) = parse(&format!("{KEEL_DISK}cleaner_policy = \"lru\"\n"));
    let m = assert_invalid(r, "cleaner_policy", 7);
    assert!(m.contains("not a cleaner policy"), "{m}");
    let (_dir, r) = parse(&format!("{NULL_DISK}cleaner_policy = \"greedy\"\n"));
    let m = assert_invalid(r, "cleaner_policy", 6);
    assert!(m.contains("only the keel engine"), "{m}");
}

#[test]
fn cleaner_io_is_normal_unless_idle_is_asked_for() {
    let (_dir, r) = parse(KEEL_DISK);
    let c = r.unwrap();
    assert_eq!(c.disks[0].space.cleaner_io, crate::store::CleanerIo::Normal);
    assert_eq!(
        c.disks[0].space.store_options().cleaner_io,
        crate::store::CleanerIo::Normal
    );
    let (_dir, r) = parse(&format!("{KEEL_DISK}cleaner_io = \"idle\"\n"));
    let c = r.unwrap();
    assert_eq!(c.disks[0].space.cleaner_io, crate::store::CleanerIo::Idle);
    assert_eq!(
        c.disks[0].space.store_options().cleaner_io,
        crate::store::CleanerIo::Idle
    );
    let (_dir, r) = parse(&format!("{KEEL_DISK}cleaner_io = \"realtime\"\n"));
    let m = assert_invalid(r, "cleaner_io", 7);
    assert!(m.contains("not a cleaner I/O class"), "{m}");
    let (_dir, r) = parse(&format!("{NULL_DISK}cleaner_io = \"idle\"\n"));
    let m = assert_invalid(r, "cleaner_io", 6);
    assert!(m.contains("only the keel engine"), "{m}");
}

/// The keys serde expects where `probe` is an unknown one, from its error message.
fn expected_keys(text: &str) -> Vec<String> {
    let (_d, r) = parse(text);
    let message = r.unwrap_err().to_string();
    let list = message
        .split("expected ")
        .nth(1)
        .unwrap_or_else(|| panic!("{message}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_config_key_is_in_the_config_doc() {
    let doc = include_str!("../../../docs/config.md");
    let disk_keys = expected_keys(&format!("{NULL_DISK}probe = 1\n"));
    let server_keys = expected_keys("[server]\nprobe = 1\n");
    assert!(disk_keys.len() >= 16 && server_keys.len() >= 2);
    for key in disk_keys.iter().chain(&server_keys) {
        assert!(
            doc.contains(&format!("| `{key}` |")),
            "docs/config.md has no row for `{key}`"
        );
    }
    for section in expected_keys("probe = 1\n") {
        let heading = if section == "disk" {
            "## `[[disk]]`".to_string()
        } else {
            format!("## `[{section}]`")
        };
        assert!(doc.contains(&heading), "docs/config.md has no {heading}");
    }
    for engine in ["raw", "null", "keel"] {
        assert!(doc.contains(&format!("`\"{engine}\"`")), "engine {engine}");
    }
}

#[test]
fn metrics_listen_and_log_format() {
    let text = format!(
        "[server]\nmetrics_listen = \"127.0.0.1:9184\"\nlog_format = \"json\"\n{NULL_DISK}"
    );
    let (_d, r) = parse(&text);
    let server = r.unwrap().server;
    assert_eq!(
        server.metrics_listen,
        Some("127.0.0.1:9184".parse().unwrap())
    );
    assert_eq!(server.log_format, LogFormat::Json);
    let (_d, r) = parse(NULL_DISK);
    assert_eq!(r.unwrap().server.log_format, LogFormat::Text);
}

#[test]
fn bad_metrics_listen_and_log_format_are_refused() {
    let (_d, r) = parse(&format!(
        "[server]\nmetrics_listen = \"localhost\"\n{NULL_DISK}"
    ));
    assert_invalid(r, "metrics_listen", 2);
    let (_d, r) = parse(&format!("[server]\nlog_format = \"xml\"\n{NULL_DISK}"));
    assert_invalid(r, "log_format", 2);
}

#[test]
fn nbd_keys_resolve_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let r = parse_in(
        dir.path(),
        &format!(
            "[server]\nnbd_socket = \"run/nbd.sock\"\nnbd_listen = \"127.0.0.1:10809\"\n{NULL_DISK}"
        ),
    );
    let c = r.unwrap();
    assert_eq!(c.server.nbd_socket, Some(dir.path().join("run/nbd.sock")));
    assert_eq!(
        c.server.nbd_listen,
        Some("127.0.0.1:10809".parse().unwrap())
    );
    let (_d, r) = parse(&format!("[server]\n{NULL_DISK}"));
    let c = r.unwrap();
    assert_eq!((c.server.nbd_socket, c.server.nbd_listen), (None, None));
    // Like the control socket, its directory must exist.
    let (_d, r) = parse(&format!(
        "[server]\nnbd_socket = \"gone/nbd.sock\"\n{NULL_DISK}"
    ));
    assert_invalid(r, "nbd_socket", 2);
}

#[test]
fn nbd_listen_must_be_an_address_and_port() {
    for bad in ["localhost", "10809", "127.0.0.1", "[::1]", "1.2.3.4:99999"] {
        let (_d, r) = parse(&format!("[server]\nnbd_listen = \"{bad}\"\n{NULL_DISK}"));
        let m = assert_invalid(r, "nbd_listen", 2);
        assert!(m.contains("address:port"), "{m}");
    }
}

#[test]
fn import_keys_are_checked() {
    // No size needed: the container is made as large as the source.
    let keel =
        "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\npath = \"k.keel\"\n";
    let (dir, r) = parse(&format!(
        "{keel}import_from = \"img/vm.qcow2\"\nimport_rate = \"64M\"\n"
    ));
    let d = &r.unwrap().disks[0];
    assert_eq!(
        d.import_from.as_deref(),
        Some(dir.path().join("img/vm.qcow2").to_str().unwrap())
    );
    assert_eq!(d.import_rate, Some(64 << 20));
    let uri = "nbd+unix:///src?socket=/run/src.sock";
    let (_dir, r) = parse(&format!("{keel}import_from = \"{uri}\"\n"));
    assert_eq!(r.unwrap().disks[0].import_from.as_deref(), Some(uri));

    let (_dir, r) = parse(&format!("{keel}import_from = \"nbd+unix:///src\"\n"));
    let m = assert_invalid(r, "import_from", 6);
    assert!(m.contains("socket"), "{m}");
    let (_dir, r) = parse(&format!(
        "{keel}import_from = \"a.raw\"\nread_only = true\n"
    ));
    assert_invalid(r, "import_from", 6);
    let (_dir, r) = parse(&format!(
        "{keel}import_from = \"a.raw\"\nimport_rate = \"64K\"\n"
    ));
    assert_invalid(r, "import_rate", 7);
    let (_dir, r) = parse(&format!("{keel}size = \"1G\"\nimport_rate = \"64M\"\n"));
    assert_invalid(r, "import_rate", 1);
    let (_dir, r) = parse(&format!("{NULL_DISK}import_from = \"a.raw\"\n"));
    let m = assert_invalid(r, "import_from", 6);
    assert!(m.contains("only keel disks"), "{m}");
}

#[test]
fn handover_is_for_writable_raw_keel_and_rbd_disks() {
    let keel = "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\npath = \"k.keel\"\nsize = \"1G\"\n";
    let (_dir, r) = parse(keel);
    assert!(!r.unwrap().disks[0].handover, "off by default");
    let (_dir, r) = parse(&format!("{keel}handover = true\n"));
    assert!(r.unwrap().disks[0].handover);
    let (_dir, r) = parse(&format!("{NULL_DISK}handover = true\n"));
    let m = assert_invalid(r, "handover", 6);
    assert!(m.contains("raw, keel and rbd"), "{m}");
    let rbd = "[[disk]]\nname = \"r\"\nsocket = \"r.sock\"\nengine = \"rbd\"\nimage = \"rbd/vm\"\n";
    let (_dir, r) = parse(&format!("{rbd}handover = true\n"));
    assert!(r.unwrap().disks[0].handover);
    let (_dir, r) = parse(&format!("{rbd}read_only = true\nhandover = true\n"));
    assert_invalid(r, "handover", 7);
    let (_dir, r) = parse(&format!("{keel}read_only = true\nhandover = true\n"));
    assert_invalid(r, "handover", 8);
    let (_dir, r) = parse(&format!(
        "{keel}import_from = \"img/vm.qcow2\"\nhandover = true\n"
    ));
    assert_invalid(r, "handover", 8);
}

#[test]
fn encryption_keys_are_checked() {
    use crate::store::seal::KeySource;
    let (dir, r) = parse(&format!(
        "{KEEL_DISK}encryption = \"aes-xts-256\"\nkey_file = \"keys/k.key\"\n"
    ));
    assert_eq!(
        r.unwrap().disks[0].key_file,
        Some(KeySource::File(dir.path().join("keys/k.key")))
    );
    let (_dir, r) = parse(&format!(
        "{KEEL_DISK}encryption = \"aes-xts-256\"\nkey_file = \"credential:vm1.key\"\n"
    ));
    assert_eq!(
        r.unwrap().disks[0].key_file,
        Some(KeySource::Credential("vm1.key".into()))
    );
    let (_dir, r) = parse(&format!("{KEEL_DISK}encryption = \"aes-xts-256\"\n"));
    let m = assert_invalid(r, "key_file", 7);
    assert!(m.contains("needs its key"), "{m}");
    let (_dir, r) = parse(&format!("{KEEL_DISK}key_file = \"k.key\"\n"));
    assert_invalid(r, "encryption", 7);
    let (_dir, r) = parse(&format!(
        "{KEEL_DISK}encryption = \"aes-cbc\"\nkey_file = \"k.key\"\n"
    ));
    let m = assert_invalid(r, "encryption", 7);
    assert!(m.contains("aes-xts-256"), "{m}");
    let (_dir, r) = parse(&format!(
        "{KEEL_DISK}encryption = \"aes-xts-256\"\nkey_file = \"env:\"\n"
    ));
    assert_invalid(r, "key_file", 8);
    let (_dir, r) = parse(&format!(
        "{NULL_DISK}encryption = \"aes-xts-256\"\nkey_file = \"k.key\"\n"
    ));
    let m = assert_invalid(r, "encryption", 1);
    assert!(m.contains("only keel disks"), "{m}");
}

#[test]
fn compression_is_checked() {
    use crate::config::Compression;
    use crate::store::compress::Codec;
    for (value, want) in [
        ("none", None),
        ("lz4", Some(Codec::Lz4)),
        ("zstd", Some(Codec::Zstd)),
    ] {
        let (_dir, r) = parse(&format!("{KEEL_DISK}compression = \"{value}\"\n"));
        assert_eq!(r.unwrap().disks[0].compression, Compression::Set(want));
    }
    let (_dir, r) = parse(KEEL_DISK);
    assert_eq!(r.unwrap().disks[0].compression, Compression::Unset);
    let (_dir, r) = parse(&format!("{KEEL_DISK}compression = \"gzip\"\n"));
    let m = assert_invalid(r, "compression", 7);
    assert!(m.contains("gzip") && m.contains("zstd"), "{m}");
    let (_dir, r) = parse(&format!("{NULL_DISK}compression = \"lz4\"\n"));
    let m = assert_invalid(r, "compression", 1);
    assert!(m.contains("only keel disks"), "{m}");
}
