//! `majority`: most identities that try to join are sybils.
//!
//! `--members` honest founding members; `joiners` identities ask to join, 90 % of them sybils
//! (one honest joiner per nine sybils). Every request is a real signed join request and goes
//! through the real admission protocol ([`fedmesh_protocol::admission::Ballot`] and
//! [`Members::apply`], as the nodes run it):
//!
//! - every member's operator approves the honest joiners (it knows them out of band) and no
//!   sybil; one compromised member's operator approves every sybil as well;
//! - every sybil votes for every sybil, first under its own (non-member) index, then claiming a
//!   member's index with its own key (a forgery);
//! - the coordinator proposes what has a quorum, and the record is checked as every member checks
//!   it before approving.
//!
//! Then the admitted network trains `--rounds` rounds (defence `fedmesh`), next to the clean run
//! (the honest members and honest joiners, no sybil anywhere), and, for contrast, an open network
//! that admits every identity that asks, its sybils flipping labels 1 → 7 as `clones` do.

use serde::Serialize;

use fedmesh_crypto::identity;
use fedmesh_protocol::admission::{
    AdmissionError, AdmissionVote, Ballot, JoinRequest, SignedAdmissionVote, SignedJoinRequest,
};
use fedmesh_protocol::audit::RoundRecord;
use fedmesh_protocol::genesis::Mode;
use fedmesh_protocol::membership::Members;
use fedmesh_protocol::Hash;

use super::{flip_1_to_7, spec, world, Case, Sybil};
use crate::drill::sim::{self, RunSpec, World};
use crate::drill::{opt, pct, recommended};

/// What the admission phase let in and what it refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AdmissionSummary {
    pub honest_joiners: usize,
    pub sybils: usize,
    /// Indices (in the drill's world) the log admitted, honest joiners and sybils.
    pub admitted_honest: Vec<u32>,
    pub admitted_sybils: Vec<u32>,
    /// Join requests the ballot took up (sybils' included: they are well-formed).
    pub requests: usize,
    /// Votes counted towards admissions, and votes refused by reason.
    pub votes_counted: usize,
    pub refused_not_member: usize,
    pub refused_forged: usize,
    /// Votes the most-voted sybil got (members' only), and the votes needed.
    pub best_sybil_votes: usize,
    pub votes_needed: usize,
}

/// Run the admission protocol for the world's first `members` identities as founding members,
/// `joiners` (the following identities) asking to join, the sybils among them in `sybils`; member
/// 0's operator is compromised and approves the sybils too. Returns the member set after the
/// record and what happened.
pub fn admission_phase(
    world: &World,
    members: u32,
    joiners: &[u32],
    sybils: &[u32],
) -> anyhow::Result<(Members, AdmissionSummary)> {
    let robust = recommended();
    let key = |i: u32| &world.keys[i as usize];
    let peer = |i: u32| crate::keys::peer_id(&key(i).public()).to_string();
    let mut log = Members::from_parts(
        world.network,
        robust.quorum,
        robust.vote_expiry_rounds,
        (0..members).map(|i| (key(i).public(), peer(i))),
    );
    let mut ballot = Ballot::new(world.network, robust.quorum, robust.vote_expiry_rounds);
    let round = 1;
    let mut summary = AdmissionSummary {
        honest_joiners: joiners.len() - sybils.len(),
        sybils: sybils.len(),
        votes_needed: fedmesh_protocol::votes::needed(members as usize, robust.quorum),
        ..AdmissionSummary::default()
    };
    let mut requests = Vec::new();
    for &j in joiners {
        let request = SignedJoinRequest::sign(
            JoinRequest {
                genesis: world.network,
                public_key: key(j).public(),
                peer_id: peer(j),
                addrs: vec![format!("/ip4/10.0.0.{}/tcp/7000", j % 250)],
                issued_at_ms: 1_000,
                nonce: u64::from(j),
            },
            key(j),
        )?;
        let hash = ballot.propose(&log, &request)?;
        requests.push((j, hash));
    }
    summary.requests = requests.len();
    let vote = |voter: u32, signer: &identity::SecretKey, hash: Hash| {
        SignedAdmissionVote::sign(
            world.network,
            AdmissionVote {
                round,
                voter,
                request: hash,
            },
            signer,
        )
    };
    for &(j, hash) in &requests {
        let is_sybil = sybils.contains(&j);
        // Members' operators: every one approves the honest joiners; only member 0 (compromised)
        // approves sybils.
        for m in 0..members {
            if !is_sybil || m == 0 {
                ballot.count(&log, &vote(m, key(m), hash), round)?;
                summary.votes_counted += 1;
            }
        }
        if !is_sybil {
            continue;
        }
        // The sybils vote for each other: as themselves, and forging members' indices.
        for &s in sybils {
            match ballot.count(&log, &vote(s, key(s), hash), round) {
                Err(AdmissionError::NotMember { .. }) => summary.refused_not_member += 1,
                other => {
                    anyhow::bail!("a sybil's own vote was not refused as a non-member's: {other:?}")
                }
            }
            let claimed = s % members;
            match ballot.count(&log, &vote(claimed, key(s), hash), round) {
                Err(AdmissionError::VoteSignature { .. }) => summary.refused_forged += 1,
                other => anyhow::bail!("a forged vote was not refused: {other:?}"),
            }
        }
    }
    summary.best_sybil_votes = ballot
        .pending()
        .filter(|(h, _, _)| requests.iter().any(|(j, r)| r == h && sybils.contains(j)))
        .map(|(_, _, votes)| votes)
        .max()
        .unwrap_or(0);
    // The coordinator proposes what has a quorum; the record is checked like every member does.
    let record = RoundRecord {
        admissions: ballot.ready(&log, round),
        ..RoundRecord::new(round, Mode::Plain, Hash::ZERO, Hash::ZERO)
    };
    let change = log.apply(1, &record)?;
    for index in change.admitted {
        // Map the log's index back to the drill's identity by key.
        let public = log.get(index).map(|m| m.public_key);
        let j = joiners
            .iter()
            .copied()
            .find(|j| Some(key(*j).public()) == public)
            .ok_or_else(|| anyhow::anyhow!("admitted an unknown identity"))?;
        if sybils.contains(&j) {
            summary.admitted_sybils.push(j);
        } else {
            summary.admitted_honest.push(j);
        }
    }
    Ok((log, summary))
}

