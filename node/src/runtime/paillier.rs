//! Mode `paillier` in the node: one threshold-Paillier aggregation per round, driven by gossip.
//!
//! 1. While the member trains, its randomness pool is filled (`r^n mod n²` with uniform `r`: the
//!    plain DCR assumption; see [`fedmesh_crypto::paillier::Pool`]). After training it quantizes,
//!    packs and encrypts its weighted update (the weight is the vector's last element, as in mode
//!    `secagg`) and gossips it signed ([`PaillierMsg::Update`]).
//! 2. The coordinator of the attempt announces which updates make the sum, with the sum's hash
//!    ([`PaillierMsg::Close`]), once every active member's update is in or the update timeout
//!    expired; members whose update is not in are the round's dropouts.
//! 3. **Every member forms that product itself** from the updates it received and checks the
//!    announced hash before it decrypts. Forming the sum costs a fraction of a second, and it means
//!    no member ever decrypts a ciphertext it has not seen to be a sum of at least `threshold`
//!    signed updates: a coordinator cannot get one member's update decrypted by announcing it as
//!    "the sum". A member decrypts at most one sum per round; a later attempt's coordinator
//!    announces the same set again, so partials already made keep counting.
//! 4. Every member publishes its partial decryption with its proof ([`PaillierMsg::Partial`]) and
//!    checks everyone's. A partial with a bad proof is rejected and its sender named in the log
//!    and in the round record. The coordinator decrypts when every member answered, or when the
//!    phase timeout passed and `threshold` good partials are in; with fewer, the attempt fails and
//!    the next coordinator retries with the partials gossip already delivered.
//! 5. The coordinator proposes the record (ciphertext hashes per participant, the sum's hash, the
//!    decryptors, the rejected). Every member checks it by decrypting the same sum from partials it
//!    verified itself and approves if that gives the proposed model.
//!
//! **Group sums.** With `[spec.robust] group_size` > 0, step 4 decrypts instead the sums of the
//! round's random groups ([`pl::round_groups`]: drawn from the chain head, cut to the announced
//! contributors, each of at least g): every member forms each group's product itself, sends one
//! partial per group ([`PaillierMsg::GroupPartial`]) and checks everyone's; the rule and scores
//! work on the group means as in mode secagg. Without configured groups the same happens only
//! when the round's sum, decrypted, does not decode (an out-of-range update, which no check on
//! ciphertexts can catch): each member finds that out itself and moves to the groups' sums
//! (at least [`pl::group_size`] members each), and the round closes without the groups that do
//! not decode, which are flagged in the record. Every combination of the sums a round reveals
//! is a sum over whole groups.
//!
//! The heavy steps (pool fill, encryption, checking updates, forming the sum, partial decryption,
//! checking partials) run on one blocking worker per round, off the runtime task, each using all
//! cores through rayon.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;

use fedmesh_crypto::paillier::{pack::Packer, Pool};
use fedmesh_crypto::Hash;
use fedmesh_protocol::audit::{
    Contribution, GroupSum, GroupsSummary, Metrics, PaillierSummary, RoundRecord,
};
use fedmesh_protocol::genesis::{Genesis, Mode};
use fedmesh_protocol::model;
use fedmesh_protocol::paillier::{
    self as pl, Close, Collect, Decrypt, EncryptedUpdate, Keys, Outcome, Partial, RoundParams,
    Signed,
};
use fedmesh_protocol::robust::{self, suspicion};
use fedmesh_protocol::round::Round as RoundState;
use fedmesh_protocol::wire::{Envelope, PaillierMsg, Payload, Proposal};

use super::{group_baseline, now_ms, Context, Purpose, Runtime, Work};
use crate::net::Verdict;

/// FedAvg weights travel as fractions of this many samples: a member with `w` samples sends its
/// update multiplied by `min(w, WEIGHT_UNIT) / WEIGHT_UNIT` and that fraction (times `clip`) as the
/// vector's last element, so the decrypted sum holds `Σ sᵢ·xᵢ` and `Σ sᵢ` and only the total weight
/// is revealed. Members with more samples count as `WEIGHT_UNIT`; members with far fewer lose
/// quantization precision (their scaled values use fewer of the `value_bits` levels).
pub const WEIGHT_UNIT: u64 = 4096;

/// The network's joint key, its packing and this member's randomness pool: fixed for the node's
/// life.
pub struct Setup {
    pub keys: Keys,
    pub packer: Packer,
    pool: Pool,
    filling: AtomicBool,
}

impl Setup {
    /// Read the joint key from the genesis (mode `paillier`).
    pub fn new(genesis: &Genesis) -> anyhow::Result<Setup> {
        let keys = genesis.paillier_keys().context("mode paillier")?;
        let packer = genesis
            .spec
            .paillier
            .packer(genesis.members.len())
            .map_err(|e| anyhow::anyhow!("[spec.paillier]: {e}"))?;
        Ok(Setup {
            keys,
            packer,
            pool: Pool::new(),
            filling: AtomicBool::new(false),
        })
    }

    /// Top the pool up to `need` values on the blocking pool (at most one fill at a time), so
    /// that encrypting after training costs only the multiplications.
    fn fill_pool(self: &Arc<Self>, need: usize) {
        if self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        let setup = self.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let before = setup.pool.len();
            // In chunks, so that an encryption that starts before the fill ends uses what is ready.
            while setup.pool.len() < need {
                let chunk = (need - setup.pool.len()).min(32);
                setup
                    .pool
                    .fill(&setup.keys.public, chunk, &mut rand::rngs::OsRng);
            }
            tracing::debug!(
                added = setup.pool.len().saturating_sub(before),
                ms = started.elapsed().as_millis() as u64,
                "paillier: randomness pool filled"
            );
            setup.filling.store(false, Ordering::Release);
        });
    }
}

/// Work for a round's worker.
enum Cmd {
    Update(Box<Signed<EncryptedUpdate>>),
    /// Form the product of these members' updates.
    Form(Vec<u32>),
    /// Make this member's partial decryption of the formed sum.
    Decrypt,
    Partial(Box<Signed<Partial>>),
    /// Decrypt the sum with the good partials so far.
    Finish,
    /// The round's sum did not decode: form the product of each of these groups' updates (each
    /// of at least the given size).
    FormGroups(Vec<Vec<u32>>, usize),
    /// Make this member's partial decryption of every group's product.
    DecryptGroups,
    /// Another member's partial decryption of a group's product.
    GroupPartial(u32, Box<Signed<Partial>>),
    /// Decrypt every group's product with the good partials so far.
    FinishGroups,
}

/// One group's decrypted sum in the fallback of a round whose sum did not decode.
#[derive(Debug, Clone)]
pub struct GroupResult {
    /// Who is in it, its product's hash, who decrypted it.
    pub summary: pl::Summary,
    /// Its per-value sums, `None` if it did not decode either.
    pub sum: Option<Vec<i64>>,
}

/// What a round's worker (or an encryption) reports back to the runtime.
pub enum Done {
    Encrypted {
        round: u64,
        result: Result<Signed<EncryptedUpdate>, String>,
    },
    Update {
        round: u64,
        member: u32,
        result: Result<Hash, String>,
    },
    Formed {
        round: u64,
        /// The announcement, and the record of the sum before its decryption.
        result: Result<(Close, pl::Summary), String>,
    },
    OwnPartial {
        round: u64,
        result: Result<Signed<Partial>, String>,
    },
    Partial {
        round: u64,
        member: u32,
        /// `Err((rejected, why))`: `rejected` when the proof is bad (recorded in the summary).
        result: Result<(), (bool, String)>,
    },
    Finished {
        round: u64,
        /// `Err((Some(summary), why))`: the sum was decrypted but does not decode.
        result: Result<Outcome, (Option<pl::Summary>, String)>,
    },
    GroupsFormed {
        round: u64,
        /// The hash of each group's product.
        result: Result<Vec<Hash>, String>,
    },
    OwnGroupPartials {
        round: u64,
        result: Result<Vec<Signed<Partial>>, String>,
    },
    GroupPartial {
        round: u64,
        group: u32,
        member: u32,
        result: Result<(), (bool, String)>,
    },
    GroupsFinished {
        round: u64,
        result: Result<Vec<GroupResult>, String>,
    },
}

