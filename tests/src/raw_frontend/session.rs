//! The messages a VMM sends to start and restart a ring, for tests that stop and start rings
//! by hand (GET_VRING_BASE, as QEMU does when it stops a guest for a migration).

use super::{Fd, Message, Region, code};

/// A vhost-user session up to a started ring 0 (8 entries, nothing available) over 1 MiB of
/// guest memory, as a VMM sends it.
pub fn with_a_started_ring() -> Vec<Message> {
    let mib = 1u64 << 20;
    let memory = Message::mem_table(
        1,
        &[Region {
            guest_addr: 0,
            size: mib,
            user_addr: 0x7000_0000,
            mmap_offset: 0,
        }],
    )
    .with_fds(vec![Fd::MemFd(mib)]);
    let mut msgs = vec![
        Message::new(code::SET_OWNER, Vec::new()),
        Message::new(code::GET_FEATURES, Vec::new()),
        Message::u64(code::SET_FEATURES, (1 << 32) | (1 << 30)),
        Message::u64(code::SET_PROTOCOL_FEATURES, (1 << 9) | (1 << 3) | 1),
        memory,
        Message::vring_state(code::SET_VRING_NUM, 0, 8),
        Message::vring_addr(0, 0, 0x7000_0000, 0x7000_8000, 0x7000_4000),
    ];
    msgs.extend(ring_start());
    msgs
}

/// (Re)starts ring 0 at index 0; its kick is already signalled.
pub fn ring_start() -> Vec<Message> {
    vec![
        Message::vring_state(code::SET_VRING_BASE, 0, 0),
        Message::vring_fd(code::SET_VRING_CALL, 0),
        Message::vring_fd(code::SET_VRING_KICK, 0),
        Message::vring_state(code::SET_VRING_ENABLE, 0, 1),
    ]
}
