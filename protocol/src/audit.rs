//! The audit log's format: hash-chained entries, the round records they carry, and how anyone
//! checks them against the genesis file.
//!
//! Entry `h` commits to entry `h-1` through `prev_hash`. A round entry is approved by members, each
//! with an ed25519 signature and a BLS signature share over [`Entry::signing_hash`]; `threshold`
//! shares combine into the BLS signature stored in the entry. The entry hash covers the signing hash
//! and the combined signature, which is the same whichever members' shares formed it, so every node
//! computes the same head. The attached ed25519 signatures are evidence of who approved; each is
//! checked, but which subset a node happened to collect is not part of the hash.

use serde::{Deserialize, Serialize};

pub use crate::admission::AdmissionRecord;
use crate::crypto::{bls, hash::Hasher, identity, Hash};
use crate::genesis::{DpLevel, DpMechanism, Genesis, Mode};
pub use crate::membership::Members;
pub use crate::votes::EvictionRecord;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Height 0: the genesis file itself.
    Genesis,
    /// A completed training round ([`RoundRecord`]), with the evictions decided in it.
    Round,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Genesis => 0,
            Kind::Round => 1,
        }
    }
}

/// One member's ed25519 signature over an entry's signing hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSignature {
    pub member: u32,
    pub signature: identity::Signature,
}

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub height: u64,
    pub prev_hash: Hash,
    pub kind: Kind,
    /// The encoded record (for height 0: the genesis file bytes).
    pub body: Vec<u8>,
    pub body_hash: Hash,
    /// Approvals by members (ed25519), sorted by member.
    pub signatures: Vec<MemberSignature>,
    /// The combined threshold BLS signature (96 bytes); empty at height 0.
    pub threshold_signature: Vec<u8>,
}

/// Hash of a record body.
pub fn body_hash(body: &[u8]) -> Hash {
    Hash::of("fedmesh entry body v1", body)
}

/// Evaluation of the global model on the shared test split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub accuracy: f32,
    pub loss: f32,
    pub test_samples: u64,
}

/// What one participant contributed to a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    pub member: u32,
    /// FedAvg weight.
    pub num_samples: u64,
    /// Commitment to the exact update that was aggregated.
    pub update_hash: Hash,
    /// The member's own mean training loss (as it reported it).
    pub train_loss: f32,
}

/// The record of one completed round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: u64,
    pub mode: Mode,
    /// 0 for the first coordinator in this round's order, 1 after one failover, …
    pub attempt: u32,
    pub coordinator: u32,
    pub base_model: Hash,
    pub new_model: Hash,
    /// Sorted by member.
    pub participants: Vec<Contribution>,
    /// Active members whose update was not aggregated (late or silent), sorted.
    pub dropouts: Vec<u32>,
    pub metrics: Metrics,
    /// Coordinator's clock when it proposed (Unix ms); informational.
    pub proposed_at_ms: u64,
    /// Mode `secagg`: how the secure sum was formed.
    pub secure: Option<SecureSummary>,
    /// Members voted out in this round (each with the quorum's signed votes), sorted by target:
    /// from the next round on they are not members. See [`check_membership`].
    pub evictions: Vec<EvictionRecord>,
    /// With differential privacy (`spec.dp`): what the round cost and what every member has
    /// spent so far. `None` when the genesis asks for no DP.
    pub privacy: Option<PrivacySummary>,
    /// Mode `paillier`: how the encrypted sum was formed and decrypted.
    pub paillier: Option<PaillierSummary>,
    /// Mode `secagg` with `[spec.robust] group_size` > 0: the round's random groups, which of
    /// them revealed a sum, and the rule's judgement of each. Mode `paillier`: present when the
    /// round's sum did not decode and the round was closed with its groups' sums instead (the
    /// groups whose sum did not decode flagged and left out). See [`check_groups`].
    pub groups: Option<GroupsSummary>,
    /// Identities admitted in this round (each with its signed join request and the quorum's
    /// signed votes), by index: from the next round on they are members. See
    /// [`check_membership`].
    pub admissions: Vec<AdmissionRecord>,
    /// Members caught signing two different messages for one slot, each with both signed
    /// envelopes ([`crate::evidence`]), sorted by member and round: of this round, or of one of
    /// the [`EVIDENCE_WINDOW`] rounds before it when the second message arrived after that
    /// round's record was approved ("late" evidence). Checked by [`Entry::verify`]; that no
    /// piece is recorded twice, by [`check_membership`]. (Last field: bincode encodes fields in
    /// order.)
    pub evidence: Vec<crate::evidence::Equivocation>,
}

/// A round of group-wise secure aggregation: the active members were split into random groups of
/// at least `size` ([`crate::robust::groups::draw`] from the previous entry's hash and the round),
/// each group ran its own secure-aggregation session, and only the sums of groups with at least
/// `size` contributors were revealed. The robust rule was applied to the revealed group means and
/// each group scored against its result ([`crate::robust::suspicion::judge`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupsSummary {
    /// g: the fewest members a revealed sum may cover.
    pub size: u32,
    /// Every group drawn for the round, as `draw` returns them (sorted).
    pub drawn: Vec<Vec<u32>>,
    /// The groups whose sum was revealed, in the order of `drawn`.
    pub revealed: Vec<GroupSum>,
    /// Indices into `drawn` of the groups whose sum was not revealed (fewer than g members got
    /// through their session): nothing about them was unmasked. Sorted.
    pub skipped: Vec<u32>,
    /// False if the sums could not be judged (no largest set of agreeing group means, see
    /// [`crate::robust::suspicion::judge`]): nothing is flagged and the round is no evidence for
    /// or against anyone (the model does not move).
    pub decided: bool,
    /// The judge's usual values after this round ([`crate::robust::suspicion::Usual`]): the next
    /// round is judged against them and the update of the last round that moved the model (from
    /// the stored checkpoints), so that the judgement is a function of the log.
    pub usual: crate::robust::suspicion::Usual,
    /// With genesis `spec.robust.reference_rows` > 0 and a decided round: the model's hinge loss
    /// on the public reference rows before the round ([`crate::robust::reference::loss`]); each
    /// judged group's effect on it is its [`GroupSum::reference`]. None otherwise.
    pub reference_loss: Option<f64>,
    /// With [`GroupsSummary::reference_loss`]: the spread the round's reference gaps were judged
    /// with ([`crate::robust::suspicion::Usual::reference_spread`] of the usual values the
    /// previous round with groups recorded). None otherwise.
    pub reference_spread: Option<f64>,
    /// With [`GroupsSummary::reference_loss`]: the unit the round's reference gaps were measured
    /// in ([`crate::robust::suspicion::ReferenceScores::scale`]). None otherwise.
    pub reference_scale: Option<f64>,
    /// With [`GroupsSummary::reference_loss`]: the effect that set the bar, the best one among
    /// the groups of usual size ([`crate::robust::suspicion::ReferenceScores::best`]); one of
    /// the judged groups' [`GroupSum::reference`] values. None otherwise.
    pub reference_best: Option<f64>,
}

/// One revealed group sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupSum {
    /// Index of the group in [`GroupsSummary::drawn`].
    pub group: u32,
    /// Its secure-aggregation session ([`crate::secagg::group_session`]); 0 in mode `paillier`.
    pub session: u64,
    /// Members whose masked input is in the sum (U3), sorted; at least g.
    pub contributors: Vec<u32>,
    /// Members whose unmasking shares were used (U5), sorted; in mode `paillier`, the members
    /// whose partial decryptions decrypted the group's sum.
    pub unmaskers: Vec<u32>,
    /// Σ FedAvg weights of the contributors (revealed with the sum).
    pub total_weight: u64,
    /// Hash of the revealed sum (quantized, as unmasked): [`group_sum_hash`]; in mode
    /// `paillier`, the hash of the group's encrypted sum, which its partials name.
    pub sum_hash: Hash,
    /// The group mean's anomaly score against the round's update.
    pub score: f64,
    /// Whether the score is over `[spec.robust] score_threshold`.
    pub flagged: bool,
    /// With [`GroupsSummary::reference_loss`]: the change of the reference loss when the group
    /// mean is applied to the model ([`crate::robust::reference::effects`]); None for a group
    /// that was not judged (a paillier sum that did not decode) or without reference rows.
    pub reference: Option<f64>,
}

/// Commitment to a revealed group sum (the unmasked vector in Z_(2^bits), weight last).
pub fn group_sum_hash(sum: &[u64]) -> Hash {
    Hash::of("fedmesh secagg group sum v1", &crate::codec::encode(&sum))
}

