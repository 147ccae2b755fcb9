//! A member's side of a secure-aggregation round, one typed state per phase.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::{CryptoRng, RngCore};

use super::{
    pair_seed, share_header, x_of, Advertise, ConsistencyList, KeyList, MaskedInput, RoundParams,
    SealedShare, SecaggError, SharePlaintext, Shares, SharesFor, Signed, Survivors, Unmask,
};
use super::{quant, Consistency};
use crate::crypto::identity;
use crate::crypto::secagg::{aead, agree, kdf, mask, shamir};

/// Before the round: nothing sent yet.
pub struct Start {
    params: Arc<RoundParams>,
    me: u32,
}

/// Phase 0 done: keys advertised, waiting for the key list.
pub struct AwaitKeys {
    params: Arc<RoundParams>,
    me: u32,
    enc: agree::KeyPair,
    mask: agree::KeyPair,
}

/// Phase 1 done: shares sent, waiting for the shares addressed to this member.
pub struct AwaitShares {
    params: Arc<RoundParams>,
    me: u32,
    enc: agree::KeyPair,
    mask: agree::KeyPair,
    self_seed: mask::Seed,
    /// Neighbours' advertised keys (U1 ∩ N(me)).
    keys: BTreeMap<u32, Advertise>,
    /// This member's own shares of its two secrets (it is one of their holders).
    own: (shamir::Share, shamir::Share),
}

/// Phase 2 done: masked input sent, waiting for the survivor set.
pub struct AwaitSurvivors {
    params: Arc<RoundParams>,
    me: u32,
    /// Shares this member holds, by the member they belong to ((U2 ∩ N(me)) ∪ {me}).
    held: BTreeMap<u32, (shamir::Share, shamir::Share)>,
}

/// Phase 3 done: consistency signature sent, waiting for the signature list.
pub struct AwaitConsistency {
    params: Arc<RoundParams>,
    me: u32,
    held: BTreeMap<u32, (shamir::Share, shamir::Share)>,
    survivors: Vec<u32>,
}

impl Start {
    pub fn new(params: Arc<RoundParams>, me: u32) -> Result<Start, SecaggError> {
        params.validate()?;
        params.key(me)?;
        Ok(Start { params, me })
    }

    /// Phase 0: draw two fresh key pairs and sign their public keys.
    pub fn advertise<R: RngCore + CryptoRng>(
        self,
        identity: &identity::SecretKey,
        rng: &mut R,
    ) -> (AwaitKeys, Signed<Advertise>) {
        let enc = agree::KeyPair::generate(rng);
        let mask = agree::KeyPair::generate(rng);
        let body = Advertise {
            round: self.params.round,
            member: self.me,
            enc_key: enc.public(),
            mask_key: mask.public(),
        };
        let msg = Signed::sign(self.params.genesis, body, identity);
        (
            AwaitKeys {
                params: self.params,
                me: self.me,
                enc,
                mask,
            },
            msg,
        )
    }
}

