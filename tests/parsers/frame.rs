//! The frame decoder (`proto::frame`): split invariance over random and structured streams, and
//! a differential test against tungstenite over generated client frame sequences.

use chat4all_gateway::internals::Limits;
use proptest::{collection::vec, prelude::*, sample::select};

use crate::checks::frame::{assert_agrees_with_tungstenite, decode_split, frame};

/// How a frame's payload length is written on the wire.
#[derive(Debug, Clone, Copy)]
enum LenForm {
    /// The smallest form that holds the length (what RFC 6455 §5.2 asks senders for).
    Minimal,
    /// The 16-bit form (0x7E), when the length fits.
    Sixteen,
    /// The 64-bit form (0x7F).
    SixtyFour,
}

/// One client frame, before encoding.
#[derive(Debug, Clone)]
struct Frame {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    payload: Vec<u8>,
    form: LenForm,
}

impl Frame {
    /// The masked wire bytes.
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.fin) << 7 | self.opcode);
        let len = self.payload.len();
        let form = match self.form {
            LenForm::Sixteen if len <= 0xFFFF => 126,
            LenForm::SixtyFour => 127,
            _ if len <= 125 => len as u8,
            _ if len <= 0xFFFF => 126,
            _ => 127,
        };
        out.push(0x80 | form);
        match form {
            126 => out.extend_from_slice(&(len as u16).to_be_bytes()),
            127 => out.extend_from_slice(&(len as u64).to_be_bytes()),
            _ => {}
        }
        out.extend_from_slice(&self.mask);
        out.extend(
            self.payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ self.mask[i % 4]),
        );
    }
}

/// Text content: valid UTF-8, arbitrary bytes, or valid text with one bad byte spliced in.
fn text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => ".{0,24}".prop_map(String::into_bytes),
        2 => vec(any::<u8>(), 0..24),
        2 => (".{0,16}", any::<u8>(), any::<prop::sample::Index>()).prop_map(|(s, bad, at)| {
            let mut bytes = s.into_bytes();
            let at = at.index(bytes.len() + 1);
            bytes.insert(at, bad | 0x80);
            bytes
        }),
        1 => (126usize..300).prop_map(|n| "é".repeat(n / 2).into_bytes()),
        1 => select(vec![65_535usize, 65_536, 70_000]).prop_map(|n| vec![b'a'; n]),
    ]
}

/// Close status codes: every interesting boundary and anything at all.
fn close_code() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => select(vec![
            0, 1, 999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011,
            1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 3000, 3999, 4000, 4999, 5000, 65535,
        ]),
        1 => any::<u16>(),
    ]
}

/// One message as the client sends it: data split into fragments with control frames between
/// them, or one control frame.
#[derive(Debug, Clone)]
enum Message {
    Data {
        opcode: u8,
        payload: Vec<u8>,
        /// Fragment boundaries (indices into the payload).
        cuts: Vec<usize>,
        /// Control frames sent after the fragment with the same index.
        between: Vec<(usize, Vec<u8>, u8)>,
        forms: Vec<LenForm>,
    },
    Control {
        opcode: u8,
        payload: Vec<u8>,
    },
}

fn len_form() -> impl Strategy<Value = LenForm> {
    prop_oneof![
        6 => Just(LenForm::Minimal),
        1 => Just(LenForm::Sixteen),
        1 => Just(LenForm::SixtyFour),
    ]
}

fn close_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        4 => (close_code(), text()).prop_map(|(code, reason)| {
            let mut p = code.to_be_bytes().to_vec();
            p.extend(reason.into_iter().take(123));
            p
        }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let control = prop_oneof![
        (Just(0x9u8), vec(any::<u8>(), 0..=125)),
        (Just(0xAu8), vec(any::<u8>(), 0..=125)),
    ];
    prop_oneof![
        6 => (
            prop_oneof![Just(0x1u8), Just(0x2u8)],
            text(),
            vec(any::<prop::sample::Index>(), 0..4),
            vec((any::<prop::sample::Index>(), vec(any::<u8>(), 0..8), prop_oneof![Just(0x9u8), Just(0xAu8)]), 0..3),
            vec(len_form(), 5),
        )
            .prop_map(|(opcode, payload, cuts, between, forms)| {
                let mut cuts: Vec<usize> =
                    cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
                cuts.sort_unstable();
                let between = between
                    .into_iter()
                    .map(|(i, p, op)| (i.index(cuts.len() + 1), p, op))
                    .collect();
                Message::Data { opcode, payload, cuts, between, forms }
            }),
        2 => control.prop_map(|(opcode, payload)| Message::Control { opcode, payload }),
        1 => close_payload().prop_map(|payload| Message::Control { opcode: 0x8, payload }),
    ]
}

