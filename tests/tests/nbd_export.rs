//! keeld's NBD exports against QEMU's own NBD client (qemu-img, qemu-io): the export shows the
//! same data as the disk's vhost-user frontend, both ways, and bad NBD traffic is refused
//! without harm to the disk or its neighbours.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use keel_backend::nbd::wire::{
    self, GoRequest, OptionHeader, ReplyHeader, Request, chunk, cmd, errno, opt, rep,
};
use keel_tests::client::Client;
use keel_tests::keeld::{InProcess, raw_disk};

const MIB: u64 = 1 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

fn keel_disk(name: &str, size: &str, extra: &str) -> String {
    format!(
        "[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"keel\"\npath = \"{name}.keel\"\nsize = \"{size}\"\n{extra}\n"
    )
}

fn with_nbd(disks: &str) -> String {
    format!("[server]\nnbd_socket = \"nbd.sock\"\n\n{disks}")
}

fn uri(keeld: &InProcess, export: &str) -> String {
    format!(
        "nbd+unix:///{export}?socket={}",
        keeld.dir().join("nbd.sock").display()
    )
}

/// Runs a QEMU tool; panics with its output unless it succeeds.
fn qemu(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .expect("run qemu tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed: {text}");
    text
}

/// Copies what the NBD export `uri` serves into the raw file `to` with qemu-img.
fn convert_to_raw(uri: &str, to: &Path) {
    let to = to.to_str().expect("a UTF-8 path");
    qemu("qemu-img", &["convert", "-f", "raw", "-O", "raw", uri, to]);
}

/// A raw image opened by QEMU beside keeld (which holds the image's lock).
fn unlocked_image(path: &Path) -> String {
    format!(
        r#"json:{{"driver":"raw","file":{{"driver":"file","filename":"{}","locking":"off"}}}}"#,
        path.display()
    )
}

#[test]
fn raw_export_matches_the_image_and_vhost_sees_its_writes() {
    let keeld = InProcess::start(&with_nbd(&raw_disk("r", "64M", "")));
    let nbd = uri(&keeld, "r");
    let mut c = Client::connect(&keeld.socket("r"), 1, 2 * MIB as usize).unwrap();
    let data = pattern(3, MIB as usize);
    c.write(0, 5 * MIB, &data).unwrap();
    c.flush(0).unwrap();

    // The export reads what vhost-user wrote: byte for byte the image.
    let image = keeld.dir().join("r.img");
    let out = qemu(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            &unlocked_image(&image),
            &nbd,
        ],
    );
    assert!(out.contains("identical"), "{out}");
    let copy = keeld.dir().join("copy.raw");
    convert_to_raw(&nbd, &copy);
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&image).unwrap()
    );

    // Writes, write-zeroes and discards through the export are seen by vhost-user.
    qemu(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xcd 8M 1M",
            "-c",
            "write -P 0xee 20M 1M",
            "-c",
            "write -z 20M 512k",
            "-c",
            "write -P 0x77 30M 1M",
            "-c",
            "discard 30M 1M",
            "-c",
            "flush",
            &nbd,
        ],
    );
    assert_eq!(
        c.read(0, 8 * MIB, MIB as usize).unwrap(),
        vec![0xcd; MIB as usize]
    );
    let zeroed = c.read(0, 20 * MIB, MIB as usize).unwrap();
    assert_eq!(&zeroed[..512 << 10], &vec![0u8; 512 << 10][..]);
    assert_eq!(&zeroed[512 << 10..], &vec![0xeeu8; 512 << 10][..]);
    assert_eq!(
        c.read(0, 30 * MIB, MIB as usize).unwrap(),
        vec![0u8; MIB as usize]
    );
    assert_eq!(c.read(0, 5 * MIB, MIB as usize).unwrap(), data);
}

