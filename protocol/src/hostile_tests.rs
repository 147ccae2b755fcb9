//! A hostile member against the protocol, in every mode: it replays an earlier round's message,
//! signs for another round, equivocates (two different signed messages for one slot), or sends
//! oversized or truncated messages. Each is refused with its sender named, or caught as
//! equivocation with evidence that verifies, and the honest round still completes.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::audit::{Entry, Metrics};
use crate::codec::DecodeError;
use crate::crypto::{identity, Hash};
use crate::evidence::{Detector, Slot};
use crate::genesis::tests::sample;
use crate::genesis::Genesis;
use crate::round::{Round, RoundError};
use crate::wire::{Envelope, OpenError, PaillierMsg, Payload, SecaggMsg, Update};
use crate::{model, paillier, secagg};

struct Net {
    g: Genesis,
    gh: Hash,
    keys: Vec<identity::SecretKey>,
    shares: Vec<crate::crypto::bls::SecretShare>,
}

fn net(n: usize) -> Net {
    let (g, keys, shares) = sample(n);
    let (g, gh) = Genesis::parse(g.to_toml().as_bytes()).unwrap();
    Net {
        g,
        gh,
        keys,
        shares,
    }
}

fn update(base: Hash, v: f32) -> Update {
    Update {
        base_model: base,
        num_samples: 50,
        train_loss: 0.4,
        delta: vec![v; 23],
    }
}

fn seal(n: &Net, sender: u32, round: u64, p: Payload) -> (Envelope, Vec<u8>) {
    let env = Envelope::seal(n.gh, sender, round, p, &n.keys[sender as usize]);
    let bytes = env.encode();
    (env, bytes)
}

/// Mode plain, 4 members: member 3 sends update A to members 0 and 1 and update B to member 2,
/// then each gets the other version too. Every member catches it, leaves it out, and the
/// coordinator's record (member 3 a dropout, the evidence inside) is approved by all and
/// commits an entry that verifies. A proposal that aggregates the equivocator is refused by any
/// member holding the evidence.
#[test]
fn plain_equivocator_is_left_out_and_the_round_commits_with_evidence() {
    let n = net(4);
    let e0 = Entry::genesis(n.g.to_toml().as_bytes());
    let base = n.g.initial_model;
    let mut rounds: Vec<Round> = (0..4)
        .map(|_| Round::new(&n.g, 1, e0.hash(), 1, base, &[0, 1, 2, 3]))
        .collect();
    let mut detectors: Vec<Detector> = (0..4).map(|_| Detector::new()).collect();
    let (a, ab) = seal(&n, 3, 1, Payload::Update(update(base, 0.5)));
    let (b, bb) = seal(&n, 3, 1, Payload::Update(update(base, -0.5)));
    for (i, (round, detector)) in rounds.iter_mut().zip(&mut detectors).enumerate().take(3) {
        for m in 0..3u32 {
            round.add_update(m, update(base, m as f32)).unwrap();
        }
        let (first, second) = if i < 2 {
            ((&a, &ab), (&b, &bb))
        } else {
            ((&b, &bb), (&a, &ab))
        };
        for (env, bytes) in [first, second] {
            if let Some(e) = detector.observe(env, bytes) {
                e.verify(&n.g, n.gh, 1 << 20).unwrap();
                round.exclude(e.member);
            }
            if let Payload::Update(u) = &env.payload {
                let _ = round.add_update(3, u.clone());
            }
        }
        assert!(round.is_excluded(3) && !round.has_update(3));
        assert!(round.has_all_updates(), "nobody waits for the equivocator");
        assert!(matches!(
            round.add_update(3, update(base, 0.5)),
            Err(RoundError::Equivocation { culprit: 3, .. })
        ));
    }
    let coord = rounds[0].coordinator(0);
    let c = coord as usize;
    assert_ne!(coord, 3, "fixture: an honest coordinator");
    let participants = rounds[c].contributors();
    assert_eq!(participants, vec![0, 1, 2]);
    let delta = rounds[c].aggregate(&participants).unwrap();
    let layout = n.g.layout();
    let new_model = layout.hash(&model::apply(
        &layout.init(n.g.spec.model.init_seed),
        &delta,
    ));
    let metrics = Metrics {
        accuracy: 0.5,
        loss: 1.0,
        test_samples: 10,
    };
    let mut p = rounds[c].propose(0, coord, &participants, new_model, metrics, 0, Vec::new());
    p.record.evidence = detectors[c].evidence();
    assert_eq!(p.record.dropouts, vec![3]);

    // A proposal that aggregates member 3 (a coordinator that missed the second version).
    let mut with_3 = rounds[c].propose(0, coord, &participants, new_model, metrics, 0, Vec::new());
    with_3.record.participants.push(crate::audit::Contribution {
        member: 3,
        num_samples: 50,
        update_hash: update(base, 0.5).hash(),
        train_loss: 0.4,
    });
    with_3.record.dropouts.clear();
    assert!(matches!(
        rounds[1].check_proposal(coord, &with_3),
        Err(RoundError::BadProposal { .. })
    ));

    let mut approvals = Vec::new();
    for (i, round) in rounds.iter_mut().enumerate().take(3) {
        assert!(round.check_proposal(coord, &p).unwrap().is_empty());
        round.set_proposal(p.clone());
        approvals.push((i as u32, round.approve(&n.keys[i], &n.shares[i]).unwrap()));
    }
    let set = n.g.bls().unwrap();
    for (m, ap) in approvals {
        rounds[0].add_approval(&n.g, &set, m, ap).unwrap();
    }
    let entry = rounds[0].try_commit(&set).expect("three approvals commit");
    entry.verify(&n.g, n.gh, &set).unwrap();
    let record = entry.record().unwrap();
    assert_eq!(record.evidence.len(), 1);
    assert_eq!(record.evidence[0].member, 3);
}