/// The fallback of a round whose sum did not decode here: the sums of the round's groups
/// ([`pl::round_groups`]), decrypted like the round's sum.
struct Fallback {
    /// The groups (each of at least the round's group size).
    groups: Vec<Vec<u32>>,
    /// When this member found the round's sum undecodable: the groups' phase counts from it.
    started: Instant,
    forming: bool,
    /// The hash of each group's product, once formed.
    sums: Option<Vec<Hash>>,
    decrypting: bool,
    /// (group, member) pairs whose partial went to the worker, and the verdicts.
    forwarded: BTreeSet<(u32, u32)>,
    good: BTreeMap<u32, BTreeSet<u32>>,
    rejected: BTreeMap<u32, BTreeSet<u32>>,
    finishing: bool,
    results: Option<Vec<GroupResult>>,
}

impl Fallback {
    /// Every group has `threshold` good partials, and every active member answered for every
    /// group or the phase timeout passed since the fallback started.
    fn ready(&self, active: usize, threshold: usize, phase: Duration) -> bool {
        let count = |m: &BTreeMap<u32, BTreeSet<u32>>, j: u32| m.get(&j).map_or(0, |s| s.len());
        let mut groups = 0..self.groups.len() as u32;
        groups.clone().all(|j| count(&self.good, j) >= threshold)
            && (self.started.elapsed() >= phase
                || groups.all(|j| count(&self.good, j) + count(&self.rejected, j) >= active))
    }
}

/// One round of mode `paillier` at one member.
pub struct Round {
    round: u64,
    params: Arc<RoundParams>,
    /// The attempt whose coordinator this member follows.
    pub attempt: u32,
    attempt_started: Instant,
    round_started: Instant,
    worker: mpsc::Sender<Cmd>,
    /// Updates the worker accepted, with the hash of their ciphertexts.
    updates: BTreeMap<u32, Hash>,
    /// Members whose update went to the worker (the first one only).
    sent_updates: BTreeSet<u32>,
    /// A Form command is at the worker.
    forming: bool,
    /// The one sum this member formed in this round: its members and hash.
    formed: Option<Close>,
    /// The coordinator's announcement this member follows, until its sum is formed.
    wanted: Option<Close>,
    /// This member asked the worker for its partial decryption.
    decrypting: bool,
    /// As this attempt's coordinator: when the sum was announced.
    announced: Option<(u32, Instant)>,
    /// When this member heard (or made) this attempt's announcement: the attempt's deadline
    /// counts from it.
    heard: Option<Instant>,
    /// As coordinator: this attempt gave up waiting for partials.
    gave_up: bool,
    /// Partials received (the first per member), and which went to the worker.
    partials: BTreeMap<u32, Signed<Partial>>,
    forwarded: BTreeSet<u32>,
    good: BTreeSet<u32>,
    rejected: BTreeSet<u32>,
    finishing: bool,
    /// The sum as this member decrypted it.
    outcome: Option<Outcome>,
    /// The sum's record when it was decrypted here and did not decode, or (with groups) when
    /// this member moved to the groups' sums: the groups' sums are being decrypted.
    spoiled: Option<pl::Summary>,
    /// The record of the sum this member formed (before its decryption).
    whole: Option<pl::Summary>,
    /// The chain head the round's groups are drawn from.
    head: Hash,
    /// `[spec.robust] group_size` > 0: the size of the groups whose sums every round decrypts
    /// instead of the round's sum.
    grouped: Option<usize>,
    /// Partials of group products received (the first per group and member).
    group_partials: BTreeMap<(u32, u32), Signed<Partial>>,
    /// The groups' sums, once the round's sum did not decode here.
    fallback: Option<Fallback>,
}

impl Round {
    /// Start the round: its worker, and the pool fill (runs while the model trains).
    pub fn start(
        ctx: &Arc<Context>,
        state: &RoundState,
        work: mpsc::Sender<Work>,
    ) -> Option<Round> {
        let setup = ctx.paillier.clone()?;
        let genesis = &ctx.genesis;
        let n = genesis.members.len();
        let params = Arc::new(RoundParams {
            genesis: ctx.genesis_hash,
            round: state.round,
            members: state
                .order()
                .iter()
                .filter_map(|m| genesis.member(*m))
                .map(|m| (m.index, m.public_key))
                .collect(),
            len: ctx.layout.param_count() + 1,
            min_contributors: genesis.spec.paillier.threshold_for(n),
        });
        setup.fill_pool(setup.packer.plaintexts_for(params.len));
        // One update and one partial per member, and one partial per member and group (at most
        // n groups), a few announcements.
        let (tx, rx) = mpsc::channel(n * (n + 4) + 16);
        {
            let (ctx, params) = (ctx.clone(), params.clone());
            tokio::task::spawn_blocking(move || worker(ctx, setup, params, rx, work));
        }
        Some(Round {
            round: state.round,
            params,
            attempt: 0,
            attempt_started: Instant::now(),
            round_started: Instant::now(),
            worker: tx,
            updates: BTreeMap::new(),
            sent_updates: BTreeSet::new(),
            forming: false,
            formed: None,
            wanted: None,
            decrypting: false,
            announced: None,
            heard: None,
            gave_up: false,
            partials: BTreeMap::new(),
            forwarded: BTreeSet::new(),
            good: BTreeSet::new(),
            rejected: BTreeSet::new(),
            finishing: false,
            outcome: None,
            spoiled: None,
            whole: None,
            head: state.prev_hash,
            grouped: Some(genesis.spec.robust.group_size).filter(|g| *g > 0),
            group_partials: BTreeMap::new(),
            fallback: None,
        })
    }

    fn send(&self, cmd: Cmd) {
        // The queue holds more than a round can legitimately need (see `start`): full means
        // something is wrong, and the command is dropped rather than blocking the runtime.
        if let Err(e) = self.worker.try_send(cmd) {
            tracing::error!(round = self.round, error = %e, "paillier: worker queue full or gone; command dropped");
        }
    }

    fn follow(&mut self, attempt: u32) {
        self.attempt = attempt;
        self.attempt_started = Instant::now();
        self.announced = None;
        self.heard = None;
        self.gave_up = false;
    }

    /// The attempt has failed if no record came within the phase timeout and the failover timeout
    /// after its announcement; without an announcement, after the update timeout (first attempt:
    /// the members train meanwhile) plus those two.
    fn expired(&self, update_timeout: Duration, phase: Duration, failover: Duration) -> bool {
        match self.heard {
            Some(at) => at.elapsed() >= phase + failover,
            None => {
                let wait = if self.attempt == 0 {
                    update_timeout
                } else {
                    Duration::ZERO
                };
                self.attempt_started.elapsed() >= wait + phase + failover
            }
        }
    }

    /// This member's own encrypted update, as sent before a restart in this round.
    pub fn resume_update(&mut self, msg: Signed<EncryptedUpdate>) {
        self.on_update(msg);
    }

    fn on_update(&mut self, msg: Signed<EncryptedUpdate>) {
        if self.sent_updates.insert(msg.body.member) {
            self.send(Cmd::Update(Box::new(msg)));
        }
    }

    fn on_partial(&mut self, msg: Signed<Partial>) {
        let member = msg.body.member;
        if self.partials.contains_key(&member) {
            return;
        }
        self.partials.insert(member, msg);
        self.forward_partials();
    }

    fn forward_partials(&mut self) {
        if self.formed.is_none() {
            return;
        }
        let new: Vec<u32> = self
            .partials
            .keys()
            .filter(|m| !self.forwarded.contains(m))
            .copied()
            .collect();
        for m in new {
            self.forwarded.insert(m);
            let msg = self.partials[&m].clone();
            self.send(Cmd::Partial(Box::new(msg)));
        }
    }

    fn on_group_partial(&mut self, group: u32, msg: Signed<Partial>) {
        let key = (group, msg.body.member);
        if self.group_partials.contains_key(&key) {
            return;
        }
        self.group_partials.insert(key, msg);
        self.forward_group_partials();
    }

    fn forward_group_partials(&mut self) {
        let Some(fb) = self.fallback.as_mut() else {
            return;
        };
        if fb.sums.is_none() {
            return;
        }
        let new: Vec<(u32, u32)> = self
            .group_partials
            .keys()
            .filter(|k| !fb.forwarded.contains(k) && (k.0 as usize) < fb.groups.len())
            .copied()
            .collect();
        for (group, member) in new {
            fb.forwarded.insert((group, member));
            let msg = self.group_partials[&(group, member)].clone();
            if let Err(e) = self
                .worker
                .try_send(Cmd::GroupPartial(group, Box::new(msg)))
            {
                tracing::error!(round = self.round, error = %e, "paillier: worker queue full or gone; command dropped");
            }
        }
    }

