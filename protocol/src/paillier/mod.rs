//! Mode `paillier`: one round of threshold-Paillier aggregation, as typed phases the node drives.
//!
//! 1. Each member quantizes, packs and encrypts its update under the joint key and sends it signed
//!    ([`encrypt_update`] → [`Signed`]`<`[`EncryptedUpdate`]`>`). The size is fixed by the model
//!    and the key: anything else is rejected before decoding.
//! 2. Whoever collects the updates ([`Collect`]) — the coordinator, or any member that wants to
//!    check — forms their product, the encryption of the sum ([`Collect::close`] → [`Decrypt`]).
//!    Everything that follows is bound to the hash of that product.
//! 3. Members publish partial decryptions with proofs ([`Decrypt::partial`]); each one is checked
//!    ([`Decrypt::add_partial`]) and a bad one is rejected, its sender named and recorded.
//! 4. Any `threshold` good partials finish the round ([`Decrypt::finish`] → [`Outcome`]): the sum
//!    of the contributors' quantized updates, and a [`Summary`] for the round record (hashes of
//!    every update's ciphertexts and of their product, who decrypted, who was rejected).
//!
//! A member's FedAvg weight is the node's business: to keep it hidden, put it inside the vector
//! (e.g. as its last element), as mode `secagg` does.

use std::collections::{BTreeMap, BTreeSet};

use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::crypto::paillier::{
    self, pack::Packer, Ciphertext, DecodeError, KeyShare, PartialDecryption, Pool, PublicKey,
    VerificationKeys,
};
use crate::crypto::{identity, Hash};

/// Everything the members of one round agree on before it starts.
#[derive(Debug, Clone)]
pub struct RoundParams {
    /// The network's genesis hash: every signature and proof is bound to it.
    pub genesis: Hash,
    pub round: u64,
    /// Active members and their ed25519 keys.
    pub members: BTreeMap<u32, identity::PublicKey>,
    /// Length of every update vector.
    pub len: usize,
    /// Fewest updates a sum may be formed from (a sum of one member's update is that update).
    pub min_contributors: usize,
}

/// The joint key from the genesis file.
#[derive(Debug, Clone)]
pub struct Keys {
    pub public: PublicKey,
    pub verification: VerificationKeys,
}

impl Keys {
    /// Parse the genesis file's hex fields.
    pub fn from_hex(public: &str, verification: &str) -> Result<Keys, DecodeError> {
        let bad = |what| DecodeError::Range {
            what,
            detail: "not valid hex",
        };
        let pk_bytes = hex::decode(public.trim()).map_err(|_| bad("Paillier public key"))?;
        let public = PublicKey::from_bytes(&pk_bytes)?;
        let vk_bytes =
            hex::decode(verification.trim()).map_err(|_| bad("Paillier verification keys"))?;
        let verification = VerificationKeys::from_bytes(&public, &vk_bytes)?;
        Ok(Keys {
            public,
            verification,
        })
    }
}

pub use crate::signed::{Body, Signed};
use crate::signed::{Refused, RoundKeys};

/// The signing context of this protocol's messages.
pub(crate) const DOMAIN: &str = "fedmesh paillier v1 message";

impl RoundKeys for RoundParams {
    fn genesis(&self) -> Hash {
        self.genesis
    }
    fn round(&self) -> u64 {
        self.round
    }
    fn key(&self, member: u32) -> Option<&identity::PublicKey> {
        self.members.get(&member)
    }
}

impl From<Refused> for PaillierError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::WrongRound {
                culprit,
                found,
                expected,
            } => PaillierError::WrongRound {
                culprit,
                found,
                expected,
            },
            Refused::NotMember { culprit } => PaillierError::NotMember { culprit },
            Refused::Signature { culprit, what } => PaillierError::Signature { culprit, what },
        }
    }
}

