//! Unit tests of the decoder and the encoders.

use tungstenite::protocol::frame::{FrameHeader, coding::OpCode};

use super::{mask::unmask, test_util::to_client_frame, *};

const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

/// An owned copy of an [`Event`], for comparing event sequences.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

impl From<Event<'_>> for Ev {
    fn from(e: Event<'_>) -> Self {
        match e {
            Event::Text(t) => Ev::Text(t.to_vec()),
            Event::Binary(b) => Ev::Binary(b.to_vec()),
            Event::Ping(p) => Ev::Ping(p.to_vec()),
            Event::Pong(p) => Ev::Pong(p.to_vec()),
            Event::Close(c) => Ev::Close(c.map(|(code, r)| (code, r.to_owned()))),
        }
    }
}

/// A masked client frame with the given first byte (FIN/RSV/opcode) and payload.
fn client(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let header = FrameHeader {
        is_final: first & 0x80 != 0,
        rsv1: first & 0x40 != 0,
        rsv2: first & 0x20 != 0,
        rsv3: first & 0x10 != 0,
        opcode: OpCode::from(first & 0x0F),
        mask: Some(MASK),
    };
    header.format(payload.len() as u64, &mut out).unwrap();
    let mut masked = payload.to_vec();
    unmask(&mut masked, MASK);
    out.extend_from_slice(&masked);
    out
}

fn decode_with(dec: &mut Decoder, input: &[u8], limits: &Limits) -> Result<Vec<Ev>, ProtocolError> {
    let mut events = Vec::new();
    let mut buf = input.to_vec();
    dec.feed(&mut buf, limits, |e| events.push(Ev::from(e)))?;
    Ok(events)
}

fn decode(input: &[u8]) -> Result<Vec<Ev>, ProtocolError> {
    let mut dec = Decoder::default();
    let events = decode_with(&mut dec, input, &Limits::new())?;
    Ok(events)
}

/// Decodes `input` with a fresh decoder, expecting an error.
fn decode_err(input: &[u8]) -> ProtocolError {
    decode(input).expect_err("expected a protocol error")
}

#[test]
fn decoder_is_small_and_idle_by_default() {
    assert!(size_of::<Decoder>() <= 16);
    assert_eq!(size_of::<Decoder>(), size_of::<usize>());
    assert!(Decoder::default().is_idle());
}

#[test]
fn single_text_frame() {
    assert_eq!(
        decode(&client(0x81, b"hello")),
        Ok(vec![Ev::Text(b"hello".to_vec())])
    );
}

#[test]
fn single_binary_frame() {
    let payload: Vec<u8> = (0..=255).collect();
    assert_eq!(
        decode(&client(0x82, &payload)),
        Ok(vec![Ev::Binary(payload)])
    );
}

#[test]
fn empty_text_frame() {
    assert_eq!(decode(&client(0x81, b"")), Ok(vec![Ev::Text(vec![])]));
}

#[test]
fn ping_and_pong() {
    assert_eq!(
        decode(&client(0x89, b"abc")),
        Ok(vec![Ev::Ping(b"abc".to_vec())])
    );
    assert_eq!(decode(&client(0x8A, b"")), Ok(vec![Ev::Pong(vec![])]));
    assert_eq!(
        decode(&client(0x89, &[7; 125])),
        Ok(vec![Ev::Ping(vec![7; 125])])
    );
}

#[test]
fn close_without_code() {
    assert_eq!(decode(&client(0x88, b"")), Ok(vec![Ev::Close(None)]));
}

#[test]
fn close_with_code_and_reason() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    assert_eq!(
        decode(&client(0x88, &payload)),
        Ok(vec![Ev::Close(Some((1000, String::new())))])
    );
    payload.extend_from_slice("bye ü".as_bytes());
    assert_eq!(
        decode(&client(0x88, &payload)),
        Ok(vec![Ev::Close(Some((1000, "bye ü".to_owned())))])
    );
    for code in [1001, 1003, 1007, 1011, 3000, 4999] {
        let frame = client(0x88, &u16::to_be_bytes(code));
        assert_eq!(
            decode(&frame),
            Ok(vec![Ev::Close(Some((code, String::new())))])
        );
    }
}