/// The privacy cost of a round and the running total of every member, recomputed and checked by
/// every member before it approves (see [`crate::dp::Ledger`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacySummary {
    /// `record` or `member`.
    pub level: DpLevel,
    /// `gaussian` or `laplace`.
    pub mechanism: DpMechanism,
    /// The noise multiplier this round is accounted with. At member level with Gaussian shares it
    /// is σ·√(k/n) when k of the n expected members contributed: the noise actually in the sum.
    pub noise_multiplier: f64,
    /// Sampling rate of each noisy step (1 at member level: every member's update is used).
    pub sample_rate: f64,
    /// Noisy steps each participant took in this round.
    pub steps: u64,
    /// The δ of the ε values below (0 for pure ε-DP, Laplace).
    pub delta: f64,
    /// Every member's cumulative spend after this round, sorted by member.
    pub spent: Vec<Spend>,
}

/// One member's privacy spent so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    pub member: u32,
    /// Rounds in which its data was used.
    pub rounds: u64,
    /// ε at the summary's δ, over all those rounds.
    pub epsilon: f64,
}

/// What a threshold-Paillier round revealed and who decrypted it. In mode `paillier` the record's
/// participants are the members whose encrypted update is in the sum; their `num_samples` is 0
/// (the weights travel encrypted inside the updates) and their `update_hash` is the hash of their
/// signed update's ciphertexts ([`crate::paillier::EncryptedUpdate::hash`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaillierSummary {
    /// Hash of the encrypted sum (the product of the participants' ciphertexts).
    pub sum_hash: Hash,
    /// The members whose partial decryptions decrypted the sum: exactly the key's threshold,
    /// sorted.
    pub decryptors: Vec<u32>,
    /// Members whose partial decryption was rejected (its proof did not verify), sorted.
    pub rejected: Vec<u32>,
    /// Values the participants clipped, together (self-reported).
    pub clipped: u64,
}

/// What a secure-aggregation round revealed and who dropped where. In mode `secagg` the record's
/// participants are the members whose masked input is in the sum; their `num_samples` is 0 (only
/// the total weight is revealed) and their `update_hash` commits to their signed masked input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureSummary {
    /// The secure-aggregation session (round × attempt) whose keys were used.
    pub session: u64,
    /// Σ FedAvg weights of the participants (revealed with the sum).
    pub total_weight: u64,
    /// Members whose unmasking shares were used (U5).
    pub unmaskers: Vec<u32>,
    /// Advertised keys but did not share them.
    pub dropped_before_sharing: Vec<u32>,
    /// Shared keys but sent no masked input: their masks were removed from their shares.
    pub dropped_after_sharing: Vec<u32>,
    /// Sent input, which is in the sum, but did not help unmask.
    pub dropped_while_unmasking: Vec<u32>,
}

/// The first bytes of every round entry's body: a tag and the record format's version.
///
/// A build reads only its own version, so a log written by a build with another record format is
/// refused up front with [`RecordDecodeError::Version`] (or [`RecordDecodeError::Unversioned`] for
/// logs from before versions existed) instead of failing somewhere inside the record. Bump
/// [`RECORD_VERSION`] whenever a field of [`RoundRecord`] or of anything it holds changes.
pub const RECORD_TAG: [u8; 3] = *b"FMR";

/// The round-record format this build writes and reads.
pub const RECORD_VERSION: u8 = 6;

/// Why a round entry's body is not a record this build can read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordDecodeError {
    #[error("not a versioned round record (written by a build before record versions; start a new genesis or use that build)")]
    Unversioned,
    #[error("round record format version {found}; this build reads version {RECORD_VERSION} (use the build that wrote the log, or start a new genesis)")]
    Version { found: u8 },
    #[error(transparent)]
    Decode(#[from] crate::codec::DecodeError),
}

impl RoundRecord {
    /// A record of `round` in `mode` that moved `base_model` to `new_model`, everything else
    /// empty: attempt 0, coordinator 0, no participants, dropouts, evictions, admissions or
    /// evidence, no summaries, zero metrics. Tests and drills fill in what they need with
    /// `RoundRecord { field, ..RoundRecord::new(..) }`.
    pub fn new(round: u64, mode: Mode, base_model: Hash, new_model: Hash) -> Self {
        RoundRecord {
            round,
            mode,
            attempt: 0,
            coordinator: 0,
            base_model,
            new_model,
            participants: Vec::new(),
            dropouts: Vec::new(),
            metrics: Metrics {
                accuracy: 0.0,
                loss: 0.0,
                test_samples: 0,
            },
            proposed_at_ms: 0,
            secure: None,
            evictions: Vec::new(),
            privacy: None,
            paillier: None,
            groups: None,
            admissions: Vec::new(),
            evidence: Vec::new(),
        }
    }

    /// [`RECORD_TAG`], [`RECORD_VERSION`], then the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&RECORD_TAG);
        out.push(RECORD_VERSION);
        out.extend_from_slice(&crate::codec::encode(self));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordDecodeError> {
        let Some(rest) = bytes.strip_prefix(&RECORD_TAG) else {
            return Err(RecordDecodeError::Unversioned);
        };
        match rest.split_first() {
            Some((&RECORD_VERSION, record)) => {
                Ok(crate::codec::decode(record, crate::codec::HARD_LIMIT)?)
            }
            Some((&found, _)) => Err(RecordDecodeError::Version { found }),
            None => Err(RecordDecodeError::Unversioned),
        }
    }
}

/// Why an entry fails verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("height {height}: expected height {expected}")]
    Height { height: u64, expected: u64 },
    #[error("height {height}: prev_hash {found} does not match the hash of height {} ({expected})", height - 1)]
    Link {
        height: u64,
        found: Hash,
        expected: Hash,
    },
    #[error("height {height}: body does not match body_hash")]
    BodyHash { height: u64 },
    #[error("height {height}: genesis {found} differs from this network's genesis {expected}")]
    Genesis {
        height: u64,
        found: Hash,
        expected: Hash,
    },
    #[error("height {height}: entry kind {kind:?} is not allowed here")]
    Kind { height: u64, kind: Kind },
    #[error("height {height}: record does not decode: {reason}")]
    Body { height: u64, reason: String },
    #[error("height {height}: record is for round {found}, expected round {expected}")]
    Round {
        height: u64,
        found: u64,
        expected: u64,
    },
    #[error(
        "height {height}: record's base model {found} is not the previous global model {expected}"
    )]
    BaseModel {
        height: u64,
        found: Hash,
        expected: Hash,
    },
    #[error("height {height}: signature of member {member} does not verify")]
    MemberSignature { height: u64, member: u32 },
    #[error("height {height}: signature by unknown or repeated member {member}")]
    Signer { height: u64, member: u32 },
    #[error("height {height}: {have} member signatures, {need} needed")]
    TooFewSignatures {
        height: u64,
        have: usize,
        need: usize,
    },
    #[error("height {height}: the threshold signature does not verify")]
    ThresholdSignature { height: u64 },
    #[error("height {height}: eviction of member {target}: {source}")]
    Eviction {
        height: u64,
        target: u32,
        source: crate::votes::VoteError,
    },
    #[error("height {height}: {reason}")]
    Membership { height: u64, reason: String },
    #[error("height {height}: paillier summary: {reason}")]
    Paillier { height: u64, reason: String },
    #[error("height {height}: groups summary: {reason}")]
    Groups { height: u64, reason: String },
    #[error("height {height}: admission of member {index}: {source}")]
    Admission {
        height: u64,
        index: u32,
        source: crate::admission::AdmissionError,
    },
    #[error("height {height}: evidence against member {member}: {reason}")]
    Evidence {
        height: u64,
        member: u32,
        reason: String,
    },
}

impl VerifyError {
    /// The height at which verification failed.
    pub fn height(&self) -> u64 {
        match self {
            VerifyError::Height { height, .. }
            | VerifyError::Link { height, .. }
            | VerifyError::BodyHash { height }
            | VerifyError::Genesis { height, .. }
            | VerifyError::Kind { height, .. }
            | VerifyError::Body { height, .. }
            | VerifyError::Round { height, .. }
            | VerifyError::BaseModel { height, .. }
            | VerifyError::MemberSignature { height, .. }
            | VerifyError::Signer { height, .. }
            | VerifyError::TooFewSignatures { height, .. }
            | VerifyError::ThresholdSignature { height }
            | VerifyError::Eviction { height, .. }
            | VerifyError::Membership { height, .. }
            | VerifyError::Paillier { height, .. }
            | VerifyError::Groups { height, .. }
            | VerifyError::Admission { height, .. }
            | VerifyError::Evidence { height, .. } => *height,
        }
    }
}

impl Entry {
    /// Height 0 of every log: the genesis file.
    pub fn genesis(genesis_file: &[u8]) -> Entry {
        Entry {
            height: 0,
            prev_hash: Hash::ZERO,
            kind: Kind::Genesis,
            body: genesis_file.to_vec(),
            body_hash: crate::genesis::hash_bytes(genesis_file),
            signatures: Vec::new(),
            threshold_signature: Vec::new(),
        }
    }

