use super::*;

#[test]
fn request_round_trips_and_checks_its_magic() {
    let req = Request {
        flags: cflag::FUA,
        command: cmd::WRITE,
        cookie: 0x0102_0304_0506_0708,
        offset: 1 << 40,
        length: 4096,
    };
    let bytes = req.encode();
    assert_eq!(&bytes[..4], &[0x25, 0x60, 0x95, 0x13]);
    assert_eq!(Request::parse(&bytes), Ok(req));
    let mut bad = bytes;
    bad[0] ^= 1;
    assert!(matches!(
        Request::parse(&bad),
        Err(WireError::BadMagic { .. })
    ));
}

#[test]
fn option_header_round_trips_and_checks_its_magic() {
    let h = OptionHeader {
        option: opt::GO,
        length: 12,
    };
    let bytes = h.encode();
    assert_eq!(&bytes[..8], b"IHAVEOPT");
    assert_eq!(OptionHeader::parse(&bytes), Ok(h));
    let mut bad = bytes;
    bad[7] = b'X';
    assert!(OptionHeader::parse(&bad).is_err());
}

#[test]
fn go_request_parses_name_and_info_and_refuses_junk() {
    let mut data = Vec::new();
    data.extend_from_slice(&4u32.to_be_bytes());
    data.extend_from_slice(b"disk");
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    let go = GoRequest::parse(&data).unwrap();
    assert_eq!(go.name, "disk");
    assert_eq!(go.info, vec![info::BLOCK_SIZE]);

    // A name length past the end of the data.
    let mut short = data.clone();
    short[3] = 200;
    assert!(matches!(
        GoRequest::parse(&short),
        Err(WireError::Truncated { .. })
    ));
    // More info requests announced than present.
    let mut missing = data.clone();
    missing[9] = 9;
    assert!(GoRequest::parse(&missing).is_err());
    // Bytes after the last field.
    let mut trailing = data;
    trailing.push(0);
    assert_eq!(
        GoRequest::parse(&trailing),
        Err(WireError::TrailingBytes(1))
    );
}

#[test]
fn meta_context_request_bounds_its_query_count() {
    let mut data = Vec::new();
    data.extend_from_slice(&1u32.to_be_bytes());
    data.extend_from_slice(b"d");
    data.extend_from_slice(&1u32.to_be_bytes());
    data.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
    data.extend_from_slice(BASE_ALLOCATION.as_bytes());
    let m = MetaContextRequest::parse(&data).unwrap();
    assert_eq!((m.name.as_str(), m.queries.len()), ("d", 1));
    assert_eq!(m.queries[0], BASE_ALLOCATION);

    let mut many = Vec::new();
    many.extend_from_slice(&0u32.to_be_bytes());
    many.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        MetaContextRequest::parse(&many),
        Err(WireError::TooLong { .. })
    ));
}

#[test]
fn reply_headers_parse_both_kinds_and_bound_chunk_length() {
    let simple = simple_reply(7, errno::EIO);
    assert_eq!(
        ReplyHeader::parse(&simple, 0),
        Ok((
            ReplyHeader::Simple {
                cookie: 7,
                error: errno::EIO
            },
            SIMPLE_REPLY_LEN
        ))
    );
    let chunk = ChunkHeader {
        flags: chunk::FLAG_DONE,
        kind: chunk::OFFSET_DATA,
        cookie: 9,
        length: 8 + 512,
    };
    let bytes = chunk.encode();
    assert_eq!(
        ReplyHeader::parse(&bytes, 1 << 20),
        Ok((ReplyHeader::Chunk(chunk), CHUNK_HEADER_LEN))
    );
    assert!(matches!(
        ReplyHeader::parse(&bytes, 100),
        Err(WireError::TooLong { .. })
    ));
    assert!(matches!(
        ReplyHeader::parse(&bytes[..10], 1 << 20),
        Err(WireError::Truncated { .. })
    ));
    assert!(ReplyHeader::parse(&[0u8; 20], 1 << 20).is_err());
}

#[test]
fn option_reply_has_magic_option_type_and_length() {
    let r = option_reply(opt::GO, rep::ACK, &[]);
    assert_eq!(r.len(), 20);
    let mut f = Fields::new(&r);
    assert_eq!(f.u64(), Ok(OPTION_REPLY_MAGIC));
    assert_eq!(f.u32(), Ok(opt::GO));
    assert_eq!(f.u32(), Ok(rep::ACK));
    assert_eq!(f.u32(), Ok(0));
}