#[test]
fn keel_export_shows_what_vhost_wrote_and_qemu_io_writes_reach_vhost() {
    let keeld = InProcess::start(&with_nbd(&keel_disk("k", "64M", "")));
    let nbd = uri(&keeld, "k");
    let mut c = Client::connect(&keeld.socket("k"), 1, 2 * MIB as usize).unwrap();
    let a = pattern(1, MIB as usize);
    let b = pattern(9, 64 << 10);
    c.write(0, 0, &a).unwrap();
    c.write(0, 40 * MIB + 4096, &b).unwrap();
    c.flush(0).unwrap();

    let copy = keeld.dir().join("copy.raw");
    convert_to_raw(&nbd, &copy);
    let mut expected = vec![0u8; 64 * MIB as usize];
    expected[..a.len()].copy_from_slice(&a);
    let at = (40 * MIB + 4096) as usize;
    expected[at..at + b.len()].copy_from_slice(&b);
    assert!(
        std::fs::read(&copy).unwrap() == expected,
        "the copy differs"
    );
    // Block status told qemu-img where the holes are: the copy is sparse.
    let allocated = std::fs::metadata(&copy).unwrap().blocks() * 512;
    assert!(
        allocated < 8 * MIB,
        "{allocated} bytes allocated in the copy"
    );
    let map = qemu("qemu-img", &["map", "--output=json", "-f", "raw", &nbd]);
    let first = r#""start": 0, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true"#;
    assert!(map.contains(first), "{map}");
    assert!(map.contains(r#""zero": true, "data": false"#), "{map}");

    qemu(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x42 2M 3M",
            "-c",
            "write -z 0 4k",
            &nbd,
        ],
    );
    assert_eq!(
        c.read(0, 2 * MIB, MIB as usize).unwrap(),
        vec![0x42; MIB as usize]
    );
    let head = c.read(0, 0, 8192).unwrap();
    assert_eq!(&head[..4096], &[0u8; 4096][..]);
    assert_eq!(&head[4096..], &a[4096..8192]);
}

#[test]
fn read_only_disks_export_read_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ro.img"), vec![0x5cu8; 8 * MIB as usize]).unwrap();
    let keeld = InProcess::start_in(dir, &with_nbd(&raw_disk("ro", "8M", "read_only = true")));
    let nbd = uri(&keeld, "ro");
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k", &nbd])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains("wrote 4096"), "a write went through: {text}");
    qemu(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0x5c 0 4k", &nbd],
    );
}

/// A bare NBD client speaking bytes, to send what QEMU never would.
struct Raw {
    s: UnixStream,
}

impl Raw {
    fn connect(keeld: &InProcess) -> Self {
        let s = UnixStream::connect(keeld.dir().join("nbd.sock")).unwrap();
        let mut r = Self { s };
        let mut hello = [0u8; 18];
        r.s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
        assert_eq!(&hello[8..16], b"IHAVEOPT");
        r.s.write_all(&(wire::CLIENT_FIXED_NEWSTYLE | wire::CLIENT_NO_ZEROES).to_be_bytes())
            .unwrap();
        r
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let h = OptionHeader {
            option,
            length: data.len() as u32,
        };
        self.s.write_all(&h.encode()).unwrap();
        self.s.write_all(data).unwrap();
    }

    /// Reads option replies up to the final one; returns their types.
    fn option_replies(&mut self) -> Vec<u32> {
        let mut kinds = Vec::new();
        loop {
            let mut h = [0u8; 20];
            self.s.read_exact(&mut h).unwrap();
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
            let mut data = vec![0u8; len as usize];
            self.s.read_exact(&mut data).unwrap();
            kinds.push(kind);
            if kind != rep::INFO && kind != rep::SERVER && kind != rep::META_CONTEXT {
                return kinds;
            }
        }
    }

