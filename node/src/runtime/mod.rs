//! The node's round runtime: drives the protocol's round state machine over the network.
//!
//! One task owns all round state. It reacts to network events, to the results of CPU-heavy work
//! (training, evaluation — run on the blocking pool so that gossip keeps flowing), and to a timer
//! that enforces the phase timeouts:
//!
//! 1. A round starts when the log head moves. The member trains from the global model and gossips
//!    its signed update.
//! 2. The round's coordinator (derived from the head) proposes a record once every active member's
//!    update is in, or when the update timeout expires (the missing members are dropouts). If no
//!    proposal arrives, the next member in the order takes over after each failover timeout.
//! 3. Every member recomputes the aggregate and evaluates it; if the proposal matches what it
//!    computed, it approves (ed25519 + BLS share). With `threshold` approvals, every member forms
//!    the threshold signature and appends the entry and the model checkpoint to its log.
//! 4. A member that sees a longer log (status announcements, the handshake) stops its round and
//!    catches up: it fetches entries and checkpoints, verifies them, and appends them.

mod admission;
mod defence;
mod equivocation;
mod hostile;
mod paillier;
mod privacy;
pub(crate) mod secure;
pub(crate) mod sync;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use libp2p::PeerId;
use tokio::sync::mpsc;

use fedmesh_crypto::{bls, Hash};
use fedmesh_protocol::audit::{self, Entry, Metrics, RoundRecord};
use fedmesh_protocol::genesis::Genesis;
use fedmesh_protocol::model::{self, Layout};
use fedmesh_protocol::round::{Added, Round, RoundError};
use fedmesh_protocol::wire::{self, Envelope, Payload, Proposal, Request, Response, Status};
use fedmesh_storage::Store;

use crate::keys::MemberKeys;
use crate::net::{self, Event, Verdict};
use crate::train::{self, MemberData};

pub use admission::PendingRequest;
pub use defence::replay as replay_members;
pub use paillier::Setup as PaillierSetup;

/// State key: the approval this member gave (height, signing hash, attempt), kept across restarts.
const APPROVAL_KEY: &str = "approval";

/// The persisted lock. A lock written by an older build has no attempt: it can never move.
fn decode_lock(bytes: &[u8]) -> Option<(u64, fedmesh_protocol::round::Lock)> {
    use fedmesh_protocol::{codec::decode, round::Lock};
    if let Ok((height, signing_hash, attempt)) = decode::<(u64, Hash, u32)>(bytes, 64) {
        return Some((
            height,
            Lock {
                signing_hash,
                attempt,
            },
        ));
    }
    decode::<(u64, Hash)>(bytes, 64)
        .ok()
        .map(|(height, signing_hash)| {
            (
                height,
                Lock {
                    signing_hash,
                    attempt: u32::MAX,
                },
            )
        })
}
/// Messages kept per sender for the round after the current one (a secagg session has up to ten
/// per member and coordinator).
const EARLY_PER_SENDER: usize = 12;

/// State key: this member's signed update envelope for the round in progress.
const UPDATE_KEY: &str = "own_update";

/// Everything a node needs. Only the member set changes while it runs (an admission in the log
/// adds to `genesis.admitted` and `peers`); the runtime then swaps in an updated copy.
#[derive(Clone)]
pub struct Context {
    pub genesis: Genesis,
    pub genesis_hash: Hash,
    pub bls: bls::PublicSet,
    pub layout: Layout,
    pub keys: Arc<MemberKeys>,
    pub data: MemberData,
    /// Member index of every member's peer id.
    pub peers: HashMap<PeerId, u32>,
    /// Stop after this many rounds are in the log.
    pub rounds: Option<u64>,
    /// What happened to peers' messages so far.
    pub counters: Arc<Counters>,
    /// This member's own privacy budget.
    pub budget: crate::config::Budget,
    /// Fault injection (tests and drills).
    pub faults: crate::config::Faults,
    /// An attacker's plan (drills); honest by default.
    pub attack: crate::attack::Config,
    /// An attacker's poisoned training rows (label flip, backdoor), used in its attack rounds.
    pub poisoned: Option<train::Dataset>,
    /// Mode `paillier`: the joint key, packing and this member's randomness pool.
    pub paillier: Option<Arc<PaillierSetup>>,
    /// This member's admission policy (`[admission]`) and its allow-listed keys.
    pub admission: crate::config::Admission,
    pub admission_keys: Vec<fedmesh_crypto::identity::PublicKey>,
}

/// Settings the networked node cannot honour, refused before it starts (and by the dealer).
pub fn check_spec(spec: &fedmesh_protocol::genesis::Spec) -> anyhow::Result<()> {
    use fedmesh_protocol::genesis::{Mode, RuleKind};
    let r = &spec.robust;
    // With groups, the rule and the scores work on group sums and votes on group testing;
    // without, a secure mode reveals only one sum, which no rule or score can judge.
    let grouped = matches!(spec.mode, Mode::Secagg | Mode::Paillier) && r.group_size > 0;
    if grouped && spec.dp.level == fedmesh_protocol::genesis::DpLevel::Member {
        // Each member adds 1/√n of the noise so that the sum of all n carries it in full; a
        // revealed group sum of s members carries only √(s/n) of it, which the privacy accounting
        // (of the whole sum) does not cover.
        anyhow::bail!(
            "[spec.dp] level = \"member\" with [spec.robust] group_size = {}: each revealed group \
             sum would carry only part of the noise the log accounts for; use level = \"record\" \
             (DP-SGD protects each update on its own) or group_size = 0",
            r.group_size
        );
    }
    if spec.mode != Mode::Plain && !grouped && (r.rule != RuleKind::Mean || r.votes) {
        anyhow::bail!(
            "[spec.robust]: rule {:?} and votes = {} need more than one sum, but mode {} without \
             groups reveals only the sum of everyone; set group_size (at least 2) so \
             that they apply to the sums of random groups, or use rule = \"mean\" and \
             votes = false",
            r.rule,
            r.votes,
            spec.mode
        );
    }
    if r.rule == RuleKind::Foolsgold {
        anyhow::bail!(
            "[spec.robust] rule = \"foolsgold\" needs every member's whole update history, which a \
             member that catches up from the log does not have; the node supports mean, median, \
             trimmed_mean, krum, multi_krum and centered_clipping (foolsgold runs in `fedmesh drill`)"
        );
    }
    Ok(())
}

impl Context {
    /// Die (SIGKILL) if the fault plan says so for this point of `round`, after a short pause that
    /// lets what was just published leave the node: a crash right after a message went out.
    async fn fault(&self, round: u64, at: &str) {
        if self.faults.hits(round, at) {
            tracing::warn!(round, at, "fault injection: killing this node");
            tokio::time::sleep(Duration::from_millis(400)).await;
            die();
        }
    }

    /// Die (SIGKILL) right here if the fault plan says so: for points inside synchronous code
    /// (the training worker, the append of an entry).
    fn fault_now(&self, round: u64, at: &str) {
        if self.faults.hits(round, at) {
            tracing::warn!(round, at, "fault injection: killing this node");
            die();
        }
    }
}

/// Fault injection: end the process as `kill -9` does — no destructor, no flush, no exit handler.
fn die() -> ! {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    // Not reached: SIGKILL cannot be caught. Should raising fail, abort is the next best thing.
    std::process::abort()
}

/// Running totals of the verdicts on gossip messages, for operators and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: std::sync::atomic::AtomicU64,
    pub ignored: std::sync::atomic::AtomicU64,
    pub rejected: std::sync::atomic::AtomicU64,
}

impl Counters {
    fn count(&self, v: Verdict) {
        use std::sync::atomic::Ordering::Relaxed;
        match v {
            Verdict::Accept => self.accepted.fetch_add(1, Relaxed),
            Verdict::Ignore => self.ignored.fetch_add(1, Relaxed),
            Verdict::Reject => self.rejected.fetch_add(1, Relaxed),
        };
    }
}

impl Context {
    fn member_peer(&self, member: u32) -> Option<PeerId> {
        self.peers
            .iter()
            .find(|(_, m)| **m == member)
            .map(|(p, _)| *p)
    }
}

/// Work done off the runtime task, reported back.
enum Work {
    Trained {
        round: u64,
        result: Result<train::TrainOutcome, String>,
    },
    Evaluated {
        round: u64,
        purpose: Purpose,
        params: Arc<Vec<f32>>,
        result: Result<Metrics, String>,
    },
    FetchedUpdate {
        round: u64,
        bytes: Option<Vec<u8>>,
    },
    FetchedCheckpoint {
        round: u64,
        hash: Hash,
        bytes: Option<Vec<u8>>,
    },
    Synced(Result<Box<sync::Outcome>, String>),
    Hello {
        peer: PeerId,
        response: Result<Response, String>,
    },
    /// Mode `paillier`: heavy work of the round's aggregation, done.
    Paillier(paillier::Done),
}

/// Why a model was evaluated.
enum Purpose {
    /// The coordinator's own proposal for `attempt`.
    Propose {
        attempt: u32,
        participants: Vec<u32>,
    },
    /// The coordinator's proposal from a secure sum.
    ProposeSecure {
        attempt: u32,
        outcome: Box<fedmesh_protocol::secagg::Outcome>,
    },
    /// The coordinator's proposal from the judged sums of groups.
    ProposeGroups {
        attempt: u32,
        judged: Box<secure::Judged>,
    },
    /// The coordinator's proposal from a decrypted threshold-Paillier sum.
    ProposePaillier {
        attempt: u32,
        outcome: Box<fedmesh_protocol::paillier::Outcome>,
        /// The round's groups when its whole sum did not decode (the outcome's sum is then the
        /// sum of the groups that did).
        groups: Option<Box<audit::GroupsSummary>>,
    },
    /// Checking `proposal` from `proposer`.
    Verify {
        proposer: u32,
        proposal: Box<Proposal>,
    },
}

/// A round in progress at this member.
struct Current {
    state: Round,
    started: Instant,
    /// Own update envelope, until gossip accepted it.
    unpublished: Option<Vec<u8>>,
    /// Signed update envelopes as received, to serve peers that missed one.
    envelopes: HashMap<u32, Vec<u8>>,
    /// A proposal waiting for updates this member has not received yet.
    waiting: Option<(u32, Proposal)>,
    last_fetch: Option<Instant>,
    /// Proposals already checked (by signing hash), so a re-gossiped one is not evaluated twice.
    checked: HashSet<Hash>,
    evaluating: bool,
    /// The attempt this member proposed for, if any.
    proposed: Option<u32>,
    /// The model of the proposal this member approved or proposed, by signing hash.
    candidate: Option<(Hash, Arc<Vec<f32>>)>,
    /// The model of the later attempt's proposal kept for a move of the lock.
    later_params: Option<Arc<Vec<f32>>>,
    /// A signed entry waiting for its model checkpoint.
    commit_waiting: Option<Entry>,
    /// Mode `secagg`: the sessions of the current attempt (one per group with groups).
    secure: Option<secure::Attempt>,
    /// Mode `secagg`: this member's quantized input, once trained.
    secure_input: Option<Vec<u64>>,
    /// Mode `paillier`: this round's aggregation.
    paillier: Option<paillier::Round>,
    /// Members' contradicting messages of this round ([`equivocation`]).
    detector: fedmesh_protocol::evidence::Detector,
}

impl Current {
    /// Whether a waiting proposal could still be taken up (adopted, or kept to move the lock
    /// to); one that no longer can is dropped.
    fn waiting_open(&mut self) -> bool {
        let open = self
            .waiting
            .as_ref()
            .is_some_and(|(_, p)| self.state.open_to(p.record.attempt));
        if !open {
            self.waiting = None;
        }
        open
    }
}

/// The running node.
pub struct Runtime {
    ctx: Arc<Context>,
    store: Arc<Store>,
    net: net::Handle,
    head: Entry,
    last: Option<RoundRecord>,
    global: Arc<Vec<f32>>,
    current: Option<Current>,
    /// Messages for the next round, held until it starts (bounded: `EARLY_PER_SENDER` per member).
    early: Vec<(Envelope, Vec<u8>)>,
    /// Digests of the bulk-sized messages received for the current round (or an older one): the
    /// network layer forgets their bodies when the next round starts, however young they are.
    round_bulk: Vec<[u8; 32]>,
    /// Equivocation found after its round ([`equivocation::Late`]).
    late: equivocation::Late,
    /// Fault `equivocate_late` only: the second update, held until its round is over.
    held_equivocation: Option<(u64, Vec<u8>)>,
    /// Fault `equivocate_late` only: this member's next update waits until then, after the held
    /// second update went out.
    hold_update_until: Option<Instant>,
    /// Last known log height of each connected peer.
    peer_heights: HashMap<PeerId, u64>,
    syncing: bool,
    /// A peer one entry ahead, and since when: usually the entry is about to land here too.
    behind: Option<(PeerId, Instant)>,
    finished_at: Option<Instant>,
    work_tx: mpsc::Sender<Work>,
    work_rx: mpsc::Receiver<Work>,
    last_status: Instant,
    /// Secure-aggregation actions produced while handling a message, carried out right after.
    secure_pending: Vec<secure::Action>,
    /// Messages gossip could not take yet (no subscribed peer), by round: retried on the timer.
    secure_unpublished: Vec<(u64, Vec<u8>)>,
    /// Scores, votes and the member set as the log has it.
    defence: defence::Defence,
    /// Join requests and admission votes.
    admissions: admission::Admissions,
    /// Commands from the operator's control socket.
    control: Option<mpsc::Receiver<crate::control::Message>>,
}