/// A stream of several frames of every kind, including a fragmented text message with an
/// interleaved ping and a 16-bit-length frame.
fn stream() -> (Vec<u8>, Vec<Ev>) {
    let big = vec![b'x'; 300];
    let parts = [
        client(0x81, b"one"),
        client(0x89, b"p"),
        client(0x01, b"fr"),
        client(0x89, b"mid"),
        client(0x00, b"ag"),
        client(0x80, "mént".as_bytes()),
        client(0x82, &big),
        client(0x8A, b""),
        client(0x88, &[0x03, 0xE8, b'o', b'k']),
    ];
    let expected = vec![
        Ev::Text(b"one".to_vec()),
        Ev::Ping(b"p".to_vec()),
        Ev::Ping(b"mid".to_vec()),
        Ev::Text("fragmént".as_bytes().to_vec()),
        Ev::Binary(big),
        Ev::Pong(vec![]),
        Ev::Close(Some((1000, "ok".to_owned()))),
    ];
    (parts.concat(), expected)
}

#[test]
fn several_frames_in_one_input() {
    let (input, expected) = stream();
    let mut dec = Decoder::default();
    assert_eq!(decode_with(&mut dec, &input, &Limits::new()), Ok(expected));
    assert!(dec.is_idle());
}

#[test]
fn byte_by_byte_gives_identical_events() {
    let (input, expected) = stream();
    let mut dec = Decoder::default();
    let mut events = Vec::new();
    for &byte in &input {
        events.extend(decode_with(&mut dec, &[byte], &Limits::new()).unwrap());
    }
    assert_eq!(events, expected);
    assert!(dec.is_idle());
}

#[test]
fn every_split_point_gives_identical_events() {
    let (input, expected) = stream();
    for split in 0..=input.len() {
        let mut dec = Decoder::default();
        let mut events = decode_with(&mut dec, &input[..split], &Limits::new()).unwrap();
        events.extend(decode_with(&mut dec, &input[split..], &Limits::new()).unwrap());
        assert_eq!(events, expected, "split at {split}");
        assert!(dec.is_idle(), "split at {split}");
    }
}

#[test]
fn partial_frame_keeps_state_then_releases_it() {
    let frame = client(0x81, b"hello");
    let mut dec = Decoder::default();
    assert_eq!(
        decode_with(&mut dec, &frame[..4], &Limits::new()),
        Ok(vec![])
    );
    assert!(!dec.is_idle());
    assert_eq!(
        decode_with(&mut dec, &frame[4..], &Limits::new()),
        Ok(vec![Ev::Text(b"hello".to_vec())])
    );
    assert!(dec.is_idle());
}

#[test]
fn fragmented_text_with_interleaved_ping() {
    let input = [
        client(0x01, b"Hel"),
        client(0x89, b"!"),
        client(0x00, b"lo, "),
        client(0x80, b"world"),
    ]
    .concat();
    assert_eq!(
        decode(&input),
        Ok(vec![
            Ev::Ping(b"!".to_vec()),
            Ev::Text(b"Hello, world".to_vec())
        ])
    );
}

#[test]
fn fragmented_message_state_spans_calls() {
    let mut dec = Decoder::default();
    let limits = Limits::new();
    assert_eq!(
        decode_with(&mut dec, &client(0x02, b"ab"), &limits),
        Ok(vec![])
    );
    assert!(!dec.is_idle());
    assert_eq!(
        decode_with(&mut dec, &client(0x80, b"cd"), &limits),
        Ok(vec![Ev::Binary(b"abcd".to_vec())])
    );
    assert!(dec.is_idle());
}

#[test]
fn length_forms() {
    let limits = Limits::new().with_max_message_bytes(1 << 20);
    for (len, header_len) in [(0, 6), (125, 6), (126, 8), (65535, 8), (65536, 14)] {
        let payload = vec![b'a'; len];
        let frame = client(0x82, &payload);
        assert_eq!(frame.len(), header_len + len, "len {len}");
        let mut dec = Decoder::default();
        assert_eq!(
            decode_with(&mut dec, &frame, &limits),
            Ok(vec![Ev::Binary(payload)])
        );
    }
}