/// A member's encrypted, packed update.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct EncryptedUpdate {
    pub round: u64,
    pub member: u32,
    /// Values the member clipped (self-reported, for the round's statistics).
    pub clipped: u64,
    /// [`paillier::encode_ciphertexts`] of the packed update.
    pub ciphertexts: Vec<u8>,
}

impl std::fmt::Debug for EncryptedUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EncryptedUpdate(round {}, member {}, {} bytes)",
            self.round,
            self.member,
            self.ciphertexts.len()
        )
    }
}

impl Body for EncryptedUpdate {
    const DOMAIN: &'static str = DOMAIN;
    const KIND: &'static str = "paillier update";
    type Params = RoundParams;
    type Error = PaillierError;
    fn sender(&self) -> u32 {
        self.member
    }
    fn round(&self) -> u64 {
        self.round
    }
}

impl EncryptedUpdate {
    /// Commitment to the ciphertexts (recorded in the round summary).
    pub fn hash(&self) -> Hash {
        Hash::of("fedmesh paillier v1 update ciphertexts", &self.ciphertexts)
    }
}

/// A member's partial decryption of the round's sum, with its proof.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    pub round: u64,
    pub member: u32,
    /// The hash of the product the member decrypted ([`Decrypt::sum_hash`]).
    pub sum_hash: Hash,
    /// [`PartialDecryption::to_bytes`].
    pub partial: Vec<u8>,
}

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Partial(round {}, member {}, sum {})",
            self.round,
            self.member,
            self.sum_hash.short()
        )
    }
}

impl Body for Partial {
    const DOMAIN: &'static str = DOMAIN;
    const KIND: &'static str = "paillier partial decryption";
    type Params = RoundParams;
    type Error = PaillierError;
    fn sender(&self) -> u32 {
        self.member
    }
    fn round(&self) -> u64 {
        self.round
    }
}

/// The coordinator's announcement of which updates make the round's encrypted sum. Every member
/// forms that product itself ([`Collect::close_for`]) and checks its hash before it decrypts: no
/// member decrypts a ciphertext it has not seen to be a sum of at least
/// [`RoundParams::min_contributors`] signed updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    pub round: u64,
    /// Members whose updates are in the sum, sorted.
    pub contributors: Vec<u32>,
    /// [`Decrypt::sum_hash`] of that sum.
    pub sum_hash: Hash,
}