/// The next command from the control socket, or never if there is none.
async fn recv_control(
    rx: &mut Option<mpsc::Receiver<crate::control::Message>>,
) -> Option<crate::control::Message> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A join request as `fedmesh join` writes it: hex of its encoding.
fn parse_request(text: &str) -> Result<fedmesh_protocol::admission::SignedJoinRequest, String> {
    let bytes = hex::decode(text.trim()).map_err(|e| {
        format!("the join request is not hex ({e}); pass the file `fedmesh join` wrote")
    })?;
    fedmesh_protocol::admission::SignedJoinRequest::decode(&bytes)
        .map_err(|e| format!("not a join request: {e}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Runtime {
    /// Open the node's state: the log head, the last record and the global model.
    pub fn new(mut ctx: Context, store: Store, net: net::Handle) -> anyhow::Result<Runtime> {
        let store = Arc::new(store);
        let head = store.head()?.context("the log has no genesis entry")?;
        let last = match head.height {
            0 => None,
            _ => Some(
                head.record()
                    .map_err(|e| anyhow::anyhow!("log head: {e}"))?,
            ),
        };
        let model_hash = last
            .as_ref()
            .map(|r| r.new_model)
            .unwrap_or(ctx.genesis.initial_model);
        let global = store
            .checkpoint(&ctx.layout, &model_hash)?
            .with_context(|| {
                format!(
                    "the checkpoint of the global model {model_hash} is missing from the data dir"
                )
            })?;
        let g = ctx.genesis.spec.robust.group_size;
        if ctx.genesis.spec.mode != fedmesh_protocol::genesis::Mode::Plain && g > 0 {
            let n = ctx.genesis.members.len();
            anyhow::ensure!(
                n >= g,
                "[spec.robust] group_size = {g}, but the network has only {n} members: no group \
                 can be formed; deal a genesis with group_size at most {n}"
            );
            if n < 3 * g {
                tracing::warn!(
                    members = n,
                    group_size = g,
                    "fewer than 3 groups a round: when the group means disagree there is no \
                     majority of agreeing groups, the round is undecided and the model does not \
                     move; use at least 3 × group_size members"
                );
            }
        }
        let (work_tx, work_rx) = mpsc::channel(64);
        let defence = defence::Defence::load(&ctx.genesis, ctx.genesis_hash, &store)
            .context("replaying the member set from the log")?;
        if defence.evicted().contains(&ctx.keys.index) {
            anyhow::bail!(
                "member {} was evicted from this network by its members' votes (see `fedmesh audit show`)",
                ctx.keys.index
            );
        }
        // Members admitted by the log: known by index and peer id from the start.
        ctx.genesis.set_admitted(defence.members());
        for m in defence.members().admitted() {
            if let Ok(peer) = m.peer_id.parse::<PeerId>() {
                ctx.peers.insert(peer, m.index);
            }
        }
        let next = last.as_ref().map_or(1, |r| r.round + 1);
        let admissions = admission::Admissions::load(
            &store,
            defence.members(),
            ctx.admission.clone(),
            ctx.admission_keys.clone(),
            ctx.keys.index,
            next,
        );
        Ok(Runtime {
            ctx: Arc::new(ctx),
            store,
            net,
            head,
            last,
            global: Arc::new(global),
            current: None,
            early: Vec::new(),
            round_bulk: Vec::new(),
            late: Default::default(),
            held_equivocation: None,
            hold_update_until: None,
            peer_heights: HashMap::new(),
            syncing: false,
            behind: None,
            finished_at: None,
            work_tx,
            work_rx,
            last_status: Instant::now(),
            secure_pending: Vec::new(),
            secure_unpublished: Vec::new(),
            defence,
            admissions,
            control: None,
        })
    }

    /// Take the operator's commands from `rx` (the control socket).
    pub fn with_control(mut self, rx: mpsc::Receiver<crate::control::Message>) -> Runtime {
        self.control = Some(rx);
        self
    }

    fn me(&self) -> u32 {
        self.ctx.keys.index
    }

    fn secure_mode(&self) -> bool {
        self.ctx.genesis.spec.mode == fedmesh_protocol::genesis::Mode::Secagg
    }

    fn new_session(ctx: &Context, state: &Round, attempt: u32) -> Option<secure::Attempt> {
        let mut active = state.order().to_vec();
        active.sort_unstable();
        match secure::Attempt::new(
            &ctx.genesis,
            ctx.genesis_hash,
            state.round,
            attempt,
            state.prev_hash,
            &active,
            state.coordinator(attempt),
            ctx.keys.index,
        ) {
            Ok(s) => {
                if let Some(drawn) = &s.drawn {
                    tracing::info!(round = state.round, attempt, groups = ?drawn, "secagg: groups drawn from the chain head");
                }
                Some(s)
            }
            Err(e) => {
                tracing::error!(error = %e, "secagg: cannot start a session");
                None
            }
        }
    }

    /// Carry out what the secure-aggregation session asks for.
    async fn secure_actions(&mut self, actions: Vec<secure::Action>) {
        for a in actions {
            let Some(cur) = self.current.as_mut() else {
                return;
            };
            let Some(session) = cur.secure.as_ref() else {
                return;
            };
            let (round, attempt) = (cur.state.round, session.attempt);
            let grouped = session.drawn.is_some();
            let ready = session.all_closed() && !cur.evaluating && cur.state.proposal().is_none();
            match a {
                secure::Action::Publish(msg) => {
                    use fedmesh_protocol::wire::SecaggMsg;
                    let point = match &msg {
                        SecaggMsg::Advertise(_) => "advertise",
                        SecaggMsg::Shares(_) => "shares",
                        SecaggMsg::Masked(_) => "masked_input",
                        SecaggMsg::Consistency(_) => "consistency",
                        SecaggMsg::Unmask(_) => "unmask",
                        SecaggMsg::KeyList(_) => "key_list",
                        SecaggMsg::Relay(_) => "relay",
                        SecaggMsg::Survivors(_) => "survivors",
                        SecaggMsg::ConsistencyList(_) => "consistency_list",
                    };
                    let payload = Payload::Secagg {
                        attempt,
                        msg: Box::new(msg),
                    };
                    if self.stalls(round, &payload) {
                        continue;
                    }
                    let env = Envelope::seal(
                        self.ctx.genesis_hash,
                        self.me(),
                        round,
                        payload,
                        &self.ctx.keys.identity,
                    );
                    let bytes = env.encode();
                    if point == "advertise" {
                        // Durable before the keys leave: restarted within this attempt, this
                        // member sits it out rather than advertise other keys for the same slot.
                        if let Err(e) = secure::remember_advertised(&self.store, round, attempt) {
                            tracing::error!(round, attempt, error = %e, "secagg: cannot record the advertisement durably; not advertising in this attempt");
                            continue;
                        }
                    }
                    if let Err(e) = self.net.publish(bytes.clone()).await {
                        tracing::debug!(error = %e, "secagg: not published yet; retrying");
                        self.secure_unpublished.push((round, bytes));
                    }
                    self.equivocate(&env).await;
                    self.ctx.fault(round, point).await;
                }
                secure::Action::Failed | secure::Action::Outcome(_) if grouped => {
                    // With groups: propose once every group's session has ended.
                    if ready {
                        self.propose_groups();
                    }
                }
                secure::Action::Failed => {}
                secure::Action::Outcome(outcome) => {
                    if cur.evaluating || cur.state.proposal().is_some() {
                        continue;
                    }
                    let q = secure::quantizer(&self.ctx.genesis);
                    match q.decode(&outcome.sum) {
                        Ok(decoded) if decoded.mean.len() == self.global.len() => {
                            tracing::info!(round, attempt, survivors = ?outcome.survivors, "secagg: secure sum ready; evaluating");
                            let params = Arc::new(model::apply(&self.global, &decoded.mean));
                            cur.evaluating = true;
                            cur.proposed = Some(attempt);
                            self.evaluate(
                                round,
                                Purpose::ProposeSecure {
                                    attempt,
                                    outcome: Box::new(outcome),
                                },
                                params,
                            );
                        }
                        Ok(_) => tracing::error!("secagg: the sum has the wrong length"),
                        Err(e) => tracing::error!(error = %e, "secagg: the sum does not decode"),
                    }
                }
            }
        }
    }

    fn params(&self) -> &fedmesh_protocol::genesis::Params {
        &self.ctx.genesis.spec.params
    }

    fn next_round(&self) -> u64 {
        self.last.as_ref().map(|r| r.round + 1).unwrap_or(1)
    }

    fn status(&self) -> Status {
        Status {
            height: self.head.height,
            head: self.head.hash(),
            sent_at_ms: now_ms(),
        }
    }

    /// Run until the configured rounds are done (and peers have caught up) or a shutdown signal.
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>) -> anyhow::Result<()> {
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        // Messages published before any peer has subscribed to the topic are lost to the peers
        // that subscribe later: wait (a bounded time) until every member's subscription is in.
        let since = Instant::now();
        let others = self.ctx.genesis.members.len().saturating_sub(1);
        let startup_wait =
            Duration::from_millis(3 * self.params().status_interval_ms).max(Duration::from_secs(3));
        loop {
            tokio::select! {
                biased;
                Some(e) = events.recv() => self.on_event(e).await,
                _ = tick.tick() => {
                    if self.net.topic_peers().await >= others || since.elapsed() >= startup_wait {
                        break;
                    }
                }
            }
        }
        if self.current.is_none() && !self.syncing {
            self.start_round();
        }
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    tracing::info!("shutdown requested; flushing the log");
                    break;
                }
                Some(w) = self.work_rx.recv() => self.on_work(w).await,
                Some(e) = events.recv() => self.on_event(e).await,
                Some(m) = recv_control(&mut self.control) => self.on_control(m),
                _ = tick.tick() => {
                    if self.on_tick().await {
                        break;
                    }
                }
            }
        }
        self.store.flush()?;
        tracing::info!(height = self.head.height, head = %self.head.hash().short(), "stopped");
        let line = serde_json::json!({
            "event": "stopped",
            "height": self.head.height,
            "head": self.head.hash().to_string(),
            "peak_rss_kib": peak_rss_kib(),
        });
        println!("{line}");
        Ok(())
    }

    // ----- rounds -------------------------------------------------------------------------

    /// Remember a bulk body received for the current round (or an older one), so that
    /// [`Self::start_round`] has the network layer forget it: a body of the next round stays.
    /// Bounded: at most one entry per body the store can hold.
    fn note_bulk_body(&mut self, round: u64, data: &[u8]) {
        let current = self.current.as_ref().map(|c| c.state.round);
        if data.len() > fedmesh_protocol::bulk::THRESHOLD
            && current.is_some_and(|r| round <= r)
            && self.round_bulk.len() < crate::net::MAX_BULK_BODIES
        {
            self.round_bulk.push(*blake3::hash(data).as_bytes());
        }
    }

    fn start_round(&mut self) {
        if let Some(cur) = self.current.take() {
            let record = self.last.as_ref().filter(|r| r.round == cur.state.round);
            self.late.retire(cur.state.round, cur.detector, record);
        }
        // The last round's buffers (updates, masks, failover sessions, the messages kept as
        // evidence) and what catching up decoded are freed by now: give the pages back before
        // this round allocates. Once per round (after a commit, after catching up, at start).
        // The network layer's copies of the last round's bulk bodies go first.
        self.net.release_bulk(&std::mem::take(&mut self.round_bulk));
        let rss = crate::memory::release("round over");
        let round = self.next_round();
        report_memory(round - 1, rss);
        crate::memory::diag_exit_after(round - 1);
        if let Some(target) = self.ctx.rounds {
            if round > target {
                if self.finished_at.is_none() {
                    tracing::info!(rounds = target, "all configured rounds are in the log");
                    self.finished_at = Some(Instant::now());
                }
                return;
            }
        }
        if self.syncing {
            return;
        }
        self.repeat_votes();
        let active = self.defence.active();
        let base = self.ctx.layout.hash(&self.global);
        let mut state = Round::new(
            &self.ctx.genesis,
            self.head.height + 1,
            self.head.hash(),
            round,
            base,
            &active,
        );
        if let Ok(Some(bytes)) = self.store.get_state(APPROVAL_KEY) {
            if let Some((height, lock)) = decode_lock(&bytes) {
                if height == state.height {
                    state.lock_approval(lock);
                }
            }
        }
        tracing::info!(
            round,
            height = state.height,
            coordinator = state.coordinator(0),
            "round started"
        );
        if state.coordinator(0) == self.me() {
            // Fault injection: die before doing anything in the round this node coordinates.
            self.ctx.fault_now(round, "coordinating");
        }
        let signers = fedmesh_protocol::evidence::Signers::of(&self.ctx.genesis, state.height);
        let mut cur = Current {
            state,
            started: Instant::now(),
            unpublished: None,
            envelopes: HashMap::new(),
            waiting: None,
            last_fetch: None,
            checked: HashSet::new(),
            evaluating: false,
            proposed: None,
            candidate: None,
            commit_waiting: None,
            later_params: None,
            secure: None,
            secure_input: None,
            paillier: None,
            detector: fedmesh_protocol::evidence::Detector::watching_approvals(signers),
        };
        if self.secure_mode() {
            cur.secure = Self::new_session(&self.ctx, &cur.state, 0);
        }
        if self.paillier_mode() {
            cur.paillier = paillier::Round::start(&self.ctx, &cur.state, self.work_tx.clone());
        }
        // After a restart mid-round, resend the update already sent instead of making a new one
        // (mode secagg retrains, and sits out the attempt it had advertised keys in: it joins the
        // next attempt or round with fresh keys, see `secure::Attempt::join`). In
        // mode paillier a new encryption would differ from the ciphertext the others already
        // summed, and this member would refuse to decrypt their sum.
        let saved = (!self.secure_mode())
            .then(|| self.store.get_large_state(UPDATE_KEY).ok().flatten())
            .flatten()
            .and_then(|b| {
                let env = Envelope::open(
                    &b,
                    fedmesh_protocol::codec::HARD_LIMIT,
                    &self.ctx.genesis,
                    self.ctx.genesis_hash,
                    None,
                )
                .ok()?;
                (env.round == round && env.sender == self.me()).then_some((env, b))
            });
        match saved {
            Some((env, bytes)) => match env.payload {
                Payload::Update(u) => {
                    let added = cur.state.add_update(self.me(), u).is_ok();
                    if added {
                        cur.envelopes.insert(self.me(), bytes.clone());
                        cur.unpublished = Some(bytes);
                    }
                }
                Payload::Paillier { msg, .. } => {
                    if let (wire::PaillierMsg::Update(u), Some(pr)) = (*msg, cur.paillier.as_mut())
                    {
                        tracing::info!(
                            round,
                            "paillier: resending the encrypted update sent before a restart"
                        );
                        pr.resume_update(u);
                        cur.envelopes.insert(self.me(), bytes.clone());
                        self.secure_unpublished.push((round, bytes));
                    }
                }
                _ => {}
            },
            None if !privacy::within_budget(&self.ctx, &self.store, round) => {}
            None => {
                let ctx = self.ctx.clone();
                let global = self.global.clone();
                let tx = self.work_tx.clone();
                let seed = round_seed(&ctx, round);
                tokio::task::spawn_blocking(move || {
                    let rows = match &ctx.poisoned {
                        Some(p) if ctx.attack.active_in(round) => p,
                        _ => &ctx.data.train,
                    };
                    let result =
                        privacy::train(&ctx, &global, rows, round, seed).map_err(|e| e.to_string());
                    ctx.fault_now(round, "training");
                    let _ = tx.blocking_send(Work::Trained { round, result });
                });
            }
        }
        self.current = Some(cur);
        // Messages that arrived early for this round.
        let early = std::mem::take(&mut self.early);
        for (env, bytes) in early {
            if env.round == round {
                self.on_envelope(env, bytes, None);
            }
        }
    }

    fn on_trained(
        &mut self,
        round: u64,
        result: Result<train::TrainOutcome, String>,
    ) -> Vec<secure::Action> {
        let me = self.me();
        let Some(cur) = self.current.as_mut().filter(|c| c.state.round == round) else {
            return Vec::new();
        };
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(round, error = %e, "local training failed; this member sits the round out");
                return Vec::new();
            }
        };
        let mut delta: Vec<f32> = outcome
            .params
            .iter()
            .zip(self.global.iter())
            .map(|(n, o)| n - o)
            .collect();
        let disclosed = privacy::protect(
            &self.ctx.genesis,
            privacy::secret(&self.ctx, round, "member-noise"),
            &mut delta,
            self.ctx.data.train.len() as u64,
            outcome.mean_loss,
        );
        let attack = &self.ctx.attack;
        if attack.active_in(round) {
            // An attacker (drills): what it sends instead of its honest update. Omniscient
            // attacks see the updates that reached it so far (none in mode secagg).
            use rand::SeedableRng;
            let others: Vec<u32> = cur
                .state
                .contributors()
                .into_iter()
                .filter(|m| *m != me)
                .collect();
            let inputs = cur.state.inputs(&others);
            let honest: Vec<&[f32]> = inputs.iter().map(|i| i.values).collect();
            let n = cur.state.order().len();
            let f = fedmesh_protocol::robust::default_attackers(n).max(1);
            let mut rng =
                rand_chacha::ChaCha20Rng::seed_from_u64(round_seed(&self.ctx, round) ^ 0xa77ac);
            delta = attack.poison_update(&delta, &honest, n, f, &mut rng);
            tracing::warn!(
                round,
                attack = attack.kind.name(),
                "attacking: sending a poisoned update"
            );
        }
        if let Some(pr) = cur.paillier.as_ref() {
            // Mode paillier: the update leaves this member only encrypted.
            tracing::info!(
                round,
                loss = outcome.mean_loss,
                "trained; encrypting the update"
            );
            paillier::encrypt(&self.ctx, pr, delta, self.work_tx.clone());
            return Vec::new();
        }
        if let Some(session) = cur.secure.as_mut() {
            // Mode secagg: the update never leaves this member unmasked.
            let q = secure::quantizer(&self.ctx.genesis);
            let weight = disclosed.weight.min(q.max_weight);
            return match q.encode(&delta, weight) {
                Ok(encoded) => {
                    tracing::info!(
                        round,
                        loss = outcome.mean_loss,
                        clipped = encoded.clipped,
                        "trained; joining secure aggregation"
                    );
                    cur.secure_input = Some(encoded.values.clone());
                    session.join(encoded.values, &self.ctx.keys.identity, &self.store)
                }
                Err(e) => {
                    tracing::error!(round, error = %e, "cannot quantize the update; this member sits the round out");
                    Vec::new()
                }
            };
        }
        let update = wire::Update {
            base_model: cur.state.base_model,
            num_samples: disclosed.weight,
            train_loss: disclosed.train_loss,
            delta,
        };
        let env = Envelope::seal(
            self.ctx.genesis_hash,
            me,
            round,
            Payload::Update(update.clone()),
            &self.ctx.keys.identity,
        );
        let bytes = env.encode();
        if let Err(e) = cur.state.add_update(me, update) {
            tracing::error!(round, error = %e, "own update rejected");
            return Vec::new();
        }
        let _ = self.store.put_large_state(UPDATE_KEY, &bytes);
        tracing::info!(
            round,
            loss = outcome.mean_loss,
            steps = outcome.steps,
            "trained; sending update"
        );
        cur.envelopes.insert(me, bytes.clone());
        cur.unpublished = Some(bytes);
        Vec::new()
    }

    /// Gossip this member's update if it has not gone out yet (no subscribed peer yet: retried on
    /// the next tick).
    async fn publish_update(&mut self) {
        let Some(bytes) = self.current.as_ref().and_then(|c| c.unpublished.clone()) else {
            return;
        };
        if self.held_equivocation.is_some()
            || self.hold_update_until.is_some_and(|t| Instant::now() < t)
        {
            // Fault `equivocate_late`: the held second update of the last round goes out first,
            // and this update follows it only after a pause: both are bulk bodies, fetched
            // independently, so without the pause this update (and with it the next record)
            // could reach the others before the late one — beyond the evidence window.
            return;
        }
        match self.net.publish(bytes.clone()).await {
            Ok(()) => {}
            Err(e) if e.contains("Duplicate") => {}
            Err(e) => {
                tracing::debug!(error = %e, "update not published yet; retrying");
                return;
            }
        }
        if let Some(c) = self.current.as_mut() {
            c.unpublished = None;
            let round = c.state.round;
            self.ctx.fault(round, "update_sent").await;
        }
        if self.ctx.faults.at.starts_with("equivocate") {
            if let Ok(env) = fedmesh_protocol::codec::decode::<Envelope>(&bytes, bytes.len()) {
                self.equivocate(&env).await;
            }
        }
    }

    /// Timer: publish what is pending, propose when it is this member's turn, announce status.
    /// Returns true when the node should stop.
    async fn on_tick(&mut self) -> bool {
        if self.last_status.elapsed() >= Duration::from_millis(self.params().status_interval_ms) {
            self.last_status = Instant::now();
            let env = Envelope::seal(
                self.ctx.genesis_hash,
                self.me(),
                self.next_round(),
                Payload::Status(self.status()),
                &self.ctx.keys.identity,
            );
            let _ = self.net.publish(env.encode()).await;
        }
        self.publish_update().await;
        self.retry_unpublished().await;
        self.release_late_equivocation().await;
        self.check_behind();
        self.maybe_propose();
        self.maybe_fetch_missing();
        self.secure_tick().await;
        self.paillier_tick().await;
        if let Some(at) = self.finished_at {
            // Stay a little so that peers still finishing the last round can fetch from us.
            let peers_behind = self.peer_heights.values().any(|h| *h < self.head.height);
            let linger = Duration::from_millis(3 * self.params().status_interval_ms);
            if at.elapsed() >= linger && (!peers_behind || at.elapsed() >= Duration::from_secs(20))
            {
                return true;
            }
        }
        false
    }

    fn maybe_propose(&mut self) {
        let me = self.me();
        let update_timeout = Duration::from_millis(self.params().update_timeout_ms);
        let failover = Duration::from_millis(self.params().failover_timeout_ms);
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        if cur.evaluating || cur.state.proposal().is_some() || cur.state.update_count() == 0 {
            return;
        }
        if cur.unpublished.is_some() {
            // The coordinator's own update goes out before its proposal: the others then have it
            // by gossip instead of fetching it when the proposal names it. (An update that cannot
            // be gossiped means no subscribed peer, and then neither can a proposal.) Fault
            // `equivocate_late` holds the update back, and with it the proposal: otherwise a
            // faulty coordinator's next record could beat its own late second update.
            return;
        }
        let elapsed = cur.started.elapsed();
        let n = cur.state.order().len() as u32;
        if elapsed >= update_timeout / 2
            && elapsed < update_timeout
            && !cur.state.has_all_updates()
            && cur.state.coordinator(0) == me
        {
            // A coordinator that has just started or just been admitted missed the updates that
            // were gossiped before it subscribed: ask the others for them before the timeout makes
            // their senders dropouts.
            self.fetch_missing_updates();
            return;
        }
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let attempt = if elapsed < update_timeout {
            if !cur.state.has_all_updates() {
                return;
            }
            0
        } else {
            (((elapsed - update_timeout).as_millis() / failover.as_millis().max(1)) as u32)
                .min(n - 1)
        };
        if cur.state.coordinator(attempt) != me || cur.proposed.is_some_and(|a| a >= attempt) {
            return;
        }
        let participants = cur.state.contributors();
        let delta = match cur.state.aggregate(&participants) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot aggregate");
                return;
            }
        };
        cur.proposed = Some(attempt);
        cur.evaluating = true;
        tracing::info!(round = cur.state.round, attempt, participants = ?participants, "coordinating: aggregating and evaluating");
        let round = cur.state.round;
        let params = Arc::new(model::apply(&self.global, &delta));
        self.evaluate(
            round,
            Purpose::Propose {
                attempt,
                participants,
            },
            params,
        );
    }

    fn evaluate(&self, round: u64, purpose: Purpose, params: Arc<Vec<f32>>) {
        let ctx = self.ctx.clone();
        let tx = self.work_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = train::evaluate(&ctx.layout, &params, &ctx.data.test)
                .map(|e| Metrics {
                    accuracy: e.accuracy,
                    loss: e.loss,
                    test_samples: e.samples,
                })
                .map_err(|e| e.to_string());
            let _ = tx.blocking_send(Work::Evaluated {
                round,
                purpose,
                params,
                result,
            });
        });
    }

    async fn on_evaluated(
        &mut self,
        round: u64,
        purpose: Purpose,
        params: Arc<Vec<f32>>,
        result: Result<Metrics, String>,
    ) {
        let me = self.me();
        let Some(cur) = self.current.as_mut().filter(|c| c.state.round == round) else {
            return;
        };
        cur.evaluating = false;
        let metrics = match result {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(round, error = %e, "evaluation failed");
                return;
            }
        };
        let hash = self.ctx.layout.hash(&params);
        match purpose {
            Purpose::Propose {
                attempt,
                participants,
            } => {
                if cur.state.proposal().is_some() {
                    return; // someone else's proposal got here first
                }
                if participants.iter().any(|m| cur.state.is_excluded(*m)) {
                    // A participant was caught equivocating while the model was evaluated:
                    // aggregate again without it.
                    cur.proposed = None;
                    return;
                }
                let evictions = self.defence.evictions(round);
                for e in &evictions {
                    tracing::info!(
                        round,
                        target = e.target,
                        votes = e.votes.len(),
                        "proposing an eviction"
                    );
                }
                let mut p = cur.state.propose(
                    attempt,
                    me,
                    &participants,
                    hash,
                    metrics,
                    now_ms(),
                    evictions,
                );
                p.record.admissions = self.admissions.records(self.defence.members(), round);
                for a in &p.record.admissions {
                    tracing::info!(
                        round,
                        index = a.index,
                        peer = %a.request.request.peer_id,
                        votes = a.votes.len(),
                        "proposing an admission"
                    );
                }
                if let Err(e) = privacy::attach(&self.ctx.genesis, &self.store, &mut p.record) {
                    tracing::error!(round, error = %e, "cannot account the round's privacy; not proposing");
                    return;
                }
                tracing::info!(round, attempt, accuracy = metrics.accuracy, dropouts = ?p.record.dropouts, "proposing the round record");
                self.propose(p, params).await;
            }
            Purpose::ProposeSecure { attempt, outcome } => {
                if cur.state.proposal().is_some() {
                    return;
                }
                let Some(session) = cur
                    .secure
                    .as_ref()
                    .filter(|s| s.attempt == attempt)
                    .and_then(|a| a.sessions.first())
                else {
                    return;
                };
                let participants = outcome
                    .survivors
                    .iter()
                    .map(|m| secure::contribution(session, *m))
                    .collect();
                let total_weight = secure::quantizer(&self.ctx.genesis)
                    .decode(&outcome.sum)
                    .map(|d| d.total_weight)
                    .unwrap_or(0);
                let mut dropouts: Vec<u32> = cur
                    .state
                    .order()
                    .iter()
                    .copied()
                    .filter(|m| !outcome.survivors.contains(m))
                    .collect();
                dropouts.sort_unstable();
                let unmaskers: Vec<u32> = session.unmask.keys().copied().collect();
                let mut p = Proposal {
                    height: cur.state.height,
                    prev_hash: cur.state.prev_hash,
                    record: RoundRecord {
                        evidence: Vec::new(),
                        round,
                        mode: fedmesh_protocol::genesis::Mode::Secagg,
                        attempt,
                        coordinator: me,
                        base_model: cur.state.base_model,
                        new_model: hash,
                        participants,
                        dropouts,
                        metrics,
                        proposed_at_ms: now_ms(),
                        secure: Some(fedmesh_protocol::audit::SecureSummary {
                            session: session.params.round,
                            total_weight,
                            unmaskers,
                            dropped_before_sharing: outcome.dropped_before_sharing.clone(),
                            dropped_after_sharing: outcome.dropped_after_sharing.clone(),
                            dropped_while_unmasking: outcome.dropped_while_unmasking.clone(),
                        }),
                        evictions: Vec::new(),
                        privacy: None,
                        admissions: Vec::new(),
                        paillier: None,
                        groups: None,
                    },
                };
                if let Err(e) = privacy::attach(&self.ctx.genesis, &self.store, &mut p.record) {
                    tracing::error!(round, error = %e, "cannot account the round's privacy; not proposing");
                    return;
                }
                tracing::info!(round, attempt, accuracy = metrics.accuracy, dropouts = ?p.record.dropouts, "proposing the round record (secure sum)");
                self.propose(p, params).await;
            }
            Purpose::ProposeGroups { attempt, judged } => {
                if cur.state.proposal().is_some() {
                    return;
                }
                let Some(att) = cur.secure.as_ref().filter(|s| s.attempt == attempt) else {
                    return;
                };
                let summary = judged.summary;
                let mut participants = Vec::new();
                let mut secure_summary = fedmesh_protocol::audit::SecureSummary {
                    session: fedmesh_protocol::secagg::session(round, attempt),
                    total_weight: 0,
                    unmaskers: Vec::new(),
                    dropped_before_sharing: Vec::new(),
                    dropped_after_sharing: Vec::new(),
                    dropped_while_unmasking: Vec::new(),
                };
                for gs in &summary.revealed {
                    let Some(session) = att.sessions.get(gs.group as usize) else {
                        return;
                    };
                    participants.extend(
                        gs.contributors
                            .iter()
                            .map(|m| secure::contribution(session, *m)),
                    );
                    secure_summary.total_weight += gs.total_weight;
                    secure_summary.unmaskers.extend(&gs.unmaskers);
                    if let Some(o) = &session.outcome {
                        secure_summary
                            .dropped_before_sharing
                            .extend(&o.dropped_before_sharing);
                        secure_summary
                            .dropped_after_sharing
                            .extend(&o.dropped_after_sharing);
                        secure_summary
                            .dropped_while_unmasking
                            .extend(&o.dropped_while_unmasking);
                    }
                }
                participants.sort_by_key(|c| c.member);
                for list in [
                    &mut secure_summary.unmaskers,
                    &mut secure_summary.dropped_before_sharing,
                    &mut secure_summary.dropped_after_sharing,
                    &mut secure_summary.dropped_while_unmasking,
                ] {
                    list.sort_unstable();
                }
                let mut dropouts: Vec<u32> = cur
                    .state
                    .order()
                    .iter()
                    .copied()
                    .filter(|m| !participants.iter().any(|c| c.member == *m))
                    .collect();
                dropouts.sort_unstable();
                let evictions = self.defence.evictions(round);
                let flagged: Vec<u32> = summary
                    .revealed
                    .iter()
                    .filter(|g| g.flagged)
                    .map(|g| g.group)
                    .collect();
                let mut p = Proposal {
                    height: cur.state.height,
                    prev_hash: cur.state.prev_hash,
                    record: RoundRecord {
                        round,
                        mode: fedmesh_protocol::genesis::Mode::Secagg,
                        attempt,
                        coordinator: me,
                        base_model: cur.state.base_model,
                        new_model: hash,
                        participants,
                        dropouts,
                        metrics,
                        proposed_at_ms: now_ms(),
                        secure: Some(secure_summary),
                        evictions,
                        privacy: None,
                        paillier: None,
                        groups: Some(summary),
                        admissions: Vec::new(),
                        evidence: Vec::new(),
                    },
                };
                if let Err(e) = privacy::attach(&self.ctx.genesis, &self.store, &mut p.record) {
                    tracing::error!(round, error = %e, "cannot account the round's privacy; not proposing");
                    return;
                }
                tracing::info!(round, attempt, accuracy = metrics.accuracy, ?flagged, dropouts = ?p.record.dropouts, "proposing the round record (group sums)");
                self.propose(p, params).await;
            }
            Purpose::ProposePaillier {
                attempt,
                outcome,
                groups,
            } => {
                self.propose_paillier(attempt, *outcome, groups.map(|g| *g), metrics, hash, params)
                    .await;
            }
            Purpose::Verify { proposer, proposal } => {
                let r = &proposal.record;
                let close = (r.metrics.accuracy - metrics.accuracy).abs() <= 2e-3
                    && (r.metrics.loss - metrics.loss).abs() <= 1e-3 * metrics.loss.abs().max(1.0)
                    && r.metrics.test_samples == metrics.test_samples;
                if !close {
                    tracing::warn!(round, proposer, claimed = ?r.metrics, computed = ?metrics, "proposal's metrics differ from this member's evaluation; not approving");
                    return;
                }
                if cur.state.proposal().is_none() {
                    cur.state.set_proposal(*proposal);
                    self.approve(params).await;
                } else if cur.state.offer_later(*proposal) {
                    cur.later_params = Some(params);
                    self.try_move().await;
                }
            }
        }
    }

    /// Retry what gossip could not take yet, as long as its round is still the current one.
    async fn retry_unpublished(&mut self) {
        let round = self.next_round();
        for (r, bytes) in std::mem::take(&mut self.secure_unpublished) {
            if r == round {
                if let Err(e) = self.net.publish(bytes.clone()).await {
                    if !e.contains("Duplicate") {
                        self.secure_unpublished.push((r, bytes));
                    }
                }
            }
        }
    }

    /// Publish now, or keep the message for this round's retries (no subscribed peer yet).
    async fn publish_or_keep(&mut self, round: u64, bytes: Vec<u8>) -> Result<(), String> {
        match self.net.publish(bytes.clone()).await {
            Ok(()) => Ok(()),
            Err(e) if e.contains("Duplicate") => Ok(()),
            Err(e) => {
                self.secure_unpublished.push((round, bytes));
                Err(e)
            }
        }
    }

    /// As this round's coordinator: gossip `p`, adopt it, and approve it.
    async fn propose(&mut self, mut p: Proposal, params: Arc<Vec<f32>>) {
        let me = self.me();
        let limit = self.params().max_message_bytes;
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        equivocation::attach(&mut p, &cur.detector, &self.late, limit);
        if p.record.attempt == 0 && self.ctx.faults.hits(cur.state.round, "propose_refused") {
            let a = p.record.metrics.accuracy;
            p.record.metrics.accuracy = if a > 0.5 { a - 0.25 } else { a + 0.25 };
            tracing::warn!(
                round = cur.state.round,
                "fault injection: proposing a record with wrong metrics, which the others refuse"
            );
        }
        let env = Envelope::seal(
            self.ctx.genesis_hash,
            me,
            cur.state.round,
            Payload::Proposal(Box::new(p.clone())),
            &self.ctx.keys.identity,
        );
        let bytes = env.encode();
        let found = cur.detector.note_proposal(
            cur.state.round,
            p.entry().signing_hash(),
            p.record.attempt,
            &bytes,
        );
        equivocation::approvals_caught(&found);
        cur.state.set_proposal(p);
        let round = cur.state.round;
        if let Err(e) = self.publish_or_keep(round, bytes).await {
            tracing::warn!(error = %e, "could not publish the proposal yet; retrying");
        }
        self.ctx.fault(round, "proposed").await;
        self.approve(params).await;
        self.double_approve(round).await;
    }

    /// Move this member's approval to a later attempt's checked proposal once the record it
    /// approved provably cannot gather the threshold ([`Round::try_move`]).
    async fn try_move(&mut self) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let from = cur.state.lock();
        if cur.later_params.is_none() || !cur.state.try_move() {
            return;
        }
        let params = cur.later_params.take().expect("checked");
        let support = from.map(|l| cur.state.unlock_support(&l));
        tracing::info!(
            round = cur.state.round,
            from_attempt = from.map(|l| l.attempt),
            to_attempt = cur.state.proposal().map(|p| p.record.attempt),
            ?support,
            "moving the approval to a later attempt: the approved record can no longer reach the threshold"
        );
        self.approve(params).await;
    }

    /// Approve the current proposal (one record per attempt, locks moving only to later attempts,
    /// even across restarts).
    async fn approve(&mut self, params: Arc<Vec<f32>>) {
        let me = self.me();
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let Some(bls_share) = self.ctx.keys.bls.as_ref() else {
            // An admitted member holds no BLS share: the genesis members sign the log.
            return;
        };
        let approval = match cur.state.approve(&self.ctx.keys.identity, bls_share) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "not approving");
                return;
            }
        };
        let attempt = cur.state.lock().map_or(0, |l| l.attempt);
        let lock =
            fedmesh_protocol::codec::encode(&(cur.state.height, approval.signing_hash, attempt));
        if let Err(e) = self
            .store
            .put_state(APPROVAL_KEY, &lock)
            .and_then(|_| self.store.flush())
        {
            tracing::error!(error = %e, "cannot persist the approval; not sending it");
            return;
        }
        cur.candidate = Some((approval.signing_hash, params));
        let round = cur.state.round;
        let env = Envelope::seal(
            self.ctx.genesis_hash,
            me,
            round,
            Payload::Approval(approval.clone()),
            &self.ctx.keys.identity,
        );
        if let Err(e) = cur
            .state
            .add_approval(&self.ctx.genesis, &self.ctx.bls, me, approval)
        {
            tracing::error!(error = %e, "own approval rejected");
        }
        if let Err(e) = self.publish_or_keep(round, env.encode()).await {
            tracing::warn!(error = %e, "could not publish the approval yet; retrying");
        }
        self.ctx.fault(round, "approved").await;
        self.move_unproven(round).await;
        self.try_commit().await;
    }

    async fn try_commit(&mut self) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let Some(entry) = cur.state.try_commit(&self.ctx.bls) else {
            return;
        };
        let record = match entry.record() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "signed entry does not decode");
                return;
            }
        };
        // The model: the one this member computed, else recompute from the updates, else fetch.
        let params = match &cur.candidate {
            Some((h, p)) if *h == entry.signing_hash() => Some(p.clone()),
            _ => {
                let participants: Vec<u32> = record.participants.iter().map(|c| c.member).collect();
                cur.state
                    .aggregate(&participants)
                    .ok()
                    .map(|d| Arc::new(model::apply(&self.global, &d)))
                    .filter(|p| self.ctx.layout.hash(p) == record.new_model)
            }
        };
        match params {
            Some(p) => self.commit(entry, record, p),
            None => {
                if cur.commit_waiting.is_none() {
                    cur.commit_waiting = Some(entry);
                    self.fetch_checkpoint(record.round, record.coordinator, record.new_model);
                }
            }
        }
    }

    fn fetch_checkpoint(&self, round: u64, from: u32, hash: Hash) {
        let Some(peer) = self.ctx.member_peer(from) else {
            return;
        };
        let net = self.net.clone();
        let tx = self.work_tx.clone();
        tokio::spawn(async move {
            let bytes = match net.request(peer, Request::Checkpoint(hash)).await {
                Ok(Response::Checkpoint(b)) => b,
                _ => None,
            };
            let _ = tx
                .send(Work::FetchedCheckpoint { round, hash, bytes })
                .await;
        });
    }

    /// Append a signed entry with its model, and start the next round.
    fn commit(&mut self, entry: Entry, record: RoundRecord, params: Arc<Vec<f32>>) {
        let checks = entry
            .verify(&self.ctx.genesis, self.ctx.genesis_hash, &self.ctx.bls)
            .and_then(|_| audit::verify_link(&self.head, &entry))
            .and_then(|_| {
                audit::verify_succession(&self.ctx.genesis, self.last.as_ref(), &entry, &record)
            })
            .map_err(|e| e.to_string())
            // Evictions and admissions (their votes' signatures included) against the member set.
            .and_then(|_| self.defence.check(entry.height, &record));
        if let Err(e) = checks {
            tracing::error!(error = %e, "refusing to append an entry that does not verify");
            return;
        }
        let stored = self
            .store
            .put_checkpoint(&self.ctx.layout, &params)
            .map_err(anyhow::Error::from)
            .and_then(|h| {
                anyhow::ensure!(
                    h == record.new_model,
                    "checkpoint hash {h} is not the record's model {}",
                    record.new_model
                );
                Ok(())
            })
            .and_then(|_| {
                self.store
                    .append_with(&entry, || self.ctx.fault_now(record.round, "appending"))
                    .map_err(anyhow::Error::from)
            });
        if let Err(e) = stored {
            tracing::error!(error = %e, "cannot append the round to the log");
            return;
        }
        let participants: Vec<u32> = record.participants.iter().map(|c| c.member).collect();
        tracing::info!(
            round = record.round,
            height = entry.height,
            accuracy = record.metrics.accuracy,
            loss = record.metrics.loss,
            participants = ?participants,
            dropouts = ?record.dropouts,
            head = %entry.hash().short(),
            "round committed"
        );
        report_round(&entry, &record);
        self.ctx.fault_now(record.round, "appended");
        self.defence
            .equivocated(&self.store, record.round, &equivocation::culprits(&record));
        self.late.committed(&record);
        let mut votes = self.score_round(&record, &params);
        votes.extend(self.defence.observe_groups(
            &self.ctx.genesis,
            &self.store,
            self.me(),
            &record,
        ));
        let change = self.defence.committed(&self.store, entry.height, &record);
        let round = record.round;
        self.head = entry;
        self.last = Some(record);
        self.global = params;
        let voted = !votes.is_empty();
        for vote in votes {
            self.cast_vote(vote);
        }
        if voted && self.ctx.faults.hits_from(round, "voted") {
            // Fault injection: the votes are counted and stored, not yet gossiped.
            tracing::warn!(round, at = "voted", "fault injection: killing this node");
            die();
        }
        self.on_admitted(&change.admitted);
        if self.on_evicted(&change.evicted) {
            return;
        }
        self.start_round();
    }

    /// Mode plain with votes on: score the participants of the round just committed (against
    /// the update the record applied) and return the votes this member casts.
    fn score_round(
        &mut self,
        record: &RoundRecord,
        params: &[f32],
    ) -> Vec<fedmesh_protocol::votes::Vote> {
        if !self.defence.votes_on(self.ctx.genesis.spec.mode)
            || record.mode != fedmesh_protocol::genesis::Mode::Plain
        {
            return Vec::new();
        }
        let Some(cur) = self
            .current
            .as_ref()
            .filter(|c| c.state.round == record.round)
        else {
            return Vec::new();
        };
        let participants: Vec<u32> = record.participants.iter().map(|c| c.member).collect();
        let inputs = cur.state.inputs(&participants);
        if inputs.len() != participants.len() {
            return Vec::new();
        }
        let applied: Vec<f32> = params
            .iter()
            .zip(self.global.iter())
            .map(|(n, o)| n - o)
            .collect();
        let me = self.me();
        let votes = self
            .defence
            .score_round(&self.store, me, record.round, &inputs, &applied);
        for v in &votes {
            tracing::warn!(
                round = record.round,
                target = v.target,
                score = v.score,
                "voting to evict a member whose updates stay anomalous"
            );
        }
        votes
    }

    /// Sign and count this member's vote. Counting stores it (sled), and it is gossiped with the
    /// member's other pending votes when the next round starts ([`Runtime::repeat_votes`]).
    fn cast_vote(&mut self, vote: fedmesh_protocol::votes::Vote) {
        let signed = fedmesh_protocol::votes::SignedVote::sign(
            self.ctx.genesis_hash,
            vote,
            &self.ctx.keys.identity,
        );
        let round = self.next_round();
        if let Err(e) = self.defence.count(&self.store, &signed, round) {
            tracing::warn!(error = %e, "own vote not counted");
        }
    }

    /// Gossip every eviction vote of this member that is still pending (no eviction record for
    /// it committed, its target still a member, not expired), in an envelope of the round about
    /// to start. Called each time a round starts, so that a vote outlives the round it was cast
    /// in: a member that missed it (restarting, catching up, or gossip had no peers when it was
    /// cast) hears it again, as with admission votes. Each is retried in the background for a
    /// while; the receivers count a vote once (`Outcome::Known` after that).
    fn repeat_votes(&self) {
        let round = self.next_round();
        for signed in self.defence.own_votes(self.me(), round) {
            let env = Envelope::seal(
                self.ctx.genesis_hash,
                self.me(),
                round,
                Payload::Vote(signed),
                &self.ctx.keys.identity,
            );
            let bytes = env.encode();
            let net = self.net.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    match net.publish(bytes.clone()).await {
                        Ok(()) => return,
                        Err(e) if e.contains("Duplicate") => return,
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            });
        }
    }

    /// Members the last record evicted: block their peers; if this member is one of them, stop.
    /// Returns true if this member was evicted.
    fn on_evicted(&mut self, evicted: &[u32]) -> bool {
        for m in evicted {
            tracing::warn!(
                member = m,
                "member evicted by its peers' votes; refusing it from now on"
            );
            if let Some(peer) = self.ctx.member_peer(*m) {
                let net = self.net.clone();
                tokio::spawn(async move { net.block(peer).await });
            }
        }
        if evicted.contains(&self.me()) {
            tracing::error!(
                member = self.me(),
                "this member was evicted by the others' votes; it takes no further part (see `fedmesh audit show`)"
            );
            self.current = None;
            self.finished_at = Some(Instant::now());
            return true;
        }
        false
    }

    // ----- messages -----------------------------------------------------------------------

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Gossip {
                id,
                propagation_source,
                source,
                data,
            } => {
                let publisher = source.map(|p| p.to_string());
                let verdict = match Envelope::open(
                    &data,
                    self.params().max_message_bytes,
                    &self.ctx.genesis,
                    self.ctx.genesis_hash,
                    publisher.as_deref(),
                ) {
                    Ok(env) => {
                        let peer = source.unwrap_or(propagation_source);
                        self.note_bulk_body(env.round, &data);
                        self.on_envelope(env, data, Some(peer))
                    }
                    Err(e) => {
                        tracing::warn!(peer = %propagation_source, error = %e, "rejected a gossip message");
                        Verdict::Reject
                    }
                };
                self.ctx.counters.count(verdict);
                self.net.validate(id, propagation_source, verdict).await;
                let pending = std::mem::take(&mut self.secure_pending);
                self.secure_actions(pending).await;
                self.try_move().await;
                self.try_commit().await;
                self.maybe_verify();
                self.maybe_propose();
            }
            Event::Request {
                peer,
                request,
                channel,
            } => {
                let response = self.answer(peer, request);
                let wrong = matches!(response, Response::WrongNetwork { .. });
                self.net.respond(channel, response).await;
                if wrong {
                    self.net.block(peer).await;
                }
            }
            Event::Connected(peer) => {
                let net = self.net.clone();
                let tx = self.work_tx.clone();
                let hello = Request::Hello {
                    genesis: self.ctx.genesis_hash,
                    status: self.status(),
                };
                tokio::spawn(async move {
                    let response = net.request(peer, hello).await;
                    let _ = tx.send(Work::Hello { peer, response }).await;
                });
            }
            Event::Disconnected(peer) => {
                self.peer_heights.remove(&peer);
            }
            Event::Listening(addr) => tracing::info!(%addr, "listening"),
            // Refused and reported by the network layer; counted like the runtime's rejects.
            Event::Refused { peer, reason } => {
                tracing::debug!(%peer, %reason, "the network layer refused a message");
                self.ctx.counters.count(Verdict::Reject);
            }
        }
    }

    /// Handle a message whose envelope has been opened (signature and membership checked).
    fn on_envelope(&mut self, env: Envelope, bytes: Vec<u8>, peer: Option<PeerId>) -> Verdict {
        let round = self.next_round();
        if self.defence.evicted().contains(&env.sender) {
            // Dropped without penalty: a member that has not committed the eviction yet may
            // still forward the evicted member's messages; the evicted peer itself is blocked.
            tracing::debug!(
                sender = env.sender,
                "dropped a message from an evicted member"
            );
            return Verdict::Ignore;
        }
        if let Payload::Vote(v) = &env.payload {
            return self.on_vote(env.sender, v, round);
        }
        if let Payload::Admission { request, vote } = &env.payload {
            return self.on_admission_vote(env.sender, request, vote, round);
        }
        if let Payload::Status(s) = env.payload {
            if let Some(p) = peer {
                self.note_height(p, s.height);
            }
            return Verdict::Accept;
        }
        if self.syncing {
            return Verdict::Ignore;
        }
        if env.round < round {
            // A finished round's message: only its equivocation still matters (late evidence
            // for the next record). A message proving it is passed on, the rest is dropped.
            return match self.late.observe(&env, &bytes) {
                Some(true) => Verdict::Accept,
                _ => Verdict::Ignore,
            };
        }
        if env.round > round || self.current.is_none() {
            // A peer is ahead: keep the next round's messages, catch up if further behind.
            if env.round == round + 1 || (env.round == round && self.current.is_none()) {
                let from_sender = self
                    .early
                    .iter()
                    .filter(|(e, _)| e.sender == env.sender)
                    .count();
                // With groups the coordinator relays every group's phases: room for each group.
                let groups = match self.ctx.genesis.spec.robust.group_size {
                    0 => 1,
                    g => (self.ctx.genesis.members.len() / g).max(1),
                };
                if from_sender < EARLY_PER_SENDER * groups {
                    self.early.push((env, bytes));
                }
                return Verdict::Accept;
            }
            return Verdict::Ignore;
        }
        let secure_mode = self.secure_mode();
        let paillier_mode = self.paillier_mode();
        let ctx = self.ctx.clone();
        let Some(cur) = self.current.as_mut() else {
            return Verdict::Ignore;
        };
        let sender = env.sender;
        let caught = equivocation::observe(&mut cur.detector, &mut cur.state, &env, &bytes);
        let result = match env.payload {
            Payload::Secagg { attempt, msg } if secure_mode => {
                let current = cur.secure.as_ref().map(|s| s.attempt);
                if current.is_none_or(|a| attempt < a)
                    || attempt as usize >= cur.state.order().len()
                {
                    return Verdict::Ignore;
                }
                if current.is_some_and(|a| attempt > a) {
                    // The others failed over to a later coordinator: follow them.
                    tracing::info!(
                        round,
                        attempt,
                        "secagg: joining the session of a later attempt"
                    );
                    cur.secure = Self::new_session(&ctx, &cur.state, attempt);
                    if let (Some(session), Some(input)) =
                        (cur.secure.as_mut(), cur.secure_input.clone())
                    {
                        self.secure_pending.extend(session.join(
                            input,
                            &ctx.keys.identity,
                            &self.store,
                        ));
                    }
                }
                if let Some(session) = cur.secure.as_mut() {
                    self.secure_pending.extend(session.on_message(
                        sender,
                        *msg,
                        &ctx.keys.identity,
                    ));
                }
                Ok(())
            }
            Payload::Paillier { attempt, msg } if paillier_mode => {
                if matches!(*msg, wire::PaillierMsg::Update(_)) {
                    // Kept to serve members that missed it (restarted, or gossip lost it).
                    cur.envelopes.entry(sender).or_insert(bytes);
                }
                return self.on_paillier_msg(sender, attempt, *msg);
            }
            Payload::Secagg { .. } | Payload::Paillier { .. } => Err(RoundError::BadProposal {
                culprit: sender,
                reason: format!(
                    "{} message in a network of mode {}",
                    env.payload.name(),
                    ctx.genesis.spec.mode
                ),
            }),
            Payload::Update(_) if secure_mode || paillier_mode => Err(RoundError::BadProposal {
                culprit: sender,
                reason: format!(
                    "an update in the clear in a network of mode {}",
                    ctx.genesis.spec.mode
                ),
            }),
            Payload::Update(u) => cur.state.add_update(sender, u).map(|added| {
                if added == Added::New {
                    tracing::debug!(round, sender, "update received");
                    cur.envelopes.insert(sender, bytes);
                }
            }),
            Payload::Proposal(p) => {
                let h = p.entry().signing_hash();
                if !cur.checked.insert(h) {
                    return Verdict::Ignore;
                }
                // Even a proposal this member refuses tells which attempt its approvals belong to
                // (and is what proves a member that approves two records of one attempt).
                if cur.state.note_attempt(sender, &p, h) {
                    let found =
                        cur.detector
                            .note_proposal(cur.state.round, h, p.record.attempt, &bytes);
                    equivocation::approvals_caught(&found);
                }
                if let Err(reason) = equivocation::adopt(
                    &ctx.genesis,
                    ctx.genesis_hash,
                    &mut cur.detector,
                    &mut self.late,
                    &mut cur.state,
                    &p,
                ) {
                    tracing::warn!(round, culprit = sender, %reason, "refused a proposal");
                    return Verdict::Reject;
                }
                if let Err(reason) = self.defence.check(p.height, &p.record) {
                    tracing::warn!(round, culprit = sender, %reason, "refused a proposal");
                    return Verdict::Reject;
                }
                if secure_mode || paillier_mode {
                    let checked = if paillier_mode {
                        cur.state
                            .check_paillier_proposal(&ctx.genesis, sender, &p)
                            .and_then(|()| {
                                audit::check_groups(
                                    &ctx.genesis,
                                    cur.state.prev_hash,
                                    cur.state.order(),
                                    &p.record,
                                )
                                .map_err(|reason| {
                                    RoundError::BadProposal {
                                        culprit: sender,
                                        reason,
                                    }
                                })
                            })
                    } else {
                        cur.state.check_secure_proposal(sender, &p).and_then(|()| {
                            audit::check_groups(
                                &ctx.genesis,
                                cur.state.prev_hash,
                                cur.state.order(),
                                &p.record,
                            )
                            .map_err(|reason| {
                                RoundError::BadProposal {
                                    culprit: sender,
                                    reason,
                                }
                            })
                        })
                    };
                    return match checked {
                        Ok(()) => {
                            if cur.waiting.is_none() && cur.state.open_to(p.record.attempt) {
                                cur.waiting = Some((sender, *p));
                            }
                            Verdict::Accept
                        }
                        Err(e) => {
                            tracing::warn!(round, culprit = sender, error = %e, "refused a proposal");
                            Verdict::Reject
                        }
                    };
                }
                cur.state.check_proposal(sender, &p).map(|missing| {
                    if !missing.is_empty() {
                        tracing::info!(
                            round,
                            ?missing,
                            "proposal needs updates this member lacks; fetching"
                        );
                    }
                    if cur.waiting.is_none() && cur.state.open_to(p.record.attempt) {
                        cur.waiting = Some((sender, *p));
                    }
                })
            }
            Payload::Approval(a) => cur
                .state
                .add_approval(&self.ctx.genesis, &self.ctx.bls, sender, a)
                .map(|_| ()),
            Payload::Status(_) | Payload::Vote(_) | Payload::Admission { .. } => Ok(()), // handled above
        };
        match result {
            Ok(()) => Verdict::Accept,
            Err(e) => {
                tracing::warn!(round, culprit = sender, error = %e, "refused a message");
                match e {
                    RoundError::AlreadyApproved => Verdict::Ignore,
                    // The second version of an equivocator's update: signed by it, so the
                    // relaying peer is not to blame, and others need it as evidence.
                    RoundError::Equivocation { .. } if caught => Verdict::Accept,
                    _ => Verdict::Reject,
                }
            }
        }
    }

    /// A peer's eviction vote: counted if its voter sent it, is active, signed it, and it is
    /// still valid; a vote from a later round than ours is ignored (it is still ahead of us).
    fn on_vote(
        &mut self,
        sender: u32,
        v: &fedmesh_protocol::votes::SignedVote,
        round: u64,
    ) -> Verdict {
        use fedmesh_protocol::votes::{Outcome, VoteError};
        if !self.defence.votes_on(self.ctx.genesis.spec.mode) || v.vote.voter != sender {
            tracing::warn!(
                sender,
                "refused a vote (votes are off here, or it is not the sender's own)"
            );
            return Verdict::Reject;
        }
        match self.defence.count(&self.store, v, round) {
            Ok(Outcome::Counted { votes, needed }) => {
                tracing::info!(
                    voter = sender,
                    target = v.vote.target,
                    votes,
                    needed,
                    "eviction vote counted"
                );
                Verdict::Accept
            }
            Ok(_) => Verdict::Accept,
            Err(VoteError::Stale { .. }) | Err(VoteError::Target { .. }) => Verdict::Ignore,
            Err(e) => {
                tracing::warn!(sender, error = %e, "refused a vote");
                Verdict::Reject
            }
        }
    }

    // ----- admission ----------------------------------------------------------------------

    /// Admissions are run in mode plain without differential privacy: secure aggregation and
    /// threshold Paillier fix their parties at genesis (key shares, Shamir holders), and the
    /// privacy ledger and the distributed noise count the genesis members, so admitted members
    /// could not take part correctly there.
    fn admissions_on(&self) -> bool {
        self.ctx.genesis.spec.mode == fedmesh_protocol::genesis::Mode::Plain
            && self.ctx.genesis.spec.dp.is_none()
    }

    /// A peer's admission vote (gossiped with the join request it is for).
    fn on_admission_vote(
        &mut self,
        sender: u32,
        request: &fedmesh_protocol::admission::SignedJoinRequest,
        vote: &fedmesh_protocol::admission::SignedAdmissionVote,
        round: u64,
    ) -> Verdict {
        use fedmesh_protocol::admission::AdmissionError as E;
        if !self.admissions_on() || vote.vote.voter != sender {
            tracing::warn!(
                sender,
                "refused an admission vote (admission is off in this mode, or it is not the sender's own)"
            );
            return Verdict::Reject;
        }
        let members = self.defence.members().clone();
        match self
            .admissions
            .on_gossip(&self.store, &members, request, vote, round)
        {
            Ok(auto) => {
                if let Some(hash) = auto {
                    // This member's allow-list approves the joiner: vote at once.
                    if let Err(e) = self.vote_admission(hash) {
                        tracing::warn!(error = %e, "not voting for an allow-listed joiner");
                    }
                }
                Verdict::Accept
            }
            // Late or early, already decided, or the ballot is full: not the sender's fault.
            Err(E::StaleVote { .. })
            | Err(E::AlreadyMember { .. })
            | Err(E::Full(_))
            | Err(E::Duplicate { .. }) => Verdict::Ignore,
            Err(e) => {
                tracing::warn!(sender, error = %e, "refused an admission vote");
                Verdict::Reject
            }
        }
    }

    /// This member votes for request `hash` and gossips the vote (retried until gossip takes it).
    fn vote_admission(
        &mut self,
        hash: Hash,
    ) -> Result<bool, fedmesh_protocol::admission::AdmissionError> {
        let round = self.next_round();
        let members = self.defence.members().clone();
        let voted = self.admissions.vote(
            &self.store,
            &members,
            hash,
            self.me(),
            &self.ctx.keys.identity,
            round,
            now_ms(),
        )?;
        let Some((request, vote)) = voted else {
            return Ok(false);
        };
        self.publish_admission_vote(round, request, vote);
        Ok(true)
    }

    /// Gossip an admission vote with its request, in an envelope of `round`. Retried for a
    /// while in the background: unlike round messages it stays useful when the round moves on.
    fn publish_admission_vote(
        &self,
        round: u64,
        request: fedmesh_protocol::admission::SignedJoinRequest,
        vote: fedmesh_protocol::admission::SignedAdmissionVote,
    ) {
        let env = Envelope::seal(
            self.ctx.genesis_hash,
            self.me(),
            round,
            Payload::Admission {
                request: Box::new(request),
                vote,
            },
            &self.ctx.keys.identity,
        );
        let bytes = env.encode();
        let net = self.net.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                match net.publish(bytes.clone()).await {
                    Ok(()) => return,
                    Err(e) if e.contains("Duplicate") => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        });
    }

    /// Re-gossip this member's votes on requests still pending, in a new round's envelope: a
    /// member that missed one (it was restarting, or catching up) hears it again.
    fn repeat_admission_votes(&self) {
        let round = self.next_round();
        for (request, vote) in self.admissions.own_votes(self.me()) {
            self.publish_admission_vote(round, request, vote);
        }
    }

    /// Members the last record admitted: known by index and peer id from now on, allowed to
    /// connect, and dialled.
    fn on_admitted(&mut self, admitted: &[u32]) {
        let round = self.next_round();
        let members = self.defence.members().clone();
        self.admissions
            .settle(&self.store, &members, round, now_ms());
        if self.admissions_on() {
            self.repeat_admission_votes();
        }
        if admitted.is_empty() {
            return;
        }
        let mut ctx = (*self.ctx).clone();
        ctx.genesis.set_admitted(&members);
        for i in admitted {
            let Some(m) = members.get(*i) else { continue };
            tracing::info!(member = i, peer = %m.peer_id, from_round = ?m.admitted_from, "member admitted by the log");
            let Ok(peer) = m.peer_id.parse::<PeerId>() else {
                tracing::warn!(member = i, peer = %m.peer_id, "admitted member's peer id does not parse; it cannot connect");
                continue;
            };
            ctx.peers.insert(peer, *i);
            let addrs = m.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            let net = self.net.clone();
            tokio::spawn(async move { net.allow(peer, addrs).await });
        }
        self.ctx = Arc::new(ctx);
    }

    /// A command from the operator's control socket.
    fn on_control(&mut self, m: crate::control::Message) {
        use crate::control::{Command, Reply};
        let members = self.defence.members().clone();
        let reply = if !self.admissions_on() {
            Reply::Error(format!(
                "admission is supported in mode plain without spec.dp only; this network runs \
                 mode {}{}",
                self.ctx.genesis.spec.mode,
                if self.ctx.genesis.spec.dp.is_none() {
                    ""
                } else {
                    " with differential privacy"
                }
            ))
        } else {
            match m.command {
                Command::List => Reply::Pending(self.admissions.list(&members, self.me())),
                Command::Submit { request } => {
                    match parse_request(&request).and_then(|r| {
                        self.admissions
                            .take_up(&self.store, &members, &r)
                            .map_err(|e| e.to_string())
                            .map(|h| (h, r))
                    }) {
                        Ok((hash, r)) => self.approve_reply(hash, r.request.peer_id),
                        Err(e) => Reply::Error(e),
                    }
                }
                Command::Approve { who } => match self.admissions.find(&who) {
                    Some(hash) => {
                        let peer = self
                            .admissions
                            .list(&members, self.me())
                            .into_iter()
                            .find(|p| p.hash == hash.to_string())
                            .map(|p| p.peer_id)
                            .unwrap_or_default();
                        self.approve_reply(hash, peer)
                    }
                    None => Reply::Error(format!(
                        "no single pending join request matches {who:?}; see `fedmesh admit --list`"
                    )),
                },
            }
        };
        let _ = m.reply.send(reply);
    }

    fn approve_reply(&mut self, hash: Hash, peer_id: String) -> crate::control::Reply {
        match self.vote_admission(hash) {
            Ok(fresh) => crate::control::Reply::Voted {
                hash: hash.to_string(),
                peer_id,
                fresh,
            },
            Err(e) => crate::control::Reply::Error(e.to_string()),
        }
    }

    /// If a proposal is waiting and all its updates are here, recompute and evaluate it.
    fn maybe_verify(&mut self) {
        if self.secure_mode() {
            return self.maybe_verify_secure();
        }
        if self.paillier_mode() {
            return self.maybe_verify_paillier();
        }
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        if cur.evaluating || !cur.waiting_open() {
            return;
        }
        let Some((_, p)) = cur.waiting.as_ref() else {
            return;
        };
        let participants: Vec<u32> = p.record.participants.iter().map(|c| c.member).collect();
        if participants.iter().any(|m| !cur.state.has_update(*m)) {
            return;
        }
        let (proposer, p) = cur.waiting.take().expect("checked");
        let delta = match cur.state.aggregate(&participants) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot aggregate the proposal");
                return;
            }
        };
        let params = Arc::new(model::apply(&self.global, &delta));
        self.verify_model(proposer, p, params, "the updates");
    }

    /// The last check of a proposal before evaluation: its model hash is the model this member
    /// computed (from the updates, or from the replayed secure sum).
    fn verify_model(&mut self, proposer: u32, p: Proposal, params: Arc<Vec<f32>>, from: &str) {
        if self.ctx.layout.hash(&params) != p.record.new_model {
            tracing::warn!(
                culprit = proposer,
                "proposal's model does not follow from {from}; not approving"
            );
            return;
        }
        if let Err(e) = privacy::check(&self.ctx.genesis, &self.store, &p.record) {
            tracing::warn!(culprit = proposer, error = %e, "proposal's privacy accounting differs from this member's log; not approving");
            return;
        }
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        cur.evaluating = true;
        let round = cur.state.round;
        self.evaluate(
            round,
            Purpose::Verify {
                proposer,
                proposal: Box::new(p),
            },
            params,
        );
    }

    /// Mode secagg, on the timer: the coordinator closes phases that timed out; every member moves
    /// to the next attempt's session when this one has made no record in time.
    async fn secure_tick(&mut self) {
        if !self.secure_mode() {
            return;
        }
        let p = self.params().clone();
        let phase = Duration::from_millis(self.ctx.genesis.spec.secagg.phase_timeout_ms);
        let keys_phase = Duration::from_millis(p.update_timeout_ms);
        // A session: training, then five phases, then proposal and approvals.
        let session_limit = keys_phase + 6 * phase + Duration::from_millis(p.failover_timeout_ms);
        let ctx = self.ctx.clone();
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let mut actions = Vec::new();
        if let Some(session) = cur.secure.as_mut() {
            actions.extend(session.close_expired(keys_phase, phase, &ctx.keys.identity));
            let stalled =
                session.age() >= session_limit && cur.state.proposal().is_none() && !cur.evaluating;
            let next = session.attempt + 1;
            if stalled && (next as usize) < cur.state.order().len() {
                tracing::warn!(
                    round = cur.state.round,
                    attempt = next,
                    coordinator = cur.state.coordinator(next),
                    "secagg: no record in time; failing over to the next coordinator"
                );
                cur.secure = Self::new_session(&ctx, &cur.state, next);
                cur.waiting = None;
                if let (Some(session), Some(input)) =
                    (cur.secure.as_mut(), cur.secure_input.clone())
                {
                    actions.extend(session.join(input, &ctx.keys.identity, &self.store));
                }
            }
        }
        self.secure_actions(actions).await;
    }

    /// Mode secagg: replay the proposer's session from the transcript this member saw, and check
    /// that the secure sum gives the proposed model.
    fn maybe_verify_secure(&mut self) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        if cur.evaluating || !cur.waiting_open() {
            return;
        }
        let Some((proposer, p)) = cur.waiting.as_ref() else {
            return;
        };
        let proposer = *proposer;
        if p.record.groups.is_some() {
            return self.maybe_verify_groups();
        }
        let Some(summary) = p.record.secure.clone() else {
            return;
        };
        let Some(session) = cur
            .secure
            .as_ref()
            .filter(|s| s.attempt == p.record.attempt)
            .and_then(|a| a.sessions.first())
        else {
            return;
        };
        // Wait until every message the coordinator used has arrived here too.
        let Some(transcript) = session.transcript(&summary.unmaskers) else {
            return;
        };
        let outcome = fedmesh_protocol::secagg::replay(session.params.clone(), &transcript);
        let p = cur.waiting.take().expect("checked").1;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(culprit = proposer, error = %e, "the proposed secure sum does not replay; not approving");
                return;
            }
        };
        let participants: Vec<u32> = p.record.participants.iter().map(|c| c.member).collect();
        let decoded = secure::quantizer(&self.ctx.genesis).decode(&outcome.sum);
        let params = match decoded {
            Ok(d)
                if outcome.survivors == participants
                    && d.total_weight == summary.total_weight
                    && d.mean.len() == self.global.len() =>
            {
                Arc::new(model::apply(&self.global, &d.mean))
            }
            _ => {
                tracing::warn!(culprit = proposer, "the proposal's participants or weight differ from the replayed session; not approving");
                return;
            }
        };
        self.verify_model(proposer, p, params, "the secure sum");
    }

    /// Mode secagg with groups, as the coordinator: every group's session has ended; judge the
    /// revealed sums with the genesis rule and evaluate the model they give.
    fn propose_groups(&mut self) {
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let Some(att) = cur.secure.as_ref() else {
            return;
        };
        let Some(drawn) = att.drawn.as_ref() else {
            return;
        };
        if cur.proposed.is_some_and(|a| a >= att.attempt) {
            return;
        }
        let revealed: Vec<secure::Revealed> = att
            .sessions
            .iter()
            .filter_map(|s| {
                let outcome = s.outcome.clone()?;
                // Only contributors' shares can have been used (a stray message is not one).
                let unmaskers = s
                    .unmask
                    .keys()
                    .copied()
                    .filter(|m| outcome.survivors.contains(m))
                    .collect();
                Some(secure::Revealed {
                    group: s.group,
                    outcome,
                    unmaskers,
                })
            })
            .collect();
        let (round, attempt) = (cur.state.round, att.attempt);
        cur.proposed = Some(attempt);
        let baseline = group_baseline(&self.store, &self.ctx.layout, self.last.as_ref());
        match secure::with_reference(&self.ctx, &self.global, |public| {
            secure::judge_groups(
                &self.ctx.genesis,
                round,
                attempt,
                drawn,
                &revealed,
                self.global.len(),
                &baseline,
                public,
            )
        }) {
            Ok(judged) => {
                tracing::info!(round, attempt, revealed = judged.summary.revealed.len(), skipped = ?judged.summary.skipped, "secagg: group sums ready; evaluating");
                let params = Arc::new(model::apply(&self.global, &judged.update));
                cur.evaluating = true;
                self.evaluate(
                    round,
                    Purpose::ProposeGroups {
                        attempt,
                        judged: Box::new(judged),
                    },
                    params,
                );
            }
            Err(e) => {
                tracing::warn!(round, attempt, error = %e, "secagg: nothing to propose in this attempt")
            }
        }
    }

    /// Mode secagg with groups: replay every revealed group's session from the transcripts this
    /// member saw, judge the sums as the coordinator must have, and check that the proposal's
    /// groups summary and model are exactly what follows.
    fn maybe_verify_groups(&mut self) {
        let genesis = &self.ctx.genesis;
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let Some((proposer, p)) = cur.waiting.as_ref() else {
            return;
        };
        let proposer = *proposer;
        let Some(summary) = p.record.groups.as_ref() else {
            return;
        };
        let Some(att) = cur
            .secure
            .as_ref()
            .filter(|s| s.attempt == p.record.attempt)
        else {
            return;
        };
        let Some(drawn) = att.drawn.as_ref() else {
            return;
        };
        // Wait until every message the coordinator used has arrived here too.
        let mut transcripts = Vec::with_capacity(summary.revealed.len());
        for gs in &summary.revealed {
            let Some(session) = att.sessions.get(gs.group as usize) else {
                return;
            };
            let Some(t) = session.transcript(&gs.unmaskers) else {
                return;
            };
            transcripts.push((gs, session, t));
        }
        let checked: Result<secure::Judged, String> = (|| {
            let mut revealed = Vec::with_capacity(transcripts.len());
            for (gs, session, t) in &transcripts {
                let outcome = fedmesh_protocol::secagg::replay(session.params.clone(), t)
                    .map_err(|e| format!("group {}'s secure sum does not replay: {e}", gs.group))?;
                if outcome.survivors != gs.contributors {
                    return Err(format!(
                        "group {}'s contributors differ from the replayed session's",
                        gs.group
                    ));
                }
                revealed.push(secure::Revealed {
                    group: gs.group,
                    outcome,
                    unmaskers: gs.unmaskers.clone(),
                });
            }
            let baseline = group_baseline(&self.store, &self.ctx.layout, self.last.as_ref());
            let judged = secure::with_reference(&self.ctx, &self.global, |public| {
                secure::judge_groups(
                    genesis,
                    p.record.round,
                    p.record.attempt,
                    drawn,
                    &revealed,
                    self.global.len(),
                    &baseline,
                    public,
                )
            })?;
            if &judged.summary != summary {
                return Err("the groups summary differs from the replayed judgement".into());
            }
            let weight: u64 = summary.revealed.iter().map(|g| g.total_weight).sum();
            if p.record.secure.as_ref().map(|s| s.total_weight) != Some(weight) {
                return Err("the total weight is not the groups' total".into());
            }
            Ok(judged)
        })();
        drop(transcripts);
        let p = cur.waiting.take().expect("checked").1;
        match checked {
            Ok(judged) => {
                let params = Arc::new(model::apply(&self.global, &judged.update));
                self.verify_model(proposer, p, params, "the group sums");
            }
            Err(e) => {
                tracing::warn!(culprit = proposer, error = %e, "the proposed group sums do not replay; not approving")
            }
        }
    }

    /// Ask the proposer for updates that gossip has not delivered.
    fn maybe_fetch_missing(&mut self) {
        if self.paillier_mode() {
            return self.maybe_fetch_paillier();
        }
        if self.secure_mode() {
            return;
        }
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let Some((proposer, p)) = cur.waiting.as_ref() else {
            return;
        };
        if cur
            .last_fetch
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        cur.last_fetch = Some(Instant::now());
        let Some(peer) = self.ctx.member_peer(*proposer) else {
            return;
        };
        let round = cur.state.round;
        for member in p
            .record
            .participants
            .iter()
            .map(|c| c.member)
            .filter(|m| !cur.state.has_update(*m))
        {
            let net = self.net.clone();
            let tx = self.work_tx.clone();
            tokio::spawn(async move {
                let bytes = match net.request(peer, Request::Update { round, member }).await {
                    Ok(Response::Update(b)) => b,
                    _ => None,
                };
                let _ = tx.send(Work::FetchedUpdate { round, bytes }).await;
            });
        }
    }

    /// Ask every connected member for the updates of this round that this member lacks (at most
    /// every 2 s); the answers go through [`Work::FetchedUpdate`] like any fetched update.
    fn fetch_missing_updates(&mut self) {
        let me = self.me();
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        if cur
            .last_fetch
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
        {
            return;
        }
        cur.last_fetch = Some(Instant::now());
        let round = cur.state.round;
        let missing: Vec<u32> = cur
            .state
            .order()
            .iter()
            .copied()
            .filter(|m| *m != me && !cur.state.has_update(*m))
            .collect();
        let peers: Vec<PeerId> = self
            .ctx
            .peers
            .iter()
            .filter(|(_, m)| **m != me && !self.defence.evicted().contains(m))
            .map(|(p, _)| *p)
            .collect();
        if !missing.is_empty() {
            tracing::info!(round, missing = ?missing, peers = peers.len(), "coordinator lacks updates; asking the others");
        }
        for member in missing {
            for &peer in &peers {
                let net = self.net.clone();
                let tx = self.work_tx.clone();
                tokio::spawn(async move {
                    let bytes = match net.request(peer, Request::Update { round, member }).await {
                        Ok(Response::Update(b)) => b,
                        _ => None,
                    };
                    if bytes.is_some() {
                        let _ = tx.send(Work::FetchedUpdate { round, bytes }).await;
                    }
                });
            }
        }
    }

    fn answer(&self, peer: PeerId, request: Request) -> Response {
        if !self.ctx.peers.contains_key(&peer) {
            return Response::Refused("not a member".into());
        }
        match request {
            Request::Hello { genesis, status } => {
                if genesis != self.ctx.genesis_hash {
                    tracing::error!(%peer, theirs = %genesis, ours = %self.ctx.genesis_hash, "peer is on another network (different genesis); refusing it");
                    return Response::WrongNetwork {
                        genesis: self.ctx.genesis_hash,
                    };
                }
                let _ = status;
                Response::Hello {
                    status: self.status(),
                }
            }
            Request::Entries { from, max } => {
                let to = from
                    .saturating_add(max.min(wire::MAX_ENTRIES_PER_REQUEST) as u64)
                    .min(self.head.height + 1);
                match self.store.range(from, to) {
                    Ok(entries) => Response::Entries(entries),
                    Err(e) => Response::Refused(e.to_string()),
                }
            }
            Request::Checkpoint(hash) => match self.store.checkpoint_bytes(&hash).inspect(|_| {
                crate::memory::trace("serving a checkpoint");
            }) {
                Ok(b) => Response::Checkpoint(b),
                Err(e) => Response::Refused(e.to_string()),
            },
            Request::Update { round, member } => Response::Update(
                self.current
                    .as_ref()
                    .filter(|c| c.state.round == round)
                    .and_then(|c| c.envelopes.get(&member).cloned()),
            ),
        }
    }

    /// A peer's log height. Far ahead: catch up now. One entry ahead: that entry is usually being
    /// committed here too, so catch up only if it is still missing two status intervals later.
    fn note_height(&mut self, peer: PeerId, height: u64) {
        self.peer_heights.insert(peer, height);
        if self.syncing || height <= self.head.height {
            return;
        }
        if height > self.head.height + 1 || self.current.is_none() {
            self.begin_sync(peer);
        } else if self.behind.is_none() {
            self.behind = Some((peer, Instant::now()));
        }
    }

    fn check_behind(&mut self) {
        let Some((peer, since)) = self.behind else {
            return;
        };
        let still_behind = self
            .peer_heights
            .get(&peer)
            .is_some_and(|h| *h > self.head.height);
        if !still_behind {
            self.behind = None;
        } else if since.elapsed() >= Duration::from_millis(2 * self.params().status_interval_ms)
            && !self.syncing
        {
            self.begin_sync(peer);
        }
    }

    fn begin_sync(&mut self, peer: PeerId) {
        self.behind = None;
        tracing::info!(%peer, from = self.head.height + 1, "this member is behind; catching up");
        self.syncing = true;
        self.current = None;
        let job = sync::Job {
            chain: Arc::new(sync::Chain {
                genesis: self.ctx.genesis.clone(),
                genesis_hash: self.ctx.genesis_hash,
                bls: self.ctx.bls.clone(),
                layout: self.ctx.layout.clone(),
            }),
            store: self.store.clone(),
            net: self.net.clone(),
            peer,
            head: self.head.clone(),
            last: self.last.clone(),
            members: self.defence.members().clone(),
        };
        let tx = self.work_tx.clone();
        tokio::spawn(async move {
            let r = job.run().await.map_err(|e| format!("{e:#}"));
            let _ = tx.send(Work::Synced(r.map(Box::new))).await;
        });
    }

    async fn on_work(&mut self, w: Work) {
        match w {
            Work::Trained { round, result } => {
                let actions = self.on_trained(round, result);
                self.secure_actions(actions).await;
                self.publish_update().await;
                self.maybe_propose();
            }
            Work::Evaluated {
                round,
                purpose,
                params,
                result,
            } => self.on_evaluated(round, purpose, params, result).await,
            Work::FetchedUpdate { round, bytes } => {
                if let Some(bytes) = bytes {
                    if let Ok(env) = Envelope::open(
                        &bytes,
                        self.params().max_message_bytes,
                        &self.ctx.genesis,
                        self.ctx.genesis_hash,
                        None,
                    ) {
                        let update = match &env.payload {
                            Payload::Update(_) => true,
                            Payload::Paillier { msg, .. } => {
                                matches!(**msg, wire::PaillierMsg::Update(_))
                            }
                            _ => false,
                        };
                        if env.round == round && update {
                            self.on_envelope(env, bytes, None);
                        }
                    }
                }
                self.maybe_verify();
                self.try_commit().await;
            }
            Work::FetchedCheckpoint { round, hash, bytes } => {
                let Some(cur) = self.current.as_mut().filter(|c| c.state.round == round) else {
                    return;
                };
                let Some(entry) = cur.commit_waiting.take() else {
                    return;
                };
                let params = bytes
                    .and_then(|b| fedmesh_storage::decode_checkpoint(&self.ctx.layout, &b).ok());
                match params.filter(|p| self.ctx.layout.hash(p) == hash) {
                    Some(p) => match entry.record() {
                        Ok(record) => self.commit(entry, record, Arc::new(p)),
                        Err(e) => tracing::error!(error = %e, "entry does not decode"),
                    },
                    None => {
                        tracing::warn!(
                            round,
                            "checkpoint fetch failed; will catch up from peers' status"
                        );
                    }
                }
            }
            Work::Synced(result) => {
                self.syncing = false;
                match result {
                    Ok(out) => {
                        tracing::info!(height = out.head.height, "caught up");
                        self.count_caught_up_evidence(self.head.height + 1, out.head.height + 1);
                        self.head = out.head;
                        self.last = out.last;
                        if let Some(g) = out.global {
                            self.global = Arc::new(g);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "catching up failed; will retry on the next status")
                    }
                }
                // Whatever was appended, the member set follows the log.
                match self
                    .defence
                    .replay(&self.ctx.genesis, self.ctx.genesis_hash, &self.store)
                {
                    Ok(change) => {
                        self.on_admitted(&change.admitted);
                        if self.on_evicted(&change.evicted) {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot replay the member set from the log")
                    }
                }
                self.start_round();
            }
            Work::Paillier(done) => {
                self.on_paillier_done(done).await;
                self.try_commit().await;
            }
            Work::Hello { peer, response } => match response {
                Ok(Response::Hello { status }) => self.note_height(peer, status.height),
                Ok(Response::WrongNetwork { genesis }) => {
                    tracing::error!(%peer, theirs = %genesis, ours = %self.ctx.genesis_hash, "peer is on another network (different genesis); refusing it");
                    self.net.block(peer).await;
                }
                Ok(other) => tracing::debug!(%peer, ?other, "unexpected hello response"),
                Err(e) => tracing::debug!(%peer, error = %e, "hello failed"),
            },
        }
    }
}