/// A member's update of round 1, replayed in round 2: its envelope still opens (it is signed)
/// but names round 1, which the node ignores; and its content is refused by round 2 (trained
/// from the old model).
#[test]
fn replayed_update_from_an_earlier_round_is_refused() {
    let n = net(3);
    let base1 = n.g.initial_model;
    let (_, old) = seal(&n, 1, 1, Payload::Update(update(base1, 0.1)));
    let env = Envelope::open(&old, 1 << 20, &n.g, n.gh, None).unwrap();
    assert_eq!(env.round, 1);
    let base2 = Hash::of("test", b"model after round 1");
    let mut r2 = Round::new(&n.g, 2, Hash::ZERO, 2, base2, &[0, 1, 2]);
    let Payload::Update(u) = env.payload else {
        unreachable!()
    };
    assert!(matches!(
        r2.add_update(1, u),
        Err(RoundError::WrongBase { culprit: 1, .. })
    ));
    // Re-sealing it for round 2 needs the member's key: with another key it does not open.
    let mut moved = Envelope::seal(n.gh, 1, 2, Payload::Update(update(base1, 0.1)), &n.keys[0]);
    moved.sender = 1;
    assert!(matches!(
        Envelope::open(&moved.encode(), 1 << 20, &n.g, n.gh, None),
        Err(OpenError::Signature(1))
    ));
}

