//! Messages between members. Every gossiped message is an [`Envelope`]: the network's genesis hash,
//! the sender's member index, the round, a [`Payload`] and the sender's ed25519 signature over all
//! of it. [`Envelope::open`] decodes bounded bytes and checks all of that before anything else looks
//! at the payload.

use serde::{Deserialize, Serialize};

use crate::audit::{Entry, RoundRecord};
use crate::codec::{self, DecodeError};
use crate::crypto::{hash::Hasher, identity, Hash};
use crate::genesis::Genesis;

/// A model update for one round.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// The global model the update was trained from.
    pub base_model: Hash,
    /// FedAvg weight: the member's training rows.
    pub num_samples: u64,
    /// Mean training loss over the member's last local epoch.
    pub train_loss: f32,
    /// new − old, in the layout's flat order.
    pub delta: Vec<f32>,
}

impl std::fmt::Debug for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Update")
            .field("base_model", &self.base_model)
            .field("num_samples", &self.num_samples)
            .field("train_loss", &self.train_loss)
            .field("len", &self.delta.len())
            .finish()
    }
}

impl Update {
    /// Commitment to exactly these values (recorded in the round record).
    pub fn hash(&self) -> Hash {
        let mut h = Hasher::new("fedmesh update v1");
        h.update(self.base_model.as_bytes());
        h.update(&self.num_samples.to_le_bytes());
        h.update(&self.train_loss.to_le_bytes());
        h.update(&(self.delta.len() as u64).to_le_bytes());
        for v in &self.delta {
            h.update(&v.to_le_bytes());
        }
        h.finalize()
    }
}

/// The coordinator's proposed record for the next height.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub height: u64,
    pub prev_hash: Hash,
    pub record: RoundRecord,
}

impl Proposal {
    /// The unsigned entry this proposal would append.
    pub fn entry(&self) -> Entry {
        Entry::round(self.height, self.prev_hash, &self.record)
    }
}

/// A member's approval of a proposal: ed25519 signature and BLS share over the entry's signing
/// hash, and a signed claim of the record's attempt. An honest member approves at most one record
/// per attempt of a height and moves its approval only to a later attempt, once n − t + 1 members
/// approved records of later attempts than its own ([`crate::round::Round::try_move`]); a moved
/// approval carries those members' claims as its proof (`support`), so that a member that approved
/// records of two attempts without it is caught ([`crate::evidence`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub signing_hash: Hash,
    pub signature: identity::Signature,
    pub bls_share: Vec<u8>,
    /// The approved record's attempt.
    pub attempt: u32,
    /// The approver's signature over [`claim_message`] (height, signing hash, attempt).
    pub claim: identity::Signature,
    /// Only when the approval moved from a record of an earlier attempt: the claims of members
    /// that approved records of attempts later than that one, at least n − t + 1 of them.
    pub support: Vec<Claim>,
}

/// A member's signed statement that it approved the record with `signing_hash`, of `attempt`, at
/// the height the claim was signed for (the approval's [`Approval::claim`], detached to be shown as
/// part of someone else's proof).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    pub member: u32,
    pub signing_hash: Hash,
    pub attempt: u32,
    pub signature: identity::Signature,
}

/// What an approver signs to claim the attempt of the record it approves at `height`.
pub fn claim_message(height: u64, signing_hash: Hash, attempt: u32) -> Hash {
    let mut h = Hasher::new("fedmesh approval claim v1");
    h.update(&height.to_le_bytes());
    h.update(signing_hash.as_bytes());
    h.update(&attempt.to_le_bytes());
    h.finalize()
}

impl Claim {
    /// Whether `key` (the claiming member's) signed this claim for `height`.
    pub fn verifies(&self, key: &identity::PublicKey, height: u64) -> bool {
        let msg = claim_message(height, self.signing_hash, self.attempt);
        key.verify(msg.as_bytes(), &self.signature).is_ok()
    }
}

impl Approval {
    /// Whether `key` (the approver's) signed this approval's claim for `height`.
    pub fn claim_verifies(&self, key: &identity::PublicKey, height: u64) -> bool {
        self.claim_of(0).verifies(key, height)
    }