impl Runtime {
    /// Entries appended by catching up (heights `from..to`) did not pass through this node's
    /// commit: count the equivocations they record in the culprits' scores, as a commit does.
    fn count_caught_up_evidence(&mut self, from: u64, to: u64) {
        if from >= to {
            return;
        }
        let entries = match self.store.range(from, to) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the entries appended by catching up");
                return;
            }
        };
        for entry in entries {
            if let Ok(record) = entry.record() {
                let culprits = equivocation::culprits(&record);
                self.defence
                    .equivocated(&self.store, record.round, &culprits);
                self.late.committed(&record);
            }
        }
    }
}

/// One JSON line on standard output each time a round starts: the resident set size right after
/// the start-of-round trim, i.e. at the same quiet point of every round (the last round's state
/// is dropped, the next round's burst has not begun). `after_round` is the last round in the
/// log (0 before the first). The soak compares these samples across rounds.
fn report_memory(after_round: u64, rss: Option<crate::memory::Resident>) {
    let line = serde_json::json!({
        "event": "memory",
        "point": "round start, after trim",
        "after_round": after_round,
        "rss_kib": rss.map(|r| r.total_kib),
        "rss_anon_kib": rss.map(|r| r.anon_kib),
        "rss_file_kib": rss.map(|r| r.file_kib),
        "at_ms": now_ms(),
    });
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// One JSON line on standard output per appended round, for scripts (logs go to standard error).
fn report_round(entry: &Entry, record: &RoundRecord) {
    let line = serde_json::json!({
        "event": "round",
        "round": record.round,
        "height": entry.height,
        "head": entry.hash().to_string(),
        "accuracy": record.metrics.accuracy,
        "loss": record.metrics.loss,
        "participants": record.participants.iter().map(|c| c.member).collect::<Vec<_>>(),
        "dropouts": record.dropouts,
        "evicted": record.evictions.iter().map(|e| e.target).collect::<Vec<_>>(),
        "admitted": record.admissions.iter().map(|a| serde_json::json!({
            "index": a.index,
            "peer_id": a.request.request.peer_id,
            "votes": a.votes.iter().map(|v| v.vote.voter).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "coordinator": record.coordinator,
        "attempt": record.attempt,
        "mode": record.mode.to_string(),
        "epsilon": record.privacy.as_ref().map(|p| p.spent.iter().map(|s| s.epsilon).collect::<Vec<_>>()),
        "paillier": record.paillier.as_ref().map(|s| serde_json::json!({
            "sum_hash": s.sum_hash.to_string(),
            "decryptors": s.decryptors,
            "rejected": s.rejected,
            "clipped": s.clipped,
        })),
        "groups": record.groups.as_ref().map(crate::audit::groups_json),
        "evicted": record.evictions.iter().map(|x| x.target).collect::<Vec<_>>(),
        "committed_at_ms": now_ms(),
    });
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Seed of this member's local training in `round`: the same after a restart.
/// It depends on the data and model seeds, not on the member keys, so that networks dealt from the
/// same config train alike whatever their mode (a fair comparison of modes).
fn round_seed(ctx: &Context, round: u64) -> u64 {
    let spec = &ctx.genesis.spec;
    let h = fedmesh_crypto::hash::Hasher::new("fedmesh train seed v2")
        .chain(&spec.data.seed.to_le_bytes())
        .chain(&spec.model.init_seed.to_le_bytes())
        .chain(&round.to_le_bytes())
        .chain(&ctx.keys.index.to_le_bytes())
        .finalize();
    u64::from_le_bytes(h.0[..8].try_into().expect("8 bytes"))
}

/// Peak resident set size of this process (Linux: VmHWM), for benchmarks.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How far back [`group_baseline`] looks for a round that moved the model.
const BASELINE_LOOKBACK: u64 = 256;

/// What the group judgement of the next round needs from the log (mode secagg with groups): the
/// usual values recorded by the last round record (`last`), and the last update that moved the
/// model — the difference of the checkpoints of the latest record (within
/// [`BASELINE_LOOKBACK`] entries) whose new model differs from its base. Every member has those
/// checkpoints (catching up stores each entry's), so a restarted or catching-up member judges as
/// the others do. A checkpoint that cannot be read leaves the previous update out (this member
/// then judges without a reference, and will not approve a proposal that used one).
fn group_baseline(
    store: &Store,
    layout: &Layout,
    last: Option<&RoundRecord>,
) -> fedmesh_protocol::robust::suspicion::Baseline {
    use fedmesh_protocol::robust::suspicion::Baseline;
    let usual = last
        .and_then(|r| r.groups.as_ref())
        .map(|g| g.usual)
        .unwrap_or_default();
    let previous = (|| -> anyhow::Result<Option<Vec<f32>>> {
        let Some(head) = store.height()? else {
            return Ok(None);
        };
        for height in (1..=head).rev().take(BASELINE_LOOKBACK as usize) {
            let Some(entry) = store.get(height)? else {
                return Ok(None);
            };
            let record = entry.record()?;
            if record.new_model == record.base_model {
                continue;
            }
            let (Some(new), Some(old)) = (
                store.checkpoint(layout, &record.new_model)?,
                store.checkpoint(layout, &record.base_model)?,
            ) else {
                return Ok(None);
            };
            return Ok(Some(new.iter().zip(&old).map(|(a, b)| a - b).collect()));
        }
        Ok(None)
    })()
    .unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the previous update from the log; judging without it");
        None
    });
    Baseline::from_log(previous, usual)
}

#[cfg(test)]
mod baseline_tests {
    use super::*;
    use fedmesh_protocol::audit::GroupsSummary;
    use fedmesh_protocol::genesis::Mode;
    use fedmesh_protocol::robust::suspicion::Usual;

    fn record(round: u64, base: Hash, new: Hash, usual: Usual) -> RoundRecord {
        RoundRecord {
            groups: Some(GroupsSummary {
                size: 2,
                drawn: Vec::new(),
                revealed: Vec::new(),
                skipped: Vec::new(),
                decided: true,
                usual,
                reference_loss: None,
                reference_spread: None,
                reference_scale: None,
                reference_best: None,
            }),
            ..RoundRecord::new(round, Mode::Secagg, base, new)
        }
    }

    /// The next group judgement's baseline is read from the log alone: the usual values of the
    /// last record, and the update of the latest round that moved the model (a round whose groups
    /// were all flagged leaves the model, and so the reference, where it was); without the
    /// checkpoints there is no previous update.
    #[test]
    fn group_baseline_is_a_function_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.init_genesis(&Entry::genesis(b"genesis")).unwrap();
        let layout = Layout::new(vec![2, 2]).unwrap();
        let len = layout.param_count();
        let m0: Vec<f32> = (0..len).map(|i| i as f32).collect();
        let m1: Vec<f32> = m0.iter().map(|v| v + 0.5).collect();
        let m2: Vec<f32> = m1.iter().enumerate().map(|(i, v)| v - i as f32).collect();
        let [h0, h1, h2] = [&m0, &m1, &m2].map(|m| store.put_checkpoint(&layout, m).unwrap());
        let usual = |c: f64| Usual {
            cosine: Some((c, 0.01)),
            log_norm: Some(-1.0),
            reference_gap: None,
        };
        assert_eq!(
            group_baseline(&store, &layout, None),
            fedmesh_protocol::robust::suspicion::Baseline::default(),
            "an empty log: nothing to judge against"
        );
        let mut prev = store.head().unwrap().unwrap();
        let mut append = |r: &RoundRecord| {
            let e = Entry::round(prev.height + 1, prev.hash(), r);
            store.append(&e).unwrap();
            prev = e;
        };
        let r1 = record(1, h0, h1, usual(0.9));
        append(&r1);
        let b = group_baseline(&store, &layout, Some(&r1));
        let step1: Vec<f32> = m1.iter().zip(&m0).map(|(a, b)| a - b).collect();
        assert_eq!(b.previous.as_deref(), Some(&step1[..]));
        assert_eq!(b.usual(), usual(0.9));
        // Round 2: every group flagged, the model stays; the reference is still round 1's move,
        // the usual values are round 2's.
        let r2 = record(2, h1, h1, usual(0.8));
        append(&r2);
        let b = group_baseline(&store, &layout, Some(&r2));
        assert_eq!(b.previous.as_deref(), Some(&step1[..]));
        assert_eq!(b.usual(), usual(0.8));
        // Round 3 moves it again.
        let r3 = record(3, h1, h2, usual(0.7));
        append(&r3);
        let b = group_baseline(&store, &layout, Some(&r3));
        let step3: Vec<f32> = m2.iter().zip(&m1).map(|(a, b)| a - b).collect();
        assert_eq!(b.previous.as_deref(), Some(&step3[..]));
        // A member missing a checkpoint has no previous update (and will not approve).
        let other = tempfile::tempdir().unwrap();
        let bare = Store::open(other.path()).unwrap();
        bare.init_genesis(&Entry::genesis(b"genesis")).unwrap();
        let e = Entry::round(1, bare.head().unwrap().unwrap().hash(), &r1);
        bare.append(&e).unwrap();
        bare.put_checkpoint(&layout, &m1).unwrap();
        assert_eq!(group_baseline(&bare, &layout, Some(&r1)).previous, None);
    }
}
