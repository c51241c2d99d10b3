use super::*;

#[test]
fn decode_is_total_and_bounded() {
    assert!(decode(&[]).is_empty());
    let msgs = decode(&[0xff; 20000]);
    assert!(!msgs.is_empty() && msgs.len() <= MAX_MESSAGES);
    assert!(msgs.iter().all(|m| m.payload.len() <= MAX_PAYLOAD + 64));
}

#[test]
fn encode_round_trips() {
    let msgs = vec![
        Message::mem_table(1, &[]).with_fds(vec![Fd::MemFd(4096), Fd::MemFdFilled(32, 7)]),
        Message::u64(code::SET_FEATURES, 5).need_reply(),
        Message {
            code: 0xdead,
            flags: 0xffff_0001,
            size: 99,
            payload: vec![1, 2],
            fds: vec![Fd::EventFd, Fd::DevNull, Fd::Socket],
        },
    ];
    assert_eq!(decode(&encode(&msgs)), msgs);
}

#[test]
fn structured_bodies_have_their_wire_sizes() {
    let m = decode(&[code::SET_VRING_ADDR as u8, 0, 3]);
    assert_eq!(m[0].code, code::SET_VRING_ADDR);
    assert_eq!(m[0].payload.len(), 40);
    assert_eq!(m[0].size, 40);
    let t = Message::mem_table(
        2,
        &[Region {
            guest_addr: 0,
            size: 4096,
            user_addr: 0,
            mmap_offset: 0,
        }],
    );
    assert_eq!(t.payload.len(), 8 + 32);
}