/// Why a message or a phase failed. Where a member is to blame, `culprit` names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PaillierError {
    #[error("member {culprit} is not a member of this round")]
    NotMember { culprit: u32 },
    #[error("message from member {culprit} is for round {found}, this is round {expected}")]
    WrongRound {
        culprit: u32,
        found: u64,
        expected: u64,
    },
    #[error("{what} message from member {culprit} has an invalid signature")]
    Signature { culprit: u32, what: &'static str },
    #[error("member {culprit} sent a second {what}")]
    Duplicate { culprit: u32, what: &'static str },
    #[error(
        "member {culprit}'s update is {found} bytes; an update of this model is exactly {expected}"
    )]
    Size {
        culprit: u32,
        found: usize,
        expected: usize,
    },
    #[error("member {culprit} sent a malformed {what}: {source}")]
    Malformed {
        culprit: u32,
        what: &'static str,
        source: DecodeError,
    },
    #[error("member {culprit} decrypted a different sum ({found}, expected {expected})")]
    WrongSum {
        culprit: u32,
        found: Hash,
        expected: Hash,
    },
    #[error("member {culprit}'s partial decryption is wrong: {source}")]
    BadPartial {
        culprit: u32,
        source: paillier::VerifyError,
    },
    #[error("member {member}'s update is in the announced sum but not here; fetch it first")]
    MissingUpdate { member: u32 },
    #[error("{have} updates, at least {need} needed to form a sum")]
    TooFewUpdates { have: usize, need: usize },
    #[error("{have} valid partial decryptions, {need} needed; nothing is decrypted")]
    TooFewPartials { have: usize, need: usize },
    #[error("cannot encrypt the update: {0}")]
    Encrypt(#[from] paillier::EncryptError),
    #[error("cannot decrypt the sum: {0}")]
    Combine(#[from] paillier::CombineError),
    #[error("cannot unpack the sum: {0}")]
    Pack(#[from] paillier::pack::PackError),
    #[error("this member's key share does not fit the genesis key: {0}")]
    Share(#[from] paillier::ShareError),
}

impl PaillierError {
    /// The member to blame, if one is.
    pub fn culprit(&self) -> Option<u32> {
        match self {
            PaillierError::NotMember { culprit }
            | PaillierError::WrongRound { culprit, .. }
            | PaillierError::Signature { culprit, .. }
            | PaillierError::Duplicate { culprit, .. }
            | PaillierError::Size { culprit, .. }
            | PaillierError::Malformed { culprit, .. }
            | PaillierError::WrongSum { culprit, .. }
            | PaillierError::BadPartial { culprit, .. } => Some(*culprit),
            _ => None,
        }
    }
}

/// Encoded size of an update of `len` values.
pub fn update_bytes(pk: &PublicKey, packer: &Packer, len: usize) -> usize {
    6 + packer.plaintexts_for(len) * pk.ciphertext_len()
}

/// Member side of phase 1: quantize, pack, encrypt (randomness from `pool`) and sign `values`.
/// Returns the message and the encryption details (quantized values, clipping).
#[allow(clippy::too_many_arguments)]
pub fn encrypt_update<R: RngCore + CryptoRng>(
    params: &RoundParams,
    keys: &Keys,
    packer: &Packer,
    pool: &Pool,
    member: u32,
    key: &identity::SecretKey,
    values: &[f32],
    rng: &mut R,
) -> Result<(Signed<EncryptedUpdate>, paillier::Encrypted), PaillierError> {
    let enc = paillier::encrypt_packed(&keys.public, packer, values, pool, rng)?;
    let body = EncryptedUpdate {
        round: params.round,
        member,
        clipped: enc.clipped as u64,
        ciphertexts: paillier::encode_ciphertexts(&keys.public, &enc.ciphertexts),
    };
    Ok((Signed::sign(params.genesis, body, key), enc))
}

/// Phase 2: collect signed updates.
#[derive(Debug)]
pub struct Collect<'a> {
    params: &'a RoundParams,
    keys: &'a Keys,
    packer: &'a Packer,
    updates: BTreeMap<u32, (Hash, u64, Vec<Ciphertext>)>,
}

impl<'a> Collect<'a> {
    pub fn new(params: &'a RoundParams, keys: &'a Keys, packer: &'a Packer) -> Self {
        Collect {
            params,
            keys,
            packer,
            updates: BTreeMap::new(),
        }
    }

    /// Check and keep one update: signature, round, membership, exact size, every ciphertext in
    /// range. A second update from the same member is rejected.
    pub fn add_update(&mut self, msg: &Signed<EncryptedUpdate>) -> Result<(), PaillierError> {
        let body = msg.verify(self.params)?;
        let culprit = body.member;
        if self.updates.contains_key(&culprit) {
            return Err(PaillierError::Duplicate {
                culprit,
                what: "update",
            });
        }
        let expected = update_bytes(&self.keys.public, self.packer, self.params.len);
        if body.ciphertexts.len() != expected {
            return Err(PaillierError::Size {
                culprit,
                found: body.ciphertexts.len(),
                expected,
            });
        }
        let count = self.packer.plaintexts_for(self.params.len);
        let cts = paillier::decode_ciphertexts(&self.keys.public, &body.ciphertexts, count)
            .map_err(|source| PaillierError::Malformed {
                culprit,
                what: "update",
                source,
            })?;
        if cts.len() != count {
            return Err(PaillierError::Size {
                culprit,
                found: body.ciphertexts.len(),
                expected,
            });
        }
        self.updates
            .insert(culprit, (body.hash(), body.clipped, cts));
        Ok(())
    }

    /// Members whose update is in.
    pub fn contributors(&self) -> Vec<u32> {
        self.updates.keys().copied().collect()
    }

    /// Form the product of exactly the updates of `contributors` (e.g. the set the coordinator
    /// announced), so that every member decrypts the same sum; other updates are left out (and
    /// stay here: [`Collect::close_group`] may still use them). A listed member whose update this
    /// collector lacks is an error (fetch it, then retry).
    pub fn close_for(&self, contributors: &[u32]) -> Result<Decrypt<'a>, PaillierError> {
        let wanted: BTreeSet<u32> = contributors.iter().copied().collect();
        self.product(&wanted, self.params.min_contributors.max(1))
    }

    /// Form the product of all collected updates (all cores): the encryption of their sum.
    pub fn close(self) -> Result<Decrypt<'a>, PaillierError> {
        let all: BTreeSet<u32> = self.updates.keys().copied().collect();
        self.product(&all, self.params.min_contributors.max(1))
    }

    /// Form the product of one group's updates (mode `paillier` with groups, or the fallback of a
    /// sum that did not decode, see [`round_groups`]). Refused unless the group has at least
    /// `size` members (and at least 2): no member decrypts a product of fewer. A listed member
    /// whose update this collector lacks is an error.
    pub fn close_group(&self, members: &[u32], size: usize) -> Result<Decrypt<'a>, PaillierError> {
        let wanted: BTreeSet<u32> = members.iter().copied().collect();
        self.product(&wanted, size.max(2))
    }

    /// The product of the updates of `wanted`, refused with fewer than `need`.
    fn product(&self, wanted: &BTreeSet<u32>, need: usize) -> Result<Decrypt<'a>, PaillierError> {
        if let Some(&member) = wanted.iter().find(|m| !self.updates.contains_key(m)) {
            return Err(PaillierError::MissingUpdate { member });
        }
        if wanted.len() < need {
            return Err(PaillierError::TooFewUpdates {
                have: wanted.len(),
                need,
            });
        }
        let chosen: Vec<_> = self
            .updates
            .iter()
            .filter(|(m, _)| wanted.contains(m))
            .collect();
        let vectors: Vec<&[Ciphertext]> =
            chosen.iter().map(|(_, (_, _, c))| c.as_slice()).collect();
        let sum = paillier::sum(&self.keys.public, &vectors).expect("equal lengths were checked");
        let sum_bytes = paillier::encode_ciphertexts(&self.keys.public, &sum);
        let sum_hash = Hash::of("fedmesh paillier v1 sum ciphertexts", &sum_bytes);
        let update_hashes = chosen.iter().map(|(m, (h, _, _))| (**m, *h)).collect();
        let clipped = chosen.iter().map(|(_, (_, c, _))| *c).sum();
        let context = proof_context(self.params, sum_hash);
        Ok(Decrypt {
            params: self.params,
            keys: self.keys,
            packer: self.packer,
            sum,
            sum_hash,
            update_hashes,
            clipped,
            context,
            good: BTreeMap::new(),
            rejected: Vec::new(),
        })
    }
}

