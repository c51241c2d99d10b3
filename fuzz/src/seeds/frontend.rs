//! Seed sessions for the `vhost_frontend` target: a well-formed start of a session up to a
//! running ring, and a few malformed variants of its messages.

use keel_tests::raw_frontend::{Fd, Message, Region, code};

const MIB: u64 = 1 << 20;

fn preamble() -> Vec<Message> {
    vec![
        Message::new(code::SET_OWNER, Vec::new()),
        Message::new(code::GET_FEATURES, Vec::new()),
        Message::u64(code::SET_FEATURES, (1 << 32) | (1 << 30)),
        Message::new(code::GET_PROTOCOL_FEATURES, Vec::new()),
        Message::u64(code::SET_PROTOCOL_FEATURES, (1 << 9) | (1 << 3) | 1),
    ]
}

fn memory() -> Message {
    let r = Region {
        guest_addr: 0,
        size: MIB,
        user_addr: 0x7000_0000,
        mmap_offset: 0,
    };
    Message::mem_table(1, &[r]).with_fds(vec![Fd::MemFd(MIB)])
}

fn ring() -> Vec<Message> {
    vec![
        Message::vring_state(code::SET_VRING_NUM, 0, 256),
        Message::vring_addr(0, 0, 0x7000_0000, 0x7000_8000, 0x7000_4000),
        Message::vring_state(code::SET_VRING_BASE, 0, 0),
        Message::vring_fd(code::SET_VRING_CALL, 0),
        Message::vring_fd(code::SET_VRING_KICK, 0),
        Message::vring_state(code::SET_VRING_ENABLE, 0, 1),
        Message::config(code::GET_CONFIG, 0, 60, &[0; 60]),
        Message::vring_state(code::GET_VRING_BASE, 0, 0),
    ]
}

fn session(edit: impl FnOnce(&mut Vec<Message>)) -> Vec<Message> {
    let mut v = preamble();
    v.push(memory());
    v.extend(ring());
    edit(&mut v);
    v
}

pub fn seeds() -> Vec<(&'static str, Vec<Message>)> {
    vec![
        ("session", session(|_| {})),
        (
            "session-need-reply",
            session(|v| v.iter_mut().for_each(|m| *m = m.clone().need_reply())),
        ),
        ("mem-table-no-fd", session(|v| v[5].fds.clear())),
        ("mem-table-count-9", session(|v| v[5].payload[0] = 9)),
        ("ring-index-99", session(|v| v[6].payload[0] = 99)),
        ("ring-num-3", session(|v| v[6].payload[4] = 3)),
        ("size-too-large", session(|v| v[7].size += 100)),
        ("bogus-code", session(|v| v[2].code = 0xdead)),
        ("handshake-only", preamble()),
    ]
}