    /// This approval's claim, as member `member` signed it.
    pub fn claim_of(&self, member: u32) -> Claim {
        Claim {
            member,
            signing_hash: self.signing_hash,
            attempt: self.attempt,
            signature: self.claim,
        }
    }

    /// Whether `support` proves that the approver could move its approval from a record of
    /// `from` to this one at `height`: this approval is of a later attempt, and at least `needed`
    /// distinct genesis members (`keys`, by member index) claim with valid signatures to have
    /// approved records of attempts later than `from` at this height. With n − t + 1 such members, at most t − 1 remain that
    /// could ever approve the earlier record, so it could not be committed.
    pub fn proves_move(
        &self,
        from: u32,
        height: u64,
        keys: &[identity::PublicKey],
        needed: usize,
    ) -> Result<(), String> {
        if self.attempt <= from {
            return Err(format!(
                "attempt {} is not later than attempt {from}",
                self.attempt
            ));
        }
        let mut members = std::collections::BTreeSet::new();
        for c in &self.support {
            let Some(key) = keys.get(c.member as usize) else {
                return Err(format!("the proof names member {}, not a signer", c.member));
            };
            if c.attempt <= from {
                return Err(format!(
                    "member {}'s claim is of attempt {}, not later than {from}",
                    c.member, c.attempt
                ));
            }
            if !c.verifies(key, height) {
                return Err(format!(
                    "member {}'s claim has an invalid signature",
                    c.member
                ));
            }
            if !members.insert(c.member) {
                return Err(format!("the proof names member {} twice", c.member));
            }
        }
        if members.len() < needed {
            return Err(format!(
                "the proof holds {} claims of later attempts, {needed} are needed",
                members.len()
            ));
        }
        Ok(())
    }
}

/// A member's log head, announced periodically so that lagging members notice and catch up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub height: u64,
    pub head: Hash,
    /// Sender's clock (Unix ms): makes each announcement a new gossip message.
    pub sent_at_ms: u64,
}

/// A secure-aggregation message of one session (round × attempt). Members' messages carry their
/// own signature inside ([`crate::secagg::Signed`]); the coordinator's relays are checked by the
/// members as the protocol says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SecaggMsg {
    Advertise(crate::secagg::Signed<crate::secagg::Advertise>),
    KeyList(crate::secagg::KeyList),
    Shares(crate::secagg::Signed<crate::secagg::Shares>),
    /// Every member's relayed shares (U2 = the recipients listed).
    Relay(Vec<crate::secagg::SharesFor>),
    Masked(crate::secagg::Signed<crate::secagg::MaskedInput>),
    Survivors(crate::secagg::Survivors),
    Consistency(crate::secagg::Signed<crate::secagg::Consistency>),
    ConsistencyList(crate::secagg::ConsistencyList),
    Unmask(crate::secagg::Signed<crate::secagg::Unmask>),
}

/// What an envelope carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    Update(Update),
    Proposal(Box<Proposal>),
    Approval(Approval),
    Status(Status),
    /// Mode `secagg`: a message of session `round × 64 + attempt`.
    Secagg {
        attempt: u32,
        msg: Box<SecaggMsg>,
    },
    /// A member's signed vote to evict another (see [`crate::votes`]); the envelope's sender is
    /// the voter.
    Vote(crate::votes::SignedVote),
    /// Mode `paillier`: a message of this round's threshold-Paillier aggregation. Updates and
    /// partial decryptions belong to the round (every attempt uses them); a [`PaillierMsg::Close`]
    /// belongs to `attempt` and must come from its coordinator. (Last variant: bincode numbers
    /// variants in order.)
    Paillier {
        attempt: u32,
        msg: Box<PaillierMsg>,
    },
    /// A member's signed vote to admit a joiner, with the joiner's signed request so that every
    /// member can take the request up (see [`crate::admission`]); the envelope's sender is the
    /// voter. (Added after `Paillier`: bincode numbers variants in order.)
    Admission {
        request: Box<crate::admission::SignedJoinRequest>,
        vote: crate::admission::SignedAdmissionVote,
    },
}

