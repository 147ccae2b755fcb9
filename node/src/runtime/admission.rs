//! Admission in the networked node: join requests this member has heard of, its policy on them,
//! and the admission votes it counts.
//!
//! A join request reaches the members out of band: the joiner's `fedmesh join` writes it to a
//! file, which its sponsor (the operator of any member) hands to its own node with
//! `fedmesh admit --request FILE`. That member votes for it and gossips its vote *with* the
//! request, so every member takes the request up ([`Admissions::on_gossip`]); each then votes
//! when its own policy approves: at once for a key on its `[admission] allow_keys`, otherwise once
//! its operator runs `fedmesh admit PEER`. The network never talks to the joiner before it is
//! admitted, so outsiders get no new way in (the allow-list still refuses every non-member right
//! after the handshake). When a quorum of the active members has voted, the round's coordinator
//! puts the admission record into its proposal; the others check it with the member set before
//! they approve ([`super::defence::Defence::check`]).
//!
//! Pending requests and the votes counted are kept in sled, so a restart keeps counting them.

use std::collections::BTreeSet;

use fedmesh_crypto::{identity, Hash};
use fedmesh_protocol::admission::{
    AdmissionError, AdmissionRecord, AdmissionVote, Ballot, Outcome, SignedAdmissionVote,
    SignedJoinRequest,
};
use fedmesh_protocol::membership::Members;
use fedmesh_storage::Store;
use serde::{Deserialize, Serialize};

use crate::config::{Admission as Policy, AdmissionPolicy};

/// State key: pending join requests and the votes counted for them.
const PENDING_KEY: &str = "admission-pending";

/// Clock skew tolerated on a request's time stamp (it may be this far in the future).
const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// One pending request as `fedmesh admit --list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRequest {
    /// [`SignedJoinRequest::hash`], hex.
    pub hash: String,
    pub peer_id: String,
    /// The joiner's ed25519 public key, hex.
    pub public_key: String,
    pub addrs: Vec<String>,
    pub issued_at_ms: u64,
    /// Votes counted so far, and needed.
    pub votes: usize,
    pub needed: usize,
    /// Whether this member has voted for it.
    pub approved_here: bool,
}

/// This member's view of the join requests it has heard of.
pub(super) struct Admissions {
    ballot: Ballot,
    policy: Policy,
    allow: Vec<identity::PublicKey>,
    /// Requests this member voted for.
    voted: BTreeSet<Hash>,
}