/// The size of the groups of a paillier round's group sums: `[spec.robust] group_size` if set,
/// else (the fallback of a sum that does not decode) `max(3, ⌈min_contributors / 2⌉)`: at least
/// three members, so that no revealed sum is one member's update or a pair's (where each learns
/// the other's), and about half the decryption threshold, so that a network of n members has
/// about n/4 groups with the default threshold (n/2 + 1) — at least two from 6 members on. A
/// smaller network, whose sum does not decode, has one group: the round closes with the model
/// unchanged and that group flagged.
pub fn group_size(configured: usize, min_contributors: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        min_contributors.div_ceil(2).max(3)
    }
}

/// The groups whose sums a paillier round decrypts: the round's random groups
/// ([`crate::robust::groups::draw`] from the chain head `head` over the `active` members, the
/// same for every attempt of the round), each cut to the members whose update is in the
/// round's sum (`contributors`), small ones merged ([`crate::robust::groups::settle`]). They
/// partition `contributors` into groups of at least `size`, so any sum formed from the group
/// sums and the whole sum covers at least `size` members, provided every contributor is an
/// active member (the collector accepts no other). Empty when fewer than `size` members
/// contributed.
pub fn round_groups(
    head: &Hash,
    round: u64,
    active: &[u32],
    contributors: &[u32],
    size: usize,
) -> Vec<Vec<u32>> {
    let Ok(drawn) = crate::robust::groups::draw(head, round, active, size) else {
        return Vec::new();
    };
    let live: BTreeSet<u32> = contributors.iter().copied().collect();
    crate::robust::groups::settle(&drawn, &live, size)
}