/// A threshold-Paillier message ([`crate::paillier`]). Members' messages carry their own
/// signature inside ([`crate::paillier::Signed`]); the coordinator's [`Close`](crate::paillier::Close)
/// is signed by its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PaillierMsg {
    /// A member's encrypted, packed update.
    Update(crate::paillier::Signed<crate::paillier::EncryptedUpdate>),
    /// The coordinator's choice of the updates that make the round's encrypted sum.
    Close(crate::paillier::Close),
    /// A member's partial decryption of that sum, with its proof.
    Partial(crate::paillier::Signed<crate::paillier::Partial>),
    /// A member's partial decryption of one group's sum ([`crate::paillier::round_groups`]: in
    /// the fallback after the round's sum did not decode), with its proof; `group` indexes the
    /// round's groups, and the partial names the group product's hash. (Last variant: bincode
    /// numbers variants in order.)
    GroupPartial {
        group: u32,
        partial: crate::paillier::Signed<crate::paillier::Partial>,
    },
}

impl Payload {
    pub fn name(&self) -> &'static str {
        match self {
            Payload::Update(_) => "update",
            Payload::Proposal(_) => "proposal",
            Payload::Approval(_) => "approval",
            Payload::Status(_) => "status",
            Payload::Secagg { .. } => "secagg",
            Payload::Vote(_) => "vote",
            Payload::Paillier { .. } => "paillier",
            Payload::Admission { .. } => "admission",
        }
    }
}

/// A signed message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub genesis: Hash,
    pub sender: u32,
    pub round: u64,
    pub payload: Payload,
    pub signature: identity::Signature,
}

/// Why a message from a peer was refused. Every variant blames the sending peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("message is for network {found}, this node is on {expected}")]
    Genesis { found: Hash, expected: Hash },
    #[error("sender {0} is not a member")]
    NotMember(u32),
    #[error("message claims member {claimed} but was published by another peer")]
    WrongPeer { claimed: u32 },
    #[error("signature of member {0} does not verify")]
    Signature(u32),
}

fn signed_hash(genesis: Hash, sender: u32, round: u64, payload_bytes: &[u8]) -> Hash {
    let mut h = Hasher::new("fedmesh envelope v1");
    h.update(genesis.as_bytes());
    h.update(&sender.to_le_bytes());
    h.update(&round.to_le_bytes());
    h.update(payload_bytes);
    h.finalize()
}