impl AwaitKeys {
    /// Phase 1: check every advertisement the coordinator relays, then Shamir-share the mask key
    /// and a fresh self-mask seed among the neighbours that advertised, sealed per recipient.
    pub fn share_keys<R: RngCore + CryptoRng>(
        self,
        list: &KeyList,
        identity: &identity::SecretKey,
        rng: &mut R,
    ) -> Result<(AwaitShares, Signed<Shares>), SecaggError> {
        let p = &self.params;
        if list.round != p.round {
            return Err(SecaggError::Coordinator(format!(
                "key list for round {}",
                list.round
            )));
        }
        let mut seen = BTreeSet::new();
        let mut publics = BTreeSet::new();
        let mut keys = BTreeMap::new();
        let neighbours = p.graph.neighbours(self.me);
        for signed in &list.keys {
            let a = &signed.body;
            if a.round != p.round || !p.members.contains_key(&a.member) {
                return Err(SecaggError::Coordinator(format!(
                    "relayed an advertisement of member {} for another round or network",
                    a.member
                )));
            }
            if !seen.insert(a.member) {
                return Err(SecaggError::Coordinator(format!(
                    "member {} appears twice in the key list",
                    a.member
                )));
            }
            let used = a.member == self.me || neighbours.contains(&a.member);
            if !used {
                continue;
            }
            // Only the keys this member uses need checking: its own and its neighbours'.
            signed.verify(p).map_err(|e| {
                SecaggError::Coordinator(format!(
                    "relayed an advertisement that does not verify: {e}"
                ))
            })?;
            if !publics.insert(a.enc_key) || !publics.insert(a.mask_key) {
                return Err(SecaggError::Invalid {
                    culprit: a.member,
                    reason: "reused a public key".into(),
                });
            }
            if a.member == self.me {
                if a.enc_key != self.enc.public() || a.mask_key != self.mask.public() {
                    return Err(SecaggError::Coordinator(
                        "the key list carries other keys for this member".into(),
                    ));
                }
            } else {
                keys.insert(a.member, a.clone());
            }
        }
        if !seen.contains(&self.me) {
            return Err(SecaggError::Coordinator(
                "this member is missing from the key list".into(),
            ));
        }
        if keys.len() + 1 < p.threshold {
            return Err(SecaggError::TooFew {
                phase: "advertise keys (neighbours)",
                have: keys.len() + 1,
                need: p.threshold,
            });
        }
        let self_seed = mask::Seed::random(rng);
        // Holders: the neighbours that advertised, and this member itself (last).
        let xs: Vec<u32> = keys
            .keys()
            .map(|m| x_of(*m))
            .chain([x_of(self.me)])
            .collect();
        let split = |secret: &[u8; 32], rng: &mut R| {
            shamir::split(secret, p.threshold, &xs, rng)
                .map_err(|e| SecaggError::Params(e.to_string()))
        };
        let mut mask_shares = split(&self.mask.secret_bytes(), rng)?;
        let mut seed_shares = split(self_seed.as_bytes(), rng)?;
        let own = (
            mask_shares.pop().expect("one share per holder"),
            seed_shares.pop().expect("one share per holder"),
        );
        let mut shares = Vec::with_capacity(keys.len());
        for ((v, a), (mk, ss)) in keys.iter().zip(mask_shares.into_iter().zip(seed_shares)) {
            let secret = self
                .enc
                .agree(&a.enc_key)
                .map_err(|e| SecaggError::Invalid {
                    culprit: *v,
                    reason: e.to_string(),
                })?;
            let key = kdf::derive(&secret, kdf::Purpose::ShareKey, p.round, self.me, *v);
            let plain = zeroize::Zeroizing::new(crate::codec::encode(&SharePlaintext {
                sender: self.me,
                recipient: *v,
                mask_key: mk,
                self_seed: ss,
            }));
            let sealed = aead::seal(&key, &share_header(p.round, self.me, *v), &plain, rng)
                .map_err(|e| SecaggError::Params(e.to_string()))?;
            shares.push(SealedShare {
                recipient: *v,
                sealed,
            });
        }
        let body = Shares {
            round: p.round,
            member: self.me,
            key_list: list.hash(),
            shares,
        };
        let msg = Signed::sign(p.genesis, body, identity);
        let next = AwaitShares {
            params: self.params,
            me: self.me,
            enc: self.enc,
            mask: self.mask,
            self_seed,
            keys,
            own,
        };
        Ok((next, msg))
    }
}

impl AwaitShares {
    /// Phase 2: open the shares addressed to this member; mask `input` (values in Z_(2^bits)) with
    /// the self-mask and the pairwise masks of the neighbours that shared (U2 ∩ N(me)).
    pub fn masked_input(
        self,
        relayed: &SharesFor,
        input: &[u64],
        identity: &identity::SecretKey,
    ) -> Result<(AwaitSurvivors, Signed<MaskedInput>), SecaggError> {
        let p = &self.params;
        if relayed.round != p.round || relayed.recipient != self.me {
            return Err(SecaggError::Coordinator(
                "shares relayed for another round or member".into(),
            ));
        }
        if input.len() != p.len {
            return Err(SecaggError::Params(format!(
                "input has {} values, the round has {}",
                input.len(),
                p.len
            )));
        }
        let limit = if p.bits == 64 {
            u64::MAX
        } else {
            (1u64 << p.bits) - 1
        };
        if let Some(i) = input.iter().position(|v| *v > limit) {
            return Err(SecaggError::Params(format!(
                "input value {i} does not fit the ring of 2^{} elements",
                p.bits
            )));
        }
        let mut held = BTreeMap::new();
        for (sender, sealed) in &relayed.shares {
            let a = self.keys.get(sender).ok_or_else(|| {
                SecaggError::Coordinator(format!(
                    "relayed shares from member {sender}, not a neighbour in the key list"
                ))
            })?;
            if held.contains_key(sender) {
                return Err(SecaggError::Coordinator(format!(
                    "relayed member {sender}'s shares twice"
                )));
            }
            let secret = self
                .enc
                .agree(&a.enc_key)
                .map_err(|e| SecaggError::Invalid {
                    culprit: *sender,
                    reason: e.to_string(),
                })?;
            let key = kdf::derive(&secret, kdf::Purpose::ShareKey, p.round, self.me, *sender);
            let plain = aead::open(&key, &share_header(p.round, *sender, self.me), sealed)
                .map_err(|e| SecaggError::Invalid {
                    culprit: *sender,
                    reason: e.to_string(),
                })?;
            let s: SharePlaintext =
                crate::codec::decode(&plain, 1024).map_err(|e| SecaggError::Invalid {
                    culprit: *sender,
                    reason: format!("share does not decode: {e}"),
                })?;
            if s.sender != *sender
                || s.recipient != self.me
                || s.mask_key.x() != x_of(self.me)
                || s.self_seed.x() != x_of(self.me)
            {
                return Err(SecaggError::Invalid {
                    culprit: *sender,
                    reason: "share addressed to someone else".into(),
                });
            }
            held.insert(*sender, (s.mask_key.clone(), s.self_seed.clone()));
        }
        if held.len() + 1 < p.threshold {
            return Err(SecaggError::TooFew {
                phase: "share keys (neighbours)",
                have: held.len() + 1,
                need: p.threshold,
            });
        }
        let mut y = input.to_vec();
        mask::add_mask(
            &mut y,
            &self.self_seed,
            p.stream(mask::Purpose::SelfMask),
            p.bits,
        )
        .map_err(|e| SecaggError::Params(e.to_string()))?;
        for v in held.keys() {
            let seed = pair_seed(p, &self.mask, self.me, *v, &self.keys[v].mask_key)?;
            super::apply_pair(&mut y, p, &seed, self.me, *v, false);
        }
        held.insert(self.me, self.own.clone());
        let body = MaskedInput {
            round: p.round,
            member: self.me,
            values: quant::pack(&y, p.bits),
        };
        let msg = Signed::sign(p.genesis, body, identity);
        Ok((
            AwaitSurvivors {
                params: self.params,
                me: self.me,
                held,
            },
            msg,
        ))
    }
}

