use super::*;
use crate::audit::{check_membership, Metrics, RoundRecord, VerifyError};
use crate::genesis::{tests::sample, Genesis, Mode};
use crate::votes::{EvictionRecord, SignedVote, Vote};

fn net() -> Hash {
    Hash::of("admission test net", b"")
}

/// A 4-member genesis, its member keys, and joiner keys (seeds 101…).
fn setup() -> (Genesis, Vec<identity::SecretKey>) {
    let (g, keys, _) = sample(4);
    (g, keys)
}

fn joiner(i: u8) -> identity::SecretKey {
    identity::SecretKey::from_seed([100 + i; 32])
}

fn request(key: &identity::SecretKey, tag: u8) -> SignedJoinRequest {
    SignedJoinRequest::sign(
        JoinRequest {
            genesis: net(),
            public_key: key.public(),
            peer_id: format!("joiner{tag}"),
            addrs: vec![format!("/ip4/127.0.0.1/tcp/{}", 8000 + tag as u32)],
            issued_at_ms: 1_000_000,
            nonce: tag as u64,
        },
        key,
    )
    .unwrap()
}

fn vote(
    keys: &[identity::SecretKey],
    voter: u32,
    req: &SignedJoinRequest,
    round: u64,
) -> SignedAdmissionVote {
    SignedAdmissionVote::sign(
        net(),
        AdmissionVote {
            round,
            voter,
            request: req.hash(),
        },
        &keys[voter as usize],
    )
}

fn record(round: u64) -> RoundRecord {
    RoundRecord {
        metrics: Metrics {
            accuracy: 0.5,
            loss: 1.0,
            test_samples: 10,
        },
        ..RoundRecord::new(round, Mode::Plain, Hash::ZERO, Hash::ZERO)
    }
}

fn admission(
    members: &Members,
    keys: &[identity::SecretKey],
    req: &SignedJoinRequest,
    round: u64,
    voters: &[u32],
) -> AdmissionRecord {
    let active = members.active_len();
    AdmissionRecord {
        request: req.clone(),
        index: members.next_index(),
        round,
        effective_round: round + 1,
        active: active as u32,
        needed: needed(active, members.quorum()) as u32,
        votes: voters.iter().map(|v| vote(keys, *v, req, round)).collect(),
    }
}

/// Apply a record and return the error text, checking that a refused record changes nothing.
fn refused(members: &Members, height: u64, r: &RoundRecord) -> String {
    let mut m = members.clone();
    let err = check_membership(&mut m, height, r).unwrap_err();
    assert_eq!(&m, members, "a refused record changes nothing");
    assert_eq!(err.height(), height);
    err.to_string()
}

#[test]
fn request_is_signed_by_the_joiner_and_bound_to_the_network() {
    let j = joiner(1);
    let req = request(&j, 1);
    req.verify(net()).unwrap();
    assert_eq!(SignedJoinRequest::decode(&req.encode()).unwrap(), req);
    assert_eq!(
        req.verify(Hash::ZERO).unwrap_err(),
        AdmissionError::WrongNetwork {
            found: net(),
            expected: Hash::ZERO
        }
    );
    // Someone else's key cannot sign for the joiner, and a changed field breaks the signature.
    assert!(matches!(
        SignedJoinRequest::sign(req.request.clone(), &joiner(2)),
        Err(AdmissionError::Malformed(_))
    ));
    let mut moved = req.clone();
    moved.request.addrs = vec!["/ip4/10.0.0.1/tcp/1".into()];
    assert_eq!(
        moved.verify(net()).unwrap_err(),
        AdmissionError::RequestSignature
    );
    let mut other_key = req.clone();
    other_key.request.public_key = joiner(2).public();
    assert_eq!(
        other_key.verify(net()).unwrap_err(),
        AdmissionError::RequestSignature
    );
}

