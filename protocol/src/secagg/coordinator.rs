//! The coordinator's side: collect each phase's messages (checking every one and naming the
//! culprit of a bad one), decide who goes on, relay, and finally remove the masks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::{
    apply_pair, pair_seed, quant, Advertise, Consistency, ConsistencyList, KeyList, MaskedInput,
    Outcome, RoundParams, SecaggError, Shares, SharesFor, Signed, Survivors, Unmask,
};
use crate::crypto::secagg::{agree, mask, shamir};
use crate::crypto::Hash;

/// Phase 0: collecting advertisements.
pub struct CollectKeys {
    params: Arc<RoundParams>,
    got: BTreeMap<u32, Signed<Advertise>>,
}

/// Phase 1: collecting sealed shares.
pub struct CollectShares {
    params: Arc<RoundParams>,
    keys: BTreeMap<u32, Advertise>,
    list_hash: Hash,
    got: BTreeMap<u32, Signed<Shares>>,
}

/// Phase 2: collecting masked inputs.
pub struct CollectMasked {
    params: Arc<RoundParams>,
    keys: BTreeMap<u32, Advertise>,
    u2: BTreeSet<u32>,
    /// Who sent input (U3 so far), and the running sum of their masked inputs.
    got: BTreeSet<u32>,
    sum: Vec<u64>,
}

/// Phase 3: collecting consistency signatures.
pub struct CollectConsistency {
    params: Arc<RoundParams>,
    keys: BTreeMap<u32, Advertise>,
    u2: BTreeSet<u32>,
    inputs: BTreeSet<u32>,
    sum: Vec<u64>,
    got: BTreeMap<u32, Signed<Consistency>>,
}

/// Phase 4: collecting unmasking shares.
pub struct CollectUnmask {
    params: Arc<RoundParams>,
    keys: BTreeMap<u32, Advertise>,
    u2: BTreeSet<u32>,
    inputs: BTreeSet<u32>,
    sum: Vec<u64>,
    signers: BTreeSet<u32>,
    /// Per member whose secret is being recovered: shares by holder.
    self_seeds: BTreeMap<u32, Vec<shamir::Share>>,
    mask_keys: BTreeMap<u32, Vec<shamir::Share>>,
    unmasked: BTreeSet<u32>,
}

fn duplicate(culprit: u32, what: &'static str) -> SecaggError {
    SecaggError::Duplicate { culprit, what }
}

fn at_least(phase: &'static str, have: usize, need: usize) -> Result<(), SecaggError> {
    if have < need {
        return Err(SecaggError::TooFew { phase, have, need });
    }
    Ok(())
}

impl CollectKeys {
    pub fn new(params: Arc<RoundParams>) -> Result<CollectKeys, SecaggError> {
        params.validate()?;
        Ok(CollectKeys {
            params,
            got: BTreeMap::new(),
        })
    }

    pub fn add(&mut self, msg: Signed<Advertise>) -> Result<(), SecaggError> {
        let a = msg.verify(&self.params)?;
        if self.got.contains_key(&a.member) {
            return Err(duplicate(a.member, "advertise"));
        }
        self.got.insert(a.member, msg);
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.got.len()
    }

    /// Close phase 0 (U1 = who advertised): the key list to send every member.
    pub fn finish(self) -> Result<(CollectShares, KeyList), SecaggError> {
        at_least("advertise keys", self.got.len(), self.params.threshold)?;
        let list = KeyList {
            round: self.params.round,
            keys: self.got.values().cloned().collect(),
        };
        let keys = self.got.into_iter().map(|(m, s)| (m, s.body)).collect();
        let next = CollectShares {
            params: self.params,
            keys,
            list_hash: list.hash(),
            got: BTreeMap::new(),
        };
        Ok((next, list))
    }
}

impl CollectShares {
    pub fn add(&mut self, msg: Signed<Shares>) -> Result<(), SecaggError> {
        let s = msg.verify(&self.params)?;
        let culprit = s.member;
        if !self.keys.contains_key(&culprit) {
            return Err(SecaggError::Invalid {
                culprit,
                reason: "sent shares without advertising keys".into(),
            });
        }
        if s.key_list != self.list_hash {
            return Err(SecaggError::Invalid {
                culprit,
                reason: "worked from another key list".into(),
            });
        }
        let neighbours = self.params.graph.neighbours(culprit);
        let mut recipients = BTreeSet::new();
        for share in &s.shares {
            if !neighbours.contains(&share.recipient)
                || !self.keys.contains_key(&share.recipient)
                || !recipients.insert(share.recipient)
            {
                return Err(SecaggError::Invalid {
                    culprit,
                    reason: format!("share for member {} is misaddressed", share.recipient),
                });
            }
        }
        if self.got.contains_key(&culprit) {
            return Err(duplicate(culprit, "shares"));
        }
        self.got.insert(culprit, msg);
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.got.len()
    }