    fn go(&mut self, name: &str) -> Vec<u32> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        assert!(GoRequest::parse(&d).is_ok());
        self.option(opt::GO, &d);
        self.option_replies()
    }

    fn request(&mut self, command: u16, offset: u64, length: u32) {
        let r = Request {
            flags: 0,
            command,
            cookie: 77,
            offset,
            length,
        };
        self.s.write_all(&r.encode()).unwrap();
    }

    fn reply(&mut self) -> ReplyHeader {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        ReplyHeader::parse(&h, 0).unwrap().0
    }

    /// Whether the server closed the connection.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn bad_nbd_traffic_gets_errors_and_leaves_the_disks_serving() {
    let keeld = InProcess::start(&with_nbd(&format!(
        "{}{}",
        raw_disk("a", "8M", ""),
        raw_disk("b", "8M", "")
    )));
    let mut b = Client::connect(&keeld.socket("b"), 1, MIB as usize).unwrap();
    b.write(0, 0, &[0x11; 4096]).unwrap();

    // An unknown export is refused during the handshake; options go on.
    let mut r = Raw::connect(&keeld);
    assert_eq!(r.go("nope"), vec![rep::ERR_UNKNOWN]);
    assert_eq!(*r.go("a").last().unwrap(), rep::ACK);

    // Requests beyond the end, unaligned, or too large get error replies; the connection lives.
    r.request(cmd::READ, 8 * MIB, 4096);
    assert_eq!(
        r.reply(),
        ReplyHeader::Simple {
            cookie: 77,
            error: errno::EINVAL
        }
    );
    r.request(cmd::WRITE_ZEROES, u64::MAX - 511, 512);
    assert_eq!(
        r.reply(),
        ReplyHeader::Simple {
            cookie: 77,
            error: errno::EINVAL
        }
    );
    r.request(cmd::READ, 1, 512);
    assert_eq!(
        r.reply(),
        ReplyHeader::Simple {
            cookie: 77,
            error: errno::EINVAL
        }
    );
    r.request(cmd::READ, 0, 64 << 20);
    assert_eq!(
        r.reply(),
        ReplyHeader::Simple {
            cookie: 77,
            error: errno::EOVERFLOW
        }
    );
    r.request(cmd::BLOCK_STATUS, 0, 4096); // no metadata context was negotiated
    assert_eq!(
        r.reply(),
        ReplyHeader::Simple {
            cookie: 77,
            error: errno::EINVAL
        }
    );
    r.request(99, 0, 0);
    assert_eq!(
        r.reply(),
        ReplyHeader::Simple {
            cookie: 77,
            error: errno::EINVAL
        }
    );
    r.request(cmd::READ, 0, 4096);
    assert_eq!(
        r.reply(),
        ReplyHeader::Simple {
            cookie: 77,
            error: 0
        }
    );
    let mut data = vec![0u8; 4096];
    r.s.read_exact(&mut data).unwrap();

    // A write announcing more data than allowed ends the connection.
    r.request(cmd::WRITE, 0, 1 << 30);
    assert!(r.closed());

    // A request with a bad magic ends the connection.
    let mut r = Raw::connect(&keeld);
    assert_eq!(*r.go("a").last().unwrap(), rep::ACK);
    r.s.write_all(&[0xffu8; wire::REQUEST_LEN]).unwrap();
    assert!(r.closed());

    // Garbage instead of an option ends the handshake.
    let mut r = Raw::connect(&keeld);
    r.s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(r.closed());

    // A client stalled halfway through its handshake and one stalled halfway through a request
    // hold only their own connections.
    let mut stalled = Raw::connect(&keeld);
    stalled.s.write_all(&wire::IHAVEOPT.to_be_bytes()).unwrap();
    let mut half = Raw::connect(&keeld);
    assert_eq!(*half.go("a").last().unwrap(), rep::ACK);
    half.s
        .write_all(
            &Request {
                flags: 0,
                command: cmd::WRITE,
                cookie: 1,
                offset: 0,
                length: 65536,
            }
            .encode(),
        )
        .unwrap();
    half.s.write_all(&[0xaa; 1000]).unwrap();

    // The neighbour disk, and the export itself, still serve.
    assert_eq!(b.read(0, 0, 4096).unwrap(), vec![0x11; 4096]);
    qemu(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0 0 4k", &uri(&keeld, "a")],
    );
}

#[test]
fn structured_reads_and_allocation_status_through_a_bare_client() {
    let keeld = InProcess::start(&with_nbd(&raw_disk("s", "8M", "")));
    let mut r = Raw::connect(&keeld);
    r.option(opt::STRUCTURED_REPLY, &[]);
    assert_eq!(r.option_replies(), vec![rep::ACK]);
    let mut q = 1u32.to_be_bytes().to_vec();
    q.extend_from_slice(b"s");
    q.extend_from_slice(&1u32.to_be_bytes());
    q.extend_from_slice(&(wire::BASE_ALLOCATION.len() as u32).to_be_bytes());
    q.extend_from_slice(wire::BASE_ALLOCATION.as_bytes());
    r.option(opt::SET_META_CONTEXT, &q);
    assert_eq!(r.option_replies(), vec![rep::META_CONTEXT, rep::ACK]);
    assert_eq!(*r.go("s").last().unwrap(), rep::ACK);

    r.request(cmd::BLOCK_STATUS, MIB, 4 * MIB as u32);
    let mut h = [0u8; wire::CHUNK_HEADER_LEN];
    r.s.read_exact(&mut h).unwrap();
    let ReplyHeader::Chunk(c) = ReplyHeader::parse(&h, 1 << 20).unwrap().0 else {
        panic!("a simple reply to BLOCK_STATUS");
    };
    assert_eq!(
        (c.kind, c.flags, c.length),
        (chunk::BLOCK_STATUS, chunk::FLAG_DONE, 12)
    );
    let mut body = [0u8; 12];
    r.s.read_exact(&mut body).unwrap();
    let extent_len = u32::from_be_bytes(body[4..8].try_into().unwrap());
    assert!(extent_len > 0 && extent_len <= 4 * MIB as u32);

    r.request(cmd::READ, 0, 4096);
    r.s.read_exact(&mut h).unwrap();
    let ReplyHeader::Chunk(c) = ReplyHeader::parse(&h, 1 << 20).unwrap().0 else {
        panic!("a simple reply to a structured READ");
    };
    assert_eq!((c.kind, c.length), (chunk::OFFSET_DATA, 8 + 4096));
    let mut body = vec![0u8; 8 + 4096];
    r.s.read_exact(&mut body).unwrap();
    assert_eq!(&body[..8], &0u64.to_be_bytes());

    // An error on a READ is a structured error chunk.
    r.request(cmd::READ, 8 * MIB, 4096);
    r.s.read_exact(&mut h).unwrap();
    let ReplyHeader::Chunk(c) = ReplyHeader::parse(&h, 1 << 20).unwrap().0 else {
        panic!("a simple reply to a structured READ");
    };
    assert_eq!(c.kind, chunk::ERROR);
    let mut body = [0u8; 6];
    r.s.read_exact(&mut body).unwrap();
    assert_eq!(
        u32::from_be_bytes(body[..4].try_into().unwrap()),
        errno::EINVAL
    );
    r.request(cmd::DISC, 0, 0);
    assert!(r.closed());
}