#[test]
fn request_sizes_are_bounded() {
    let j = joiner(1);
    let base = request(&j, 1).request;
    let bad = |f: &dyn Fn(&mut JoinRequest)| {
        let mut r = base.clone();
        f(&mut r);
        SignedJoinRequest::sign(r, &j).unwrap_err()
    };
    assert!(matches!(
        bad(&|r| r.peer_id.clear()),
        AdmissionError::Malformed(_)
    ));
    assert!(matches!(
        bad(&|r| r.peer_id = "x".repeat(MAX_PEER_ID_LEN + 1)),
        AdmissionError::Malformed(_)
    ));
    assert!(matches!(
        bad(&|r| r.peer_id = "peer/../x".into()),
        AdmissionError::Malformed(_)
    ));
    assert!(matches!(
        bad(&|r| r.addrs = vec!["/a".into(); MAX_ADDRS + 1]),
        AdmissionError::Malformed(_)
    ));
    assert!(matches!(
        bad(&|r| r.addrs = vec!["/".repeat(MAX_ADDR_LEN + 1)]),
        AdmissionError::Malformed(_)
    ));
    assert!(matches!(
        bad(&|r| r.addrs = vec!["/ip4/1.2.3.4 /tcp/1".into()]),
        AdmissionError::Malformed(_)
    ));
    // Oversized bytes from an outsider are refused before decoding.
    let huge = vec![0u8; MAX_REQUEST_BYTES + 1];
    assert!(SignedJoinRequest::decode(&huge).is_err());
    assert!(SignedJoinRequest::decode(&[1, 2, 3]).is_err());
}

#[test]
fn requests_go_stale() {
    let r = request(&joiner(1), 1).request;
    let hour = 3_600_000;
    r.check_fresh(1_000_000, hour, 60_000).unwrap();
    r.check_fresh(1_000_000 + hour, hour, 60_000).unwrap();
    assert!(matches!(
        r.check_fresh(1_000_001 + hour, hour, 60_000),
        Err(AdmissionError::Stale { .. })
    ));
    // From the future beyond the allowed clock skew.
    assert!(r.check_fresh(1_000_000 - 60_000, hour, 60_000).is_ok());
    assert!(r.check_fresh(1_000_000 - 60_001, hour, 60_000).is_err());
}

#[test]
fn a_quorum_admits_with_the_next_index_and_the_new_member_counts_from_the_next_round() {
    let (g, keys) = setup();
    let mut members = Members::new(&g, net());
    let req = request(&joiner(1), 1);
    // 4 active members: 2/3 rounded up is 3 votes.
    let mut r = record(2);
    r.admissions = vec![admission(&members, &keys, &req, 2, &[0, 1, 3])];
    assert_eq!(r.admissions[0].needed, 3);
    let change = check_membership(&mut members, 2, &r).unwrap();
    assert_eq!(change.admitted, [4]);
    assert!(change.evicted.is_empty());
    assert!(members.is_active(4));
    assert_eq!(members.active_len(), 5);
    assert_eq!(members.next_index(), 5);
    let m = members.get(4).unwrap();
    assert_eq!(
        (m.public_key, m.peer_id.as_str(), m.admitted_from),
        (joiner(1).public(), "joiner1", Some(3))
    );
    assert_eq!(members.admitted().count(), 1);
    // The same record again (a replay) is refused: the key is a member now.
    let mut again = record(3);
    let mut rec = r.admissions[0].clone();
    (rec.round, rec.effective_round, rec.index) = (3, 4, 5);
    again.admissions = vec![rec];
    assert!(refused(&members, 3, &again).contains("already member 4"));
}

