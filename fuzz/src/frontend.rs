//! A hostile VMM: arbitrary vhost-user messages, sizes and file descriptors sent to a disk's
//! socket of an in-process keeld. After every input the same socket must serve a well-behaved
//! handshake, and a second disk must keep serving its client.
//!
//! Two crashes found by this target are not fixed yet (docs/security.md); unless
//! `KEEL_FUZZ_KNOWN=1`, inputs are steered around them so the fuzzer can look for new ones:
//! memory regions larger than their memfd (SIGBUS) and memfds filled with non-zero bytes
//! and ring bases other than zero (both put the available index beyond the ring, which wedges
//! the queue worker).

use std::cell::RefCell;
use std::time::Duration;

use keel_tests::client::Client;
use keel_tests::keeld::{InProcess, null_disk, raw_disk};
use keel_tests::raw_frontend::{self, Fd, Message, code, decode};

const PATIENCE: Duration = Duration::from_secs(10);

struct Rig {
    keeld: InProcess,
    other: Client,
    round: u8,
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
    }
}

fn u64_at(p: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = p.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// Whether `m` maps a region past the end of its memfd (the known SIGBUS).
fn maps_past_eof(m: &Message) -> bool {
    let first = match m.code {
        code::SET_MEM_TABLE => 8,
        code::ADD_MEM_REG => 8,
        _ => return false,
    };
    m.fds.iter().enumerate().any(|(i, fd)| {
        let at = first + 32 * i;
        let (Some(size), Some(offset)) = (u64_at(&m.payload, at + 8), u64_at(&m.payload, at + 24))
        else {
            return false;
        };
        match fd {
            Fd::MemFd(len) | Fd::MemFdFilled(len, _) => offset.saturating_add(size) > *len,
            _ => false,
        }
    })
}

/// Steers `msgs` around the known, unfixed crashes.
pub fn avoid_known(msgs: &mut Vec<Message>) {
    msgs.retain(|m| !maps_past_eof(m));
    for m in msgs.iter_mut() {
        if m.code == code::SET_VRING_BASE
            && let Some(num) = m.payload.get_mut(4..8)
        {
            num.fill(0);
        }
        for fd in &mut m.fds {
            if let Fd::MemFdFilled(len, _) = *fd {
                *fd = Fd::MemFd(len);
            }
        }
    }
}

pub fn run(data: &[u8]) {
    let mut msgs = decode(data);
    if std::env::var_os("KEEL_FUZZ_KNOWN").is_none() {
        avoid_known(&mut msgs);
    }
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
    });
}
