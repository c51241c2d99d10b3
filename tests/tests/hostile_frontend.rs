//! A hostile or broken VMM on a disk's socket: malformed headers, wrong sizes, bogus request
//! codes, bad memory tables, out-of-range ring indexes, garbage rings. After each, the same socket
//! must serve a well-behaved frontend again, and a second disk must keep serving its client
//! throughout. (Some servers stop listening for good after one malformed SET_MEM_TABLE.)

use std::path::Path;
use std::time::Duration;

use keel_tests::client::Client;
use keel_tests::keeld::{InProcess, keeld_binary, null_disk, raw_disk, wait_for_socket};
use keel_tests::raw_frontend::{self, Fd, Message, Region, code, decode, encode, send_all};

const MIB: usize = 1 << 20;
const PATIENCE: Duration = Duration::from_secs(10);

/// Disk `a` takes the abuse; disk `b` has a steady client.
fn daemon() -> InProcess {
    InProcess::start(&format!(
        "{}{}",
        null_disk("a", "64M", "queues = 2\nqueue_size = 1024"),
        raw_disk("b", "4M", "")
    ))
}

/// Sends `msgs` to disk `a`, then checks `a` answers a well-behaved handshake and `b` still
/// reads back what its client wrote.
fn abuse_and_check(keeld: &InProcess, other: &mut Client, round: u8, name: &str, msgs: &[Message]) {
    let socket = keeld.socket("a");
    let closed = send_all(&socket, msgs, PATIENCE)
        .unwrap_or_else(|e| panic!("{name}: cannot connect to disk a: {e}"));
    assert!(
        closed,
        "{name}: keeld kept the connection open after the frontend hung up"
    );
    healthy(&socket, name);
    other.write(0, 4096, &[round; 4096]).expect("disk b write");
    assert_eq!(
        other.read(0, 4096, 4096).expect("disk b read"),
        vec![round; 4096],
        "{name}"
    );
}

fn healthy(socket: &Path, name: &str) {
    let features = raw_frontend::handshake(socket, PATIENCE)
        .unwrap_or_else(|e| panic!("{name}: disk a no longer serves a frontend: {e}"));
    assert_ne!(
        features & (1 << 32),
        0,
        "{name}: VIRTIO_F_VERSION_1 missing"
    );
}

fn header_only(code: u32, flags: u32, size: u32) -> Message {
    Message {
        code,
        flags,
        size,
        payload: Vec::new(),
        fds: Vec::new(),
    }
}

fn region(guest_addr: u64, size: u64, user_addr: u64) -> Region {
    Region {
        guest_addr,
        size,
        user_addr,
        mmap_offset: 0,
    }
}

/// The start of a session that a real VMM would send, up to the memory table.
fn preamble() -> Vec<Message> {
    vec![
        Message::new(code::SET_OWNER, Vec::new()),
        Message::new(code::GET_FEATURES, Vec::new()),
        Message::u64(code::SET_FEATURES, (1 << 32) | (1 << 30)),
        Message::u64(code::SET_PROTOCOL_FEATURES, (1 << 9) | (1 << 3) | 1),
    ]
}

/// A memory table of one 1 MiB region at guest 0, user address 0x7000_0000, filled with `fill`.
fn memory(fill: u8) -> Message {
    Message::mem_table(1, &[region(0, MIB as u64, 0x7000_0000)])
        .with_fds(vec![Fd::MemFdFilled(MIB as u64, fill)])
}

/// A started ring 0 of `num` entries over [`memory`], kicked at once.
fn started_ring(num: u32) -> Vec<Message> {
    vec![
        Message::vring_state(code::SET_VRING_NUM, 0, num),
        Message::vring_addr(0, 0, 0x7000_0000, 0x7000_8000, 0x7000_4000),
        Message::vring_state(code::SET_VRING_BASE, 0, 0),
        Message::vring_fd(code::SET_VRING_CALL, 0),
        Message::vring_fd(code::SET_VRING_KICK, 0),
        Message::vring_state(code::SET_VRING_ENABLE, 0, 1),
    ]
}

fn with_preamble(rest: Vec<Message>) -> Vec<Message> {
    let mut v = preamble();
    v.extend(rest);
    v
}