#[test]
fn encode_decode_round_trip() {
    for len in [0, 5, 125, 126, 1000, 4096] {
        let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
        let frame = to_client_frame(&encode_text(&payload), MASK);
        assert_eq!(decode(&frame), Ok(vec![Ev::Text(payload)]), "len {len}");
    }
    let ping = to_client_frame(&encode_ping(b"tick"), MASK);
    assert_eq!(decode(&ping), Ok(vec![Ev::Ping(b"tick".to_vec())]));
    let pong = to_client_frame(&encode_pong(b"tock"), MASK);
    assert_eq!(decode(&pong), Ok(vec![Ev::Pong(b"tock".to_vec())]));
    let close = to_client_frame(&encode_close(1001, "going away"), MASK);
    assert_eq!(
        decode(&close),
        Ok(vec![Ev::Close(Some((1001, "going away".to_owned())))])
    );
}

#[test]
fn exact_bytes_of_short_text_frame() {
    assert_eq!(&encode_text(b"Hi")[..], &[0x81, 0x02, b'H', b'i']);
    assert_eq!(&encode_pong(b"")[..], &[0x8A, 0x00]);
    assert_eq!(&encode_ping(b"x")[..], &[0x89, 0x01, b'x']);
    assert_eq!(&encode_close(1000, "")[..], &[0x88, 0x02, 0x03, 0xE8]);
}

#[test]
fn text_header_matches_tungstenite() {
    for len in [0, 1, 125, 126, 65535, 65536, 1 << 33] {
        let mut out = Vec::new();
        write_text_header(len, &mut out);
        assert_eq!(out.len(), text_header_len(len), "len {len}");
        assert_eq!(
            out.len(),
            FrameHeader::default().len(len as u64),
            "len {len}"
        );
        assert_eq!(out[0], 0x81);
    }
    let mut out = Vec::new();
    write_text_header(126, &mut out);
    assert_eq!(out, [0x81, 126, 0, 126]);
    out.clear();
    write_text_header(65536, &mut out);
    assert_eq!(out, [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
}

#[test]
fn close_reason_truncated_on_char_boundary() {
    let reason = "é".repeat(100); // 200 bytes
    let frame = encode_close(1000, &reason);
    assert!(frame.len() - 2 <= MAX_CONTROL_PAYLOAD);
    assert_eq!(frame[1] as usize, 2 + 122);
    let decoded = decode(&to_client_frame(&frame, MASK)).unwrap();
    assert_eq!(decoded, vec![Ev::Close(Some((1000, "é".repeat(61))))]);
    assert_eq!(encode_ping(&[1; 200]).len(), 2 + MAX_CONTROL_PAYLOAD);
}

#[test]
fn unmask_matches_bytewise_xor() {
    for len in 0..40 {
        let orig: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut buf = orig.clone();
        unmask(&mut buf, MASK);
        let expected: Vec<u8> = orig
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4])
            .collect();
        assert_eq!(buf, expected);
    }
}

fn assert_error(input: &[u8], expected: ProtocolError, code: u16) {
    let err = decode_err(input);
    assert_eq!(err, expected);
    assert_eq!(err.close_code(), code, "{err}");
}

#[test]
fn error_unmasked() {
    assert_error(&[0x81, 0x02, b'h', b'i'], ProtocolError::Unmasked, 1002);
    // Detected from the first two bytes alone.
    assert_eq!(decode_err(&[0x81, 0x02]), ProtocolError::Unmasked);
}

#[test]
fn error_reserved_bits() {
    for first in [0xC1, 0xA1, 0x91] {
        assert_error(&client(first, b"x"), ProtocolError::ReservedBits, 1002);
    }
}

#[test]
fn error_reserved_opcodes() {
    for op in [3, 7, 0xB, 0xF] {
        assert_error(
            &client(0x80 | op, b""),
            ProtocolError::ReservedOpcode(op),
            1002,
        );
    }
}

#[test]
fn error_fragmented_control() {
    assert_error(&client(0x09, b""), ProtocolError::FragmentedControl, 1002);
    assert_error(&client(0x08, b""), ProtocolError::FragmentedControl, 1002);
}