    /// Close phase 1 (U2 = who shared): what to relay to each member of U2.
    pub fn finish(self) -> Result<(CollectMasked, BTreeMap<u32, SharesFor>), SecaggError> {
        at_least("share keys", self.got.len(), self.params.threshold)?;
        let u2: BTreeSet<u32> = self.got.keys().copied().collect();
        let round = self.params.round;
        let mut out: BTreeMap<u32, SharesFor> = u2
            .iter()
            .map(|m| {
                (
                    *m,
                    SharesFor {
                        round,
                        recipient: *m,
                        shares: Vec::new(),
                    },
                )
            })
            .collect();
        for (sender, msg) in self.got {
            for share in msg.body.shares {
                if let Some(r) = out.get_mut(&share.recipient) {
                    r.shares.push((sender, share.sealed));
                }
            }
        }
        let len = self.params.len;
        let next = CollectMasked {
            params: self.params,
            keys: self.keys,
            u2,
            got: BTreeSet::new(),
            sum: vec![0; len],
        };
        Ok((next, out))
    }
}

impl CollectMasked {
    pub fn add(&mut self, msg: Signed<MaskedInput>) -> Result<(), SecaggError> {
        let m = msg.verify(&self.params)?;
        let culprit = m.member;
        if !self.u2.contains(&culprit) {
            return Err(SecaggError::Invalid {
                culprit,
                reason: "sent input without sharing keys".into(),
            });
        }
        if self.got.contains(&culprit) {
            return Err(duplicate(culprit, "masked input"));
        }
        quant::add_packed(&mut self.sum, &m.values, self.params.bits).map_err(|e| {
            SecaggError::Invalid {
                culprit,
                reason: e.to_string(),
            }
        })?;
        self.got.insert(culprit);
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.got.len()
    }

    /// Close phase 2 (U3 = who sent input): the survivor set to announce.
    pub fn finish(self) -> Result<(CollectConsistency, Survivors), SecaggError> {
        at_least("masked input", self.got.len(), self.params.threshold)?;
        let survivors = Survivors {
            round: self.params.round,
            members: self.got.iter().copied().collect(),
        };
        let next = CollectConsistency {
            params: self.params,
            keys: self.keys,
            u2: self.u2,
            inputs: self.got,
            sum: self.sum,
            got: BTreeMap::new(),
        };
        Ok((next, survivors))
    }
}

impl CollectConsistency {
    pub fn add(&mut self, msg: Signed<Consistency>) -> Result<(), SecaggError> {
        let c = msg.verify(&self.params)?;
        let culprit = c.member;
        if !self.inputs.contains(&culprit) {
            return Err(SecaggError::Invalid {
                culprit,
                reason: "signed the survivor set but sent no input".into(),
            });
        }
        if c.survivors.iter().ne(self.inputs.iter()) {
            return Err(SecaggError::Invalid {
                culprit,
                reason: "signed another survivor set".into(),
            });
        }
        if self.got.contains_key(&culprit) {
            return Err(duplicate(culprit, "consistency"));
        }
        self.got.insert(culprit, msg);
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.got.len()
    }

    /// Close phase 3 (U4 = who signed): the signatures to relay.
    pub fn finish(self) -> Result<(CollectUnmask, ConsistencyList), SecaggError> {
        at_least("consistency check", self.got.len(), self.params.threshold)?;
        let list = ConsistencyList {
            round: self.params.round,
            survivors: self.inputs.iter().copied().collect(),
            signatures: self.got.values().cloned().collect(),
        };
        let next = CollectUnmask {
            params: self.params,
            keys: self.keys,
            u2: self.u2,
            signers: self.got.keys().copied().collect(),
            inputs: self.inputs,
            sum: self.sum,
            self_seeds: BTreeMap::new(),
            mask_keys: BTreeMap::new(),
            unmasked: BTreeSet::new(),
        };
        Ok((next, list))
    }
}