impl Envelope {
    /// Sign `payload` as member `sender`.
    pub fn seal(
        genesis: Hash,
        sender: u32,
        round: u64,
        payload: Payload,
        key: &identity::SecretKey,
    ) -> Envelope {
        let msg = signed_hash(genesis, sender, round, &codec::encode(&payload));
        let signature = key.sign(msg.as_bytes());
        Envelope {
            genesis,
            sender,
            round,
            payload,
            signature,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decode at most `limit` bytes and check network, membership, publishing peer and signature.
    /// `publisher` is the libp2p peer id that published the message, when known.
    pub fn open(
        bytes: &[u8],
        limit: usize,
        genesis: &Genesis,
        genesis_hash: Hash,
        publisher: Option<&str>,
    ) -> Result<Envelope, OpenError> {
        let env: Envelope = codec::decode(bytes, limit)?;
        if env.genesis != genesis_hash {
            return Err(OpenError::Genesis {
                found: env.genesis,
                expected: genesis_hash,
            });
        }
        let member = genesis
            .member(env.sender)
            .ok_or(OpenError::NotMember(env.sender))?;
        if let Some(p) = publisher {
            if p != member.peer_id {
                return Err(OpenError::WrongPeer {
                    claimed: env.sender,
                });
            }
        }
        let msg = signed_hash(
            env.genesis,
            env.sender,
            env.round,
            &codec::encode(&env.payload),
        );
        member
            .public_key
            .verify(msg.as_bytes(), &env.signature)
            .map_err(|_| OpenError::Signature(env.sender))?;
        Ok(env)
    }
}

/// Most entries returned for one [`Request::Entries`].
pub const MAX_ENTRIES_PER_REQUEST: u32 = 64;

/// Largest request a node reads; requests are small.
pub const MAX_REQUEST_BYTES: usize = 4096;

/// A direct request to one peer (libp2p request-response), for what gossip does not carry: the
/// handshake on connect, catching up on the log, checkpoints, and an update that gossip lost.
/// Responses are self-verifying (signed entries, hashed checkpoints, signed envelopes), so a peer
/// that lies is caught by checking what it sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Sent on every new connection: which network, and how far the sender's log goes.
    Hello { genesis: Hash, status: Status },
    /// Log entries from height `from`, at most `max` (capped at [`MAX_ENTRIES_PER_REQUEST`]).
    Entries { from: u64, max: u32 },
    /// A global model checkpoint (safetensors bytes) by model hash.
    Checkpoint(Hash),
    /// The signed update envelope of `member` in `round`, if the peer holds it.
    Update { round: u64, member: u32 },
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Hello {
        status: Status,
    },
    /// The peer is on another network (its genesis hash).
    WrongNetwork {
        genesis: Hash,
    },
    Entries(Vec<Entry>),
    Checkpoint(Option<Vec<u8>>),
    Update(Option<Vec<u8>>),
    /// The request was refused (reason for the log).
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genesis::tests::sample;
    use proptest::prelude::*;

    fn setup() -> (Genesis, Hash, Vec<identity::SecretKey>) {
        let (g, keys, _) = sample(3);
        let text = g.to_toml();
        let (g, h) = Genesis::parse(text.as_bytes()).unwrap();
        (g, h, keys)
    }

    fn update() -> Payload {
        Payload::Update(Update {
            base_model: Hash::ZERO,
            num_samples: 5,
            train_loss: 0.3,
            delta: vec![0.5; 26],
        })
    }

    #[test]
    fn sealed_envelope_opens() {
        let (g, h, keys) = setup();
        let env = Envelope::seal(h, 1, 4, update(), &keys[1]);
        let bytes = env.encode();
        let back = Envelope::open(&bytes, 1 << 20, &g, h, Some("peer1")).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn refuses_forgeries_strangers_and_oversize() {
        let (g, h, keys) = setup();
        // Signed by member 2 but claiming to be member 1.
        let mut env = Envelope::seal(h, 2, 4, update(), &keys[2]);
        env.sender = 1;
        assert!(matches!(
            Envelope::open(&env.encode(), 1 << 20, &g, h, None),
            Err(OpenError::Signature(1))
        ));
        // Published by another peer than the sender.
        let env = Envelope::seal(h, 1, 4, update(), &keys[1]);
        assert!(matches!(
            Envelope::open(&env.encode(), 1 << 20, &g, h, Some("peer0")),
            Err(OpenError::WrongPeer { .. })
        ));
        // Non-member index.
        let env = Envelope::seal(h, 9, 4, update(), &keys[1]);
        assert!(matches!(
            Envelope::open(&env.encode(), 1 << 20, &g, h, None),
            Err(OpenError::NotMember(9))
        ));
        // Another network.
        let env = Envelope::seal(Hash::ZERO, 1, 4, update(), &keys[1]);
        assert!(matches!(
            Envelope::open(&env.encode(), 1 << 20, &g, h, None),
            Err(OpenError::Genesis { .. })
        ));
        // Round changed after signing.
        let mut env = Envelope::seal(h, 1, 4, update(), &keys[1]);
        env.round = 5;
        assert!(Envelope::open(&env.encode(), 1 << 20, &g, h, None).is_err());
        // Too large.
        let env = Envelope::seal(h, 1, 4, update(), &keys[1]);
        assert!(matches!(
            Envelope::open(&env.encode(), 50, &g, h, None),
            Err(OpenError::Decode(DecodeError::TooLarge { .. }))
        ));
        // Truncated.
        let bytes = env.encode();
        assert!(Envelope::open(&bytes[..bytes.len() - 3], 1 << 20, &g, h, None).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let (g, h, _) = setup();
            let _ = Envelope::open(&bytes, 1 << 20, &g, h, None);
        }

        #[test]
        fn any_flipped_byte_is_refused(pos in 0usize..200, bit in 0u8..8) {
            let (g, h, keys) = setup();
            let bytes = Envelope::seal(h, 1, 4, update(), &keys[1]).encode();
            let mut bad = bytes.clone();
            let pos = pos % bad.len();
            bad[pos] ^= 1 << bit;
            prop_assert!(Envelope::open(&bad, 1 << 20, &g, h, None).is_err());
        }
    }
}