#[test]
fn error_control_too_long() {
    assert_error(
        &client(0x89, &[0; 126]),
        ProtocolError::ControlTooLong(126),
        1002,
    );
    assert_error(
        &client(0x88, &[3; 200]),
        ProtocolError::ControlTooLong(126),
        1002,
    );
}

#[test]
fn control_frame_with_a_long_length_form_is_refused() {
    // RFC 6455 §5.2 and §5.5: a control frame's length must use the 7-bit form. Refused from the
    // header even when the length it holds is small (tungstenite reads it; see fuzz/README.md).
    let mut close16 = vec![0x88, 0x80 | 126, 0, 2];
    close16.extend_from_slice(&MASK);
    close16.extend(u16::to_be_bytes(1000).iter().zip(MASK).map(|(b, m)| b ^ m));
    assert_error(&close16, ProtocolError::ControlTooLong(126), 1002);
    let mut ping64 = vec![0x89, 0x80 | 127];
    ping64.extend_from_slice(&0u64.to_be_bytes());
    ping64.extend_from_slice(&MASK);
    assert_error(&ping64, ProtocolError::ControlTooLong(127), 1002);
}

#[test]
fn error_unexpected_continuation() {
    assert_error(
        &client(0x80, b"x"),
        ProtocolError::UnexpectedContinuation,
        1002,
    );
    assert_error(
        &client(0x00, b"x"),
        ProtocolError::UnexpectedContinuation,
        1002,
    );
}

#[test]
fn error_data_frame_inside_fragmented_message() {
    let input = [client(0x01, b"a"), client(0x81, b"b")].concat();
    assert_error(&input, ProtocolError::ExpectedContinuation, 1002);
    let input = [client(0x02, b"a"), client(0x02, b"b")].concat();
    assert_error(&input, ProtocolError::ExpectedContinuation, 1002);
}

#[test]
fn error_close_payload_of_one_byte() {
    assert_error(&client(0x88, &[3]), ProtocolError::CloseTooShort, 1002);
}

#[test]
fn error_invalid_close_codes() {
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        let frame = client(0x88, &u16::to_be_bytes(code));
        assert_error(&frame, ProtocolError::InvalidCloseCode(code), 1002);
    }
}

#[test]
fn error_invalid_utf8_text() {
    assert_error(
        &client(0x81, &[0xFF, 0xFE]),
        ProtocolError::InvalidUtf8,
        1007,
    );
    // A code point split across fragments is fine; an invalid sequence after reassembly is not.
    let split = [client(0x01, &[0xC3]), client(0x80, &[0xA9])].concat();
    assert_eq!(decode(&split), Ok(vec![Ev::Text("é".as_bytes().to_vec())]));
    let bad = [client(0x01, &[0xC3]), client(0x80, b"A")].concat();
    assert_error(&bad, ProtocolError::InvalidUtf8, 1007);
    // Binary payloads are not validated.
    assert_eq!(
        decode(&client(0x82, &[0xFF])),
        Ok(vec![Ev::Binary(vec![0xFF])])
    );
}

#[test]
fn registered_close_codes_1012_to_1014_are_accepted() {
    // IANA-registered after RFC 6455 (Service Restart, Try Again Later, Bad Gateway). A
    // client that echoes the gateway's own 1013 must not be failed for it.
    for code in [1012, 1013, 1014] {
        let frame = client(0x88, &u16::to_be_bytes(code));
        assert_eq!(
            decode(&frame),
            Ok(vec![Ev::Close(Some((code, String::new())))]),
            "{code}"
        );
    }
}

#[test]
fn close_reason_is_checked_before_the_code() {
    // Both wrong: the reason decides (1007), as in tungstenite, the differential reference.
    let frame = client(0x88, &[0x03, 0xEC, 0xFF]); // 1004, invalid UTF-8
    assert_error(&frame, ProtocolError::InvalidCloseReason, 1007);
}