    /// An unsigned entry for a round record on top of `prev`.
    pub fn round(height: u64, prev_hash: Hash, record: &RoundRecord) -> Entry {
        let body = record.encode();
        Entry {
            height,
            prev_hash,
            kind: Kind::Round,
            body_hash: body_hash(&body),
            body,
            signatures: Vec::new(),
            threshold_signature: Vec::new(),
        }
    }

    /// What members sign: height, link, kind and body hash.
    pub fn signing_hash(&self) -> Hash {
        signing_hash(self.height, self.prev_hash, self.kind, self.body_hash)
    }

    /// The entry's hash, the next entry's `prev_hash`. At height 0 it is the genesis hash.
    pub fn hash(&self) -> Hash {
        if self.kind == Kind::Genesis {
            return self.body_hash;
        }
        let mut h = Hasher::new("fedmesh entry v1");
        h.update(self.signing_hash().as_bytes());
        h.update_field(&self.threshold_signature);
        h.finalize()
    }

    pub fn record(&self) -> Result<RoundRecord, VerifyError> {
        RoundRecord::decode(&self.body).map_err(|e| VerifyError::Body {
            height: self.height,
            reason: e.to_string(),
        })
    }

    /// Check this entry on its own: body hash, signatures against the genesis keys. The link to the
    /// previous entry is checked by [`verify_link`].
    pub fn verify(
        &self,
        genesis: &Genesis,
        genesis_hash: Hash,
        bls_set: &bls::PublicSet,
    ) -> Result<(), VerifyError> {
        let height = self.height;
        let computed = match self.kind {
            Kind::Genesis => crate::genesis::hash_bytes(&self.body),
            Kind::Round => body_hash(&self.body),
        };
        if computed != self.body_hash {
            return Err(VerifyError::BodyHash { height });
        }
        match (height, self.kind) {
            (0, Kind::Genesis) => {
                if self.body_hash != genesis_hash {
                    return Err(VerifyError::Genesis {
                        height,
                        found: self.body_hash,
                        expected: genesis_hash,
                    });
                }
                if self.prev_hash != Hash::ZERO {
                    return Err(VerifyError::Link {
                        height,
                        found: self.prev_hash,
                        expected: Hash::ZERO,
                    });
                }
                Ok(())
            }
            (h, Kind::Round) if h > 0 => {
                let record = self.record()?;
                // Evictions and admissions are checked by whoever walks the log and knows the
                // member set at this height ([`check_membership`]): their votes may come from
                // admitted members, whose keys are not in the genesis.
                check_paillier(genesis, &record)
                    .map_err(|reason| VerifyError::Paillier { height, reason })?;
                check_evidence(genesis, genesis_hash, &record).map_err(|(member, reason)| {
                    VerifyError::Evidence {
                        height,
                        member,
                        reason,
                    }
                })?;
                self.verify_signatures(genesis, bls_set)
            }
            (_, kind) => Err(VerifyError::Kind { height, kind }),
        }
    }
}

/// What a record's paillier summary must satisfy on its own: present exactly in mode `paillier`;
/// exactly `threshold` distinct decryptors (none with `[spec.robust] group_size` > 0: then only
/// the groups' sums are decrypted), all genesis members, none of them rejected; rejected members
/// distinct. (That the decryptors' partials decrypt the sum to the recorded model is
/// checked by the members that sign the record, by decrypting it themselves.)
pub fn check_paillier(genesis: &Genesis, record: &RoundRecord) -> Result<(), String> {
    let summary = match (&record.paillier, record.mode) {
        (None, Mode::Paillier) => return Err("a mode-paillier record has none".into()),
        (Some(_), mode) if mode != Mode::Paillier => {
            return Err(format!("a mode-{mode} record has one"))
        }
        (None, _) => return Ok(()),
        (Some(s), _) => s,
    };
    let t = genesis.spec.paillier.threshold_for(genesis.members.len());
    let sorted = |v: &[u32]| v.windows(2).all(|w| w[0] < w[1]);
    if genesis.spec.robust.group_size > 0 {
        // With groups the round's sum is never decrypted: only its groups' sums are.
        if !summary.decryptors.is_empty() {
            return Err(format!(
                "decryptors {:?} of the round's sum, but with groups only group sums are decrypted",
                summary.decryptors
            ));
        }
    } else if summary.decryptors.len() != t || !sorted(&summary.decryptors) {
        return Err(format!(
            "{} decryptors {:?}; exactly {t} distinct members, sorted, decrypt a sum",
            summary.decryptors.len(),
            summary.decryptors
        ));
    }
    if !sorted(&summary.rejected) {
        return Err("rejected members are not distinct and sorted".into());
    }
    if let Some(m) = summary
        .decryptors
        .iter()
        .chain(&summary.rejected)
        .find(|m| genesis.members.get(**m as usize).is_none())
    {
        return Err(format!("member {m} is not in the genesis"));
    }
    if let Some(m) = summary
        .decryptors
        .iter()
        .find(|m| summary.rejected.contains(m))
    {
        return Err(format!("member {m} is both a decryptor and rejected"));
    }
    Ok(())
}

/// What a record's groups summary must satisfy, given the hash of the entry before it and the
/// members active in its round: present exactly in mode `secagg` with `group_size` g > 0; the
/// groups are the ones [`crate::robust::groups::draw`] gives; every revealed group has at least g
/// contributors, all drawn into it, and at least g unmaskers among them; revealed and skipped
/// groups partition the drawn ones; the record's participants are exactly the contributors; a
/// group is flagged exactly when its score is over the threshold. (That the sums are what the
/// sessions revealed and that the scores and the model follow from them is checked by the members
/// that sign the record, by replaying every group's session.)
pub fn check_groups(
    genesis: &Genesis,
    prev_hash: Hash,
    active: &[u32],
    record: &RoundRecord,
) -> Result<(), String> {
    let g = genesis.spec.robust.group_size;
    if record.mode == Mode::Paillier {
        return check_paillier_groups(genesis, prev_hash, active, record);
    }
    let summary = match (&record.groups, record.mode == Mode::Secagg && g > 0) {
        (None, true) => return Err("a mode-secagg record with group_size > 0 has none".into()),
        (Some(_), false) => {
            return Err(format!(
                "a mode-{} record has one, but the genesis asks for no groups",
                record.mode
            ))
        }
        (None, false) => return Ok(()),
        (Some(s), true) => s,
    };
    if summary.size as usize != g {
        return Err(format!(
            "group size {} is not the genesis' {g}",
            summary.size
        ));
    }
    let drawn = crate::robust::groups::draw(&prev_hash, record.round, active, g)
        .map_err(|e| format!("no groups can be drawn: {e}"))?;
    if summary.drawn != drawn {
        return Err(format!(
            "the groups {:?} are not the ones drawn from the chain head for round {} ({drawn:?})",
            summary.drawn, record.round
        ));
    }
    let sorted = |v: &[u32]| v.windows(2).all(|w| w[0] < w[1]);
    let threshold = genesis.spec.robust.score_threshold;
    let mut revealed = Vec::with_capacity(summary.revealed.len());
    let mut contributors = Vec::new();
    for s in &summary.revealed {
        let Some(members) = drawn.get(s.group as usize) else {
            return Err(format!("revealed group {} was not drawn", s.group));
        };
        if revealed.last().is_some_and(|&last| last >= s.group) {
            return Err("revealed groups are not distinct and in order".into());
        }
        revealed.push(s.group);
        if s.session != crate::secagg::group_session(record.round, record.attempt, s.group) {
            return Err(format!(
                "group {}'s session {} is not the one of round {} attempt {}",
                s.group, s.session, record.round, record.attempt
            ));
        }
        if s.contributors.len() < g {
            return Err(format!(
                "group {} revealed a sum of {} contributors, fewer than the group size {g}",
                s.group,
                s.contributors.len()
            ));
        }
        if !sorted(&s.contributors) || !sorted(&s.unmaskers) {
            return Err(format!(
                "group {}'s contributors or unmaskers are not distinct and sorted",
                s.group
            ));
        }
        if let Some(m) = s.contributors.iter().find(|m| !members.contains(m)) {
            return Err(format!(
                "member {m} contributed to group {}, which it is not in",
                s.group
            ));
        }
        if s.unmaskers.len() < g || s.unmaskers.iter().any(|m| !s.contributors.contains(m)) {
            return Err(format!(
                "group {} was unmasked by {:?}: at least {g} of its contributors must unmask",
                s.group, s.unmaskers
            ));
        }
        if s.total_weight == 0 {
            return Err(format!("group {} has a total weight of 0", s.group));
        }
        if !s.score.is_finite() || s.flagged != (s.score > threshold) {
            return Err(format!(
                "group {} has score {} and flagged = {}, but the threshold is {threshold}",
                s.group, s.score, s.flagged
            ));
        }
        if s.flagged && !summary.decided {
            return Err(format!(
                "group {} is flagged in a round that was not decided",
                s.group
            ));
        }
        contributors.extend_from_slice(&s.contributors);
    }
    summary
        .usual
        .check()
        .map_err(|e| format!("the groups summary's {e}"))?;
    check_reference(genesis, summary, |_| true)?;
    let skipped: Vec<u32> = (0..drawn.len() as u32)
        .filter(|i| !revealed.contains(i))
        .collect();
    if summary.skipped != skipped {
        return Err(format!(
            "skipped groups {:?}, but the groups not revealed are {skipped:?}",
            summary.skipped
        ));
    }
    contributors.sort_unstable();
    let participants: Vec<u32> = record.participants.iter().map(|c| c.member).collect();
    if participants != contributors {
        return Err(format!(
            "participants {participants:?} are not the revealed groups' contributors {contributors:?}"
        ));
    }
    Ok(())
}