    /// The round's sum was decrypted here and does not decode: some contributor's ciphertexts
    /// encrypt values outside the packing range, and every attempt would form the same sum.
    /// Decrypt the sums of the round's groups instead (the same groups at every member and in
    /// every attempt: drawn from the chain head, cut to the sum's contributors), so that the
    /// round closes with the groups whose sums decode and flags the others.
    fn enter_fallback(&mut self, summary: pl::Summary, head: &Hash, active: &[u32], size: usize) {
        if self.fallback.is_some() {
            return;
        }
        let contributors: Vec<u32> = summary.update_hashes.iter().map(|(m, _)| *m).collect();
        let groups = pl::round_groups(head, self.round, active, &contributors, size);
        self.spoiled = Some(summary);
        if self.grouped.is_some() {
            tracing::info!(round = self.round, groups = ?groups, "paillier: decrypting the sums of the round's groups");
        } else if groups.is_empty() {
            tracing::error!(round = self.round, contributors = ?contributors, size, "paillier: the round's sum does not decode, and its contributors are too few to form groups of {size}; the round cannot close");
            return;
        } else {
            tracing::warn!(round = self.round, groups = ?groups, "paillier: the round's sum does not decode (an out-of-range update); decrypting the sums of the round's groups instead");
        }
        if groups.is_empty() {
            return;
        }
        // The attempt's deadline counts from here: the groups need a decryption phase of their own.
        self.heard = Some(Instant::now());
        self.gave_up = false;
        self.fallback = Some(Fallback {
            groups: groups.clone(),
            started: Instant::now(),
            forming: true,
            sums: None,
            decrypting: false,
            forwarded: BTreeSet::new(),
            good: BTreeMap::new(),
            rejected: BTreeMap::new(),
            finishing: false,
            results: None,
        });
        self.send(Cmd::FormGroups(groups, size));
    }

    /// An announcement from the coordinator of the attempt this member follows.
    fn on_close(&mut self, from: u32, close: Close) {
        let set = &close.contributors;
        if close.round != self.round
            || set.len() < self.params.min_contributors
            || set.windows(2).any(|w| w[0] >= w[1])
            || set.iter().any(|m| !self.params.members.contains_key(m))
        {
            tracing::warn!(culprit = from, round = self.round, contributors = ?set, "paillier: refused an announced sum (too few, unsorted or unknown contributors)");
            return;
        }
        self.heard.get_or_insert_with(Instant::now);
        match &self.formed {
            Some(mine) if mine.contributors != close.contributors => {
                tracing::warn!(culprit = from, round = self.round, announced = ?close.contributors, decrypting = ?mine.contributors, "paillier: refusing to decrypt a second, different sum in this round");
            }
            Some(mine) if mine.sum_hash != close.sum_hash => {
                tracing::warn!(culprit = from, round = self.round, "paillier: the announced sum's hash is not the product of its updates here; not decrypting");
            }
            Some(_) => self.request_decrypt(),
            None => {
                self.wanted = Some(close);
                self.try_form();
            }
        }
    }

    /// Form the wanted sum once every update in it is here.
    fn try_form(&mut self) {
        if self.forming || self.formed.is_some() {
            return;
        }
        let Some(w) = &self.wanted else {
            return;
        };
        if w.contributors.iter().all(|m| self.updates.contains_key(m)) {
            self.forming = true;
            self.send(Cmd::Form(w.contributors.clone()));
        }
    }

    fn request_decrypt(&mut self) {
        if let (Some(size), Some(whole)) = (self.grouped, self.whole.clone()) {
            // With groups the round's sum is never decrypted: its groups' sums are.
            let active: Vec<u32> = self.params.members.keys().copied().collect();
            let head = self.head;
            self.enter_fallback(whole, &head, &active, size);
            return;
        }
        if !self.decrypting {
            self.decrypting = true;
            self.send(Cmd::Decrypt);
        }
    }

    fn ready_to_finish(&self, active: usize, threshold: usize, phase: Duration) -> bool {
        let Some((_, at)) = self.announced else {
            return false;
        };
        let answered = self.good.len() + self.rejected.len();
        self.good.len() >= threshold && (answered >= active || at.elapsed() >= phase)
    }
}

/// The worker of one round: owns the protocol's phase values and does the heavy work in order.
fn worker(
    ctx: Arc<Context>,
    setup: Arc<Setup>,
    params: Arc<RoundParams>,
    mut rx: mpsc::Receiver<Cmd>,
    tx: mpsc::Sender<Work>,
) {
    let round = params.round;
    let me = ctx.keys.index;
    let reply = |d: Done| {
        let _ = tx.blocking_send(Work::Paillier(d));
    };
    let mut collect = Some(Collect::new(&params, &setup.keys, &setup.packer));
    let mut decrypt: Option<Decrypt<'_>> = None;
    // The updates stay after the round's sum is formed: the groups' sums are formed from them.
    let mut kept: Option<Collect<'_>> = None;
    let mut groups: Vec<Decrypt<'_>> = Vec::new();
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Update(msg) => {
                let member = msg.body.member;
                let result = match collect.as_mut() {
                    Some(c) => c
                        .add_update(&msg)
                        .map(|()| msg.body.hash())
                        .map_err(|e| e.to_string()),
                    None => Err("arrived after the sum was formed".into()),
                };
                reply(Done::Update {
                    round,
                    member,
                    result,
                });
            }
            Cmd::Form(contributors) => {
                let result = match collect.take() {
                    None => Err("the sum of this round is already formed".into()),
                    Some(c) => {
                        let have = c.contributors();
                        if let Some(m) = contributors.iter().find(|m| !have.contains(m)) {
                            collect = Some(c);
                            Err(format!("member {m}'s update is not here"))
                        } else {
                            let started = Instant::now();
                            let formed = c.close_for(&contributors);
                            kept = Some(c);
                            formed
                                .map(|d| {
                                    tracing::info!(round, contributors = ?contributors, ms = started.elapsed().as_millis() as u64, "paillier: formed the encrypted sum");
                                    let close = Close {
                                        round,
                                        contributors: contributors.clone(),
                                        sum_hash: d.sum_hash(),
                                    };
                                    let commitment = d.commitment();
                                    decrypt = Some(d);
                                    (close, commitment)
                                })
                                .map_err(|e| e.to_string())
                        }
                    }
                };
                reply(Done::Formed { round, result });
            }
            Cmd::Decrypt => {
                let result = match (&decrypt, ctx.keys.paillier.as_ref()) {
                    (Some(d), Some(share)) => {
                        let started = Instant::now();
                        d.partial(share, me, &ctx.keys.identity, &mut rand::rngs::OsRng)
                            .map(|p| {
                                tracing::info!(
                                    round,
                                    ms = started.elapsed().as_millis() as u64,
                                    "paillier: partial decryption made"
                                );
                                if ctx.faults.round == round && ctx.faults.at == "bad_partial" {
                                    tamper(&setup, &params, &ctx, p)
                                } else {
                                    p
                                }
                            })
                            .map_err(|e| e.to_string())
                    }
                    (None, _) => Err("no sum formed yet".into()),
                    (_, None) => Err("this member has no key share".into()),
                };
                reply(Done::OwnPartial { round, result });
            }
            Cmd::Partial(msg) => {
                let member = msg.body.member;
                let result = match decrypt.as_mut() {
                    Some(d) => d.add_partial(&msg).map(|_| ()).map_err(|e| {
                        let rejected = matches!(e, pl::PaillierError::BadPartial { .. });
                        (rejected, e.to_string())
                    }),
                    None => Err((false, "no sum formed yet".into())),
                };
                reply(Done::Partial {
                    round,
                    member,
                    result,
                });
            }
            Cmd::Finish => {
                let result = match &decrypt {
                    Some(d) => d.clone().finish().map_err(|e| match e {
                        pl::PaillierError::Pack(_) => (d.summary().ok(), e.to_string()),
                        e => (None, e.to_string()),
                    }),
                    None => Err((None, "no sum formed yet".into())),
                };
                reply(Done::Finished { round, result });
            }
            Cmd::FormGroups(members, size) => {
                let result = match (&kept, groups.is_empty()) {
                    (Some(c), true) => {
                        let started = Instant::now();
                        members
                            .iter()
                            .map(|g| c.close_group(g, size))
                            .collect::<Result<Vec<_>, _>>()
                            .map(|formed| {
                                groups = formed;
                                tracing::info!(
                                    round,
                                    groups = groups.len(),
                                    ms = started.elapsed().as_millis() as u64,
                                    "paillier: formed the groups' encrypted sums"
                                );
                                groups.iter().map(Decrypt::sum_hash).collect()
                            })
                            .map_err(|e| e.to_string())
                    }
                    (None, _) => Err("the round's sum is not formed".into()),
                    (_, false) => Err("the groups' sums are already formed".into()),
                };
                reply(Done::GroupsFormed { round, result });
            }
            Cmd::DecryptGroups => {
                let result = match ctx.keys.paillier.as_ref() {
                    _ if groups.is_empty() => Err("no group sums formed".into()),
                    Some(share) => {
                        let started = Instant::now();
                        groups
                            .iter()
                            .map(|d| {
                                d.partial(share, me, &ctx.keys.identity, &mut rand::rngs::OsRng)
                            })
                            .collect::<Result<Vec<_>, _>>()
                            .inspect(|_| {
                                tracing::info!(
                                    round,
                                    groups = groups.len(),
                                    ms = started.elapsed().as_millis() as u64,
                                    "paillier: partial decryptions of the groups' sums made"
                                );
                            })
                            .map_err(|e| e.to_string())
                    }
                    None => Err("this member has no key share".into()),
                };
                reply(Done::OwnGroupPartials { round, result });
            }
            Cmd::GroupPartial(group, msg) => {
                let member = msg.body.member;
                let result = match groups.get_mut(group as usize) {
                    Some(d) => d.add_partial(&msg).map(|_| ()).map_err(|e| {
                        let rejected = matches!(e, pl::PaillierError::BadPartial { .. });
                        (rejected, e.to_string())
                    }),
                    None => Err((false, format!("no group {group} formed"))),
                };
                reply(Done::GroupPartial {
                    round,
                    group,
                    member,
                    result,
                });
            }
            Cmd::FinishGroups => {
                let result = groups
                    .iter()
                    .map(|d| {
                        let summary = d.summary()?;
                        match d.decode() {
                            Ok(sum) => Ok(GroupResult {
                                summary,
                                sum: Some(sum),
                            }),
                            Err(pl::PaillierError::Pack(e)) => {
                                tracing::warn!(round, members = ?summary.update_hashes.iter().map(|(m, _)| m).collect::<Vec<_>>(), error = %e, "paillier: a group's sum does not decode");
                                Ok(GroupResult { summary, sum: None })
                            }
                            Err(e) => Err(e),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string());
                reply(Done::GroupsFinished { round, result });
            }
        }
    }
}