impl AwaitSurvivors {
    /// Phase 3: sign the survivor set (U3) the coordinator announced, after checking that it holds
    /// at least `threshold` members including this one.
    pub fn consistency(
        self,
        survivors: &Survivors,
        identity: &identity::SecretKey,
    ) -> Result<(AwaitConsistency, Signed<Consistency>), SecaggError> {
        let p = &self.params;
        let s = &survivors.members;
        if survivors.round != p.round
            || s.windows(2).any(|w| w[0] >= w[1])
            || s.iter().any(|m| !p.members.contains_key(m))
        {
            return Err(SecaggError::Coordinator(
                "survivor set is not a sorted set of members of this round".into(),
            ));
        }
        if !s.contains(&self.me) {
            return Err(SecaggError::Coordinator(
                "this member sent input but is not in the survivor set".into(),
            ));
        }
        if s.len() < p.threshold {
            return Err(SecaggError::TooFew {
                phase: "masked input",
                have: s.len(),
                need: p.threshold,
            });
        }
        let body = Consistency {
            round: p.round,
            member: self.me,
            survivors: s.clone(),
        };
        let msg = Signed::sign(p.genesis, body, identity);
        Ok((
            AwaitConsistency {
                params: self.params,
                me: self.me,
                held: self.held,
                survivors: s.clone(),
            },
            msg,
        ))
    }
}

impl AwaitConsistency {
    /// Phase 4: once `threshold` members have signed the very survivor set this member was given,
    /// reveal shares of the survivors' self-mask seeds and of the dropped members' mask keys.
    pub fn unmask(
        self,
        list: &ConsistencyList,
        identity: &identity::SecretKey,
    ) -> Result<Signed<Unmask>, SecaggError> {
        let p = &self.params;
        if list.round != p.round || list.survivors != self.survivors {
            return Err(SecaggError::Coordinator(
                "the consistency list is for another survivor set than the one this member was given".into(),
            ));
        }
        // Every relayed signature must be on this very set (a different one is proof that the
        // coordinator showed members different sets); `threshold` of them must verify.
        for signed in &list.signatures {
            let c = &signed.body;
            if c.survivors != self.survivors {
                return Err(SecaggError::Coordinator(format!(
                    "member {} signed a different survivor set: the coordinator showed members different sets",
                    c.member
                )));
            }
            if !self.survivors.contains(&c.member) {
                return Err(SecaggError::Coordinator(format!(
                    "member {} signed but is not a survivor",
                    c.member
                )));
            }
        }
        let mut signers = BTreeSet::new();
        for signed in &list.signatures {
            if signers.len() >= p.threshold {
                break;
            }
            let c = signed.verify(p).map_err(|e| {
                SecaggError::Coordinator(format!(
                    "relayed a consistency signature that does not verify: {e}"
                ))
            })?;
            signers.insert(c.member);
        }
        if signers.len() < p.threshold {
            return Err(SecaggError::TooFew {
                phase: "consistency check",
                have: signers.len(),
                need: p.threshold,
            });
        }
        let mut self_seed_shares = Vec::new();
        let mut mask_key_shares = Vec::new();
        for (v, (mk, ss)) in &self.held {
            // One share per member, of one secret only: a survivor's self seed, or a dropped
            // member's mask key — both would reveal the survivor's input.
            if self.survivors.contains(v) {
                self_seed_shares.push((*v, ss.clone()));
            } else {
                mask_key_shares.push((*v, mk.clone()));
            }
        }
        let body = Unmask {
            round: p.round,
            member: self.me,
            self_seed_shares,
            mask_key_shares,
        };
        Ok(Signed::sign(p.genesis, body, identity))
    }
}