#[test]
fn a_snapshot_export_shows_the_snapshot_read_only() {
    use keel_backend::control::client::ControlClient;
    use keel_protocol::control::{CreateSnapshot, SnapshotInfo};
    let keeld = InProcess::start(&format!(
        "[server]\nnbd_socket = \"nbd.sock\"\ncontrol_socket = \"keel.sock\"\n\n{}",
        keel_disk("k", "16M", "")
    ));
    let api = ControlClient::new(&keeld.dir().join("keel.sock"));
    let mut c = Client::connect(&keeld.socket("k"), 1, MIB as usize).unwrap();
    let before = pattern(4, 256 << 10);
    c.write(0, MIB, &before).unwrap();
    let _: SnapshotInfo = api
        .post(
            "/v1/disks/k/snapshots",
            &CreateSnapshot { name: "s1".into() },
        )
        .unwrap();
    c.write(0, MIB, &pattern(8, 256 << 10)).unwrap();
    c.write(0, 8 * MIB, &pattern(9, 4096)).unwrap();

    let snap = uri(&keeld, "k@s1");
    let copy = keeld.dir().join("s1.raw");
    convert_to_raw(&snap, &copy);
    let mut expected = vec![0u8; 16 * MIB as usize];
    expected[MIB as usize..MIB as usize + before.len()].copy_from_slice(&before);
    assert!(
        std::fs::read(&copy).unwrap() == expected,
        "the snapshot copy differs"
    );
    // The running disk is unchanged by the snapshot export, and the snapshot cannot be written.
    assert_eq!(c.read(0, 8 * MIB, 4096).unwrap(), pattern(9, 4096));
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k", &snap])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains("wrote 4096"),
        "a snapshot was written: {text}"
    );
    // An unknown snapshot is no export.
    let missing = Command::new("qemu-img")
        .args(["info", &uri(&keeld, "k@nope")])
        .output()
        .unwrap();
    assert!(!missing.status.success());
}

#[test]
fn tcp_export_when_nbd_listen_is_set() {
    // A port of its own per test process, on loopback only.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let keeld = InProcess::start(&format!(
        "[server]\nnbd_listen = \"127.0.0.1:{port}\"\n\n{}",
        raw_disk("t", "8M", "")
    ));
    let nbd = format!("nbd://127.0.0.1:{port}/t");
    qemu(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x3c 0 64k",
            "-c",
            "read -P 0x3c 0 64k",
            &nbd,
        ],
    );
    let mut c = Client::connect(&keeld.socket("t"), 1, MIB as usize).unwrap();
    assert_eq!(c.read(0, 0, 65536).unwrap(), vec![0x3c; 65536]);
    // Keel's own client device over TCP.
    use keel_backend::device::BlockDevice;
    use keel_backend::device::nbd::{NbdDevice, NbdOptions};
    let dev = NbdDevice::open(&nbd, NbdOptions::default()).unwrap();
    let mut got = vec![0u8; 4096];
    dev.read_at(&mut got, 4096).unwrap();
    assert_eq!(got, vec![0x3c; 4096]);
    // No unix socket was asked for, none is made.
    assert!(!keeld.dir().join("nbd.sock").exists());
}

#[test]
fn connections_beyond_the_cap_are_closed_and_room_comes_back() {
    use keel_backend::nbd::server::MAX_CONNECTIONS;
    let keeld = InProcess::start(&with_nbd(&raw_disk("c", "8M", "")));
    let sock = keeld.dir().join("nbd.sock");
    // Each is greeted, then holds its slot by saying nothing.
    let held: Vec<Raw> = (0..MAX_CONNECTIONS).map(|_| Raw::connect(&keeld)).collect();
    let mut extra = UnixStream::connect(&sock).unwrap();
    let mut b = [0u8; 18];
    assert!(
        matches!(extra.read(&mut b), Ok(0) | Err(_)),
        "a connection over the cap was served"
    );
    drop(held);
    // Once the held connections are gone, clients are served again.
    let mut served = false;
    for _ in 0..500 {
        let mut s = UnixStream::connect(&sock).unwrap();
        if matches!(s.read(&mut b), Ok(n) if n > 0) {
            served = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(served);
    qemu(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0 0 4k", &uri(&keeld, "c")],
    );
}