/// Fault injection (`[faults] at = "bad_partial"`): change one decrypted value by one bit, keep
/// the proof, and sign the result as this member's own.
fn tamper(
    setup: &Setup,
    params: &RoundParams,
    ctx: &Context,
    honest: Signed<Partial>,
) -> Signed<Partial> {
    let mut body = honest.body;
    // Version, kind, index (u32), count (u32), then the values: the last byte of the first one.
    let at = 10 + setup.keys.public.ciphertext_len() - 1;
    if let Some(b) = body.partial.get_mut(at) {
        *b ^= 1;
    }
    tracing::warn!(
        round = params.round,
        "fault injection: sending a wrong partial decryption"
    );
    Signed::sign(params.genesis, body, &ctx.keys.identity)
}

/// Fault injection (`[faults] at = "out_of_range"`): an encrypted update that passes every check
/// on ciphertexts (right count, each in `[1, n²)`, signed) but whose plaintexts hold, in their
/// first slot, a value past what all active members' values can sum to — aimed at the middle of
/// the gap between that limit and the slot's capacity, less the others' typical values, so that
/// the round's sum and the sum of this member's group overflow without carrying into the next
/// slot.
fn out_of_range(
    setup: &Setup,
    params: &RoundParams,
    ctx: &Context,
) -> Result<Signed<EncryptedUpdate>, pl::PaillierError> {
    let packer = &setup.packer;
    let n = params.members.len().max(1) as u64;
    let max = packer.max_level() as u64;
    let capacity = 1u64 << packer.slot_bits().min(62);
    let limit = n * 2 * max;
    let value = ((limit + capacity) / 2).saturating_sub((n - 1) * max);
    let plain = fedmesh_crypto::paillier::Plaintext::from_be_bytes(&value.to_be_bytes());
    let count = packer.plaintexts_for(params.len);
    let cts = (0..count)
        .map(|_| setup.keys.public.encrypt(&plain, &mut rand::rngs::OsRng))
        .collect::<Result<Vec<_>, _>>()?;
    tracing::warn!(
        round = params.round,
        value,
        limit,
        "fault injection: sending an out-of-range encrypted update"
    );
    let body = EncryptedUpdate {
        round: params.round,
        member: ctx.keys.index,
        clipped: 0,
        ciphertexts: fedmesh_crypto::paillier::encode_ciphertexts(&setup.keys.public, &cts),
    };
    Ok(Signed::sign(params.genesis, body, &ctx.keys.identity))
}

/// Weight the update and append the weight (see [`WEIGHT_UNIT`]).
fn weighted(delta: &[f32], samples: u64, clip: f32) -> Vec<f32> {
    let s = samples.min(WEIGHT_UNIT) as f32 / WEIGHT_UNIT as f32;
    let mut v: Vec<f32> = delta.iter().map(|d| d * s).collect();
    v.push(s * clip);
    v
}

/// The FedAvg mean from a decrypted sum of [`weighted`] vectors.
fn mean(packer: &Packer, clip: f32, sum: &[i64], len: usize) -> Result<Vec<f32>, String> {
    let values = packer.dequantize(sum);
    let Some((last, coords)) = values.split_last() else {
        return Err("the sum is empty".into());
    };
    let total = f64::from(*last) / f64::from(clip);
    if coords.len() != len || total.is_nan() || total <= 0.0 {
        return Err(format!(
            "the sum has {} values and total weight {total}; expected {len} values and a positive weight",
            coords.len()
        ));
    }
    Ok(coords
        .iter()
        .map(|x| (f64::from(*x) / total) as f32)
        .collect())
}

/// A round closed with its groups' sums.
struct Closed {
    /// What the record keeps of the groups.
    summary: GroupsSummary,
    /// The FedAvg mean of the groups whose sums decode (zero if none does: the model stands).
    update: Vec<f32>,
    /// Their sum.
    sum: Vec<i64>,
}

/// [`close_with_groups`] for this node: judged against `model` with the genesis' public
/// reference rows, if any (the coordinator that proposes and every member that checks call this).
fn judge_group_sums(
    ctx: &super::Context,
    model: &[f32],
    baseline: &suspicion::Baseline,
    packer: &Packer,
    groups: &[Vec<u32>],
    results: &[GroupResult],
) -> Result<Closed, String> {
    super::secure::with_reference(ctx, model, |public| {
        close_with_groups(
            &ctx.genesis,
            packer,
            model.len(),
            groups,
            results,
            baseline,
            public,
        )
    })
}