#[test]
fn invalid_utf8_fails_inside_a_partly_received_text_frame() {
    // Autobahn 6.4.3/6.4.4: the frame's tail has not arrived, but no tail can make the text
    // valid, so the connection fails now.
    let frame = client(0x81, b"ok\xF5 then more text");
    let mut dec = Decoder::default();
    let err = decode_with(&mut dec, &frame[..10], &Limits::new()).unwrap_err();
    assert_eq!(err, ProtocolError::InvalidUtf8);
    // A character cut at the end of a read is not an error.
    let frame = client(0x81, "añb".as_bytes());
    let mut dec = Decoder::default();
    assert_eq!(
        decode_with(&mut dec, &frame[..8], &Limits::new()),
        Ok(vec![])
    );
    assert_eq!(
        decode_with(&mut dec, &frame[8..], &Limits::new()),
        Ok(vec![Ev::Text("añb".as_bytes().to_vec())])
    );
}

#[test]
fn invalid_utf8_fails_at_the_fragment_that_holds_it() {
    // Autobahn 6.4.1/6.4.2: the ping after the bad fragment is never reached.
    let input = [
        client(0x01, b"ok"),
        client(0x00, &[0xF5]),
        client(0x89, b"late"),
        client(0x80, b"end"),
    ]
    .concat();
    let mut events = Vec::new();
    let err = Decoder::default()
        .feed(&mut input.clone(), &Limits::new(), |e| {
            events.push(Ev::from(e))
        })
        .unwrap_err();
    assert_eq!(err, ProtocolError::InvalidUtf8);
    assert_eq!(events, vec![]);
}

#[test]
fn error_invalid_utf8_close_reason() {
    let frame = client(0x88, &[0x03, 0xE8, 0xFF]);
    assert_error(&frame, ProtocolError::InvalidCloseReason, 1007);
}

#[test]
fn error_message_too_large_single_frame() {
    let limits = Limits::new().with_max_message_bytes(10);
    let mut dec = Decoder::default();
    assert_eq!(
        decode_with(&mut dec, &client(0x81, &[b'a'; 10]), &limits),
        Ok(vec![Ev::Text(vec![b'a'; 10])])
    );
    let err = decode_with(&mut dec, &client(0x81, &[b'a'; 11]), &limits).unwrap_err();
    assert_eq!(err, ProtocolError::MessageTooLarge { len: 11, max: 10 });
    assert_eq!(err.close_code(), 1009);
}

#[test]
fn error_message_too_large_fragmented() {
    let limits = Limits::new().with_max_message_bytes(10);
    let input = [client(0x01, &[b'a'; 6]), client(0x80, &[b'b'; 5])].concat();
    let err = decode_with(&mut Decoder::default(), &input, &limits).unwrap_err();
    assert_eq!(err, ProtocolError::MessageTooLarge { len: 11, max: 10 });
    assert_eq!(err.close_code(), 1009);
}

#[test]
fn error_huge_length_detected_from_header_alone() {
    // A header announcing 2^31 bytes, with no payload: rejected without buffering.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 31).to_be_bytes());
    frame.extend_from_slice(&MASK);
    let err = decode_err(&frame);
    assert_eq!(
        err,
        ProtocolError::MessageTooLarge {
            len: 1 << 31,
            max: 4096
        }
    );
    assert_eq!(err.close_code(), 1009);
    // Same when the header itself arrives in pieces.
    let mut dec = Decoder::default();
    assert_eq!(
        decode_with(&mut dec, &frame[..5], &Limits::new()),
        Ok(vec![])
    );
    let err = decode_with(&mut dec, &frame[5..], &Limits::new()).unwrap_err();
    assert!(
        matches!(err, ProtocolError::MessageTooLarge { .. }),
        "{err}"
    );
    assert!(dec.is_idle(), "buffers released after an error");
}

#[test]
fn events_before_an_error_are_delivered() {
    let input = [client(0x81, b"ok"), client(0x80, b"x")].concat();
    let mut events = Vec::new();
    let err = Decoder::default()
        .feed(&mut input.clone(), &Limits::new(), |e| {
            events.push(Ev::from(e))
        })
        .unwrap_err();
    assert_eq!(err, ProtocolError::UnexpectedContinuation);
    assert_eq!(events, vec![Ev::Text(b"ok".to_vec())]);
}