/// GET_INFLIGHT_FD / SET_INFLIGHT_FD body: mmap_size, mmap_offset, num_queues, queue_size (and
/// the struct's 4 bytes of tail padding, as QEMU sends it).
fn inflight(code: u32, size: u64, offset: u64, queues: u16, queue_size: u16) -> Message {
    let mut p = size.to_le_bytes().to_vec();
    p.extend_from_slice(&offset.to_le_bytes());
    p.extend_from_slice(&queues.to_le_bytes());
    p.extend_from_slice(&queue_size.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    Message::new(code, p)
}

/// Bytes keeld's inflight area takes for `queues` rings of 1024 descriptors.
const AREA_1024: u64 = (16 + 16 * 1024u64).next_multiple_of(64);

/// Hand-made cases, each a named message sequence.
fn cases() -> Vec<(&'static str, Vec<Message>)> {
    let u64_max_region = region(0, u64::MAX, 0x1000);
    let mut cases = vec![
        (
            "GET_INFLIGHT_FD with a short payload",
            with_preamble(vec![Message::new(code::GET_INFLIGHT_FD, vec![1, 2, 3])]),
        ),
        (
            "GET_INFLIGHT_FD for more queues than the disk has",
            with_preamble(vec![inflight(code::GET_INFLIGHT_FD, 0, 0, 200, 1024)]),
        ),
        (
            "SET_INFLIGHT_FD without a descriptor",
            with_preamble(vec![inflight(code::SET_INFLIGHT_FD, AREA_1024, 0, 1, 1024)]),
        ),
        (
            "SET_INFLIGHT_FD with an area larger than its file",
            with_preamble(vec![
                inflight(code::SET_INFLIGHT_FD, AREA_1024 * 2, 0, 2, 1024)
                    .with_fds(vec![Fd::SealedMemFd(AREA_1024)]),
            ]),
        ),
        (
            "SET_INFLIGHT_FD at an offset past its file, then a started ring",
            with_preamble({
                let mut v = vec![
                    inflight(code::SET_INFLIGHT_FD, AREA_1024, 1 << 40, 1, 1024)
                        .with_fds(vec![Fd::SealedMemFd(AREA_1024)]),
                    memory(0),
                ];
                v.extend(started_ring(64));
                v
            }),
        ),
        (
            "SET_INFLIGHT_FD with a garbage area, then a started ring over garbage",
            with_preamble({
                let mut v = vec![
                    inflight(code::SET_INFLIGHT_FD, AREA_1024, 0, 1, 1024)
                        .with_fds(vec![Fd::SealedMemFd(AREA_1024)]),
                    memory(0xff),
                ];
                v.extend(started_ring(1024));
                v
            }),
        ),
        ("unknown code", vec![header_only(0xdead, 1, 0)]),
        ("code zero", vec![header_only(0, 1, 0)]),
        ("version 2", vec![header_only(code::GET_FEATURES, 2, 0)]),
        (
            "reserved flag bits",
            vec![header_only(code::GET_FEATURES, 0xffff_fff1, 0)],
        ),
        (
            "reply flag from the frontend",
            vec![header_only(code::GET_FEATURES, 5, 0)],
        ),
        (
            "declared size beyond the limit",
            vec![header_only(code::SET_FEATURES, 1, 1 << 20)],
        ),
        (
            "declared size larger than sent",
            vec![header_only(code::SET_FEATURES, 1, 8)],
        ),
        (
            "payload where none is allowed",
            vec![Message::u64(code::GET_FEATURES, 7)],
        ),
        (
            "short SET_FEATURES",
            vec![Message::new(code::SET_FEATURES, vec![1, 2, 3])],
        ),
        (
            "fd on a message that takes none",
            vec![Message::u64(code::SET_FEATURES, 0).with_fds(vec![Fd::EventFd])],
        ),
        (
            "mem table counting zero regions",
            with_preamble(vec![Message::mem_table(0, &[])]),
        ),
        (
            "mem table counting more regions than sent",
            with_preamble(vec![
                Message::mem_table(9, &[region(0, 4096, 0)]).with_fds(vec![Fd::MemFd(4096)]),
            ]),
        ),
        (
            "mem table counting 255 regions",
            with_preamble(vec![Message::mem_table(255, &[])]),
        ),
        (
            "mem table without fds",
            with_preamble(vec![Message::mem_table(1, &[region(0, 4096, 0)])]),
        ),
        (
            "mem table with more fds than regions",
            with_preamble(vec![
                Message::mem_table(1, &[region(0, 4096, 0)]).with_fds(vec![
                    Fd::MemFd(4096),
                    Fd::MemFd(4096),
                    Fd::EventFd,
                ]),
            ]),
        ),
        (
            "mem table region of size zero",
            with_preamble(vec![
                Message::mem_table(1, &[region(0, 0, 0)]).with_fds(vec![Fd::MemFd(4096)]),
            ]),
        ),
        (
            "mem table region of u64::MAX bytes",
            with_preamble(vec![
                Message::mem_table(1, &[u64_max_region]).with_fds(vec![Fd::MemFd(4096)]),
            ]),
        ),
        (
            "mem table region wrapping the guest address space",
            with_preamble(vec![
                Message::mem_table(1, &[region(u64::MAX - 4095, 8192, 0)])
                    .with_fds(vec![Fd::MemFd(8192)]),
            ]),
        ),
        (
            "mem table with overlapping regions",
            with_preamble(vec![
                Message::mem_table(2, &[region(0, 8192, 0), region(4096, 8192, 0x10000)])
                    .with_fds(vec![Fd::MemFd(8192), Fd::MemFd(8192)]),
            ]),
        ),
        (
            "mem table backed by /dev/null",
            with_preamble(vec![
                Message::mem_table(1, &[region(0, 4096, 0)]).with_fds(vec![Fd::DevNull]),
            ]),
        ),
        (
            "mem table with an offset past the file",
            with_preamble(vec![
                Message::mem_table(
                    1,
                    &[Region {
                        mmap_offset: u64::MAX - 4095,
                        ..region(0, 4096, 0)
                    }],
                )
                .with_fds(vec![Fd::MemFd(4096)]),
            ]),
        ),
        (
            "ring index out of range",
            with_preamble(vec![
                memory(0),
                Message::vring_state(code::SET_VRING_NUM, 200, 16),
                Message::vring_addr(77, 0, 0x7000_0000, 0x7000_8000, 0x7000_4000),
                Message::vring_state(code::SET_VRING_BASE, u32::MAX, 0),
                Message::vring_state(code::GET_VRING_BASE, 1000, 0),
                Message::vring_fd(code::SET_VRING_KICK, 0x7f),
                Message::vring_fd(code::SET_VRING_CALL, 0xff),
                Message::vring_fd(code::SET_VRING_ERR, 0x40),
                Message::vring_state(code::SET_VRING_ENABLE, 1000, 1),
            ]),
        ),
        (
            "ring sizes zero, odd and huge",
            with_preamble(vec![
                Message::vring_state(code::SET_VRING_NUM, 0, 0),
                Message::vring_state(code::SET_VRING_NUM, 0, 3),
                Message::vring_state(code::SET_VRING_NUM, 0, 65535),
                Message::vring_state(code::SET_VRING_NUM, 1, u32::MAX),
            ]),
        ),
        (
            "ring addresses outside the memory table",
            with_preamble({
                let mut v = vec![memory(0)];
                v.extend(started_ring(16));
                v[2] = Message::vring_addr(0, 0, 0xdead_0000, 0xbeef_0000, 0x1);
                v
            }),
        ),
        (
            // Available index 0x0101 (within the 1024 entries), every descriptor garbage.
            "ring with every byte 0x01",
            with_preamble({
                let mut v = vec![memory(0x01)];
                v.extend(started_ring(1024));
                v
            }),
        ),
        (
            "memory table replaced under a started ring",
            with_preamble({
                let mut v = vec![memory(0x01)];
                v.extend(started_ring(1024));
                v.push(Message::mem_table(0, &[]));
                v.push(memory(0x02));
                v
            }),
        ),
        (
            "kick without an fd",
            with_preamble(vec![Message::u64(code::SET_VRING_KICK, 0x100)]),
        ),
        (
            "kick with a socket instead of an eventfd",
            with_preamble(vec![
                Message::u64(code::SET_VRING_KICK, 0).with_fds(vec![Fd::Socket]),
            ]),
        ),
        (
            "config windows out of range",
            with_preamble(vec![
                Message::config(code::GET_CONFIG, u32::MAX, 8, &[0; 8]),
                Message::config(code::GET_CONFIG, 0, 4096, &[]),
                Message::config(code::GET_CONFIG, 0, 0, &[]),
                Message::config(code::SET_CONFIG, 0, 8, &[0xff; 8]),
                Message::config(code::SET_CONFIG, 32, 1, &[]),
            ]),
        ),
        (
            "inflight fd requests without the feature",
            with_preamble(vec![
                Message::new(code::GET_INFLIGHT_FD, vec![0; 24]),
                Message::new(code::SET_INFLIGHT_FD, vec![0; 24]).with_fds(vec![Fd::MemFd(4096)]),
            ]),
        ),
        (
            "memory slots added and removed wrongly",
            with_preamble(vec![
                Message::new(code::GET_MAX_MEM_SLOTS, Vec::new()),
                Message::new(code::ADD_MEM_REG, vec![0; 40]),
                Message::new(code::ADD_MEM_REG, vec![0xff; 40]).with_fds(vec![Fd::MemFd(4096)]),
                Message::new(code::REM_MEM_REG, vec![0; 40]),
            ]),
        ),
        (
            "log base and fd",
            with_preamble(vec![
                Message::new(code::SET_LOG_BASE, vec![0; 16]).with_fds(vec![Fd::MemFd(4096)]),
                Message::u64(code::SET_LOG_FD, 0).with_fds(vec![Fd::EventFd]),
            ]),
        ),
        (
            "backend request channel",
            with_preamble(vec![
                Message::new(code::SET_BACKEND_REQ_FD, Vec::new()).with_fds(vec![Fd::Socket]),
            ]),
        ),
        (
            "reset owner mid-session",
            with_preamble({
                let mut v = vec![memory(0)];
                v.extend(started_ring(16));
                v.push(Message::new(code::RESET_OWNER, Vec::new()));
                v.push(Message::vring_state(code::GET_VRING_BASE, 0, 0));
                v
            }),
        ),
    ];
    for c in &mut cases {
        for m in &mut c.1 {
            // Ask for a reply everywhere: the server must answer or hang up, never wedge.
            if m.flags == raw_frontend::VERSION_1 {
                m.flags |= raw_frontend::NEED_REPLY;
            }
        }
    }
    cases
}

#[test]
fn hand_made_hostile_sessions_leave_the_daemon_serving() {
    let keeld = daemon();
    let mut other = Client::connect(&keeld.socket("b"), 1, MIB).expect("client of disk b");
    healthy(&keeld.socket("a"), "before");
    for (round, (name, msgs)) in cases().into_iter().enumerate() {
        abuse_and_check(&keeld, &mut other, round as u8, name, &msgs);
    }
    let s = keeld.daemon().stats()[0].1.snapshot();
    assert!(s.connections as usize >= cases().len(), "{s:?}");
}

/// xorshift64*: a small deterministic generator, so a failing seed replays exactly.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Random bytes through the fuzz target's decoder, seeds 1..=ROUNDS.
#[test]
fn seeded_random_sessions_leave_the_daemon_serving() {
    const ROUNDS: u64 = 120;
    let keeld = daemon();
    let mut other = Client::connect(&keeld.socket("b"), 1, MIB).expect("client of disk b");
    for seed in 1..=ROUNDS {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let len = (next(&mut state) % 2048) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
        // Start half the rounds with a well-formed preamble so the random part gets past it.
        if seed % 2 == 0 {
            let mut start = encode(&preamble());
            start.append(&mut bytes);
            bytes = start;
        }
        let msgs = decode(&bytes);
        abuse_and_check(
            &keeld,
            &mut other,
            seed as u8,
            &format!("seed {seed}"),
            &msgs,
        );
    }
}

/// A memory table whose backing file is smaller than the region it declares. Mapping succeeds
/// (mmap does not check the file size) and the first access past the file's end raises SIGBUS,
/// which kills the whole daemon.
/// The inflight messages a frontend with VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD sends: keeld hands
/// out an area sized for the request, takes back a sealed one and refuses one that could shrink
/// under its mapping (a SIGBUS waiting to happen).
#[test]
fn inflight_area_is_handed_out_and_only_a_sealed_one_taken_back() {
    let keeld = daemon();
    let mut fe = raw_frontend::RawFrontend::connect(&keeld.socket("a")).unwrap();
    for m in preamble() {
        fe.send(&m).unwrap();
    }
    let (c, _, p) = fe.read_reply().unwrap();
    assert_eq!(c, code::GET_FEATURES);
    assert_eq!(p.len(), 8);
    let reply_u64 = |fe: &mut raw_frontend::RawFrontend, code: u32| {
        let (c, flags, p) = fe.read_reply().unwrap();
        assert_eq!(c, code);
        assert_ne!(flags & raw_frontend::REPLY, 0);
        u64::from_le_bytes(p[..8].try_into().unwrap())
    };
    fe.send(&Message::new(code::GET_PROTOCOL_FEATURES, Vec::new()))
        .unwrap();
    let protocol = reply_u64(&mut fe, code::GET_PROTOCOL_FEATURES);
    assert_ne!(protocol & (1 << 12), 0, "INFLIGHT_SHMFD offered");

    fe.send(&inflight(code::GET_INFLIGHT_FD, 0, 0, 2, 1024))
        .unwrap();
    let (c, _, p) = fe.read_reply().unwrap();
    assert_eq!((c, p.len()), (code::GET_INFLIGHT_FD, 24));
    let field = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().unwrap());
    assert_eq!((field(0), field(8)), (2 * AREA_1024, 0), "size and offset");

    fe.send(&inflight(code::GET_INFLIGHT_FD, 0, 0, 3, 1024))
        .unwrap();
    let (_, _, p) = fe.read_reply().unwrap();
    assert_eq!(
        u64::from_le_bytes(p[..8].try_into().unwrap()),
        0,
        "no area for a third queue"
    );

    let set = |fd| {
        inflight(code::SET_INFLIGHT_FD, 2 * AREA_1024, 0, 2, 1024)
            .with_fds(vec![fd])
            .need_reply()
    };
    fe.send(&set(Fd::SealedMemFd(2 * AREA_1024))).unwrap();
    assert_eq!(
        reply_u64(&mut fe, code::SET_INFLIGHT_FD),
        0,
        "sealed: taken"
    );
    fe.send(&set(Fd::MemFd(2 * AREA_1024))).unwrap();
    assert_ne!(
        reply_u64(&mut fe, code::SET_INFLIGHT_FD),
        0,
        "unsealed: refused"
    );
    assert!(fe.finish(PATIENCE));
    healthy(&keeld.socket("a"), "after the inflight messages");
}