/// What every proof of the round is bound to: network, round and the sum being decrypted.
fn proof_context(params: &RoundParams, sum_hash: Hash) -> Vec<u8> {
    let mut out = Vec::with_capacity(72);
    out.extend_from_slice(params.genesis.as_bytes());
    out.extend_from_slice(&params.round.to_le_bytes());
    out.extend_from_slice(sum_hash.as_bytes());
    out
}

/// Phases 3–4: the encrypted sum, awaiting partial decryptions. Cloning it lets a member decrypt
/// ([`Decrypt::finish`]) and still check partials that arrive later.
#[derive(Debug, Clone)]
pub struct Decrypt<'a> {
    params: &'a RoundParams,
    keys: &'a Keys,
    packer: &'a Packer,
    sum: Vec<Ciphertext>,
    sum_hash: Hash,
    update_hashes: BTreeMap<u32, Hash>,
    clipped: u64,
    context: Vec<u8>,
    good: BTreeMap<u32, PartialDecryption>,
    rejected: Vec<u32>,
}

impl Decrypt<'_> {
    /// Hash of the encrypted sum: partials must name it.
    pub fn sum_hash(&self) -> Hash {
        self.sum_hash
    }

    /// The encrypted sum.
    pub fn sum(&self) -> &[Ciphertext] {
        &self.sum
    }

    /// This member's partial decryption of the sum, with proof, signed.
    pub fn partial<R: RngCore + CryptoRng>(
        &self,
        share: &KeyShare,
        member: u32,
        key: &identity::SecretKey,
        rng: &mut R,
    ) -> Result<Signed<Partial>, PaillierError> {
        let p = share.decrypt_share(
            &self.keys.public,
            &self.keys.verification,
            &self.sum,
            &self.context,
            rng,
        )?;
        let body = Partial {
            round: self.params.round,
            member,
            sum_hash: self.sum_hash,
            partial: p.to_bytes(&self.keys.public),
        };
        Ok(Signed::sign(self.params.genesis, body, key))
    }

    /// Check one partial: signature, the sum it names, its encoding, that it is the sender's own
    /// share, and its proof. A partial with a wrong proof is rejected, its sender recorded in
    /// [`Summary::rejected`] and named in the error. Returns how many good partials are in.
    pub fn add_partial(&mut self, msg: &Signed<Partial>) -> Result<usize, PaillierError> {
        let body = msg.verify(self.params)?;
        let culprit = body.member;
        if self.good.contains_key(&culprit) || self.rejected.contains(&culprit) {
            return Err(PaillierError::Duplicate {
                culprit,
                what: "partial decryption",
            });
        }
        if body.sum_hash != self.sum_hash {
            return Err(PaillierError::WrongSum {
                culprit,
                found: body.sum_hash,
                expected: self.sum_hash,
            });
        }
        let (pk, vks) = (&self.keys.public, &self.keys.verification);
        let partial = PartialDecryption::from_bytes(pk, vks, &body.partial, self.sum.len())
            .map_err(|source| PaillierError::Malformed {
                culprit,
                what: "partial decryption",
                source,
            })?;
        let outcome = if partial.index() != culprit {
            // A signed message carrying another member's share index: as bad as a wrong proof.
            Err(paillier::VerifyError::BadProof { culprit })
        } else {
            vks.verify(pk, &self.sum, &partial, &self.context)
        };
        if let Err(source) = outcome {
            self.rejected.push(culprit);
            return Err(PaillierError::BadPartial { culprit, source });
        }
        self.good.insert(culprit, partial);
        Ok(self.good.len())
    }

    /// Good partials so far.
    pub fn good(&self) -> usize {
        self.good.len()
    }

    /// True once `threshold` good partials are in.
    pub fn ready(&self) -> bool {
        self.good.len() >= self.keys.verification.threshold()
    }

    /// Decrypt the sum with the first `threshold` good partials (by member index).
    pub fn finish(self) -> Result<Outcome, PaillierError> {
        let sum = self.decode()?;
        Ok(Outcome {
            sum,
            summary: self.summary()?,
        })
    }

    /// Decrypt and unpack the sum with the first `threshold` good partials (by member index).
    /// [`PaillierError::Pack`] means the plaintext is no sum of in-range updates: some
    /// contributor's ciphertexts encrypt values outside the packing range.
    pub fn decode(&self) -> Result<Vec<i64>, PaillierError> {
        let chosen = self.chosen()?;
        let plain = paillier::combine(&self.keys.public, &self.keys.verification, &chosen)?;
        let contributors = self.update_hashes.len();
        Ok(self
            .packer
            .unpack_sum(&plain, self.params.len, contributors)?)
    }

    /// The record of this sum (who contributed, who decrypts it, who was rejected) once
    /// `threshold` good partials are in, whether or not it decodes.
    pub fn summary(&self) -> Result<Summary, PaillierError> {
        let decryptors = self
            .chosen()?
            .iter()
            .map(PartialDecryption::index)
            .collect();
        Ok(Summary {
            round: self.params.round,
            update_hashes: self.update_hashes.iter().map(|(m, h)| (*m, *h)).collect(),
            sum_hash: self.sum_hash,
            decryptors,
            rejected: self.rejected.clone(),
            clipped: self.clipped,
        })
    }

    /// The record of this sum before (or without) its decryption: who is in it, its hash, no
    /// decryptors (mode `paillier` with groups decrypts only the groups' sums).
    pub fn commitment(&self) -> Summary {
        Summary {
            round: self.params.round,
            update_hashes: self.update_hashes.iter().map(|(m, h)| (*m, *h)).collect(),
            sum_hash: self.sum_hash,
            decryptors: Vec::new(),
            rejected: Vec::new(),
            clipped: self.clipped,
        }
    }

    /// The first `threshold` good partials, by member index.
    fn chosen(&self) -> Result<Vec<PartialDecryption>, PaillierError> {
        let need = self.keys.verification.threshold();
        if self.good.len() < need {
            return Err(PaillierError::TooFewPartials {
                have: self.good.len(),
                need,
            });
        }
        Ok(self.good.values().take(need).cloned().collect())
    }

    /// Members whose partial for this sum verified.
    pub fn good_members(&self) -> impl Iterator<Item = u32> + '_ {
        self.good.keys().copied()
    }
}

/// The decrypted round.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Per value, the sum of the contributors' quantized values ([`Packer::dequantize`] turns it
    /// back into floats).
    pub sum: Vec<i64>,
    pub summary: Summary,
}

/// What the round record keeps of a paillier round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub round: u64,
    /// Each contributor and the hash of its update's ciphertexts ([`EncryptedUpdate::hash`]).
    pub update_hashes: Vec<(u32, Hash)>,
    /// Hash of the encrypted sum (the product of the updates).
    pub sum_hash: Hash,
    /// The members whose partials decrypted the sum.
    pub decryptors: Vec<u32>,
    /// Members whose partial decryption was rejected (wrong proof).
    pub rejected: Vec<u32>,
    /// Values clipped by all contributors together (self-reported).
    pub clipped: u64,
}

#[cfg(test)]
mod tests;