/// Mode `paillier`: a groups summary is present in every round with a `[spec.robust]
/// group_size` over 0, and otherwise when the round's whole sum did not decode (some contributor's ciphertexts
/// encrypt values outside the packing range) and the round was closed with the sums of its
/// groups instead. It must hold: the size
/// [`crate::paillier::group_size`]; as `drawn`, exactly the groups
/// [`crate::paillier::round_groups`] gives for the record's participants (they partition them);
/// every one of them in `revealed`, in order, with session 0 and `threshold` distinct sorted
/// decryptors (`unmaskers`) that are genesis members; nothing skipped; `decided`; a group flagged
/// exactly when its score is over the threshold — a group whose sum did not decode has score
/// `f64::MAX` and a weight of 0, and is left out of the model; a group that decoded is flagged
/// only by the rule of a decided round with groups configured. (That each group sum decrypts to
/// what is recorded is checked by the members that sign the record, by decrypting it
/// themselves.)
fn check_paillier_groups(
    genesis: &Genesis,
    prev_hash: Hash,
    active: &[u32],
    record: &RoundRecord,
) -> Result<(), String> {
    let grouped = genesis.spec.robust.group_size > 0;
    let Some(summary) = &record.groups else {
        return match grouped {
            true => Err("a mode-paillier record with group_size > 0 has none".into()),
            false => Ok(()),
        };
    };
    if record.paillier.is_none() {
        return Err("a groups summary without a paillier summary".into());
    }
    let n = genesis.members.len();
    let t = genesis.spec.paillier.threshold_for(n);
    let g = crate::paillier::group_size(genesis.spec.robust.group_size, t);
    if summary.size as usize != g {
        return Err(format!(
            "group size {} is not the genesis' {g}",
            summary.size
        ));
    }
    let participants: Vec<u32> = record.participants.iter().map(|c| c.member).collect();
    let groups = crate::paillier::round_groups(&prev_hash, record.round, active, &participants, g);
    if groups.is_empty() || summary.drawn != groups {
        return Err(format!(
            "the groups {:?} are not the round's groups of its participants ({groups:?})",
            summary.drawn
        ));
    }
    // Without configured groups (the fallback of an undecodable sum) no rule judges the groups:
    // only the undecodable ones are flagged, and the round is decided.
    if summary.revealed.len() != groups.len()
        || !summary.skipped.is_empty()
        || (!grouped && !summary.decided)
    {
        return Err("every group of a paillier round is decrypted and decided".into());
    }
    let sorted = |v: &[u32]| v.windows(2).all(|w| w[0] < w[1]);
    let threshold = genesis.spec.robust.score_threshold;
    for (j, (s, members)) in summary.revealed.iter().zip(&groups).enumerate() {
        if s.group as usize != j || s.session != 0 || &s.contributors != members {
            return Err(format!(
                "revealed group {} is not group {j} of the round with its members",
                s.group
            ));
        }
        if s.unmaskers.len() != t
            || !sorted(&s.unmaskers)
            || s.unmaskers.iter().any(|m| *m as usize >= n)
        {
            return Err(format!(
                "group {j} was decrypted by {:?}; exactly {t} distinct genesis members, sorted",
                s.unmaskers
            ));
        }
        if s.score.is_nan() || s.flagged != (s.score > threshold) {
            return Err(format!(
                "group {j} has score {} and flagged = {}, but the threshold is {threshold}",
                s.score, s.flagged
            ));
        }
        if (s.score == f64::MAX) != (s.total_weight == 0) {
            return Err(format!(
                "group {j}: a sum that did not decode (score f64::MAX) has weight 0, and only it"
            ));
        }
        if s.flagged && s.score != f64::MAX && (!grouped || !summary.decided) {
            return Err(format!(
                "group {j} decoded and is flagged, but no rule judged the round's groups"
            ));
        }
    }
    check_reference(genesis, summary, |s| s.total_weight > 0)?;
    Ok(())
}

/// The reference values of a groups summary: present exactly when genesis asks for reference
/// rows and the round was decided, then on every judged group (`judged`) and no other; finite;
/// and a group whose reference deviation
/// ([`crate::robust::suspicion::ReferenceScores::deviations`]) is over the threshold is
/// flagged with at least that score. (That the values are the right ones for the model is what
/// every member checks by replaying the judgement before it approves.)
fn check_reference(
    genesis: &Genesis,
    summary: &GroupsSummary,
    judged: impl Fn(&GroupSum) -> bool,
) -> Result<(), String> {
    let rows = genesis.spec.robust.reference_rows;
    let Some(loss) = summary.reference_loss else {
        if summary.reference_spread.is_some() {
            return Err("a reference spread, but the summary has no reference loss".into());
        }
        if summary.reference_scale.is_some() || summary.reference_best.is_some() {
            return Err("a reference scale or bar, but the summary has no reference loss".into());
        }
        if let Some(s) = summary.revealed.iter().find(|s| s.reference.is_some()) {
            return Err(format!(
                "group {} has a reference value, but the summary has no reference loss",
                s.group
            ));
        }
        if rows > 0 && summary.decided && summary.revealed.iter().any(&judged) {
            return Err(format!(
                "the genesis asks for {rows} reference rows, but the decided round has no \
                 reference loss"
            ));
        }
        return Ok(());
    };
    if rows == 0 {
        return Err("a reference loss, but the genesis has no reference rows".into());
    }
    if !summary.decided {
        return Err("a reference loss in a round that was not decided".into());
    }
    if !(loss.is_finite() && loss >= 0.0) {
        return Err(format!("reference loss {loss} is not a finite value ≥ 0"));
    }
    use crate::robust::suspicion::{REFERENCE_SPREAD_MAX, REFERENCE_SPREAD_MIN};
    let spread = summary
        .reference_spread
        .ok_or("a reference loss without the reference spread it was judged with")?;
    if !(REFERENCE_SPREAD_MIN..=REFERENCE_SPREAD_MAX).contains(&spread) {
        return Err(format!(
            "reference spread {spread} is outside [{REFERENCE_SPREAD_MIN}, {REFERENCE_SPREAD_MAX}]"
        ));
    }
    let scale = summary
        .reference_scale
        .ok_or("a reference loss without the reference scale its gaps were measured in")?;
    if !(scale.is_finite() && scale >= crate::robust::suspicion::REFERENCE_SCALE_MIN) {
        return Err(format!(
            "reference scale {scale} is not a finite value ≥ {}",
            crate::robust::suspicion::REFERENCE_SCALE_MIN
        ));
    }
    let best = summary
        .reference_best
        .ok_or("a reference loss without the effect that set the reference bar")?;
    let mut effects = Vec::new();
    let mut which = Vec::new();
    for s in &summary.revealed {
        match (s.reference, judged(s)) {
            (Some(e), true) if e.is_finite() => {
                effects.push(e);
                which.push(s);
            }
            (Some(e), true) => {
                return Err(format!(
                    "group {}'s reference value {e} is not finite",
                    s.group
                ))
            }
            (None, true) => {
                return Err(format!(
                    "group {} was judged but has no reference value",
                    s.group
                ))
            }
            (Some(_), false) => {
                return Err(format!(
                    "group {} was not judged but has a reference value",
                    s.group
                ))
            }
            (None, false) => {}
        }
    }
    if !effects.iter().any(|e| e.to_bits() == best.to_bits()) {
        return Err(format!(
            "the reference bar {best} is not the effect of a judged group"
        ));
    }
    let threshold = genesis.spec.robust.score_threshold;
    let deviations = crate::robust::suspicion::ReferenceScores {
        loss,
        effects,
        spread,
        scale,
        best,
    }
    .deviations();
    for (s, dev) in which.iter().zip(deviations) {
        let dev = dev.min(crate::robust::score::CAP);
        if s.score < dev || (dev > threshold && !s.flagged) {
            return Err(format!(
                "group {} has reference deviation {dev:.3} but score {} (flagged = {})",
                s.group, s.score, s.flagged
            ));
        }
    }
    Ok(())
}