/// Mode secagg: a member's messages signed for another session, a second different
/// advertisement (equivocation: refused by the coordinator, caught by the detector), and
/// truncated or oversized envelopes — each refused with its sender named; the session of the
/// honest members still gives their sum.
#[test]
fn secagg_hostile_messages_are_refused_and_the_session_completes() {
    let (params, keys) = secagg::tests::setup(4, 3, 0, 24, 8);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut coord = secagg::coordinator::CollectKeys::new(params.clone()).unwrap();
    let mut states = BTreeMap::new();
    for m in 0..3u32 {
        let (st, msg) = secagg::member::Start::new(params.clone(), m)
            .unwrap()
            .advertise(&keys[m as usize], &mut rng);
        coord.add(msg).unwrap();
        states.insert(m, st);
    }
    // Member 3 advertises for another session (a replay of an earlier one, or a later one).
    let (_, msg) = secagg::member::Start::new(params.clone(), 3)
        .unwrap()
        .advertise(&keys[3], &mut rng);
    let mut other = msg.body.clone();
    other.round += 1;
    let wrong = secagg::Signed::sign(params.genesis, other, &keys[3]);
    assert!(matches!(
        coord.add(wrong),
        Err(secagg::SecaggError::WrongRound { culprit: 3, .. })
    ));
    // Then twice, with different keys: the second is refused, and it is equivocation.
    let (_, msg2) = secagg::member::Start::new(params.clone(), 3)
        .unwrap()
        .advertise(&keys[3], &mut rng);
    coord.add(msg.clone()).unwrap();
    assert!(matches!(
        coord.add(msg2.clone()),
        Err(secagg::SecaggError::Duplicate { culprit: 3, .. })
    ));
    let (g, gh) = {
        let (g, _, _) = sample(4);
        let text = g.to_toml();
        Genesis::parse(text.as_bytes()).unwrap()
    };
    let payload = |m: secagg::Signed<secagg::Advertise>| Payload::Secagg {
        attempt: 0,
        msg: Box::new(SecaggMsg::Advertise(m)),
    };
    let ea = Envelope::seal(gh, 3, 9, payload(msg), &keys[3]);
    let eb = Envelope::seal(gh, 3, 9, payload(msg2), &keys[3]);
    assert_eq!(
        Slot::of(&ea.payload),
        Some(Slot::Secagg {
            attempt: 0,
            phase: 0
        })
    );
    let mut d = Detector::new();
    assert!(d.observe(&ea, &ea.encode()).is_none());
    let e = d.observe(&eb, &eb.encode()).expect("caught");
    e.verify(&g, gh, 1 << 20).unwrap();
    // Truncated anywhere, or over the limit: refused before anything looks at the payload.
    let bytes = eb.encode();
    for cut in [1, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            Envelope::open(&bytes[..cut], 1 << 20, &g, gh, None).is_err(),
            "cut at {cut}"
        );
    }
    assert!(matches!(
        Envelope::open(&bytes, bytes.len() - 1, &g, gh, None),
        Err(OpenError::Decode(DecodeError::TooLarge { .. }))
    ));
    // A masked input of the wrong length is refused with its sender named.
    let (mut coord, list) = coord.finish().unwrap();
    let mut next = BTreeMap::new();
    for (m, st) in states {
        let (st, msg) = st.share_keys(&list, &keys[m as usize], &mut rng).unwrap();
        coord.add(msg).unwrap();
        next.insert(m, st);
    }
    let (mut coord, relayed) = coord.finish().unwrap();
    let mut after = BTreeMap::new();
    for (m, st) in next {
        let (st, msg) = st
            .masked_input(&relayed[&m], &[u64::from(m); 8], &keys[m as usize])
            .unwrap();
        if m == 2 {
            let mut short = msg.body.clone();
            short.values.truncate(short.values.len() / 2);
            let short = secagg::Signed::sign(params.genesis, short, &keys[2]);
            assert!(coord.add(short).unwrap_err().culprit() == Some(2));
        }
        coord.add(msg).unwrap();
        after.insert(m, st);
    }
    let (mut coord, survivors) = coord.finish().unwrap();
    let mut last = BTreeMap::new();
    for (m, st) in after {
        let (st, msg) = st.consistency(&survivors, &keys[m as usize]).unwrap();
        coord.add(msg).unwrap();
        last.insert(m, st);
    }
    let (mut coord, clist) = coord.finish().unwrap();
    for (m, st) in last {
        coord
            .add(st.unmask(&clist, &keys[m as usize]).unwrap())
            .unwrap();
    }
    let outcome = coord.finish().unwrap();
    // Member 3 shared nothing: the sum is the three honest inputs, 0 + 1 + 2 per value.
    assert_eq!(outcome.sum, vec![3u64; 8]);
}