#[test]
fn the_new_member_takes_part_votes_and_can_be_evicted() {
    let (g, mut keys) = setup();
    let mut members = Members::new(&g, net());
    let j = joiner(1);
    let req = request(&j, 1);
    // It may not appear in the round that admits it.
    let mut r = record(2);
    r.admissions = vec![admission(&members, &keys, &req, 2, &[0, 1, 2])];
    r.dropouts = vec![4];
    assert!(refused(&members, 2, &r).contains("not a member"));
    r.dropouts.clear();
    check_membership(&mut members, 2, &r).unwrap();
    keys.push(j);
    // From round 3 it takes part, and its vote counts towards the next admission: 5 active
    // members need 4 votes.
    let mut r3 = record(3);
    r3.dropouts = vec![4];
    let second = request(&joiner(2), 2);
    r3.admissions = vec![admission(&members, &keys, &second, 3, &[0, 1, 4])];
    assert!(refused(&members, 3, &r3).contains("3 votes, 4 needed"));
    r3.admissions = vec![admission(&members, &keys, &second, 3, &[0, 1, 2, 4])];
    assert_eq!(
        check_membership(&mut members, 3, &r3).unwrap().admitted,
        [5]
    );
    // An eviction voted partly by the admitted member verifies with its key from the log.
    let vote_ev = |voter: u32, round: u64| {
        SignedVote::sign(
            net(),
            Vote {
                round,
                voter,
                target: 1,
                score: 9.0,
                evidence: Hash::ZERO,
            },
            &keys[voter as usize],
        )
    };
    let mut r4 = record(4);
    r4.evictions = vec![EvictionRecord {
        target: 1,
        round: 4,
        effective_round: 5,
        active: 6,
        needed: 4,
        votes: vec![vote_ev(0, 4), vote_ev(2, 4), vote_ev(3, 4), vote_ev(4, 4)],
    }];
    assert_eq!(check_membership(&mut members, 4, &r4).unwrap().evicted, [1]);
    assert_eq!(members.active().collect::<Vec<_>>(), [0, 2, 3, 4, 5]);
}

#[test]
fn forged_and_outsider_votes_count_for_nothing() {
    let (g, keys) = setup();
    let members = Members::new(&g, net());
    let req = request(&joiner(1), 1);
    let good = admission(&members, &keys, &req, 2, &[0, 1, 2]);
    let with = |f: &dyn Fn(&mut AdmissionRecord)| {
        let mut rec = good.clone();
        f(&mut rec);
        let mut r = record(2);
        r.admissions = vec![rec];
        r
    };
    // A vote claiming member 1 but signed by member 2.
    let forged = with(&|a| {
        a.votes[1] = SignedAdmissionVote::sign(net(), a.votes[1].vote, &keys[2]);
    });
    assert!(matches!(
        check_membership(&mut members.clone(), 2, &forged),
        Err(VerifyError::Admission {
            height: 2,
            index: 4,
            source: AdmissionError::VoteSignature { culprit: 1 }
        })
    ));
    // Signed for another network.
    let foreign = with(&|a| {
        a.votes[0] = SignedAdmissionVote::sign(Hash::ZERO, a.votes[0].vote, &keys[0]);
    });
    assert!(refused(&members, 2, &foreign).contains("bad signature"));
    // A vote from an index that is no member (the joiner voting for itself, say).
    let outsider = with(&|a| {
        a.votes[2] = SignedAdmissionVote::sign(
            net(),
            AdmissionVote {
                round: 2,
                voter: 7,
                request: req.hash(),
            },
            &joiner(1),
        );
    });
    assert!(matches!(
        check_membership(&mut members.clone(), 2, &outsider),
        Err(VerifyError::Admission {
            source: AdmissionError::NotMember { culprit: 7 },
            ..
        })
    ));
    // One member's vote twice.
    let doubled = with(&|a| a.votes[2] = a.votes[1].clone());
    assert!(refused(&members, 2, &doubled).contains("voted twice"));
    // A vote for another request.
    let other = request(&joiner(2), 2);
    let elsewhere = with(&|a| a.votes[0] = vote(&keys, 0, &other, 2));
    assert!(refused(&members, 2, &elsewhere).contains("another join request"));
    // An expired vote and one from the future.
    let expiry = g.spec.robust.vote_expiry_rounds;
    let mut late = good.clone();
    (late.round, late.effective_round) = (2 + expiry, 3 + expiry);
    let mut r = record(2 + expiry);
    r.admissions = vec![late];
    assert!(refused(&members, 9, &r).contains("expired or from the future"));
    let future = with(&|a| a.votes[0] = vote(&keys, 0, &req, 3));
    assert!(refused(&members, 2, &future).contains("expired or from the future"));
    // A tampered request: the joiner's signature no longer verifies.
    let tampered = with(&|a| a.request.request.nonce += 1);
    assert!(refused(&members, 2, &tampered).contains("join request signature"));
    // A voter evicted before this round.
    let mut evicting = members.clone();
    let mut r1 = record(1);
    r1.evictions = vec![EvictionRecord {
        target: 2,
        round: 1,
        effective_round: 2,
        active: 4,
        needed: 3,
        votes: [0u32, 1, 3]
            .iter()
            .map(|v| {
                SignedVote::sign(
                    net(),
                    Vote {
                        round: 1,
                        voter: *v,
                        target: 2,
                        score: 9.0,
                        evidence: Hash::ZERO,
                    },
                    &keys[*v as usize],
                )
            })
            .collect(),
    }];
    check_membership(&mut evicting, 1, &r1).unwrap();
    let mut r = record(2);
    let mut rec = admission(&evicting, &keys, &req, 2, &[0, 1, 2]);
    assert_eq!((rec.active, rec.needed), (3, 2));
    r.admissions = vec![rec.clone()];
    assert!(refused(&evicting, 2, &r).contains("voter 2 is not an active member"));
    rec.votes.remove(2);
    r.admissions = vec![rec];
    check_membership(&mut evicting, 2, &r).unwrap();
}

