//! A hostile VMM: arbitrary vhost-user messages, sizes and file descriptors sent to a disk's
//! socket of an in-process keeld. After every input the same socket must serve a well-behaved
//! handshake, a second disk must keep serving its client, and the process must not collect
//! file descriptors (sessions end on keeld's own threads, so a few may still be closing).

use std::cell::RefCell;
use std::time::Duration;

use keel_tests::client::Client;
use keel_tests::keeld::{InProcess, null_disk, raw_disk};
use keel_tests::raw_frontend::{self, decode};

const PATIENCE: Duration = Duration::from_secs(10);
/// Descriptors the process may hold above its count after the first input: sessions still being
/// torn down. A leak of even one per connection passes this within a few hundred inputs.
const FD_SLACK: usize = 64;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

struct Rig {
    keeld: InProcess,
    other: Client,
    round: u8,
    /// Open descriptors after the first input (`None` before it).
    fds: Option<usize>,
}

thread_local! {
    static RIG: RefCell<Option<Rig>> = const { RefCell::new(None) };
}

fn start() -> Rig {
    let keeld = InProcess::start(&format!(
        "{}{}",
        null_disk("a", "64M", "queues = 2\nqueue_size = 1024"),
        raw_disk("b", "4M", "")
    ));
    let other = Client::connect(&keeld.socket("b"), 1, 1 << 20).expect("client of disk b");
    Rig {
        keeld,
        other,
        round: 0,
        fds: None,
    }
}

pub fn run(data: &[u8]) {
    let msgs = decode(data);
    RIG.with(|cell| {
        let mut slot = cell.borrow_mut();
        let rig = slot.get_or_insert_with(start);
        let socket = rig.keeld.socket("a");
        let closed = raw_frontend::send_all(&socket, &msgs, PATIENCE).expect("connect to disk a");
        assert!(
            closed,
            "keeld kept the connection open after the frontend hung up"
        );
        raw_frontend::handshake(&socket, PATIENCE).expect("disk a serves a frontend again");
        rig.round = rig.round.wrapping_add(1);
        let data = [rig.round; 4096];
        rig.other.write(0, 0, &data).expect("disk b write");
        assert_eq!(rig.other.read(0, 0, 4096).expect("disk b read"), data);
        let now = open_fds();
        let first = *rig.fds.get_or_insert(now);
        assert!(
            now <= first + FD_SLACK,
            "keeld holds {now} file descriptors, {first} after the first input: a session leaks"
        );
    });
}