/// Rounds after its own in which evidence of an equivocation may still be recorded: a second
/// message that reaches the members only after its round's record was approved is recorded in
/// the next record instead of being lost. Nodes keep the messages of this many past rounds to
/// catch such late contradictions.
pub const EVIDENCE_WINDOW: u64 = 1;

/// What a record's equivocation evidence must satisfy: sorted by member and round, each piece
/// for a distinct (member, round), the round this record's or at most [`EVIDENCE_WINDOW`]
/// before it, and proving its member signed two different messages for one slot
/// ([`crate::evidence::Equivocation::verify`]). On failure, the member and the reason.
pub fn check_evidence(
    genesis: &Genesis,
    genesis_hash: Hash,
    record: &RoundRecord,
) -> Result<(), (u32, String)> {
    let limit = genesis.spec.params.max_message_bytes;
    let mut last = None;
    for e in &record.evidence {
        if last.is_some_and(|k| k >= (e.member, e.round)) {
            return Err((
                e.member,
                "evidence is not one per member and round, sorted".into(),
            ));
        }
        last = Some((e.member, e.round));
        if e.round > record.round || e.round + EVIDENCE_WINDOW < record.round {
            return Err((
                e.member,
                format!(
                    "it is for round {}, the record for round {} takes evidence of rounds {} to {}",
                    e.round,
                    record.round,
                    record.round.saturating_sub(EVIDENCE_WINDOW),
                    record.round
                ),
            ));
        }
        e.verify(genesis, genesis_hash, limit)
            .map_err(|err| (e.member, err.to_string()))?;
    }
    Ok(())
}

impl Entry {
    /// Member signatures (distinct genesis members, each valid, at least the threshold) and the
    /// threshold BLS signature over the signing hash.
    fn verify_signatures(
        &self,
        genesis: &Genesis,
        bls_set: &bls::PublicSet,
    ) -> Result<(), VerifyError> {
        let height = self.height;
        let msg = self.signing_hash();
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.signatures {
            // Only genesis members hold BLS shares and sign entries; admitted members do not.
            let member = genesis
                .members
                .get(s.member as usize)
                .filter(|_| seen.insert(s.member))
                .ok_or(VerifyError::Signer {
                    height,
                    member: s.member,
                })?;
            member
                .public_key
                .verify(msg.as_bytes(), &s.signature)
                .map_err(|_| VerifyError::MemberSignature {
                    height,
                    member: s.member,
                })?;
        }
        let need = genesis.threshold();
        if seen.len() < need {
            return Err(VerifyError::TooFewSignatures {
                height,
                have: seen.len(),
                need,
            });
        }
        let sig = bls::Signature::from_bytes(&self.threshold_signature)
            .map_err(|_| VerifyError::ThresholdSignature { height })?;
        if !bls_set.verify(msg.as_bytes(), &sig) {
            return Err(VerifyError::ThresholdSignature { height });
        }
        Ok(())
    }
}

/// The hash members sign for an entry.
pub fn signing_hash(height: u64, prev_hash: Hash, kind: Kind, body_hash: Hash) -> Hash {
    let mut h = Hasher::new("fedmesh entry signing v1");
    h.update(&height.to_le_bytes());
    h.update(prev_hash.as_bytes());
    h.update(&[kind.tag()]);
    h.update(body_hash.as_bytes());
    h.finalize()
}

/// Check that `entry` extends `prev` (height and hash link).
pub fn verify_link(prev: &Entry, entry: &Entry) -> Result<(), VerifyError> {
    if entry.height != prev.height + 1 {
        return Err(VerifyError::Height {
            height: entry.height,
            expected: prev.height + 1,
        });
    }
    let expected = prev.hash();
    if entry.prev_hash != expected {
        return Err(VerifyError::Link {
            height: entry.height,
            found: entry.prev_hash,
            expected,
        });
    }
    Ok(())
}

/// Check that a round record follows from the previous one: next round number, and its base
/// model is the previous global model (the initial model after genesis).
pub fn verify_succession(
    genesis: &Genesis,
    prev: Option<&RoundRecord>,
    entry: &Entry,
    record: &RoundRecord,
) -> Result<(), VerifyError> {
    let (expected_round, expected_base) = match prev {
        Some(p) => (p.round + 1, p.new_model),
        None => (1, genesis.initial_model),
    };
    if record.round != expected_round {
        return Err(VerifyError::Round {
            height: entry.height,
            found: record.round,
            expected: expected_round,
        });
    }
    if record.base_model != expected_base {
        return Err(VerifyError::BaseModel {
            height: entry.height,
            found: record.base_model,
            expected: expected_base,
        });
    }
    Ok(())
}