/// Encodes messages into one client stream, with a fresh mask per frame.
fn encode(messages: &[Message], masks: &[[u8; 4]]) -> Vec<u8> {
    let mut masks = masks.iter().copied().cycle();
    let mut out = Vec::new();
    for message in messages {
        match message {
            Message::Control { opcode, payload } => Frame {
                fin: true,
                opcode: *opcode,
                mask: masks.next().unwrap(),
                payload: payload.clone(),
                form: LenForm::Minimal,
            }
            .encode(&mut out),
            Message::Data {
                opcode,
                payload,
                cuts,
                between,
                forms,
            } => {
                let mut bounds = vec![0];
                bounds.extend(cuts);
                bounds.push(payload.len());
                let pieces = bounds.len() - 1;
                for i in 0..pieces {
                    Frame {
                        fin: i + 1 == pieces,
                        opcode: if i == 0 { *opcode } else { 0 },
                        mask: masks.next().unwrap(),
                        payload: payload[bounds[i]..bounds[i + 1]].to_vec(),
                        form: forms[i % forms.len()],
                    }
                    .encode(&mut out);
                    // Control frames may come between fragments, not after the last one.
                    if i + 1 < pieces {
                        for (_, p, op) in between.iter().filter(|(at, ..)| *at == i) {
                            Frame {
                                fin: true,
                                opcode: *op,
                                mask: masks.next().unwrap(),
                                payload: p.clone(),
                                form: LenForm::Minimal,
                            }
                            .encode(&mut out);
                        }
                    }
                }
            }
        }
    }
    out
}

/// A stream of client messages (mostly valid; invalid UTF-8 and close codes included), its
/// encoding, and read boundaries.
fn client_stream() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    (vec(message(), 0..6), vec(any::<[u8; 4]>(), 1..4)).prop_flat_map(|(messages, masks)| {
        let stream = encode(&messages, &masks);
        let len = stream.len();
        (Just(stream), vec(0..=len, 0..6))
    })
}

/// Limits large enough for every generated message.
fn big_limits() -> Limits {
    Limits::new().with_max_message_bytes(1 << 17)
}

proptest! {
    /// Random bytes: the events and verdict do not depend on where reads end.
    #[test]
    fn random_bytes_decode_the_same_however_split(
        stream in vec(any::<u8>(), 0..300),
        cuts in vec(0usize..300, 0..8),
        limit in select(vec![0usize, 4, 125, 4096]),
    ) {
        let limits = Limits::new().with_max_message_bytes(limit);
        prop_assert_eq!(decode_split(&stream, &cuts, &limits), decode_split(&stream, &[], &limits));
    }

    /// The fuzz target's whole check (split invariance and the tungstenite differential) on
    /// random bytes, which mostly fail early in ways tungstenite reports differently.
    #[test]
    fn fuzz_check_holds_on_random_bytes(data in vec(any::<u8>(), 0..400)) {
        frame(&data);
    }

    /// Client streams, intact or with one byte changed: the same, however split.
    #[test]
    fn client_streams_decode_the_same_however_split(
        (mut stream, cuts) in client_stream(),
        flip in proptest::option::of((any::<prop::sample::Index>(), 1u8..)),
        limit in select(vec![125usize, 4096, 1 << 17]),
    ) {
        if let Some((at, bits)) = flip && !stream.is_empty() {
            let at = at.index(stream.len());
            stream[at] ^= bits;
        }
        let limits = Limits::new().with_max_message_bytes(limit);
        let whole = decode_split(&stream, &[], &limits);
        prop_assert_eq!(&decode_split(&stream, &cuts, &limits), &whole);
        if stream.len() <= 2048 {
            let every: Vec<usize> = (1..stream.len()).collect();
            prop_assert_eq!(&decode_split(&stream, &every, &limits), &whole);
        }
    }

    /// Generated client streams: the same messages, close codes and UTF-8 verdicts as tungstenite.
    #[test]
    fn client_streams_agree_with_tungstenite((stream, _) in client_stream()) {
        assert_agrees_with_tungstenite(&stream, &big_limits());
    }

    /// The same with the gateway's default 4 KiB limit, so oversized messages are refused (1009).
    #[test]
    fn size_limits_agree_with_tungstenite((stream, _) in client_stream()) {
        assert_agrees_with_tungstenite(&stream, &Limits::new());
    }

    /// Corrupted streams: one changed byte; wherever both decoders reach a verdict, they agree.
    #[test]
    fn corrupted_streams_agree_with_tungstenite(
        (mut stream, _) in client_stream(),
        at in any::<prop::sample::Index>(),
        bits in 1u8..,
    ) {
        if !stream.is_empty() {
            let at = at.index(stream.len());
            stream[at] ^= bits;
        }
        assert_agrees_with_tungstenite(&stream, &Limits::new());
    }
}