/// The `majority` case: `--members` honest members, `joiners` identities asking to join of which
/// 90 % are sybils.
pub fn majority_case(s: &Sybil, joiners: u32) -> anyhow::Result<Case> {
    let honest_joiners = (joiners / 10).max(1);
    let sybil_count = joiners - honest_joiners;
    let m = s.members;
    let n = m + joiners;
    let name = format!("majority-{sybil_count}-of-{joiners}");
    let world = world(s, n)?;
    let joining: Vec<u32> = (m..n).collect();
    // Honest joiners first, then the sybils.
    let sybils: Vec<u32> = (m + honest_joiners..n).collect();
    let t = std::time::Instant::now();
    eprintln!(
        "[{name}] {m} members; {joiners} identities ask to join, {sybil_count} of them sybils"
    );
    let (_, adm) = admission_phase(&world, m, &joining, &sybils)?;
    eprintln!(
        "[{name}] admitted {} honest joiners and {} sybils; sybil votes refused: {} non-member, {} forged; best sybil had {} of {} votes",
        adm.admitted_honest.len(),
        adm.admitted_sybils.len(),
        adm.refused_not_member,
        adm.refused_forged,
        adm.best_sybil_votes,
        adm.votes_needed
    );
    let robust = recommended();
    let attack = flip_1_to_7();
    // The network after admission: founding members, then whoever was admitted (in the drill's
    // order, so shards stay with their identities). Admitted sybils, if any, attack.
    let mut admitted: Vec<u32> = adm
        .admitted_honest
        .iter()
        .chain(&adm.admitted_sybils)
        .copied()
        .collect();
    admitted.sort_unstable();
    let gated_world = select(&world, (0..m).chain(admitted.iter().copied()));
    let gated_attackers: Vec<u32> = admitted
        .iter()
        .enumerate()
        .filter(|(_, j)| adm.admitted_sybils.contains(j))
        .map(|(pos, _)| m + pos as u32)
        .collect();
    let clean_world = select(&world, (0..m + honest_joiners).collect::<Vec<_>>());
    eprintln!("[{name}] clean run: the members and the honest joiners, defence fedmesh");
    let clean = sim::run(
        &clean_world,
        &RunSpec {
            clean: true,
            ..spec(s, &robust, &attack, &[])
        },
    )?;
    eprintln!("[{name}] the network as admission left it, defence fedmesh");
    let gated = sim::run(
        &gated_world,
        &RunSpec {
            clean: gated_attackers.is_empty(),
            clones: Some(s.clone_data),
            ..spec(s, &robust, &attack, &gated_attackers)
        },
    )?;
    eprintln!("[{name}] contrast: an open network admits every sybil, defence fedmesh");
    let open = sim::run(
        &world,
        &RunSpec {
            clones: Some(s.clone_data),
            ..spec(s, &robust, &attack, &sybils)
        },
    )?;
    let gap = (gated.final_accuracy() - clean.final_accuracy()) * 100.0;
    let met = adm.admitted_sybils.is_empty()
        && adm.admitted_honest.len() == honest_joiners as usize
        && gap.abs() <= 1.0;
    let expectation = format!(
        "no sybil admitted without operator approval ({} of {sybil_count} admitted; the \
         compromised member's vote gave the best sybil {} of the {} votes needed; {} non-member \
         and {} forged sybil votes refused), the {honest_joiners} honest joiner(s) admitted ({}), \
         accuracy within 1 point of clean ({gap:+.2}); an open network admitting them all: \
         accuracy {} %, attack success {} %",
        adm.admitted_sybils.len(),
        adm.best_sybil_votes,
        adm.votes_needed,
        adm.refused_not_member,
        adm.refused_forged,
        adm.admitted_honest.len(),
        pct(open.final_accuracy()),
        opt(open.final_attack_success().map(pct)),
    );
    let case = Case {
        scenario: "majority",
        name: name.clone(),
        members: gated_world.members(),
        attackers: adm.admitted_sybils.clone(),
        final_accuracy: gated.final_accuracy(),
        clean_accuracy: clean.final_accuracy(),
        attack_success: gated.final_attack_success(),
        peak_attack_success: gated
            .rounds
            .iter()
            .filter_map(|r| r.attack_success)
            .reduce(f32::max),
        fedavg_attack_success: None,
        evicted_attackers: 0,
        rounds_to_evict_all: None,
        caught_by: Vec::new(),
        similarity_rounds: Vec::new(),
        honest_evicted: gated.honest_evicted(),
        stuffing_target: None,
        votes_needed: Some(adm.votes_needed),
        expectation,
        met,
        seconds: t.elapsed().as_secs_f64(),
        admission: Some(adm),
        open_accuracy: Some(open.final_accuracy()),
        open_attack_success: open.final_attack_success(),
    };
    eprintln!(
        "[{name}] accuracy {} % (clean {} %); open network {} % with attack success {} %; {}",
        pct(case.final_accuracy),
        pct(case.clean_accuracy),
        pct(open.final_accuracy()),
        opt(open.final_attack_success().map(pct)),
        if met {
            "as required"
        } else {
            "NOT as required"
        }
    );
    super::write_case(
        s,
        &case,
        &gated,
        &clean,
        None,
        "sybil majority at admission",
    )?;
    Ok(case)
}