#[test]
fn quorum_edges() {
    let (g, keys) = setup();
    let members = Members::new(&g, net());
    let req = request(&joiner(1), 1);
    let mut r = record(2);
    // Exactly the quorum passes; one vote fewer does not.
    r.admissions = vec![admission(&members, &keys, &req, 2, &[1, 2, 3])];
    check_membership(&mut members.clone(), 2, &r).unwrap();
    r.admissions = vec![admission(&members, &keys, &req, 2, &[1, 2])];
    assert!(refused(&members, 2, &r).contains("2 votes, 3 needed"));
    // The record may not lower the bar or miscount the active members.
    let mut lax = admission(&members, &keys, &req, 2, &[1, 2]);
    lax.needed = 2;
    r.admissions = vec![lax];
    assert!(refused(&members, 2, &r).contains("the quorum"));
    let mut small = admission(&members, &keys, &req, 2, &[1, 2]);
    (small.active, small.needed) = (3, 2);
    r.admissions = vec![small];
    assert!(refused(&members, 2, &r).contains("counts 3 active members"));
    // All members may vote; more than needed is fine.
    r.admissions = vec![admission(&members, &keys, &req, 2, &[0, 1, 2, 3])];
    check_membership(&mut members.clone(), 2, &r).unwrap();
    // A one-member network needs its single vote.
    let (g1, k1, _) = sample(1);
    let m1 = Members::new(&g1, net());
    let mut r = record(1);
    r.admissions = vec![admission(&m1, &k1, &req, 1, &[])];
    assert!(refused(&m1, 1, &r).contains("0 votes, 1 needed"));
    r.admissions = vec![admission(&m1, &k1, &req, 1, &[0])];
    check_membership(&mut m1.clone(), 1, &r).unwrap();
}

#[test]
fn indices_are_consecutive_and_identities_unique() {
    let (g, keys) = setup();
    let members = Members::new(&g, net());
    let (a, b) = (request(&joiner(1), 1), request(&joiner(2), 2));
    let mut r = record(2);
    let first = admission(&members, &keys, &a, 2, &[0, 1, 2]);
    let mut second = admission(&members, &keys, &b, 2, &[0, 1, 2]);
    second.index = 5;
    r.admissions = vec![first.clone(), second.clone()];
    let mut m = members.clone();
    assert_eq!(check_membership(&mut m, 2, &r).unwrap().admitted, [4, 5]);
    assert_eq!(m.by_peer("joiner2").map(|m| m.index), Some(5));
    // A gap, a reused index, or the same index twice.
    let mut gap = second.clone();
    gap.index = 6;
    r.admissions = vec![first.clone(), gap];
    assert!(refused(&members, 2, &r).contains("next free index is 5"));
    let mut reused = first.clone();
    reused.index = 3;
    r.admissions = vec![reused];
    assert!(refused(&members, 2, &r).contains("next free index is 4"));
    // The same identity twice in one round, even with two different requests.
    let j = joiner(1);
    let mut again = request(&j, 1).request;
    again.nonce = 99;
    let again = SignedJoinRequest::sign(again, &j).unwrap();
    let mut dup = admission(&members, &keys, &again, 2, &[0, 1, 2]);
    dup.index = 5;
    r.admissions = vec![first.clone(), dup];
    assert!(refused(&members, 2, &r).contains("admitted twice"));
    // A peer id a member already has.
    let k = joiner(3);
    let mut taken = request(&k, 3).request;
    taken.peer_id = "peer2".into();
    let taken = SignedJoinRequest::sign(taken, &k).unwrap();
    r.admissions = vec![admission(&members, &keys, &taken, 2, &[0, 1, 2])];
    assert!(refused(&members, 2, &r).contains("peer2 is already used"));
    // A genesis member's own key.
    let mut own = request(&keys[1], 9).request;
    own.peer_id = "fresh".into();
    let own = SignedJoinRequest::sign(own, &keys[1]).unwrap();
    r.admissions = vec![admission(&members, &keys, &own, 2, &[0, 2, 3])];
    assert!(refused(&members, 2, &r).contains("already member 1"));
    // More than the bound per round.
    let many: Vec<AdmissionRecord> = (0..=MAX_ADMISSIONS_PER_ROUND as u8)
        .map(|i| {
            let mut rec = admission(
                &members,
                &keys,
                &request(&joiner(10 + i), 10 + i),
                2,
                &[0, 1, 2],
            );
            rec.index = 4 + i as u32;
            rec
        })
        .collect();
    r.admissions = many;
    assert!(refused(&members, 2, &r).contains("at most 16"));
}