impl CollectUnmask {
    pub fn add(&mut self, msg: Signed<Unmask>) -> Result<(), SecaggError> {
        let u = msg.verify(&self.params)?;
        let culprit = u.member;
        if !self.signers.contains(&culprit) {
            return Err(SecaggError::Invalid {
                culprit,
                reason: "unmasking without having signed the survivor set".into(),
            });
        }
        if self.unmasked.contains(&culprit) {
            return Err(duplicate(culprit, "unmask"));
        }
        let neighbours = self.params.graph.neighbours(culprit);
        let x = culprit + 1;
        let mut seen = BTreeSet::new();
        for (v, share) in u.self_seed_shares.iter().chain(&u.mask_key_shares) {
            let holder = *v == culprit || neighbours.contains(v);
            if !seen.insert(*v) || !holder || !self.u2.contains(v) || share.x() != x {
                return Err(SecaggError::Invalid {
                    culprit,
                    reason: format!("bad or repeated share of member {v}"),
                });
            }
        }
        for (v, _) in &u.self_seed_shares {
            if !self.inputs.contains(v) {
                return Err(SecaggError::Invalid {
                    culprit,
                    reason: format!("self-seed share of member {v}, who sent no input"),
                });
            }
        }
        for (v, _) in &u.mask_key_shares {
            if self.inputs.contains(v) {
                // Revealing a survivor's mask key would unmask its input: an honest member never does.
                return Err(SecaggError::Invalid {
                    culprit,
                    reason: format!("mask-key share of survivor {v}"),
                });
            }
        }
        for (v, share) in &u.self_seed_shares {
            self.self_seeds.entry(*v).or_default().push(share.clone());
        }
        for (v, share) in &u.mask_key_shares {
            self.mask_keys.entry(*v).or_default().push(share.clone());
        }
        self.unmasked.insert(culprit);
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.unmasked.len()
    }

    /// Close phase 4 (U5 = who unmasked): recover the self seeds of U3 and the mask keys of
    /// U2 \ U3, and remove every mask from the sum.
    pub fn finish(self) -> Result<Outcome, SecaggError> {
        let p = &self.params;
        at_least("unmask", self.unmasked.len(), p.threshold)?;
        let mut sum = self.sum;
        let empty = Vec::new();
        for u in &self.inputs {
            let shares = self.self_seeds.get(u).unwrap_or(&empty);
            let secret =
                shamir::combine(shares, p.threshold).map_err(|e| SecaggError::Recovery {
                    member: *u,
                    what: "self-mask seed",
                    reason: e.to_string(),
                })?;
            let seed = mask::Seed::from_bytes(&secret);
            mask::sub_mask(&mut sum, &seed, p.stream(mask::Purpose::SelfMask), p.bits)
                .map_err(|e| SecaggError::Params(e.to_string()))?;
        }
        let dropped: Vec<u32> = self
            .u2
            .iter()
            .copied()
            .filter(|v| !self.inputs.contains(v))
            .collect();
        for v in &dropped {
            let shares = self.mask_keys.get(v).unwrap_or(&empty);
            let secret =
                shamir::combine(shares, p.threshold).map_err(|e| SecaggError::Recovery {
                    member: *v,
                    what: "mask key",
                    reason: e.to_string(),
                })?;
            let pair = agree::KeyPair::from_secret_bytes(&secret);
            if pair.public() != self.keys[v].mask_key {
                return Err(SecaggError::Recovery {
                    member: *v,
                    what: "mask key",
                    reason:
                        "the recovered key does not match the advertised one: a share is corrupt"
                            .into(),
                });
            }
            for u in p
                .graph
                .neighbours(*v)
                .iter()
                .filter(|u| self.inputs.contains(u))
            {
                // u masked with v as u would: undo that from v's side of the pair.
                let seed = pair_seed(p, &pair, *v, *u, &self.keys[u].mask_key)?;
                apply_pair(&mut sum, p, &seed, *u, *v, true);
            }
        }
        let survivors: Vec<u32> = self.inputs.iter().copied().collect();
        Ok(Outcome {
            sum,
            dropped_before_sharing: self
                .keys
                .keys()
                .copied()
                .filter(|m| !self.u2.contains(m))
                .collect(),
            dropped_after_sharing: dropped,
            dropped_while_unmasking: survivors
                .iter()
                .copied()
                .filter(|m| !self.unmasked.contains(m))
                .collect(),
            survivors,
        })
    }
}