/// The world of the identities `which`, in that order (shards and keys follow their identities).
fn select(world: &World, which: impl IntoIterator<Item = u32>) -> World {
    let which: Vec<usize> = which.into_iter().map(|i| i as usize).collect();
    World {
        layout: world.layout.clone(),
        init: world.init.clone(),
        shards: which.iter().map(|&i| world.shards[i].clone()).collect(),
        test: world.test.clone(),
        reference: world.reference.clone(),
        train: world.train.clone(),
        keys: which.iter().map(|&i| world.keys[i].clone()).collect(),
        network: world.network,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With 90 % sybils among the joiners and one compromised member operator, the admission
    /// protocol admits exactly the honest joiners: sybils' own and forged votes are refused, and
    /// the compromised member's vote is far from the quorum.
    #[test]
    fn no_sybil_is_admitted_and_honest_joiners_are() {
        let members = 6u32;
        let world = World {
            layout: fedmesh_protocol::model::Layout::new(vec![4, 2]).unwrap(),
            init: Vec::new(),
            shards: Vec::new(),
            test: crate::train::Dataset {
                features: 4,
                classes: 2,
                x: Vec::new(),
                y: Vec::new(),
            },
            reference: None,
            train: Default::default(),
            keys: (0..16u8)
                .map(|i| identity::SecretKey::from_seed([i + 1; 32]))
                .collect(),
            network: Hash::of("majority test", b""),
        };
        let joiners: Vec<u32> = (members..16).collect();
        let sybils: Vec<u32> = (members + 1..16).collect();
        let (log, adm) = admission_phase(&world, members, &joiners, &sybils).unwrap();
        assert_eq!(adm.admitted_honest, [members]);
        assert!(adm.admitted_sybils.is_empty());
        assert_eq!(adm.requests, 10);
        assert_eq!(adm.votes_needed, 4);
        assert_eq!(adm.best_sybil_votes, 1);
        assert_eq!(adm.refused_not_member, 9 * 9);
        assert_eq!(adm.refused_forged, 9 * 9);
        assert_eq!(log.active_len(), members as usize + 1);
        assert_eq!(log.next_index(), members + 1);
    }
}