/// Check a round record against the member set the log had before it and apply it: evictions
/// and admissions (with their votes' signatures and quorums) are checked against the members
/// active before the record, and take effect from the next round. Nothing changes on error.
/// See [`Members::apply`] for the rules.
pub fn check_membership(
    members: &mut Members,
    height: u64,
    record: &RoundRecord,
) -> Result<crate::membership::Change, VerifyError> {
    members.apply(height, record)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::genesis::tests::sample;

    pub(crate) fn record(round: u64, base: Hash) -> RoundRecord {
        RoundRecord {
            metrics: Metrics {
                accuracy: 0.5,
                loss: 1.0,
                test_samples: 10,
            },
            ..RoundRecord::new(
                round,
                Mode::Plain,
                base,
                Hash::of("m", &round.to_le_bytes()),
            )
        }
    }

    /// A mode-paillier record must carry a summary with exactly `threshold` distinct decryptors,
    /// none of them rejected; other modes must carry none.
    #[test]
    fn records_carry_their_format_version_and_other_formats_are_refused() {
        let r = record(3, Hash::of("test", b"base"));
        let bytes = r.encode();
        assert_eq!(&bytes[..3], &RECORD_TAG);
        assert_eq!(bytes[3], RECORD_VERSION);
        assert_eq!(RoundRecord::decode(&bytes).unwrap(), r);

        // A record as builds before versions wrote it: the bare encoding.
        let old = crate::codec::encode(&r);
        assert!(matches!(
            RoundRecord::decode(&old),
            Err(RecordDecodeError::Unversioned)
        ));
        let mut newer = bytes.clone();
        newer[3] = RECORD_VERSION + 1;
        let err = RoundRecord::decode(&newer).unwrap_err();
        assert!(matches!(err, RecordDecodeError::Version { found } if found == RECORD_VERSION + 1));
        assert!(err.to_string().contains("new genesis"), "{err}");
        for cut in [0, 2, 3] {
            assert!(RoundRecord::decode(&bytes[..cut]).is_err());
        }
        assert!(matches!(
            RoundRecord::decode(&bytes[..bytes.len() - 1]),
            Err(RecordDecodeError::Decode(_))
        ));
    }

    #[test]
    fn paillier_summary_is_checked_on_its_own() {
        let (mut g, _, _) = sample(4);
        g.spec.mode = Mode::Paillier;
        let mut r = record(1, g.initial_model);
        r.mode = Mode::Paillier;
        assert!(check_paillier(&g, &r).unwrap_err().contains("has none"));
        let good = PaillierSummary {
            sum_hash: Hash::of("sum", b""),
            decryptors: vec![0, 1, 3],
            rejected: vec![2],
            clipped: 0,
        };
        r.paillier = Some(good.clone());
        check_paillier(&g, &r).unwrap();
        let bad = |f: &dyn Fn(&mut PaillierSummary)| {
            let mut r = r.clone();
            f(r.paillier.as_mut().unwrap());
            check_paillier(&g, &r).unwrap_err()
        };
        assert!(bad(&|s| s.decryptors = vec![0, 1]).contains("exactly 3"));
        assert!(bad(&|s| s.decryptors = vec![0, 1, 1]).contains("exactly 3"));
        assert!(bad(&|s| s.decryptors = vec![3, 1, 0]).contains("sorted"));
        assert!(bad(&|s| s.decryptors = vec![0, 1, 9]).contains("not in the genesis"));
        assert!(bad(&|s| s.rejected = vec![1]).contains("both"));
        assert!(bad(&|s| s.rejected = vec![2, 2]).contains("distinct"));
        let mut plain = record(1, g.initial_model);
        plain.paillier = Some(good);
        assert!(check_paillier(&g, &plain)
            .unwrap_err()
            .contains("mode-plain"));
    }

    /// A mode-paillier record closed with its groups' sums (its sum did not decode): the groups
    /// must be the round's groups of its participants (8 members, default threshold 5: groups
    /// of at least 3), each decrypted by exactly `threshold` members, the undecodable one flagged
    /// with weight 0; `audit verify` and the members refuse anything else.
    #[test]
    fn paillier_groups_summary_is_checked_against_the_round_groups() {
        let (mut g, _, _) = sample(8);
        g.spec.mode = Mode::Paillier;
        let head = Hash::of("head", b"1");
        let active: Vec<u32> = (0..8).collect();
        let t = g.spec.paillier.threshold_for(8);
        assert_eq!(crate::paillier::group_size(0, t), 3);
        let groups = crate::paillier::round_groups(&head, 1, &active, &active, 3);
        assert_eq!(groups.len(), 2);
        let mut good = record(1, g.initial_model);
        good.mode = Mode::Paillier;
        good.participants = active
            .iter()
            .map(|&member| Contribution {
                member,
                num_samples: 0,
                update_hash: Hash::ZERO,
                train_loss: 0.0,
            })
            .collect();
        good.paillier = Some(PaillierSummary {
            sum_hash: Hash::of("sum", b""),
            decryptors: (0..t as u32).collect(),
            rejected: vec![],
            clipped: 0,
        });
        good.groups = Some(GroupsSummary {
            size: 3,
            revealed: groups
                .iter()
                .enumerate()
                .map(|(j, members)| GroupSum {
                    group: j as u32,
                    session: 0,
                    contributors: members.clone(),
                    unmaskers: (1..=t as u32).collect(),
                    total_weight: if j == 0 { 0 } else { 4096 },
                    sum_hash: Hash::of("group", &[j as u8]),
                    score: if j == 0 { f64::MAX } else { 0.0 },
                    flagged: j == 0,
                    reference: None,
                })
                .collect(),
            usual: Default::default(),
            reference_loss: None,
            reference_spread: None,
            reference_scale: None,
            reference_best: None,
            drawn: groups.clone(),
            skipped: vec![],
            decided: true,
        });
        check_groups(&g, head, &active, &good).unwrap();
        let mut plain_round = good.clone();
        plain_round.groups = None;
        check_groups(&g, head, &active, &plain_round).unwrap();
        let bad = |f: &dyn Fn(&mut RoundRecord)| {
            let mut r = good.clone();
            f(&mut r);
            check_groups(&g, head, &active, &r).expect_err(&format!("{:?}", r.groups))
        };
        // Other groups: from another head, regrouped by hand, or not cut to the participants.
        let other = crate::paillier::round_groups(&Hash::of("head", b"2"), 1, &active, &active, 3);
        assert!(bad(&|r| groups_of(r).drawn = other.clone()).contains("not the round's groups"));
        assert!(bad(&|r| {
            let s = groups_of(r);
            let moved = s.drawn[0].pop().unwrap();
            s.drawn[1].push(moved);
        })
        .contains("not the round's groups"));
        assert!(bad(&|r| {
            r.participants.pop();
        })
        .contains("not the round's groups"));
        // A group left out, skipped or undecided; another group's members.
        assert!(bad(&|r| {
            groups_of(r).revealed.pop();
        })
        .contains("every group"));
        assert!(bad(&|r| groups_of(r).skipped = vec![1]).contains("every group"));
        assert!(bad(&|r| groups_of(r).decided = false).contains("every group"));
        assert!(bad(&|r| groups_of(r).revealed[0]
            .contributors
            .pop()
            .map(drop)
            .unwrap_or(()))
        .contains("not group 0"));
        // Too few decryptors, or not genesis members.
        assert!(bad(&|r| {
            groups_of(r).revealed[1].unmaskers.pop();
        })
        .contains("exactly"));
        assert!(
            bad(&|r| *groups_of(r).revealed[1].unmaskers.last_mut().unwrap() = 99)
                .contains("exactly")
        );
        // Flags that do not follow from the scores; an undecodable group with a weight.
        assert!(bad(&|r| groups_of(r).revealed[0].flagged = false).contains("flagged"));
        assert!(bad(&|r| groups_of(r).revealed[0].total_weight = 7).contains("weight 0"));
        assert!(bad(&|r| groups_of(r).size = 4).contains("group size"));
        assert!(bad(&|r| r.paillier = None).contains("without a paillier summary"));
        // Without configured groups no rule judges them: a group that decoded is never flagged.
        assert!(bad(&|r| {
            groups_of(r).revealed[1].score = 9.0;
            groups_of(r).revealed[1].flagged = true;
        })
        .contains("no rule judged"));

        // With group_size = 3 configured every round has groups, the round's sum has no
        // decryptors, and the rule may flag a group that decoded (in a decided round) or decide
        // nothing.
        g.spec.robust.group_size = 3;
        let mut grouped = good.clone();
        grouped.paillier.as_mut().unwrap().decryptors.clear();
        check_paillier(&g, &grouped).unwrap();
        check_groups(&g, head, &active, &grouped).unwrap();
        assert!(check_paillier(&g, &good)
            .unwrap_err()
            .contains("only group sums"));
        let mut none = grouped.clone();
        none.groups = None;
        assert!(check_groups(&g, head, &active, &none)
            .unwrap_err()
            .contains("has none"));
        let mut judged = grouped.clone();
        groups_of(&mut judged).revealed[1].score = 9.0;
        groups_of(&mut judged).revealed[1].flagged = true;
        check_groups(&g, head, &active, &judged).unwrap();
        groups_of(&mut judged).decided = false;
        assert!(check_groups(&g, head, &active, &judged)
            .unwrap_err()
            .contains("no rule judged"));
        groups_of(&mut judged).revealed[1].score = 0.5;
        groups_of(&mut judged).revealed[1].flagged = false;
        check_groups(&g, head, &active, &judged).unwrap();
    }

    fn groups_of(r: &mut RoundRecord) -> &mut GroupsSummary {
        r.groups.as_mut().unwrap()
    }

    /// A mode-secagg record with groups, as an honest coordinator writes it for 8 members in
    /// groups of at least 3 on top of `head`: every drawn group revealed, none flagged.
    fn grouped_record(g: &Genesis, head: Hash) -> RoundRecord {
        let active: Vec<u32> = (0..8).collect();
        let drawn = crate::robust::groups::draw(&head, 1, &active, 3).unwrap();
        let mut r = record(1, g.initial_model);
        r.mode = Mode::Secagg;
        r.participants = active
            .iter()
            .map(|&member| Contribution {
                member,
                num_samples: 0,
                update_hash: Hash::ZERO,
                train_loss: 0.0,
            })
            .collect();
        r.groups = Some(GroupsSummary {
            size: 3,
            revealed: drawn
                .iter()
                .enumerate()
                .map(|(j, members)| GroupSum {
                    group: j as u32,
                    session: crate::secagg::group_session(1, 0, j as u32),
                    contributors: members.clone(),
                    unmaskers: members.clone(),
                    total_weight: 100,
                    sum_hash: group_sum_hash(&[j as u64]),
                    score: 0.5,
                    flagged: false,
                    reference: None,
                })
                .collect(),
            drawn,
            skipped: Vec::new(),
            decided: true,
            usual: crate::robust::suspicion::Usual {
                cosine: Some((0.8, 0.01)),
                log_norm: Some(-1.2),
                reference_gap: None,
            },
            reference_loss: None,
            reference_spread: None,
            reference_scale: None,
            reference_best: None,
        });
        r
    }

    fn groups(r: &mut RoundRecord) -> &mut GroupsSummary {
        r.groups.as_mut().unwrap()
    }

    /// Members and `audit verify` refuse a groups summary whose groups are not the ones drawn
    /// from the head, that reveals a sum of fewer than g, or whose flags, participants or
    /// skipped groups do not add up; and a secagg record with groups configured must carry one.
    #[test]
    fn groups_summary_is_checked_against_the_draw_and_the_group_size() {
        let (mut g, _, _) = sample(8);
        g.spec.mode = Mode::Secagg;
        g.spec.robust.group_size = 3;
        let head = Hash::of("head", b"1");
        let active: Vec<u32> = (0..8).collect();
        let good = grouped_record(&g, head);
        check_groups(&g, head, &active, &good).unwrap();
        let bad = |f: &dyn Fn(&mut RoundRecord)| {
            let mut r = good.clone();
            f(&mut r);
            check_groups(&g, head, &active, &r).expect_err(&format!("{:?}", r.groups))
        };

        // Groups from another head (what a coordinator choosing the groups would write).
        let other = grouped_record(&g, Hash::of("head", b"2"));
        assert_ne!(other.groups, good.groups);
        assert!(check_groups(&g, head, &active, &other)
            .unwrap_err()
            .contains("not the ones drawn"));
        // The same members regrouped by hand.
        assert!(bad(&|r| {
            let s = groups(r);
            let moved = s.drawn[0].pop().unwrap();
            s.drawn[1].push(moved);
        })
        .contains("not the ones drawn"));
        // A sum of fewer than g contributors (a member of the group dropped and it was unmasked
        // anyway): refused, whatever the unmaskers.
        let err = bad(&|r| {
            let s = groups(r);
            assert_eq!(
                s.revealed[0].contributors.len(),
                4,
                "8 members: two groups of 4"
            );
            let dropped: Vec<u32> = s.revealed[0].contributors.drain(..2).collect();
            s.revealed[0].unmaskers.retain(|m| !dropped.contains(m));
            r.participants.retain(|c| !dropped.contains(&c.member));
        });
        assert!(err.contains("fewer than the group size 3"), "{err}");
        // Too few unmaskers, or one from outside.
        assert!(bad(&|r| {
            groups(r).revealed[0].unmaskers.truncate(2);
        })
        .contains("at least 3"));
        // A contributor that was drawn into another group.
        assert!(bad(&|r| {
            let s = groups(r);
            let stranger = s.drawn[1][0];
            s.revealed[0].contributors[0] = stranger;
            s.revealed[0].contributors.sort_unstable();
        })
        .contains("not in"));
        // A group both revealed and skipped, or a group left out of both.
        assert!(bad(&|r| groups(r).skipped = vec![0]).contains("skipped groups"));
        assert!(bad(&|r| {
            let s = groups(r);
            s.revealed.pop();
        })
        .contains("skipped groups"));
        // Flags that do not follow from the scores and the genesis threshold (3.0).
        assert!(bad(&|r| groups(r).revealed[0].flagged = true).contains("flagged"));
        assert!(bad(&|r| groups(r).revealed[1].score = 7.5).contains("flagged"));
        // Usual values the judge cannot produce (they steer the next round's judgement).
        assert!(bad(&|r| groups(r).usual.cosine = Some((1.5, 0.01))).contains("usual cosine"));
        assert!(bad(&|r| groups(r).usual.cosine = Some((0.5, -0.1))).contains("usual cosine"));
        assert!(bad(&|r| groups(r).usual.log_norm = Some(f64::NAN)).contains("log-norm"));
        // An undecided round flags nobody.
        assert!(bad(&|r| {
            groups(r).decided = false;
            groups(r).revealed[1].score = 7.5;
            groups(r).revealed[1].flagged = true;
        })
        .contains("not decided"));
        // Participants that are not the contributors; a session of another group.
        assert!(bad(&|r| {
            r.participants.pop();
        })
        .contains("participants"));
        assert!(
            bad(&|r| groups(r).revealed[1].session = crate::secagg::group_session(1, 0, 0))
                .contains("session")
        );
        assert!(bad(&|r| groups(r).size = 2).contains("group size"));

        // A skipped group is fine: its members are dropouts, nothing of it is revealed.
        let mut skipped = good.clone();
        let gone = groups(&mut skipped).revealed.remove(1);
        groups(&mut skipped).skipped = vec![1];
        skipped
            .participants
            .retain(|c| !gone.contributors.contains(&c.member));
        check_groups(&g, head, &active, &skipped).unwrap();

        // Groups are required with group_size > 0 in mode secagg, and refused otherwise.
        let mut none = good.clone();
        none.groups = None;
        assert!(check_groups(&g, head, &active, &none)
            .unwrap_err()
            .contains("has none"));
        g.spec.robust.group_size = 0;
        assert!(check_groups(&g, head, &active, &good)
            .unwrap_err()
            .contains("no groups"));
        check_groups(&g, head, &active, &none).unwrap();
    }

    #[test]
    fn reference_values_are_checked_against_the_genesis_and_the_flags() {
        let (mut g, _, _) = sample(8);
        g.spec.mode = Mode::Secagg;
        g.spec.robust.group_size = 3;
        let head = Hash::of("head", b"1");
        let active: Vec<u32> = (0..8).collect();
        let plain = grouped_record(&g, head);
        // Without reference rows in genesis, no reference values.
        let mut with = plain.clone();
        groups(&mut with).reference_loss = Some(0.5);
        groups(&mut with).reference_spread = Some(0.1);
        groups(&mut with).reference_scale = Some(0.125);
        groups(&mut with).reference_best = Some(-0.05);
        // Loss 0.5: the best group lowers it by 0.05, the other by 0.04 (gaps in units of the
        // scale: deviation 0.01 / (0.125 · 0.1) = 0.8, under the threshold of 3).
        assert_eq!(groups(&mut with).revealed.len(), 2);
        for (s, e) in groups(&mut with).revealed.iter_mut().zip([-0.05, -0.04]) {
            s.reference = Some(e);
            s.score = s.score.max(1.0);
        }
        assert!(check_groups(&g, head, &active, &with)
            .unwrap_err()
            .contains("no reference rows"));
        g.spec.robust.reference_rows = 100;
        check_groups(&g, head, &active, &with).unwrap();
        // Missing where genesis asks for them.
        assert!(check_groups(&g, head, &active, &plain)
            .unwrap_err()
            .contains("no reference loss"));
        let bad = |f: &dyn Fn(&mut RoundRecord)| {
            let mut r = with.clone();
            f(&mut r);
            check_groups(&g, head, &active, &r).expect_err(&format!("{:?}", r.groups))
        };
        // A group whose effect is far worse than the best one's (here: it raises the loss by
        // 0.1, deviation 12) but is not flagged: a coordinator hiding a flipper's group.
        assert!(bad(&|r| groups(r).revealed[1].reference = Some(0.1)).contains("deviation"));
        // A value left out, a NaN, a negative loss.
        assert!(bad(&|r| groups(r).revealed[1].reference = None).contains("no reference value"));
        assert!(bad(&|r| groups(r).revealed[0].reference = Some(f64::NAN)).contains("not finite"));
        assert!(bad(&|r| groups(r).reference_loss = Some(-1.0)).contains("≥ 0"));
        // The spread the gaps were judged with: present, within its bounds, and the scores
        // follow from it (a gap of 0.08 scales: deviation 0.8 at 0.1 — over a group score of
        // 0.7 — but 0.2 at 0.4).
        assert!(bad(&|r| groups(r).reference_spread = None).contains("reference spread"));
        assert!(bad(&|r| groups(r).reference_spread = Some(0.6)).contains("outside"));
        assert!(bad(&|r| groups(r).reference_spread = Some(0.05)).contains("outside"));
        assert!(bad(&|r| groups(r).reference_spread = Some(f64::NAN)).contains("outside"));
        assert!(bad(&|r| groups(r).revealed[1].score = 0.7).contains("deviation 0.800"));
        let mut wider = with.clone();
        groups(&mut wider).reference_spread = Some(0.4);
        groups(&mut wider).revealed[1].score = 0.7;
        check_groups(&g, head, &active, &wider).unwrap();
        // The scale the gaps were measured in: present, finite and positive, and the scores
        // follow from it (at 0.01 the gap is 1 scale, deviation 10; at 0.5, 0.2).
        assert!(bad(&|r| groups(r).reference_scale = None).contains("reference scale"));
        assert!(bad(&|r| groups(r).reference_scale = Some(0.0)).contains("reference scale"));
        assert!(bad(&|r| groups(r).reference_scale = Some(f64::NAN)).contains("reference scale"));
        assert!(bad(&|r| groups(r).reference_scale = Some(0.01)).contains("deviation 10.000"));
        let mut larger = with.clone();
        groups(&mut larger).reference_scale = Some(0.5);
        groups(&mut larger).revealed[1].score = 0.7;
        check_groups(&g, head, &active, &larger).unwrap();
        // The bar: present and one of the judged groups' effects (the judge sets it from the
        // groups of usual size, so it need not be the lowest); the deviations follow from it.
        assert!(bad(&|r| groups(r).reference_best = None).contains("reference bar"));
        assert!(bad(&|r| groups(r).reference_best = Some(-0.06)).contains("reference bar"));
        let mut other_bar = with.clone();
        groups(&mut other_bar).reference_best = Some(-0.04);
        check_groups(&g, head, &active, &other_bar).unwrap();
        assert!(bad(&|r| {
            groups(r).reference_loss = None;
            for s in &mut groups(r).revealed {
                s.reference = None;
            }
        })
        .contains("no reference loss"));
        let mut spread_alone = plain.clone();
        groups(&mut spread_alone).reference_spread = Some(0.1);
        assert!(check_groups(&g, head, &active, &spread_alone)
            .unwrap_err()
            .contains("reference spread"));
        let mut scale_alone = plain.clone();
        groups(&mut scale_alone).reference_scale = Some(0.125);
        assert!(check_groups(&g, head, &active, &scale_alone)
            .unwrap_err()
            .contains("reference scale"));
        // Flagged with its score, the worse group passes.
        let mut flagged = with.clone();
        let s = &mut groups(&mut flagged).revealed[1];
        s.reference = Some(0.1);
        s.score = 20.0;
        s.flagged = true;
        check_groups(&g, head, &active, &flagged).unwrap();
        // The record round-trips with its reference values.
        let decoded = RoundRecord::decode(&with.encode()).unwrap();
        assert_eq!(decoded, with);
    }

    #[test]
    fn signed_entry_verifies_and_tampering_is_caught() {
        let (g, keys, shares) = sample(4);
        let text = g.to_toml();
        let (g, gh) = Genesis::parse(text.as_bytes()).unwrap();
        let set = g.bls().unwrap();
        let e0 = Entry::genesis(text.as_bytes());
        assert_eq!(e0.hash(), gh);
        e0.verify(&g, gh, &set).unwrap();

        let mut e1 = Entry::round(1, e0.hash(), &record(1, g.initial_model));
        let msg = e1.signing_hash();
        let approvers = [0u32, 2, 3];
        let bls_shares: Vec<_> = approvers
            .iter()
            .map(|i| (*i, shares[*i as usize].sign(msg.as_bytes())))
            .collect();
        e1.threshold_signature = set
            .combine(bls_shares.iter().map(|(i, s)| (*i, s)))
            .unwrap()
            .to_bytes()
            .to_vec();
        e1.signatures = approvers
            .iter()
            .map(|i| MemberSignature {
                member: *i,
                signature: keys[*i as usize].sign(msg.as_bytes()),
            })
            .collect();
        e1.verify(&g, gh, &set).unwrap();
        verify_link(&e0, &e1).unwrap();
        verify_succession(&g, None, &e1, &e1.record().unwrap()).unwrap();

        let mut bad = e1.clone();
        bad.body[3] ^= 1;
        assert!(matches!(
            bad.verify(&g, gh, &set),
            Err(VerifyError::BodyHash { height: 1 })
        ));
        let mut bad = e1.clone();
        bad.signatures.pop();
        assert!(matches!(
            bad.verify(&g, gh, &set),
            Err(VerifyError::TooFewSignatures { .. })
        ));
        let mut bad = e1.clone();
        bad.signatures[0].signature.0[5] ^= 1;
        assert!(matches!(
            bad.verify(&g, gh, &set),
            Err(VerifyError::MemberSignature { member: 0, .. })
        ));
        let mut bad = e1.clone();
        bad.threshold_signature[10] ^= 1;
        assert!(bad.verify(&g, gh, &set).is_err());
        let mut bad = e1.clone();
        bad.prev_hash = Hash::ZERO;
        assert!(verify_link(&e0, &bad).is_err());
    }

    fn sign_entry(
        e: &mut Entry,
        keys: &[identity::SecretKey],
        shares: &[bls::SecretShare],
        set: &bls::PublicSet,
        approvers: &[u32],
    ) {
        let msg = e.signing_hash();
        let bls_shares: Vec<_> = approvers
            .iter()
            .map(|i| (*i, shares[*i as usize].sign(msg.as_bytes())))
            .collect();
        e.threshold_signature = set
            .combine(bls_shares.iter().map(|(i, s)| (*i, s)))
            .unwrap()
            .to_bytes()
            .to_vec();
        e.signatures = approvers
            .iter()
            .map(|i| MemberSignature {
                member: *i,
                signature: keys[*i as usize].sign(msg.as_bytes()),
            })
            .collect();
    }

    #[test]
    fn kind_tags_of_stored_entries_are_unchanged() {
        // Entries already in logs were encoded with these variant indices; new kinds go after.
        assert_eq!(crate::codec::encode(&Kind::Genesis), [0]);
        assert_eq!(crate::codec::encode(&Kind::Round), [1]);
    }

    /// Three of four members vote member 3 out in round 1: the round entry carrying the eviction
    /// verifies; with a vote too few, or a vote signed for another network, it does not.
    #[test]
    fn round_entry_with_an_eviction_verifies_only_with_a_quorum_of_votes() {
        use crate::votes::{Outcome, SignedVote, Tally, Vote};
        let (g, keys, shares) = sample(4);
        let text = g.to_toml();
        let (g, gh) = Genesis::parse(text.as_bytes()).unwrap();
        let set = g.bls().unwrap();
        let e0 = Entry::genesis(text.as_bytes());
        let mut tally = Tally::new(
            gh,
            g.members.iter().map(|m| (m.index, m.public_key)),
            g.spec.robust.quorum,
            3,
        );
        let mut eviction = None;
        for voter in 0..3u32 {
            let v = Vote {
                round: 1,
                voter,
                target: 3,
                score: 12.0,
                evidence: Hash::ZERO,
            };
            if let Outcome::Evicted(r) = tally
                .add(&SignedVote::sign(gh, v, &keys[voter as usize]), 1)
                .unwrap()
            {
                eviction = Some(r);
            }
        }
        let eviction = eviction.expect("3 of 4 is a quorum");
        let with = |ev: crate::votes::EvictionRecord| {
            let mut r = record(1, g.initial_model);
            r.evictions = vec![ev];
            let mut e = Entry::round(1, e0.hash(), &r);
            sign_entry(&mut e, &keys, &shares, &set, &[0, 1, 2]);
            (e, r)
        };
        let (e1, r1) = with(eviction.clone());
        e1.verify(&g, gh, &set).unwrap();
        let mut members = Members::new(&g, gh);
        let change = check_membership(&mut members, 1, &r1).unwrap();
        assert_eq!(change.evicted, [3]);
        assert_eq!(members.evicted().iter().copied().collect::<Vec<_>>(), [3]);

        // The entry's signatures are fine either way; the member-set check refuses the votes.
        let mut short = eviction.clone();
        short.votes.pop();
        let (bad, r) = with(short);
        bad.verify(&g, gh, &set).unwrap();
        assert!(matches!(
            check_membership(&mut Members::new(&g, gh), 1, &r),
            Err(VerifyError::Eviction {
                height: 1,
                target: 3,
                ..
            })
        ));
        let mut foreign = eviction.clone();
        foreign.votes[0] = SignedVote::sign(Hash::ZERO, foreign.votes[0].vote, &keys[0]);
        let (_, r) = with(foreign);
        assert!(matches!(
            check_membership(&mut Members::new(&g, gh), 1, &r),
            Err(VerifyError::Eviction {
                source: crate::votes::VoteError::Signature { culprit: 0 },
                ..
            })
        ));
    }

    /// The member set follows the log: an evicted member may not appear, vote or be evicted
    /// again, and an eviction must count the members active at its round.
    #[test]
    fn membership_follows_the_evictions_in_the_log() {
        use crate::votes::{needed, EvictionRecord, SignedVote, Vote};
        let (g, keys, _) = sample(4);
        let gh = Hash::of("net", b"");
        let vote = |voter: u32, target: u32, round: u64| {
            let v = Vote {
                round,
                voter,
                target,
                score: 9.0,
                evidence: Hash::ZERO,
            };
            SignedVote::sign(gh, v, &keys[voter as usize])
        };
        let eviction = |target: u32, round: u64, active: u32, voters: &[u32]| EvictionRecord {
            target,
            round,
            effective_round: round + 1,
            active,
            needed: needed(active as usize, g.spec.robust.quorum) as u32,
            votes: voters.iter().map(|v| vote(*v, target, round)).collect(),
        };
        let mut evicted = Members::new(&g, gh);
        let mut r2 = record(2, Hash::ZERO);
        r2.evictions = vec![eviction(3, 2, 4, &[0, 1, 2])];
        check_membership(&mut evicted, 2, &r2).unwrap();

        let fails = |r: &RoundRecord, evicted: &Members| {
            let mut e = evicted.clone();
            let err = check_membership(&mut e, 3, r).unwrap_err();
            assert_eq!(&e, evicted, "a failed check changes nothing");
            err.to_string()
        };
        let mut r3 = record(3, Hash::ZERO);
        r3.dropouts = vec![3];
        assert!(fails(&r3, &evicted).contains("after its eviction"));
        let mut r3 = record(3, Hash::ZERO);
        r3.evictions = vec![eviction(3, 3, 3, &[0, 1])];
        assert!(fails(&r3, &evicted).contains("not a member to evict"));
        r3.evictions = vec![eviction(2, 3, 4, &[0, 1, 3])];
        assert!(fails(&r3, &evicted).contains("active members"));
        r3.evictions = vec![eviction(2, 3, 3, &[0, 3])];
        assert!(fails(&r3, &evicted).contains("after its own eviction"));
        r3.evictions = vec![eviction(2, 2, 3, &[0, 1])];
        assert!(fails(&r3, &evicted).contains("recorded in round 3"));
        let mut stale = eviction(2, 3, 3, &[0, 1]);
        stale.votes[0] = vote(0, 2, 3 - g.spec.robust.vote_expiry_rounds);
        r3.evictions = vec![stale];
        assert!(fails(&r3, &evicted).contains("not valid in round 3"));
        r3.evictions = vec![eviction(2, 3, 3, &[0, 1])];
        check_membership(&mut evicted, 3, &r3).unwrap();
        assert_eq!(evicted.evicted().len(), 2);
        assert_eq!(evicted.active().collect::<Vec<_>>(), [0, 1]);
    }
}