#[test]
fn an_evicted_identity_cannot_be_readmitted() {
    let (g, mut keys) = setup();
    let mut members = Members::new(&g, net());
    let j = joiner(1);
    let req = request(&j, 1);
    let mut r2 = record(2);
    r2.admissions = vec![admission(&members, &keys, &req, 2, &[0, 1, 2])];
    check_membership(&mut members, 2, &r2).unwrap();
    keys.push(j.clone());
    let votes = [0u32, 1, 2, 3]
        .iter()
        .map(|v| {
            SignedVote::sign(
                net(),
                Vote {
                    round: 3,
                    voter: *v,
                    target: 4,
                    score: 9.0,
                    evidence: Hash::ZERO,
                },
                &keys[*v as usize],
            )
        })
        .collect();
    let mut r3 = record(3);
    r3.evictions = vec![EvictionRecord {
        target: 4,
        round: 3,
        effective_round: 4,
        active: 5,
        needed: 4,
        votes,
    }];
    check_membership(&mut members, 3, &r3).unwrap();
    assert!(!members.is_active(4));
    // A fresh request with the same key (new nonce, new peer id) is refused; its index stays
    // taken, so the next joiner gets 5.
    let mut fresh = request(&j, 1).request;
    fresh.nonce = 1234;
    fresh.peer_id = "joinerNew".into();
    let fresh = SignedJoinRequest::sign(fresh, &j).unwrap();
    assert_eq!(
        members.check_joiner(&fresh.request).unwrap_err(),
        AdmissionError::Evicted { index: 4 }
    );
    let mut r4 = record(4);
    r4.admissions = vec![admission(&members, &keys, &fresh, 4, &[0, 1, 2])];
    assert!(refused(&members, 4, &r4).contains("evicted identity cannot rejoin"));
    assert_eq!(members.next_index(), 5);
    let mut ballot = Ballot::new(net(), members.quorum(), members.vote_expiry());
    assert_eq!(
        ballot.propose(&members, &fresh).unwrap_err(),
        AdmissionError::Evicted { index: 4 }
    );
}

