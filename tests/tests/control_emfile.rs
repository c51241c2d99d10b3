//! The control server when the process runs out of descriptors: accepting fails with EMFILE
//! while the table is full, and the server must pause and carry on, never end its thread (it
//! used to, leaving `keel disks` with "Connection refused" until keeld restarted).
//!
//! keeld runs in this test's process, so lowering the process's descriptor limit starves both
//! the test's connections and keeld's accepts. One test in this file: the limit is process-wide.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use keel_backend::control::client::ControlClient;
use keel_protocol::control::DiskInfo;
use keel_tests::client::Client;
use keel_tests::keeld::{InProcess, raw_disk};

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

fn set_soft_limit(soft: u64) {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim), 0);
        rlim.rlim_cur = soft.min(rlim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &rlim), 0);
    }
}

#[test]
fn the_control_api_outlives_running_out_of_descriptors() {
    let toml = format!(
        "[server]\ncontrol_socket = \"keel.sock\"\n\n{}",
        raw_disk("r", "8M", "")
    );
    let keeld = InProcess::start(&toml);
    let control = keeld.dir().join("keel.sock");
    let api = ControlClient::new(&control).with_timeout(Duration::from_secs(10));
    let _: Vec<DiskInfo> = api.get("/v1/disks").unwrap();

    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    // Room for a few dozen more descriptors: fewer than the control server's connection cap,
    // so the table fills before the cap is reached.
    set_soft_limit(open_fds() + 40);
    let mut held = Vec::new();
    let exhausted = loop {
        match UnixStream::connect(&control) {
            Ok(s) => held.push(s),
            Err(e) => break e,
        }
        assert!(held.len() < 1000, "the descriptor limit was never reached");
    };
    assert_eq!(exhausted.raw_os_error(), Some(libc::EMFILE), "{exhausted}");
    // Keep the table full a while: keeld's accepts fail meanwhile.
    std::thread::sleep(Duration::from_millis(500));
    drop(held);
    set_soft_limit(old.rlim_cur);

    // The control thread is still there, and frontends are served.
    let disks: Vec<DiskInfo> = api.get("/v1/disks").expect("the control API answers");
    assert_eq!(disks[0].name, "r");
    let mut c = Client::connect(&keeld.socket("r"), 1, 1 << 20).expect("frontend");
    c.write(0, 0, &[7u8; 4096]).unwrap();
    assert_eq!(c.read(0, 0, 4096).unwrap(), vec![7u8; 4096]);
}