/// Mode paillier: an update signed for another round, a second different update
/// (equivocation), an oversized update and a truncated partial decryption — each refused with its
/// sender named; the round decrypts with the honest members.
#[test]
fn paillier_hostile_messages_are_refused_and_the_round_completes() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let dealing = crate::crypto::paillier::deal(256, 2, 3, &mut rng).unwrap();
    let n = net(3);
    let params = paillier::RoundParams {
        genesis: n.gh,
        round: 4,
        members: (0..3).map(|i| (i, n.keys[i as usize].public())).collect(),
        len: 5,
        min_contributors: 2,
    };
    let keys = paillier::Keys {
        public: dealing.public,
        verification: dealing.verification,
    };
    let packer = crate::crypto::paillier::pack::Packer::new(&keys.public, 16, 0.5, 3).unwrap();
    let pool = crate::crypto::paillier::Pool::new();
    pool.fill(&keys.public, 8, &mut rng);
    let enc = |m: u32, v: f32, rng: &mut ChaCha20Rng| {
        paillier::encrypt_update(
            &params,
            &keys,
            &packer,
            &pool,
            m,
            &n.keys[m as usize],
            &[v; 5],
            rng,
        )
        .unwrap()
        .0
    };
    let mut c = paillier::Collect::new(&params, &keys, &packer);
    c.add_update(&enc(0, 0.1, &mut rng)).unwrap();
    c.add_update(&enc(1, 0.2, &mut rng)).unwrap();
    let u2 = enc(2, 0.3, &mut rng);
    // Signed for another round.
    let mut other = u2.body.clone();
    other.round = 5;
    let other = paillier::Signed::sign(n.gh, other, &n.keys[2]);
    assert!(matches!(
        c.add_update(&other),
        Err(paillier::PaillierError::WrongRound { culprit: 2, .. })
    ));
    // Oversized: one ciphertext too many.
    let mut big = u2.body.clone();
    big.ciphertexts
        .extend_from_slice(&vec![1u8; keys.public.ciphertext_len()]);
    let big = paillier::Signed::sign(n.gh, big, &n.keys[2]);
    assert_eq!(c.add_update(&big).unwrap_err().culprit(), Some(2));
    // Equivocation: the first update counts, a second different one is refused and caught.
    c.add_update(&u2).unwrap();
    let mut second = u2.body.clone();
    second.clipped += 1;
    let second = paillier::Signed::sign(n.gh, second, &n.keys[2]);
    assert_eq!(c.add_update(&second).unwrap_err().culprit(), Some(2));
    let pay = |m: paillier::Signed<paillier::EncryptedUpdate>| Payload::Paillier {
        attempt: 0,
        msg: Box::new(PaillierMsg::Update(m)),
    };
    let (ea, ab) = seal(&n, 2, 4, pay(u2.clone()));
    let (eb, bb) = seal(&n, 2, 4, pay(second));
    let mut d = Detector::new();
    assert!(d.observe(&ea, &ab).is_none());
    d.observe(&eb, &bb)
        .expect("caught")
        .verify(&n.g, n.gh, 1 << 20)
        .unwrap();

    let mut dec = c.close().unwrap();
    // A truncated partial decryption is refused and its sender named.
    let good = dec
        .partial(&dealing.shares[1], 1, &n.keys[1], &mut rng)
        .unwrap();
    let mut cut = good.body.clone();
    cut.partial.truncate(cut.partial.len() - 5);
    let cut = paillier::Signed::sign(n.gh, cut, &n.keys[1]);
    assert_eq!(dec.add_partial(&cut).unwrap_err().culprit(), Some(1));
    // Member 2 stalls (no partial): members 0 and 1 decrypt.
    dec.add_partial(
        &dec.partial(&dealing.shares[0], 0, &n.keys[0], &mut rng)
            .unwrap(),
    )
    .unwrap();
    assert!(dec.ready() || dec.add_partial(&good).is_ok());
    let out = dec.finish().unwrap();
    assert_eq!(out.summary.decryptors, vec![0, 1]);
}