/// Live migration's dirty log: LOG_ALL and LOG_SHMFD are offered, a sealed log is mapped and
/// answered, and a log keeld could not mark safely (not sealed, smaller than declared) ends
/// the connection instead of being half-used.
#[test]
fn dirty_log_is_offered_and_only_a_sealed_log_of_the_declared_size_is_taken() {
    let keeld = daemon();
    let log_base = |size: u64, fd| {
        let mut p = size.to_le_bytes().to_vec();
        p.extend_from_slice(&0u64.to_le_bytes());
        Message::new(code::SET_LOG_BASE, p).with_fds(vec![fd])
    };
    let mut fe = raw_frontend::RawFrontend::connect(&keeld.socket("a")).unwrap();
    for m in preamble() {
        fe.send(&m).unwrap();
    }
    let (c, _, p) = fe.read_reply().unwrap();
    assert_eq!(c, code::GET_FEATURES);
    let features = u64::from_le_bytes(p[..8].try_into().unwrap());
    assert_ne!(features & (1 << 26), 0, "VHOST_F_LOG_ALL offered");
    fe.send(&Message::new(code::GET_PROTOCOL_FEATURES, Vec::new()))
        .unwrap();
    let (_, _, p) = fe.read_reply().unwrap();
    let protocol = u64::from_le_bytes(p[..8].try_into().unwrap());
    assert_ne!(protocol & (1 << 1), 0, "LOG_SHMFD offered");
    fe.send(&log_base(4096, Fd::SealedMemFd(4096))).unwrap();
    let (c, flags, _) = fe.read_reply().unwrap();
    assert_eq!(c, code::SET_LOG_BASE);
    assert_ne!(flags & raw_frontend::REPLY, 0);
    fe.send(&Message::u64(
        code::SET_FEATURES,
        (1 << 32) | (1 << 30) | (1 << 26),
    ))
    .unwrap();
    assert!(fe.finish(PATIENCE));

    for (name, msg) in [
        ("an unsealed log", log_base(4096, Fd::MemFd(4096))),
        (
            "a log smaller than declared",
            log_base(8192, Fd::SealedMemFd(4096)),
        ),
    ] {
        let mut msgs = preamble();
        msgs.push(msg);
        let mut fe = raw_frontend::RawFrontend::connect(&keeld.socket("a")).unwrap();
        for m in &msgs {
            fe.send(m).unwrap();
        }
        // The connection ends without an answer to SET_LOG_BASE (perhaps before the one to
        // GET_FEATURES was passed on).
        let mut answers = Vec::new();
        let end = loop {
            match fe.read_reply() {
                Ok((c, _, _)) => answers.push(c),
                Err(e) => break e.kind(),
            }
        };
        assert!(
            matches!(
                end,
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "{name}: the connection did not end ({end:?})"
        );
        assert!(
            answers.iter().all(|&c| c == code::GET_FEATURES),
            "{name}: {answers:?}"
        );
        healthy(&keeld.socket("a"), name);
    }
}

/// A frontend that truncates its guest memory after the table was checked: the request that
/// touches the vanished pages completes (they read as zeroes), keeld and the other disk carry on.
#[test]
fn guest_memory_truncated_under_a_running_ring_does_not_end_keeld() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let keeld = daemon();
    let mut other = Client::connect(&keeld.socket("b"), 1, MIB).expect("client of disk b");
    // SAFETY: plain system call with a static NUL-terminated name; result checked.
    let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor we own.
    let mem = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    mem.set_len(MIB as u64).unwrap();
    let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        mem.write_at(&d, i * 16).unwrap();
    };
    // A 4 KiB read whose buffer (at 960 KiB) will lie past the end of the file.
    desc(0, 0x1_0000, 16, 1, 1);
    desc(1, 0xF_0000, 4096, 1 | 2, 2);
    desc(2, 0x2_0000, 1, 2, 0);
    mem.write_at(&[0u8; 16], 0x1_0000).unwrap();
    mem.write_at(&[0xaa], 0x2_0000).unwrap();
    mem.write_at(&[0, 0, 1, 0, 0, 0], 0x4000).unwrap(); // avail: flags, idx 1, ring[0] 0
    let before = keel_backend::vhost::sigbus::replaced_pages();

    let mut fe = raw_frontend::RawFrontend::connect(&keeld.socket("a")).unwrap();
    let mut msgs = preamble();
    msgs.push(
        Message::mem_table(1, &[region(0, MIB as u64, 0x7000_0000)])
            .with_fds(vec![Fd::Dup(mem.as_raw_fd())]),
    );
    msgs.extend([
        Message::vring_state(code::SET_VRING_NUM, 0, 16),
        Message::vring_addr(0, 0, 0x7000_0000, 0x7000_8000, 0x7000_4000),
        Message::vring_state(code::SET_VRING_BASE, 0, 0),
        Message::vring_fd(code::SET_VRING_CALL, 0),
    ]);
    for m in &msgs {
        fe.send(m).unwrap();
    }
    let (c, _, _) = fe.read_reply().unwrap();
    assert_eq!(c, code::GET_FEATURES);
    // Give keeld time to map the table, then take the upper half away.
    std::thread::sleep(Duration::from_millis(200));
    mem.set_len(MIB as u64 / 2).unwrap();
    fe.send(&Message::vring_fd(code::SET_VRING_KICK, 0))
        .unwrap();
    fe.send(&Message::vring_state(code::SET_VRING_ENABLE, 0, 1))
        .unwrap();
    let mut used = [0u8; 2];
    let start = std::time::Instant::now();
    while start.elapsed() < PATIENCE {
        mem.read_at(&mut used, 0x8002).unwrap();
        if used == [1, 0] {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(used, [1, 0], "the read completed");
    let mut status = [0xffu8];
    mem.read_at(&mut status, 0x2_0000).unwrap();
    assert_eq!(status, [0], "answered OK");
    assert!(keel_backend::vhost::sigbus::replaced_pages() > before);
    assert!(fe.finish(PATIENCE));
    healthy(&keeld.socket("a"), "after truncated guest memory");
    other.write(0, 4096, &[5; 4096]).expect("disk b write");
    assert_eq!(
        other.read(0, 4096, 4096).expect("disk b read"),
        vec![5; 4096]
    );
}

#[test]
fn memory_table_larger_than_its_file() {
    let keeld = daemon();
    let mut other = Client::connect(&keeld.socket("b"), 1, MIB).expect("client of disk b");
    let mut msgs = preamble();
    msgs.push(
        Message::mem_table(1, &[region(0, MIB as u64, 0x7000_0000)])
            .with_fds(vec![Fd::MemFd(4096)]),
    );
    msgs.extend(started_ring(16));
    abuse_and_check(&keeld, &mut other, 1, "short memfd", &msgs);
}

/// A ring whose available index is further ahead than the ring is long (every byte 0xff: index
/// 0xffff on a 1024-entry ring). The worker's loop cannot read the ring, yet re-enabling
/// notifications reports work pending, so it spins at 100% CPU for good; the frontend's
/// disconnect then waits forever for that worker, and the disk never accepts a frontend again.
#[test]
fn available_index_beyond_the_ring_does_not_wedge_the_disk() {
    let keeld = daemon();
    let mut other = Client::connect(&keeld.socket("b"), 1, MIB).expect("client of disk b");
    let mut msgs = preamble();
    msgs.push(memory(0xff));
    msgs.extend(started_ring(1024));
    abuse_and_check(&keeld, &mut other, 1, "avail index 0xffff", &msgs);
}

/// Descriptors keeld may open above its idle count: one session's memory table (at most 32
/// fds with a message), rings and events fit; a leak of one per connection runs out within the
/// first pass of the hand-made sessions.
const FD_HEADROOM: usize = 64;

/// Descriptors open in process `pid`.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Every connection, hostile or not, must give back all its file descriptors. (Each one used to
/// leave its worker threads' exit events open, so after a few thousand connections keeld could
/// not start a session and reset every new frontend, well-behaved ones too.) keeld runs as its
/// own process with a descriptor limit `FD_HEADROOM` above what it needs idle: the hand-made hostile
/// sessions, each followed by a well-behaved handshake, are sent three times over, then the
/// count must be back where it started.
#[test]
fn connections_give_back_every_file_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlog_level = \"error\"\n\n{}{}",
            null_disk("a", "64M", "queues = 2\nqueue_size = 1024"),
            raw_disk("b", "4M", "")
        ),
    )
    .unwrap();
    let child = std::process::Command::new(keeld_binary())
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn keeld");
    let keeld = KillOnDrop(child);
    let pid = keeld.0.id() as i32;
    let socket = dir.path().join("a.sock");
    // Disks start one after the other: wait for both sockets.
    assert!(wait_for_socket(&socket, PATIENCE), "keeld did not start");
    assert!(
        wait_for_socket(&dir.path().join("b.sock"), PATIENCE),
        "keeld did not start disk b"
    );
    healthy(&socket, "before");
    let mut other = Client::connect(&dir.path().join("b.sock"), 1, MIB).expect("client of b");
    let baseline = settled_fds(pid, None);
    let limit = libc::rlimit {
        rlim_cur: (baseline + FD_HEADROOM) as u64,
        rlim_max: (baseline + FD_HEADROOM) as u64,
    };
    // SAFETY: prlimit(2) on our own child, with a valid new limit and no old-limit pointer.
    let set = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    let mut sessions = 0;
    for pass in 0..3 {
        for (round, (name, msgs)) in cases().into_iter().enumerate() {
            let name = format!("pass {pass}: {name}");
            let closed = send_all(&socket, &msgs, PATIENCE).expect("connect to disk a");
            assert!(closed, "{name}: keeld kept the connection open");
            healthy(&socket, &name);
            other
                .write(0, 0, &[round as u8; 4096])
                .expect("disk b write");
            sessions += 2;
        }
    }
    let after = settled_fds(pid, Some(baseline));
    drop(keeld);
    assert_eq!(
        after,
        baseline,
        "{sessions} connections left {} descriptors open",
        after as i64 - baseline as i64
    );
}

/// A child keeld that is killed and reaped however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The descriptor count of `pid` once the last session has been torn down: the first value that
/// equals `target`, or that stays the same for 200 ms; at most 5 s.
fn settled_fds(pid: i32, target: Option<usize>) -> usize {
    let start = std::time::Instant::now();
    let mut last = open_fds(pid);
    let mut stable_since = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        let now = open_fds(pid);
        if Some(now) == target {
            return now;
        }
        if now != last {
            last = now;
            stable_since = std::time::Instant::now();
        } else if stable_since.elapsed() > Duration::from_millis(200) {
            return now;
        }
    }
    last
}