impl Admissions {
    /// Restore the pending requests and votes from `store`, as far as they are still valid for
    /// `members` at round `round`.
    pub fn load(
        store: &Store,
        members: &Members,
        policy: Policy,
        allow: Vec<identity::PublicKey>,
        me: u32,
        round: u64,
    ) -> Admissions {
        let mut a = Admissions {
            ballot: Ballot::new(
                members.genesis_hash(),
                members.quorum(),
                members.vote_expiry(),
            ),
            policy,
            allow,
            voted: BTreeSet::new(),
        };
        let stored: Vec<(SignedJoinRequest, Vec<SignedAdmissionVote>)> = match store
            .get_state(PENDING_KEY)
        {
            Ok(Some(bytes)) => fedmesh_protocol::codec::decode(
                &bytes,
                fedmesh_protocol::codec::HARD_LIMIT,
            )
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "stored join requests do not decode; starting afresh");
                Vec::new()
            }),
            _ => Vec::new(),
        };
        for (request, votes) in stored {
            if a.ballot.propose(members, &request).is_err() {
                continue;
            }
            for v in votes {
                if a.ballot.count(members, &v, round).is_ok() && v.vote.voter == me {
                    a.voted.insert(v.vote.request);
                }
            }
        }
        a
    }

    fn store(&self, store: &Store) {
        let all: Vec<(SignedJoinRequest, Vec<SignedAdmissionVote>)> = self
            .ballot
            .pending()
            .map(|(h, r, _)| (r.clone(), self.ballot.votes(&h).cloned().collect()))
            .collect();
        if let Err(e) = store.put_state(PENDING_KEY, &fedmesh_protocol::codec::encode(&all)) {
            tracing::warn!(error = %e, "cannot store the pending join requests");
        }
    }

    fn auto_approves(&self, request: &SignedJoinRequest) -> bool {
        self.policy.policy == AdmissionPolicy::AllowList
            && self.allow.contains(&request.request.public_key)
    }

    /// Take up a request (from the operator or from a peer's gossip). Returns its hash.
    pub fn take_up(
        &mut self,
        store: &Store,
        members: &Members,
        request: &SignedJoinRequest,
    ) -> Result<Hash, AdmissionError> {
        let derived = crate::keys::peer_id(&request.request.public_key).to_string();
        if derived != request.request.peer_id {
            return Err(AdmissionError::Malformed(format!(
                "peer id {} is not the one its key gives ({derived})",
                request.request.peer_id
            )));
        }
        let known = self.ballot.request(&request.hash()).is_some();
        let hash = self.ballot.propose(members, request)?;
        if !known {
            tracing::info!(
                peer = %request.request.peer_id,
                request = %hash.short(),
                "join request pending"
            );
            self.store(store);
        }
        Ok(hash)
    }

    /// This member votes for request `hash` in round `round` (its operator approved it, or its
    /// allow-list does): the request must be fresh at `now_ms`. Returns the signed vote to gossip,
    /// or `None` if this member had voted for it already.
    #[allow(clippy::too_many_arguments)]
    pub fn vote(
        &mut self,
        store: &Store,
        members: &Members,
        hash: Hash,
        me: u32,
        key: &identity::SecretKey,
        round: u64,
        now_ms: u64,
    ) -> Result<Option<(SignedJoinRequest, SignedAdmissionVote)>, AdmissionError> {
        let request = self
            .ballot
            .request(&hash)
            .ok_or(AdmissionError::UnknownRequest(hash))?
            .clone();
        if self.voted.contains(&hash) || self.ballot.has_voted(me, &hash) {
            return Ok(None);
        }
        request.request.check_fresh(
            now_ms,
            self.policy.max_request_age_s.saturating_mul(1000),
            MAX_SKEW_MS,
        )?;
        let vote = SignedAdmissionVote::sign(
            members.genesis_hash(),
            AdmissionVote {
                round,
                voter: me,
                request: hash,
            },
            key,
        );
        self.ballot.count(members, &vote, round)?;
        self.voted.insert(hash);
        self.store(store);
        tracing::info!(peer = %request.request.peer_id, request = %hash.short(), "voted to admit");
        Ok(Some((request, vote)))
    }

    /// A peer's gossiped vote with its request: take the request up and count the vote. Returns
    /// the request's hash if this member's allow-list approves it and it has not voted yet (the
    /// caller then votes).
    pub fn on_gossip(
        &mut self,
        store: &Store,
        members: &Members,
        request: &SignedJoinRequest,
        vote: &SignedAdmissionVote,
        round: u64,
    ) -> Result<Option<Hash>, AdmissionError> {
        let hash = self.take_up(store, members, request)?;
        if vote.vote.request != hash {
            return Err(AdmissionError::OtherRequest {
                culprit: vote.vote.voter,
            });
        }
        if let Outcome::Counted { votes, needed } = self.ballot.count(members, vote, round)? {
            tracing::info!(
                voter = vote.vote.voter,
                peer = %request.request.peer_id,
                votes,
                needed,
                "admission vote counted"
            );
            self.store(store);
        }
        Ok((self.auto_approves(request) && !self.voted.contains(&hash)).then_some(hash))
    }

    /// This member's own votes on the requests still pending, with their requests.
    pub fn own_votes(&self, me: u32) -> Vec<(SignedJoinRequest, SignedAdmissionVote)> {
        self.ballot
            .pending()
            .filter_map(|(h, r, _)| {
                self.ballot
                    .votes(&h)
                    .find(|v| v.vote.voter == me)
                    .map(|v| (r.clone(), v.clone()))
            })
            .collect()
    }

    /// Admission records for a proposal of round `round`.
    pub fn records(&mut self, members: &Members, round: u64) -> Vec<AdmissionRecord> {
        self.ballot.ready(members, round)
    }

    /// The log changed the member set: drop requests of identities that are members now (or were)
    /// and votes of members no longer active; let votes and stale requests expire.
    pub fn settle(&mut self, store: &Store, members: &Members, round: u64, now_ms: u64) {
        self.ballot.settle(members);
        self.ballot.expire(
            round,
            now_ms,
            self.policy.max_request_age_s.saturating_mul(1000),
        );
        self.voted.retain(|h| self.ballot.request(h).is_some());
        self.store(store);
    }

    /// The request a `fedmesh admit` argument names: a peer id, or a prefix (at least 8 hex
    /// characters) of the request hash.
    pub fn find(&self, who: &str) -> Option<Hash> {
        let by_peer: Vec<Hash> = self
            .ballot
            .pending()
            .filter(|(_, r, _)| r.request.peer_id == who)
            .map(|(h, _, _)| h)
            .collect();
        if let [h] = by_peer[..] {
            return Some(h);
        }
        if who.len() < 8 {
            return None;
        }
        let by_hash: Vec<Hash> = self
            .ballot
            .pending()
            .filter(|(h, _, _)| h.to_string().starts_with(who))
            .map(|(h, _, _)| h)
            .collect();
        match by_hash[..] {
            [h] => Some(h),
            _ => None,
        }
    }

    /// The pending requests, for `fedmesh admit --list`.
    pub fn list(&self, members: &Members, me: u32) -> Vec<PendingRequest> {
        let needed = fedmesh_protocol::votes::needed(members.active_len(), members.quorum());
        self.ballot
            .pending()
            .map(|(h, r, votes)| PendingRequest {
                hash: h.to_string(),
                peer_id: r.request.peer_id.clone(),
                public_key: hex::encode(r.request.public_key.to_bytes()),
                addrs: r.request.addrs.clone(),
                issued_at_ms: r.request.issued_at_ms,
                votes,
                needed,
                approved_here: self.ballot.has_voted(me, &h),
            })
            .collect()
    }
}