/// Close a round with its groups' sums (every round with `[spec.robust] group_size` > 0, else a
/// round whose sum did not decode). A group whose sum decodes to a vector with a positive weight
/// counts: with groups configured the genesis rule judges the group means and scores them
/// ([`super::secure::judge_means`], shared with mode secagg), else each scores 0 and the update
/// is their FedAvg mean. Any other group is left out and flagged (score `f64::MAX`, weight 0), so
/// that its members gain suspicion. Coordinator and verifiers compute it alike from their own
/// decryptions.
fn close_with_groups(
    genesis: &Genesis,
    packer: &Packer,
    len: usize,
    groups: &[Vec<u32>],
    results: &[GroupResult],
    baseline: &suspicion::Baseline,
    public: Option<&suspicion::Reference>,
) -> Result<Closed, String> {
    let spec = &genesis.spec;
    let clip = spec.paillier.clip;
    let configured = spec.robust.group_size;
    let size = pl::group_size(
        configured,
        spec.paillier.threshold_for(genesis.members.len()),
    );
    let mut sum: Vec<i64> = Vec::new();
    // Per group: its mean and weight, if its sum decodes.
    let decoded: Vec<Option<(Vec<f32>, u64)>> = results
        .iter()
        .map(|r| {
            let s = r.sum.as_ref()?;
            let m = mean(packer, clip, s, len).ok()?;
            let last = packer.dequantize(&s[s.len() - 1..])[0];
            let total = f64::from(last) / f64::from(clip);
            if sum.is_empty() {
                sum = s.clone();
            } else {
                sum.iter_mut().zip(s).for_each(|(a, b)| *a += b);
            }
            Some((m, ((total * WEIGHT_UNIT as f64).round() as u64).max(1)))
        })
        .collect();
    let inputs: Vec<robust::Input> = decoded
        .iter()
        .enumerate()
        .filter_map(|(j, d)| d.as_ref().map(|(m, w)| robust::Input::new(j as u32, m, *w)))
        .collect();
    // (score, flagged) of each decodable group, in order; whether the round was decided.
    // The usual values go into the record for the next round's judgement; a fallback round
    // (no groups configured) judges nothing and records none.
    let (judged, decided, update, usual, reference) = if inputs.is_empty() {
        (Vec::new(), true, vec![0.0; len], baseline.usual(), None)
    } else if configured > 0 {
        let r = &spec.robust;
        let (j, after) =
            super::secure::judge_means(&r.rule(), r.score_threshold, &inputs, baseline, public)?;
        let effects = j.reference.as_ref().map(|r| r.effects.clone());
        let judged: Vec<(f64, bool, Option<f64>)> = j
            .scores
            .iter()
            .zip(j.flagged)
            .enumerate()
            .map(|(i, (s, f))| (s.score, f, effects.as_ref().map(|e| e[i])))
            .collect();
        (
            judged,
            j.decided,
            j.update,
            after.usual(),
            j.reference.map(|r| (r.loss, r.spread, r.scale, r.best)),
        )
    } else {
        let update = mean(packer, clip, &sum, len)?;
        (
            vec![(0.0, false, None); inputs.len()],
            true,
            update,
            suspicion::Usual::default(),
            None,
        )
    };
    let mut judged = judged.into_iter();
    let revealed = groups
        .iter()
        .zip(results)
        .zip(&decoded)
        .enumerate()
        .map(|(j, ((members, r), d))| {
            let (score, flagged, reference) = match d {
                Some(_) => judged.next().unwrap_or((0.0, false, None)),
                None => (f64::MAX, f64::MAX > spec.robust.score_threshold, None),
            };
            GroupSum {
                group: j as u32,
                session: 0,
                contributors: members.clone(),
                unmaskers: r.summary.decryptors.clone(),
                total_weight: d.as_ref().map_or(0, |(_, w)| *w),
                sum_hash: r.summary.sum_hash,
                score,
                flagged,
                reference,
            }
        })
        .collect();
    Ok(Closed {
        summary: GroupsSummary {
            size: size as u32,
            drawn: groups.to_vec(),
            revealed,
            skipped: Vec::new(),
            decided,
            usual,
            reference_loss: reference.map(|r| r.0),
            reference_spread: reference.map(|r| r.1),
            reference_scale: reference.map(|r| r.2),
            reference_best: reference.map(|r| r.3),
        },
        update,
        sum,
    })
}

/// After training: weight, quantize, pack and encrypt the update (randomness from the pool), sign
/// it, off the runtime task.
pub fn encrypt(ctx: &Arc<Context>, round: &Round, delta: Vec<f32>, work: mpsc::Sender<Work>) {
    let Some(setup) = ctx.paillier.clone() else {
        return;
    };
    let (ctx, params, r) = (ctx.clone(), round.params.clone(), round.round);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        // A fill still running computes the same values the encryption would: wait for it rather
        // than compute them twice (bounded: the fill makes progress on all cores).
        let need = setup.packer.plaintexts_for(params.len);
        while setup.filling.load(Ordering::Acquire)
            && setup.pool.len() < need
            && started.elapsed() < Duration::from_secs(600)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let values = weighted(
            &delta,
            ctx.data.train.len() as u64,
            ctx.genesis.spec.paillier.clip,
        );
        let result = pl::encrypt_update(
            &params,
            &setup.keys,
            &setup.packer,
            &setup.pool,
            ctx.keys.index,
            &ctx.keys.identity,
            &values,
            &mut rand::rngs::OsRng,
        )
        .and_then(|(msg, enc)| {
            if ctx.faults.round == r && ctx.faults.at == "out_of_range" {
                return out_of_range(&setup, &params, &ctx).map(|m| (m, enc));
            }
            Ok((msg, enc))
        })
        .map(|(msg, enc)| {
            tracing::info!(
                round = r,
                ciphertexts = enc.ciphertexts.len(),
                from_pool = enc.ciphertexts.len() - enc.fresh,
                clipped = enc.clipped,
                ms = started.elapsed().as_millis() as u64,
                "paillier: update encrypted"
            );
            msg
        })
        .map_err(|e| e.to_string());
        let _ = work.blocking_send(Work::Paillier(Done::Encrypted { round: r, result }));
    });
}

impl Runtime {
    pub(super) fn paillier_mode(&self) -> bool {
        self.ctx.genesis.spec.mode == Mode::Paillier
    }

    /// Seal and gossip a paillier message of the current attempt (kept for retries if gossip has
    /// no subscribed peer yet).
    async fn publish_paillier(&mut self, msg: PaillierMsg) {
        let Some(cur) = self.current.as_ref() else {
            return;
        };
        let Some(pr) = cur.paillier.as_ref() else {
            return;
        };
        let round = cur.state.round;
        let own_update = matches!(msg, PaillierMsg::Update(_));
        let payload = Payload::Paillier {
            attempt: pr.attempt,
            msg: Box::new(msg),
        };
        if self.stalls(round, &payload) {
            return;
        }
        let env = Envelope::seal(
            self.ctx.genesis_hash,
            self.me(),
            round,
            payload,
            &self.ctx.keys.identity,
        );
        let bytes = env.encode();
        if own_update {
            // Kept across a restart, so that this round gets the same ciphertext again.
            if let Err(e) = self.store.put_large_state(super::UPDATE_KEY, &bytes) {
                tracing::warn!(error = %e, "paillier: cannot keep the encrypted update for a restart");
            }
            let me = self.me();
            if let Some(cur) = self.current.as_mut() {
                cur.envelopes.insert(me, bytes.clone());
            }
        }
        if let Err(e) = self.publish_or_keep(round, bytes).await {
            tracing::debug!(error = %e, "paillier: not published yet; retrying");
        }
        self.equivocate(&env).await;
    }

    /// A paillier message of the current round (envelope verified).
    pub(super) fn on_paillier_msg(
        &mut self,
        sender: u32,
        attempt: u32,
        msg: PaillierMsg,
    ) -> Verdict {
        let Some(cur) = self.current.as_mut() else {
            return Verdict::Ignore;
        };
        let Some(pr) = cur.paillier.as_mut() else {
            return Verdict::Ignore;
        };
        if attempt as usize >= cur.state.order().len() {
            return Verdict::Reject;
        }
        match msg {
            PaillierMsg::Update(u) if u.body.member == sender => pr.on_update(u),
            PaillierMsg::Partial(p) if p.body.member == sender => pr.on_partial(p),
            PaillierMsg::GroupPartial { group, partial }
                if partial.body.member == sender && (group as usize) < cur.state.order().len() =>
            {
                pr.on_group_partial(group, partial)
            }
            PaillierMsg::Close(c) if cur.state.coordinator(attempt) == sender => {
                if attempt < pr.attempt {
                    return Verdict::Ignore;
                }
                if attempt > pr.attempt {
                    tracing::info!(
                        round = pr.round,
                        attempt,
                        "paillier: following a later attempt's coordinator"
                    );
                    pr.follow(attempt);
                }
                pr.on_close(sender, c);
            }
            _ => {
                tracing::warn!(
                    culprit = sender,
                    "paillier: message not from its claimed member or coordinator"
                );
                return Verdict::Reject;
            }
        }
        Verdict::Accept
    }