/// Equivocation counts in the anomaly score as the worst round score there is: with the
/// default decay and threshold, a member caught in `patience` rounds in a row is a suspect (the
/// others vote on it), and one caught once is not yet.
#[test]
fn equivocation_counts_in_the_anomaly_score() {
    let spec = crate::genesis::RobustSpec::default();
    let mut h = crate::robust::score::History::default();
    h.record_misbehaviour(1, 3, spec.score_decay, spec.score_threshold);
    assert!(h.peers[&3].ewma > spec.score_threshold, "{:?}", h.peers[&3]);
    assert_eq!(h.peers[&3].last, crate::robust::score::CAP);
    for round in 2..=spec.patience.max(1) {
        h.record_misbehaviour(round, 3, spec.score_decay, spec.score_threshold);
    }
    assert_eq!(
        h.suspects(spec.patience)
            .iter()
            .map(|(m, _)| *m)
            .collect::<Vec<_>>(),
        vec![3]
    );
    assert!(!h.peers.contains_key(&0));
}

/// Regression (found by the `signed_paillier` fuzz target, input in
/// `tests/fuzz/regressions/signed_paillier/overflowing-update`): a member's update whose
/// ciphertexts are well-formed and correctly signed but encrypt values outside the packing's
/// range passes every check a member can make on ciphertexts, and makes the sum it is in
/// undecodable. The round reports it as an error (no panic, nothing decrypted but the sum) and
/// a sum formed without that update decrypts: a coordinator can still finish the round by
/// leaving the update out (which update, the protocol cannot tell: see RELIABILITY-fuzz.md).
#[test]
fn paillier_out_of_range_update_spoils_only_the_sums_it_is_in() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let dealing = crate::crypto::paillier::deal(256, 2, 3, &mut rng).unwrap();
    let n = net(3);
    let params = paillier::RoundParams {
        genesis: n.gh,
        round: 4,
        members: (0..3).map(|i| (i, n.keys[i as usize].public())).collect(),
        len: 5,
        min_contributors: 2,
    };
    let keys = paillier::Keys {
        public: dealing.public,
        verification: dealing.verification,
    };
    let packer = crate::crypto::paillier::pack::Packer::new(&keys.public, 16, 0.5, 3).unwrap();
    let pool = crate::crypto::paillier::Pool::new();
    pool.fill(&keys.public, 8, &mut rng);
    let honest = |m: u32, rng: &mut ChaCha20Rng| {
        paillier::encrypt_update(
            &params,
            &keys,
            &packer,
            &pool,
            m,
            &n.keys[m as usize],
            &[0.1; 5],
            rng,
        )
        .unwrap()
        .0
    };
    // Member 2 encrypts 150 000 in the first slot (18 bits: 16 value bits, 2 headroom): more
    // than three members' values can sum to, small enough not to carry into the next slot.
    let big = crate::crypto::paillier::Plaintext::from_be_bytes(&150_000u32.to_be_bytes());
    let ct = keys.public.encrypt(&big, &mut rng).unwrap();
    let count = packer.plaintexts_for(5);
    let cts = vec![ct; count];
    let body = paillier::EncryptedUpdate {
        round: 4,
        member: 2,
        clipped: 0,
        ciphertexts: crate::crypto::paillier::encode_ciphertexts(&keys.public, &cts),
    };
    let hostile = paillier::Signed::sign(n.gh, body, &n.keys[2]);
    let updates = [honest(0, &mut rng), honest(1, &mut rng), hostile];
    let decrypt = |contributors: &[u32], rng: &mut ChaCha20Rng| {
        let mut c = paillier::Collect::new(&params, &keys, &packer);
        for u in &updates {
            c.add_update(u)
                .expect("every update passes the checks on ciphertexts");
        }
        let mut d = c.close_for(contributors).unwrap();
        for i in 0..2u32 {
            let part = d
                .partial(&dealing.shares[i as usize], i, &n.keys[i as usize], rng)
                .unwrap();
            d.add_partial(&part).unwrap();
        }
        d.finish()
    };
    let spoiled = decrypt(&[0, 1, 2], &mut rng);
    assert!(
        matches!(spoiled, Err(paillier::PaillierError::Pack(_))),
        "{spoiled:?}"
    );
    let out = decrypt(&[0, 1], &mut rng).expect("the honest members' sum decrypts");
    assert_eq!(out.summary.decryptors, vec![0, 1]);
}