#[test]
fn ballot_counts_votes_and_readies_records_the_log_accepts() {
    let (g, keys) = setup();
    let mut members = Members::new(&g, net());
    let mut ballot = Ballot::new(net(), members.quorum(), members.vote_expiry());
    let (a, b) = (request(&joiner(1), 1), request(&joiner(2), 2));
    let ha = ballot.propose(&members, &a).unwrap();
    assert_eq!(ballot.propose(&members, &a).unwrap(), ha);
    let hb = ballot.propose(&members, &b).unwrap();
    // A vote for a request the ballot has not seen is refused.
    let unseen = request(&joiner(3), 3);
    assert_eq!(
        ballot.count(&members, &vote(&keys, 0, &unseen, 2), 2),
        Err(AdmissionError::UnknownRequest(unseen.hash()))
    );
    for voter in 0..3 {
        let out = ballot
            .count(&members, &vote(&keys, voter, &a, 2), 2)
            .unwrap();
        assert_eq!(
            out,
            Outcome::Counted {
                votes: voter as usize + 1,
                needed: 3
            }
        );
    }
    assert_eq!(
        ballot.count(&members, &vote(&keys, 2, &a, 2), 2).unwrap(),
        Outcome::Known
    );
    assert_eq!(
        ballot
            .count(&members, &vote(&keys, 2, &a, 3), 3)
            .unwrap_err(),
        AdmissionError::Duplicate { culprit: 2 }
    );
    // Outsiders' and forged votes are refused.
    let mut forged = vote(&keys, 3, &b, 2);
    forged.vote.voter = 1;
    assert_eq!(
        ballot.count(&members, &forged, 2).unwrap_err(),
        AdmissionError::VoteSignature { culprit: 1 }
    );
    let outsider = SignedAdmissionVote::sign(
        net(),
        AdmissionVote {
            round: 2,
            voter: 9,
            request: hb,
        },
        &joiner(2),
    );
    assert_eq!(
        ballot.count(&members, &outsider, 2).unwrap_err(),
        AdmissionError::NotMember { culprit: 9 }
    );
    ballot.count(&members, &vote(&keys, 0, &b, 2), 2).unwrap();
    assert!(ballot.has_voted(0, &hb) && !ballot.has_voted(1, &hb));
    // Only `a` has a quorum.
    let ready = ballot.ready(&members, 2);
    assert_eq!(ready.len(), 1);
    assert_eq!((ready[0].index, ready[0].request.hash()), (4, ha));
    let mut r = record(2);
    r.admissions = ready;
    check_membership(&mut members, 2, &r).unwrap();
    ballot.settle(&members);
    assert_eq!(
        ballot.pending().map(|(h, _, n)| (h, n)).collect::<Vec<_>>(),
        [(hb, 1)]
    );
    // After the votes' expiry and the request's maximum age, `b` is dropped.
    ballot.expire(2 + members.vote_expiry(), 1_000_000 + 10, 5);
    assert_eq!(ballot.pending().count(), 0);
}

#[test]
fn ballot_is_bounded() {
    let (g, _) = setup();
    let members = Members::new(&g, net());
    let mut ballot = Ballot::new(net(), members.quorum(), members.vote_expiry());
    for i in 0..MAX_PENDING_REQUESTS {
        let k = identity::SecretKey::from_seed([(i as u8).wrapping_add(50); 32]);
        let mut r = request(&k, 0).request;
        r.peer_id = format!("p{i}");
        ballot
            .propose(&members, &SignedJoinRequest::sign(r, &k).unwrap())
            .unwrap();
    }
    let over = request(&identity::SecretKey::from_seed([250; 32]), 250);
    assert_eq!(
        ballot.propose(&members, &over).unwrap_err(),
        AdmissionError::Full(MAX_PENDING_REQUESTS)
    );
    // A request for another network is refused before it takes a place.
    let mut wrong = Ballot::new(Hash::ZERO, members.quorum(), members.vote_expiry());
    assert!(matches!(
        wrong.propose(&members, &over),
        Err(AdmissionError::WrongNetwork { .. })
    ));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any signed request round-trips through its codec, and any single flipped byte of
        /// its encoding either fails to decode or fails to verify.
        #[test]
        fn request_codec_and_tamper(seed in any::<u8>(), nonce in any::<u64>(), n_addrs in 0usize..4, flip in any::<prop::sample::Index>()) {
            let key = identity::SecretKey::from_seed([seed; 32]);
            let req = SignedJoinRequest::sign(JoinRequest {
                genesis: net(),
                public_key: key.public(),
                peer_id: format!("peer{seed}"),
                addrs: (0..n_addrs).map(|i| format!("/ip4/127.0.0.1/tcp/{i}")).collect(),
                issued_at_ms: nonce / 3,
                nonce,
            }, &key).unwrap();
            let bytes = req.encode();
            prop_assert_eq!(SignedJoinRequest::decode(&bytes).unwrap(), req.clone());
            let mut bad = bytes.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 0x01;
            if let Ok(back) = SignedJoinRequest::decode(&bad) {
                prop_assert!(back.verify(net()).is_err());
            }
        }
    }
}