    /// The announced sum needs encrypted updates this member never received (gossip does not
    /// replay what was published while it was down — a restarted member stalled the round
    /// without this: threshold - 1 members could decrypt, the others waited for updates that
    /// never came, attempt after attempt). Ask the announcer, which formed the sum from them.
    pub(super) fn maybe_fetch_paillier(&mut self) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let Some(pr) = cur.paillier.as_ref() else {
            return;
        };
        if pr.formed.is_some()
            || cur
                .last_fetch
                .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        let me = self.ctx.keys.index;
        let missing = |set: &[u32]| -> Vec<u32> {
            set.iter()
                .filter(|m| **m != me && !pr.sent_updates.contains(m))
                .copied()
                .collect()
        };
        // Announced: ask the announcer, which formed the sum from them. Not announced yet but
        // half the update timeout gone (a coordinator that restarted, or a member that will have
        // to form the sum): ask each missing member for its own.
        let half = Duration::from_millis(self.ctx.genesis.spec.params.update_timeout_ms / 2);
        let asks: Vec<(u32, u32)> = match pr.wanted.as_ref() {
            Some(w) => {
                let from = cur.state.coordinator(pr.attempt);
                missing(&w.contributors)
                    .into_iter()
                    .map(|m| (from, m))
                    .collect()
            }
            None if pr.round_started.elapsed() >= half => missing(cur.state.order())
                .into_iter()
                .map(|m| (m, m))
                .collect(),
            None => Vec::new(),
        };
        let asks: Vec<(libp2p::PeerId, u32)> = asks
            .into_iter()
            .filter(|(from, _)| *from != me)
            .filter_map(|(from, m)| Some((self.ctx.member_peer(from)?, m)))
            .collect();
        if asks.is_empty() {
            return;
        }
        cur.last_fetch = Some(Instant::now());
        let round = cur.state.round;
        tracing::info!(round, missing = ?asks.iter().map(|(_, m)| m).collect::<Vec<_>>(), "paillier: fetching encrypted updates this member lacks");
        for (peer, member) in asks {
            let net = self.net.clone();
            let tx = self.work_tx.clone();
            tokio::spawn(async move {
                let bytes = match net
                    .request(
                        peer,
                        fedmesh_protocol::wire::Request::Update { round, member },
                    )
                    .await
                {
                    Ok(fedmesh_protocol::wire::Response::Update(b)) => b,
                    _ => None,
                };
                let _ = tx.send(Work::FetchedUpdate { round, bytes }).await;
            });
        }
    }

    /// Results of the round's heavy work.
    pub(super) async fn on_paillier_done(&mut self, done: Done) {
        let me = self.me();
        let spec = &self.ctx.genesis.spec;
        let clip = spec.paillier.clip;
        let threshold = spec.paillier.threshold_for(self.ctx.genesis.members.len());
        let size = pl::group_size(spec.robust.group_size, threshold);
        let len = self.global.len();
        let setup = self.ctx.paillier.clone();
        let round = match &done {
            Done::Encrypted { round, .. }
            | Done::Update { round, .. }
            | Done::Formed { round, .. }
            | Done::OwnPartial { round, .. }
            | Done::Partial { round, .. }
            | Done::Finished { round, .. }
            | Done::GroupsFormed { round, .. }
            | Done::OwnGroupPartials { round, .. }
            | Done::GroupPartial { round, .. }
            | Done::GroupsFinished { round, .. } => *round,
        };
        let Some(cur) = self.current.as_mut().filter(|c| c.state.round == round) else {
            return;
        };
        let Some(pr) = cur.paillier.as_mut() else {
            return;
        };
        let coordinating = cur.state.coordinator(pr.attempt) == me;
        match done {
            Done::Encrypted { result, .. } => match result {
                Ok(msg) => {
                    pr.on_update(msg.clone());
                    // Refill for the next round while this one waits for the others.
                    if let Some(setup) = self.ctx.paillier.as_ref() {
                        setup.fill_pool(setup.packer.plaintexts_for(pr.params.len));
                    }
                    self.publish_paillier(PaillierMsg::Update(msg)).await;
                    self.ctx.fault(round, "encrypted").await;
                }
                Err(e) => {
                    tracing::error!(round, error = %e, "paillier: cannot encrypt the update; this member sits the round out")
                }
            },
            Done::Update { member, result, .. } => match result {
                Ok(h) => {
                    tracing::debug!(round, member, "paillier: update accepted");
                    pr.updates.insert(member, h);
                    pr.try_form();
                }
                Err(e) => {
                    tracing::warn!(round, culprit = member, error = %e, "paillier: update refused")
                }
            },
            Done::Formed { result, .. } => {
                pr.forming = false;
                match result {
                    Ok((close, commitment)) => {
                        pr.whole = Some(commitment);
                        let wanted = pr.wanted.take();
                        pr.formed = Some(close.clone());
                        pr.forward_partials();
                        let follows = wanted
                            .as_ref()
                            .is_some_and(|w| w.sum_hash == close.sum_hash);
                        if let Some(w) = wanted.filter(|_| !follows) {
                            tracing::warn!(round, culprit = cur.state.coordinator(pr.attempt), announced = %w.sum_hash, formed = %close.sum_hash, "paillier: the announced sum's hash is not the product of its updates here; not decrypting");
                        }
                        if coordinating && pr.announced.is_none() {
                            pr.announced = Some((pr.attempt, Instant::now()));
                            pr.heard = Some(Instant::now());
                            pr.request_decrypt();
                            tracing::info!(round, attempt = pr.attempt, contributors = ?close.contributors, "paillier: announcing the encrypted sum");
                            self.publish_paillier(PaillierMsg::Close(close)).await;
                            self.ctx.fault(round, "announce").await;
                        } else if follows {
                            pr.request_decrypt();
                        }
                    }
                    Err(e) => tracing::warn!(round, error = %e, "paillier: cannot form the sum"),
                }
            }
            Done::OwnPartial { result, .. } => match result {
                Ok(p) => {
                    pr.on_partial(p.clone());
                    self.publish_paillier(PaillierMsg::Partial(p)).await;
                    self.ctx.fault(round, "partial").await;
                }
                Err(e) => tracing::error!(round, error = %e, "paillier: cannot decrypt the sum"),
            },
            Done::Partial { member, result, .. } => match result {
                Ok(()) => {
                    tracing::debug!(round, member, "paillier: partial decryption verified");
                    pr.good.insert(member);
                    // Every member decrypts the sum as soon as it can (the coordinator when its
                    // phase ends): a member that finds it undecodable moves to the groups' sums.
                    if !coordinating
                        && pr.good.len() >= threshold
                        && pr.outcome.is_none()
                        && pr.spoiled.is_none()
                        && !pr.finishing
                    {
                        pr.finishing = true;
                        pr.send(Cmd::Finish);
                    }
                }
                Err((true, e)) => {
                    tracing::warn!(round, culprit = member, error = %e, "paillier: partial decryption REJECTED (bad proof); its sender is named in the round record");
                    pr.rejected.insert(member);
                }
                Err((false, e)) => {
                    tracing::warn!(round, culprit = member, error = %e, "paillier: partial decryption refused")
                }
            },
            Done::Finished { result, .. } => {
                pr.finishing = false;
                let head = cur.state.prev_hash;
                let active = cur.state.order().to_vec();
                let weightless = |o: &Outcome| {
                    setup
                        .as_ref()
                        .and_then(|s| mean(&s.packer, clip, &o.sum, len).err())
                };
                match result {
                    Ok(outcome) if weightless(&outcome).is_some() => {
                        let why = weightless(&outcome).unwrap_or_default();
                        tracing::warn!(round, error = %why, "paillier: the decrypted sum has no usable weight");
                        pr.enter_fallback(outcome.summary, &head, &active, size);
                    }
                    Err((Some(summary), e)) => {
                        tracing::warn!(round, error = %e, "paillier: the decrypted sum does not decode");
                        pr.enter_fallback(summary, &head, &active, size);
                    }
                    Ok(outcome) => {
                        pr.outcome = Some(outcome.clone());
                        if coordinating
                            && !cur.evaluating
                            && cur.state.proposal().is_none()
                            && cur.waiting.is_none()
                        {
                            self.evaluate_paillier(outcome);
                        }
                    }
                    Err((_, e)) => {
                        tracing::warn!(round, error = %e, "paillier: cannot decrypt the sum yet")
                    }
                }
            }
            Done::GroupsFormed { result, .. } => {
                let Some(fb) = pr.fallback.as_mut() else {
                    return;
                };
                fb.forming = false;
                match result {
                    Ok(sums) => {
                        fb.sums = Some(sums);
                        let first = !std::mem::replace(&mut fb.decrypting, true);
                        if first {
                            pr.send(Cmd::DecryptGroups);
                        }
                        pr.forward_group_partials();
                    }
                    Err(e) => {
                        tracing::error!(round, error = %e, "paillier: cannot form the groups' sums")
                    }
                }
            }
            Done::OwnGroupPartials { result, .. } => match result {
                Ok(partials) => {
                    for (j, p) in partials.iter().enumerate() {
                        pr.on_group_partial(j as u32, p.clone());
                    }
                    for (j, p) in partials.into_iter().enumerate() {
                        self.publish_paillier(PaillierMsg::GroupPartial {
                            group: j as u32,
                            partial: p,
                        })
                        .await;
                    }
                }
                Err(e) => {
                    tracing::error!(round, error = %e, "paillier: cannot decrypt the groups' sums")
                }
            },
            Done::GroupPartial {
                group,
                member,
                result,
                ..
            } => {
                let Some(fb) = pr.fallback.as_mut() else {
                    return;
                };
                match result {
                    Ok(()) => {
                        fb.good.entry(group).or_default().insert(member);
                    }
                    Err((true, e)) => {
                        tracing::warn!(round, group, culprit = member, error = %e, "paillier: partial decryption of a group sum REJECTED (bad proof)");
                        fb.rejected.entry(group).or_default().insert(member);
                    }
                    Err((false, e)) => {
                        tracing::warn!(round, group, culprit = member, error = %e, "paillier: partial decryption of a group sum refused")
                    }
                }
            }
            Done::GroupsFinished { result, .. } => {
                let Some(fb) = pr.fallback.as_mut() else {
                    return;
                };
                fb.finishing = false;
                match result {
                    Ok(results) => {
                        fb.results = Some(results);
                        if coordinating
                            && !cur.evaluating
                            && cur.state.proposal().is_none()
                            && cur.waiting.is_none()
                        {
                            self.evaluate_paillier_groups();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(round, error = %e, "paillier: cannot decrypt the groups' sums yet")
                    }
                }
            }
        }
        self.maybe_verify();
    }

    /// Coordinator: the groups' sums of a round whose sum did not decode give the next model
    /// (from the groups whose sums decode); evaluate it, then propose.
    fn evaluate_paillier_groups(&mut self) {
        let Some(setup) = self.ctx.paillier.clone() else {
            return;
        };
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let Some(pr) = cur.paillier.as_ref() else {
            return;
        };
        let attempt = pr.attempt;
        if cur.proposed.is_some_and(|a| a >= attempt) {
            return;
        }
        let (Some(fb), Some(spoiled)) = (pr.fallback.as_ref(), pr.spoiled.as_ref()) else {
            return;
        };
        let Some(results) = fb.results.as_ref() else {
            return;
        };
        let closed = match judge_group_sums(
            &self.ctx,
            &self.global,
            &group_baseline(&self.store, &self.ctx.layout, self.last.as_ref()),
            &setup.packer,
            &fb.groups,
            results,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(round = cur.state.round, error = %e, "paillier: cannot judge the groups' sums; not proposing");
                return;
            }
        };
        let flagged: Vec<u32> = closed
            .summary
            .revealed
            .iter()
            .filter(|g| g.flagged)
            .map(|g| g.group)
            .collect();
        tracing::info!(
            round = cur.state.round,
            attempt,
            ?flagged,
            "paillier: the groups' sums decrypted; evaluating the round without the flagged groups"
        );
        let params = Arc::new(model::apply(&self.global, &closed.update));
        let outcome = Outcome {
            sum: closed.sum,
            summary: spoiled.clone(),
        };
        cur.evaluating = true;
        cur.proposed = Some(attempt);
        let round = cur.state.round;
        self.evaluate(
            round,
            Purpose::ProposePaillier {
                attempt,
                outcome: Box::new(outcome),
                groups: Some(Box::new(closed.summary)),
            },
            params,
        );
    }

    /// Coordinator: the decrypted sum gives the next model; evaluate it, then propose.
    fn evaluate_paillier(&mut self, outcome: Outcome) {
        let Some(setup) = self.ctx.paillier.clone() else {
            return;
        };
        let clip = self.ctx.genesis.spec.paillier.clip;
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let Some(attempt) = cur.paillier.as_ref().map(|p| p.attempt) else {
            return;
        };
        if cur.proposed.is_some_and(|a| a >= attempt) {
            return;
        }
        match mean(&setup.packer, clip, &outcome.sum, self.global.len()) {
            Ok(m) => {
                tracing::info!(round = cur.state.round, attempt, decryptors = ?outcome.summary.decryptors, rejected = ?outcome.summary.rejected, "paillier: sum decrypted; evaluating");
                let params = Arc::new(model::apply(&self.global, &m));
                cur.evaluating = true;
                cur.proposed = Some(attempt);
                let round = cur.state.round;
                self.evaluate(
                    round,
                    Purpose::ProposePaillier {
                        attempt,
                        outcome: Box::new(outcome),
                        groups: None,
                    },
                    params,
                );
            }
            Err(e) => tracing::error!(error = %e, "paillier: the decrypted sum does not decode"),
        }
    }

    /// Coordinator: propose the record of an evaluated paillier round.
    pub(super) async fn propose_paillier(
        &mut self,
        attempt: u32,
        outcome: Outcome,
        groups: Option<GroupsSummary>,
        metrics: Metrics,
        new_model: Hash,
        params: Arc<Vec<f32>>,
    ) {
        let me = self.me();
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        if cur.state.proposal().is_some() {
            return;
        }
        let s = outcome.summary;
        let participants: Vec<Contribution> = s
            .update_hashes
            .iter()
            .map(|(m, h)| Contribution {
                member: *m,
                num_samples: 0,
                update_hash: *h,
                train_loss: 0.0,
            })
            .collect();
        let mut dropouts: Vec<u32> = cur
            .state
            .order()
            .iter()
            .copied()
            .filter(|m| !s.update_hashes.iter().any(|(c, _)| c == m))
            .collect();
        dropouts.sort_unstable();
        let mut rejected = s.rejected;
        rejected.sort_unstable();
        rejected.dedup();
        let mut p = Proposal {
            height: cur.state.height,
            prev_hash: cur.state.prev_hash,
            record: RoundRecord {
                evidence: Vec::new(),
                round: cur.state.round,
                mode: Mode::Paillier,
                attempt,
                coordinator: me,
                base_model: cur.state.base_model,
                new_model,
                participants,
                dropouts,
                metrics,
                proposed_at_ms: now_ms(),
                secure: None,
                evictions: Vec::new(),
                admissions: Vec::new(),
                paillier: Some(PaillierSummary {
                    sum_hash: s.sum_hash,
                    decryptors: s.decryptors,
                    rejected,
                    clipped: s.clipped,
                }),
                privacy: None,
                groups,
            },
        };
        if let Err(e) = super::privacy::attach(&self.ctx.genesis, &self.store, &mut p.record) {
            tracing::error!(round = p.record.round, error = %e, "cannot account the round's privacy; not proposing");
            return;
        }
        tracing::info!(round = p.record.round, attempt, accuracy = metrics.accuracy, dropouts = ?p.record.dropouts, "proposing the round record (threshold Paillier)");
        self.propose(p, params).await;
    }

    /// Check a waiting proposal against this member's own view: the same sum of the same updates,
    /// decryptors whose partials it verified, rejected members whose partials it rejected; then
    /// decrypt the sum itself and check the proposed model.
    pub(super) fn maybe_verify_paillier(&mut self) {
        let Some(setup) = self.ctx.paillier.clone() else {
            return;
        };
        let clip = self.ctx.genesis.spec.paillier.clip;
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        if cur.evaluating || !cur.waiting_open() {
            return;
        }
        let (Some((proposer, p)), Some(pr)) = (cur.waiting.as_ref(), cur.paillier.as_mut()) else {
            return;
        };
        let proposer = *proposer;
        let Some(s) = p.record.paillier.as_ref() else {
            cur.waiting = None;
            return;
        };
        let Some(formed) = pr.formed.as_ref() else {
            // Not formed here yet. If the coordinator's announcement never arrived, the proposal
            // (from the same coordinator) names the same sum: form it from that.
            if pr.wanted.is_none() && !pr.forming {
                let close = Close {
                    round: pr.round,
                    contributors: p.record.participants.iter().map(|c| c.member).collect(),
                    sum_hash: s.sum_hash,
                };
                pr.on_close(proposer, close);
            }
            return;
        };
        let participants: Vec<u32> = p.record.participants.iter().map(|c| c.member).collect();
        let refuse = |why: &str| {
            tracing::warn!(
                culprit = proposer,
                why,
                "paillier: the proposal does not match this member's view; not approving"
            );
        };
        if formed.contributors != participants || formed.sum_hash != s.sum_hash {
            refuse("a different sum");
            cur.waiting = None;
            return;
        }
        if p.record
            .participants
            .iter()
            .any(|c| pr.updates.get(&c.member) != Some(&c.update_hash))
        {
            refuse("a participant's update hash differs");
            cur.waiting = None;
            return;
        }
        if s.decryptors.iter().any(|m| pr.rejected.contains(m))
            || s.rejected.iter().any(|m| pr.good.contains(m))
        {
            refuse("a decryptor's partial is bad here, or a rejected one is good here");
            cur.waiting = None;
            return;
        }
        let checked = |m: &u32| pr.good.contains(m) || pr.rejected.contains(m);
        if !s.decryptors.iter().chain(&s.rejected).all(checked) {
            return; // partials still to arrive or to be checked
        }
        if let Some(proposed) = p.record.groups.as_ref() {
            // Closed with the groups' sums: only if the sum does not decode here either, with
            // the same groups, each decrypted by members whose partials verified here, to the
            // same flags and weights and the same model.
            if pr.outcome.is_some() {
                refuse("the round is closed with group sums, but its sum decodes here");
                cur.waiting = None;
                return;
            }
            if pr.spoiled.is_none() {
                if pr.grouped.is_none() && !pr.finishing {
                    pr.finishing = true;
                    pr.send(Cmd::Finish);
                }
                return;
            }
            let Some(fb) = pr.fallback.as_mut() else {
                refuse("its contributors are too few for groups here");
                cur.waiting = None;
                return;
            };
            let Some(sums) = fb.sums.as_ref() else {
                return; // the groups' sums are being formed
            };
            if proposed.drawn != fb.groups
                || proposed.revealed.len() != sums.len()
                || proposed
                    .revealed
                    .iter()
                    .zip(sums)
                    .any(|(g, h)| g.sum_hash != *h)
            {
                refuse("other groups, or other group sums");
                cur.waiting = None;
                return;
            }
            let empty = BTreeSet::new();
            let mut pending = false;
            for g in &proposed.revealed {
                let good = fb.good.get(&g.group).unwrap_or(&empty);
                let rejected = fb.rejected.get(&g.group).unwrap_or(&empty);
                if g.unmaskers.iter().any(|m| rejected.contains(m)) {
                    refuse("a group's decryptor's partial is bad here");
                    cur.waiting = None;
                    return;
                }
                pending |= !g.unmaskers.iter().all(|m| good.contains(m));
            }
            if pending {
                return; // partials still to arrive or to be checked
            }
            let Some(results) = fb.results.as_ref() else {
                if !fb.finishing {
                    fb.finishing = true;
                    pr.send(Cmd::FinishGroups);
                }
                return;
            };
            let closed = match judge_group_sums(
                &self.ctx,
                &self.global,
                &group_baseline(&self.store, &self.ctx.layout, self.last.as_ref()),
                &setup.packer,
                &fb.groups,
                results,
            ) {
                Ok(c) => c,
                Err(e) => {
                    refuse(&e);
                    cur.waiting = None;
                    return;
                }
            };
            let same = closed.summary.size == proposed.size
                && closed.summary.skipped == proposed.skipped
                && closed.summary.decided == proposed.decided
                && closed.summary.reference_loss == proposed.reference_loss
                && closed.summary.reference_spread == proposed.reference_spread
                && closed.summary.reference_scale == proposed.reference_scale
                && closed.summary.reference_best == proposed.reference_best
                && closed.summary.usual == proposed.usual
                && closed
                    .summary
                    .revealed
                    .iter()
                    .zip(&proposed.revealed)
                    .all(|(a, b)| {
                        GroupSum {
                            unmaskers: b.unmaskers.clone(),
                            ..a.clone()
                        } == *b
                    });
            if !same {
                refuse("the groups' flags or weights differ from this member's decryption");
                cur.waiting = None;
                return;
            }
            let (proposer, p) = cur.waiting.take().expect("checked");
            let params = Arc::new(model::apply(&self.global, &closed.update));
            self.verify_model(proposer, p, params, "the groups' sums");
            return;
        }
        let Some(outcome) = pr.outcome.as_ref() else {
            if !pr.finishing {
                pr.finishing = true;
                pr.send(Cmd::Finish);
            }
            return;
        };
        let m = match mean(&setup.packer, clip, &outcome.sum, self.global.len()) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "paillier: the decrypted sum does not decode; not approving");
                cur.waiting = None;
                return;
            }
        };
        let (proposer, p) = cur.waiting.take().expect("checked");
        let params = Arc::new(model::apply(&self.global, &m));
        self.verify_model(proposer, p, params, "the decrypted sum");
    }

    /// On the timer: the coordinator announces the sum and decrypts it when enough partials are
    /// in; every member follows the next coordinator when this attempt made no record in time.
    pub(super) async fn paillier_tick(&mut self) {
        if !self.paillier_mode() {
            return;
        }
        let me = self.me();
        let p = self.params().clone();
        let phase = Duration::from_millis(self.ctx.genesis.spec.paillier.phase_timeout_ms);
        let update_timeout = Duration::from_millis(p.update_timeout_ms);
        let failover = Duration::from_millis(p.failover_timeout_ms);
        let threshold = self
            .ctx
            .genesis
            .spec
            .paillier
            .threshold_for(self.ctx.genesis.members.len());
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let Some(pr) = cur.paillier.as_mut() else {
            return;
        };
        let active = cur.state.order().len();
        let next = pr.attempt + 1;
        if pr.expired(update_timeout, phase, failover)
            && cur.state.proposal().is_none()
            && !cur.evaluating
            && (next as usize) < active
        {
            tracing::warn!(
                round = pr.round,
                attempt = next,
                coordinator = cur.state.coordinator(next),
                "paillier: no record in time; failing over to the next coordinator"
            );
            pr.follow(next);
            cur.waiting = None;
        }
        if cur.state.coordinator(pr.attempt) != me || cur.state.proposal().is_some() {
            return;
        }
        let mut announce = None;
        if pr.announced.is_none() {
            match &pr.formed {
                // A sum formed in an earlier attempt: announce the same one.
                Some(close) => {
                    pr.announced = Some((pr.attempt, Instant::now()));
                    pr.heard = Some(Instant::now());
                    announce = Some(close.clone());
                    pr.request_decrypt();
                }
                None if !pr.forming => {
                    let all = pr.updates.len() >= active;
                    let late = pr.round_started.elapsed() >= update_timeout;
                    if (all || late) && pr.updates.len() >= pr.params.min_contributors {
                        // The worker forms it; the announcement follows (`Done::Formed`).
                        pr.wanted = None;
                        pr.forming = true;
                        let set: Vec<u32> = pr.updates.keys().copied().collect();
                        pr.send(Cmd::Form(set));
                    }
                }
                None => {}
            }
        } else if pr.spoiled.is_some() {
            // The sum did not decode: decrypt the groups' sums, then propose from them.
            if let Some(fb) = pr.fallback.as_mut() {
                if fb.results.is_none() && !fb.finishing && fb.sums.is_some() {
                    if fb.ready(active, threshold, phase) {
                        fb.finishing = true;
                        pr.send(Cmd::FinishGroups);
                    }
                } else if fb.results.is_some()
                    && !cur.evaluating
                    && cur.proposed.is_none_or(|a| a < pr.attempt)
                {
                    self.evaluate_paillier_groups();
                }
            }
        } else if pr.outcome.is_none() && !pr.finishing && !pr.gave_up {
            if pr.ready_to_finish(active, threshold, phase) {
                pr.finishing = true;
                pr.send(Cmd::Finish);
            } else if pr.announced.is_some_and(|(_, at)| at.elapsed() >= phase) {
                tracing::warn!(round = pr.round, attempt = pr.attempt, good = pr.good.len(), threshold, rejected = ?pr.rejected, "paillier: fewer than threshold good partial decryptions in time; this attempt fails");
                pr.gave_up = true;
            }
        } else if let Some(outcome) = pr.outcome.clone() {
            // Decrypted in an earlier attempt (or before this member coordinated): propose it.
            if !cur.evaluating && cur.proposed.is_none_or(|a| a < pr.attempt) {
                self.evaluate_paillier(outcome);
            }
        }
        if let Some(close) = announce {
            tracing::info!(round = close.round, contributors = ?close.contributors, "paillier: announcing the encrypted sum (formed in an earlier attempt)");
            self.publish_paillier(PaillierMsg::Close(close)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The weight travels in the vector: the decrypted sum of weighted vectors gives the FedAvg
    /// mean (up to quantization).
    #[test]
    fn weighted_vectors_sum_to_the_fedavg_mean() {
        let packer = Packer::for_key_bits(512, 16, 0.5, 4).unwrap();
        let mut rng = rand::rngs::OsRng;
        let a = weighted(&[0.2, -0.1], 1000, 0.5);
        let b = weighted(&[-0.2, 0.3], 3000, 0.5);
        let qa = packer.quantize(&a, &mut rng).unwrap().values;
        let qb = packer.quantize(&b, &mut rng).unwrap().values;
        let sum: Vec<i64> = qa.iter().zip(&qb).map(|(x, y)| x + y).collect();
        let m = mean(&packer, 0.5, &sum, 2).unwrap();
        let expect = [
            (0.2 * 1000.0 - 0.2 * 3000.0) / 4000.0,
            (-0.1 * 1000.0 + 0.3 * 3000.0) / 4000.0,
        ];
        for (x, e) in m.iter().zip(expect) {
            assert!((x - e).abs() < 1e-3, "{m:?} vs {expect:?}");
        }
        assert!(
            mean(&packer, 0.5, &sum, 3).is_err(),
            "wrong length is refused"
        );
        assert!(
            mean(&packer, 0.5, &[0, 0, 0], 2).is_err(),
            "zero weight is refused"
        );
    }
}
