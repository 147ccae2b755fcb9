use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::*;

const LIMIT: usize = 1 << 20;

fn message(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn fragment(frame: &[u8]) -> (Header, &[u8]) {
    match decode(frame, LIMIT).unwrap() {
        Frame::Fragment { header, bytes } => (header, bytes),
        Frame::Whole(_) => panic!("expected a fragment"),
    }
}

/// Push `frames` (indices into `all`) in the given order; returns the message once complete.
fn reassemble(
    r: &mut Reassembler<&'static str, usize>,
    all: &[Vec<u8>],
    order: &[usize],
) -> Vec<u8> {
    let now = Instant::now();
    let mut out = None;
    for (n, &i) in order.iter().enumerate() {
        let (header, bytes) = fragment(&all[i]);
        let pushed = r.push("p", header, bytes, i, now);
        assert!(pushed.dropped.is_empty());
        match pushed.outcome {
            Outcome::Held => assert!(n + 1 < order.len(), "held after the last fragment"),
            Outcome::Complete { message, tokens } => {
                assert_eq!(n + 1, order.len(), "complete before the last fragment");
                assert_eq!(tokens, order);
                out = Some(message);
            }
            Outcome::Refused { error, .. } => panic!("refused: {error}"),
        }
    }
    assert_eq!(r.incomplete(), 0);
    assert_eq!(r.held_bytes(), 0);
    out.expect("complete")
}

#[test]
fn split_and_reassemble_at_the_boundaries() {
    let mut r = Reassembler::new(Limits::for_messages(LIMIT));
    for len in [0, 1, FRAGMENT_BYTES - 1, FRAGMENT_BYTES] {
        let m = message(len, 1);
        let frames = split(&m).unwrap();
        assert_eq!(frames.len(), 1, "{len} bytes go whole");
        assert_eq!(frames[0].len(), WHOLE_HEADER_BYTES + len);
        assert_eq!(decode(&frames[0], LIMIT).unwrap(), Frame::Whole(&m[..]));
    }
    for (len, count) in [
        (FRAGMENT_BYTES + 1, 2),
        (2 * FRAGMENT_BYTES, 2),
        (2 * FRAGMENT_BYTES + 1, 3),
        (10 * FRAGMENT_BYTES + 17, 11),
        (LIMIT, LIMIT / FRAGMENT_BYTES),
    ] {
        let m = message(len, 2);
        let frames = split(&m).unwrap();
        assert_eq!(frames.len(), count, "{len} bytes");
        assert!(frames.iter().all(|f| f.len() <= MAX_FRAME_BYTES));
        let last = frames.last().unwrap();
        assert_eq!(
            last.len() - FRAGMENT_HEADER_BYTES,
            len - (count - 1) * FRAGMENT_BYTES
        );
        let order: Vec<usize> = (0..count).collect();
        assert_eq!(reassemble(&mut r, &frames, &order), m);
    }
}

#[test]
fn out_of_order_and_interleaved_messages_reassemble() {
    let mut r = Reassembler::new(Limits::for_messages(LIMIT));
    let m = message(7 * FRAGMENT_BYTES + 3, 3);
    let frames = split(&m).unwrap();
    let mut order: Vec<usize> = (0..frames.len()).collect();
    order.reverse();
    assert_eq!(reassemble(&mut r, &frames, &order), m);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    order.shuffle(&mut rng);
    assert_eq!(reassemble(&mut r, &frames, &order), m);

    // Two messages of one publisher and one of another, interleaved.
    let a = split(&message(3 * FRAGMENT_BYTES, 4)).unwrap();
    let b = split(&message(2 * FRAGMENT_BYTES + 9, 5)).unwrap();
    let now = Instant::now();
    let mut done = Vec::new();
    let steps = [
        ("x", &a, 0),
        ("x", &b, 1),
        ("y", &a, 2),
        ("x", &a, 1),
        ("x", &b, 0),
        ("x", &a, 2),
        ("y", &a, 0),
        ("x", &b, 2),
        ("y", &a, 1),
    ];
    for (token, (publisher, frames, i)) in steps.into_iter().enumerate() {
        let (header, bytes) = fragment(&frames[i]);
        let pushed = r.push(publisher, header, bytes, token, now);
        assert!(pushed.dropped.is_empty());
        if let Outcome::Complete { message, tokens } = pushed.outcome {
            done.push((publisher, message.len(), tokens));
        }
    }
    assert_eq!(
        done,
        vec![
            ("x", 3 * FRAGMENT_BYTES, vec![0, 3, 5]),
            ("x", 2 * FRAGMENT_BYTES + 9, vec![1, 4, 7]),
            ("y", 3 * FRAGMENT_BYTES, vec![2, 6, 8]),
        ]
    );
    assert_eq!(r.incomplete(), 0);
}

#[test]
fn duplicates_are_refused_without_blame_and_do_not_disturb_the_message() {
    let mut r = Reassembler::new(Limits::for_messages(LIMIT));
    let m = message(3 * FRAGMENT_BYTES, 6);
    let frames = split(&m).unwrap();
    let now = Instant::now();
    let (h0, b0) = fragment(&frames[0]);
    assert_eq!(r.push("p", h0, b0, 0, now).outcome, Outcome::Held);
    let dup = r.push("p", h0, b0, 1, now).outcome;
    let Outcome::Refused {
        token: 1,
        error,
        others,
    } = dup
    else {
        panic!("{dup:?}")
    };
    assert_eq!(error, FrameError::Duplicate { index: 0 });
    assert!(!error.is_malformed() && others.is_empty());
    // The same bytes from another publisher are another message.
    assert_eq!(r.push("q", h0, b0, 2, now).outcome, Outcome::Held);
    for (token, f) in frames.iter().enumerate().skip(1) {
        let (h, b) = fragment(f);
        if let Outcome::Complete { message, tokens } = r.push("p", h, b, 10 + token, now).outcome {
            assert_eq!(message, m);
            assert_eq!(tokens, vec![0, 11, 12]);
        }
    }
    assert_eq!(r.incomplete(), 1, "q's message is still waiting");
}

#[test]
fn each_malformed_header_is_refused_with_its_reason() {
    let m = message(3 * FRAGMENT_BYTES + 100, 7);
    let frames = split(&m).unwrap();
    let good = &frames[1];
    let with = |at: usize, bytes: &[u8]| {
        let mut f = good.clone();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    };
    let cases: Vec<(&str, Vec<u8>, FrameError)> = vec![
        ("empty", vec![], FrameError::Truncated { len: 0, needed: 2 }),
        (
            "one byte",
            vec![VERSION],
            FrameError::Truncated { len: 1, needed: 2 },
        ),
        (
            "cut header",
            good[..FRAGMENT_HEADER_BYTES - 1].to_vec(),
            FrameError::Truncated {
                len: FRAGMENT_HEADER_BYTES - 1,
                needed: FRAGMENT_HEADER_BYTES,
            },
        ),
        ("version", with(0, &[2]), FrameError::UnknownVersion(2)),
        ("kind", with(1, &[9]), FrameError::UnknownKind(9)),
        (
            "whole too large",
            [&[VERSION, 0][..], &vec![0u8; FRAGMENT_BYTES + 1]].concat(),
            FrameError::WholeTooLarge {
                len: FRAGMENT_BYTES + 1,
            },
        ),
        (
            "needless",
            with(34, &(FRAGMENT_BYTES as u32).to_be_bytes()),
            FrameError::NeedlessFragment {
                total: FRAGMENT_BYTES as u32,
            },
        ),
        (
            "over the limit",
            with(34, &(LIMIT as u32 + 1).to_be_bytes()),
            FrameError::TooLarge {
                total: LIMIT as u32 + 1,
                limit: LIMIT,
            },
        ),
        (
            "wrong count",
            with(40, &5u16.to_be_bytes()),
            FrameError::WrongCount {
                count: 5,
                total: m.len() as u32,
                expected: 4,
            },
        ),
        (
            "index out of range",
            with(38, &4u16.to_be_bytes()),
            FrameError::IndexOutOfRange { index: 4, count: 4 },
        ),
        (
            "short",
            good[..good.len() - 1].to_vec(),
            FrameError::WrongLength {
                index: 1,
                len: FRAGMENT_BYTES - 1,
                expected: FRAGMENT_BYTES,
            },
        ),
        (
            "last fragment too long",
            [&frames[3][..], &[0u8]].concat(),
            FrameError::WrongLength {
                index: 3,
                len: 101,
                expected: 100,
            },
        ),
    ];
    for (what, frame, expected) in cases {
        let err = decode(&frame, LIMIT).expect_err(what);
        assert_eq!(err, expected, "{what}");
        assert!(err.is_malformed(), "{what}");
        assert!(!err.to_string().is_empty());
    }
    // The whole message fits a larger limit, and the format's own maximum binds any limit.
    assert!(decode(&frames[0], m.len()).is_ok());
    assert!(matches!(
        decode(&frames[0], m.len() - 1),
        Err(FrameError::TooLarge { .. })
    ));
    assert!(matches!(
        split(&vec![0u8; MAX_MESSAGE_BYTES + 1]),
        Err(SplitError::TooLarge { .. })
    ));
}

#[test]
fn conflicting_inconsistent_and_forged_fragments_are_refused() {
    let mut r = Reassembler::new(Limits::for_messages(LIMIT));
    let now = Instant::now();
    let m = message(3 * FRAGMENT_BYTES, 8);
    let frames = split(&m).unwrap();
    let (h0, b0) = fragment(&frames[0]);
    assert_eq!(r.push("p", h0, b0, 0, now).outcome, Outcome::Held);

    // Index 0 again, different bytes: the publisher signed two versions.
    let other = vec![0xAAu8; FRAGMENT_BYTES];
    let Outcome::Refused { token, error, .. } = r.push("p", h0, &other, 1, now).outcome else {
        panic!()
    };
    assert_eq!(
        (token, error.clone()),
        (1, FrameError::Conflicting { index: 0 })
    );
    assert!(!error.is_malformed());

    // Same digest, another shape.
    let bent = Header {
        total: h0.total + 1,
        ..h0
    };
    let Outcome::Refused { error, .. } = r.push("p", bent, b0, 2, now).outcome else {
        panic!()
    };
    assert_eq!(
        error,
        FrameError::Inconsistent {
            total: h0.total + 1,
            count: h0.count
        }
    );

    // Well-formed headers, forged bytes: refused once complete, all tokens back.
    let (h1, _) = fragment(&frames[1]);
    assert_eq!(r.push("p", h1, &other, 3, now).outcome, Outcome::Held);
    let (h2, b2) = fragment(&frames[2]);
    let Outcome::Refused {
        token,
        error,
        others,
    } = r.push("p", h2, b2, 4, now).outcome
    else {
        panic!()
    };
    assert_eq!(
        (token, error, others),
        (4, FrameError::DigestMismatch, vec![0, 3])
    );
    assert_eq!((r.incomplete(), r.held_bytes()), (0, 0));
}

#[test]
fn incomplete_messages_expire() {
    let limits = Limits::for_messages(LIMIT);
    let mut r = Reassembler::new(limits);
    let t0 = Instant::now();
    let frames = split(&message(2 * FRAGMENT_BYTES, 9)).unwrap();
    let (h0, b0) = fragment(&frames[0]);
    let (h1, b1) = fragment(&frames[1]);
    assert_eq!(r.push("p", h0, b0, 0, t0).outcome, Outcome::Held);
    assert!(r
        .expire(t0 + limits.timeout - Duration::from_millis(1))
        .is_empty());
    assert_eq!(r.expire(t0 + limits.timeout), vec![0]);
    assert_eq!((r.incomplete(), r.held_bytes()), (0, 0));

    // The late half starts over (and expires in turn); a push also expires the publisher's old
    // messages on its own.
    let t1 = t0 + limits.timeout;
    assert_eq!(r.push("p", h1, b1, 1, t1).outcome, Outcome::Held);
    let pushed = r.push("p", h0, b0, 2, t1 + limits.timeout);
    assert_eq!(pushed.dropped, vec![1]);
    assert_eq!(pushed.outcome, Outcome::Held);
    assert_eq!(r.held_bytes(), FRAGMENT_BYTES);
}

#[test]
fn caps_drop_the_oldest_incomplete_messages() {
    let limits = Limits {
        max_incomplete: 3,
        max_bytes: 4 * FRAGMENT_BYTES,
        timeout: Duration::from_secs(10),
    };
    let mut r = Reassembler::new(limits);
    let now = Instant::now();
    let messages: Vec<Vec<Vec<u8>>> = (0..5)
        .map(|i| split(&message(3 * FRAGMENT_BYTES, 10 + i)).unwrap())
        .collect();
    // One fragment of each of 4 messages: the 4th drops the 1st (count cap); another publisher
    // is not affected.
    let (h, b) = fragment(&messages[0][0]);
    assert_eq!(r.push("other", h, b, 99, now).outcome, Outcome::Held);
    for (i, m) in messages.iter().take(4).enumerate() {
        let (h, b) = fragment(&m[0]);
        let pushed = r.push("p", h, b, i, now);
        assert_eq!(pushed.outcome, Outcome::Held);
        assert_eq!(pushed.dropped, if i == 3 { vec![0] } else { vec![] });
    }
    assert_eq!(r.incomplete(), 4);
    // Bytes: p holds 3 fragments; a 4th fits, a 5th drops the oldest message (message 1), but
    // never the one it belongs to.
    let (h, b) = fragment(&messages[3][1]);
    assert!(r.push("p", h, b, 10, now).dropped.is_empty());
    let (h, b) = fragment(&messages[3][2]);
    let pushed = r.push("p", h, b, 11, now);
    assert_eq!(pushed.dropped, vec![1]);
    assert!(
        matches!(pushed.outcome, Outcome::Complete { ref tokens, .. } if *tokens == vec![3, 10, 11])
    );
    assert!(r.held_bytes() <= limits.max_bytes + FRAGMENT_BYTES);
    assert_eq!(r.incomplete(), 2, "message 2 of p and other's");
}

#[test]
fn a_message_of_the_limit_fits_the_default_caps_while_others_are_in_progress() {
    let mut r = Reassembler::new(Limits::for_messages(LIMIT));
    let now = Instant::now();
    let small = split(&message(2 * FRAGMENT_BYTES, 20)).unwrap();
    let (h, b) = fragment(&small[0]);
    assert_eq!(r.push("p", h, b, usize::MAX, now).outcome, Outcome::Held);
    let big = message(LIMIT, 21);
    let frames = split(&big).unwrap();
    let order: Vec<usize> = (0..frames.len()).collect();
    let mut complete = false;
    for &i in &order {
        let (h, b) = fragment(&frames[i]);
        let pushed = r.push("p", h, b, i, now);
        assert!(
            pushed.dropped.is_empty(),
            "nothing dropped for one message of the limit"
        );
        complete |=
            matches!(pushed.outcome, Outcome::Complete { ref message, .. } if *message == big);
    }
    assert!(complete);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any message splits into frames of bounded size that reassemble to it in any order.
    #[test]
    fn any_message_round_trips_in_any_order(len in 0usize..8 * FRAGMENT_BYTES, seed in any::<u64>()) {
        let m = message(len, seed as u8);
        let frames = split(&m).unwrap();
        prop_assert!(frames.iter().all(|f| f.len() <= MAX_FRAME_BYTES));
        if frames.len() == 1 {
            prop_assert_eq!(decode(&frames[0], LIMIT).unwrap(), Frame::Whole(&m[..]));
        } else {
            let mut order: Vec<usize> = (0..frames.len()).collect();
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            let mut r = Reassembler::new(Limits::for_messages(LIMIT));
            prop_assert_eq!(reassemble(&mut r, &frames, &order), m);
        }
    }

    /// Arbitrary bytes never panic the decoder; what decodes as a fragment has a canonical header.
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), total in any::<u32>()) {
        let _ = decode(&bytes, LIMIT);
        let mut f = vec![VERSION, 1];
        f.extend_from_slice(&[0u8; 32]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&bytes[..bytes.len().min(4)]);
        f.extend_from_slice(&bytes);
        if let Ok(Frame::Fragment { header, bytes }) = decode(&f, LIMIT) {
            prop_assert!(header.index < header.count);
            prop_assert!(bytes.len() <= FRAGMENT_BYTES);
        }
    }

    /// Whatever a hostile publisher sends, every token comes back exactly once (completed,
    /// refused, dropped or expired) and the caps hold at every step.
    #[test]
    fn every_token_comes_back_exactly_once(ops in proptest::collection::vec((0u8..3, 0u8..6, 0usize..4, any::<bool>(), 0u64..4000), 1..120)) {
        let limits = Limits { max_incomplete: 3, max_bytes: 5 * FRAGMENT_BYTES, timeout: Duration::from_secs(2) };
        let mut r = Reassembler::new(limits);
        let messages: Vec<Vec<Vec<u8>>> = (0..6).map(|i| split(&message((2 + i % 3) * FRAGMENT_BYTES + i, i as u8)).unwrap()).collect();
        let forged = vec![0x55u8; FRAGMENT_BYTES];
        let t0 = Instant::now();
        let mut now = t0;
        let n = ops.len();
        let mut back: HashMap<usize, usize> = HashMap::new();
        let mut count = |tokens: &[usize]| for t in tokens { *back.entry(*t).or_default() += 1; };
        for (token, (publisher, m, i, forge, dt)) in ops.into_iter().enumerate() {
            now += Duration::from_millis(dt);
            let frames = &messages[m as usize];
            let (h, b) = fragment(&frames[i % frames.len()]);
            let bytes = if forge && h.index + 1 < h.count { &forged[..] } else { b };
            let pushed = r.push(publisher, h, bytes, token, now);
            count(&pushed.dropped);
            match pushed.outcome {
                Outcome::Held => {}
                Outcome::Complete { tokens, .. } => count(&tokens),
                Outcome::Refused { token, others, .. } => { count(&[token]); count(&others); }
            }
            for p in r.publishers.values() {
                prop_assert!(p.partials.len() <= limits.max_incomplete);
                prop_assert!(p.bytes <= limits.max_bytes);
            }
        }
        count(&r.expire(now + limits.timeout));
        prop_assert_eq!(r.incomplete(), 0);
        prop_assert!(back.values().all(|n| *n == 1), "{:?}", back);
        prop_assert_eq!(back.len(), n);
    }
}
