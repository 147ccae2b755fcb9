//! The libp2p wrapper: one task owns the `Swarm`; the rest of the node talks to it through a
//! cloneable [`Handle`] (commands over a bounded channel, `oneshot` replies) and hears from it
//! through [`Event`]s, so nothing outside this module sees a `SwarmEvent`.
//!
//! Transport: TCP + noise + yamux. Gossipsub carries the round's messages (one topic per network,
//! named after the genesis hash) with `validate_messages()`: nothing is forwarded before the node
//! has checked it, and every message gets exactly one validation report. Request-response carries
//! the handshake, log catch-up, checkpoints and lost updates. Only genesis members may connect
//! (an allow-list), so a stranger's connection is refused before any of its bytes are read.
//!
//! Messages larger than [`fedmesh_protocol::bulk::THRESHOLD`] do not ride on gossip: gossip
//! carries a small announcement (digest and length) and the body goes by request-response
//! (`/fedmesh/bulk/1`, module `bulk`). The rest of the node does not see the difference: it
//! publishes bytes and receives [`Event::Gossip`] with the body, and its verdict is reported for
//! the announcement, which gossipsub forwards only after an Accept (and only while this node holds
//! the body, so the peers it forwards to can fetch from it).

mod bulk;
mod codec;
mod guard;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, connection_limits, identity, noise, tcp, yamux, Multiaddr, PeerId,
    StreamProtocol, Swarm,
};
use tokio::sync::{mpsc, oneshot};

use fedmesh_protocol::bulk::{self as announce, Announcement};
use fedmesh_protocol::wire::{Request, Response};

use crate::config::Limits;
use bulk::{BulkCodec, BulkResponse, Digest};
pub use codec::Codec;
use guard::{InvalidPenalty, IpGuard, RateLimiter};

/// Settings of the network layer, all from the genesis file or the node config.
#[derive(Debug, Clone)]
pub struct Config {
    pub keypair: identity::Keypair,
    pub listen: Vec<Multiaddr>,
    /// Members' peer ids and their known addresses (genesis plus `--peer`).
    pub members: HashMap<PeerId, Vec<Multiaddr>>,
    /// Extra addresses to dial whose peer id is not known in advance.
    pub bootstrap: Vec<Multiaddr>,
    /// Gossipsub topic name (the same on every member of one network).
    pub topic: String,
    /// Largest message (a gossip message or a bulk body); every member uses the same value.
    pub max_message_bytes: usize,
    /// Connection and rate limits.
    pub limits: Limits,
}

/// The behaviours in the order the swarm consults them: the cheap refusals first.
#[derive(NetworkBehaviour)]
struct Behaviour {
    ip_guard: IpGuard,
    limits: connection_limits::Behaviour,
    allow: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    gossip: gossipsub::Behaviour,
    rpc: request_response::Behaviour<Codec>,
    bulk: request_response::Behaviour<BulkCodec>,
}

/// Largest gossip frame: announcements and the messages under the bulk threshold, with room for
/// gossipsub's framing, batched control messages, and its check of the whole read buffer (one
/// frame plus up to 8 KiB of the next read, libp2p-gossipsub 0.50).
pub const GOSSIP_FRAME_LIMIT: usize = 64 * 1024;

/// What the network tells the node.
#[derive(Debug)]
pub enum Event {
    /// A gossip message that awaits validation: answer with [`Handle::validate`], exactly once.
    Gossip {
        id: MessageId,
        propagation_source: PeerId,
        source: Option<PeerId>,
        data: Vec<u8>,
    },
    /// A peer asks something: answer with [`Handle::respond`].
    Request {
        peer: PeerId,
        request: Request,
        channel: ResponseChannel<Response>,
    },
    Connected(PeerId),
    Disconnected(PeerId),
    /// The swarm is listening on this address.
    Listening(Multiaddr),
    /// The network layer refused a peer's gossip message before the runtime saw it (a malformed
    /// bulk announcement, or one of a body over the message limit). Already reported as Reject;
    /// the runtime only counts it.
    Refused {
        peer: PeerId,
        reason: String,
    },
}

/// How the node judged a gossip message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: deliver and forward.
    Accept,
    /// Not useful (stale, duplicate) but not malicious: drop without penalty.
    Ignore,
    /// Invalid: drop and penalise the peers that sent it.
    Reject,
}

enum Command {
    Publish {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Validate {
        id: MessageId,
        source: PeerId,
        verdict: Verdict,
    },
    Request {
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, String>>,
    },
    Respond {
        channel: ResponseChannel<Response>,
        response: Response,
    },
    Block {
        peer: PeerId,
    },
    Allow {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    TopicPeers {
        reply: oneshot::Sender<usize>,
    },
    #[cfg(test)]
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    /// Tests only: hold `body` under `digest` whatever it hashes to (a peer that serves a wrong
    /// body).
    #[cfg(test)]
    Plant {
        digest: Digest,
        body: Vec<u8>,
    },
}

/// What the network layer holds and has refused (tests observe the bulk path through it).
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bulk bodies held (published or fetched, not yet expired).
    pub bulk_bodies: usize,
    /// Their bytes.
    pub bulk_bytes: usize,
    /// Announcements whose body is being fetched now.
    pub bulk_fetches: usize,
    /// Announcements ignored because no peer served their body in time.
    pub bulk_unfetched: u64,
    /// Bodies peers served that did not match their announcement.
    pub bulk_wrong_bodies: u64,
    /// Gossip messages and requests dropped because their peer was over its rate limit.
    pub rate_limited: u64,
}

/// A cloneable handle to the swarm task.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    store: bulk::SharedStore,
}

impl Handle {
    /// Publish on the network's topic. Fails when no member is subscribed yet.
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish { data, reply }).await?;
        rx.await.map_err(|_| "network task stopped".to_string())?
    }

    /// Forget the last round's bulk bodies: those whose digests are in `finished` (bodies the
    /// runtime took for the round now over: `blake3` of the message), this node's own published
    /// since the last call, and any stored more than [`BULK_KEEP_AT_ROUND_START`] ago. Call when
    /// a round starts, before the heap trim, so that the last round's bodies are not what the
    /// trim finds held. Synchronous (the store is shared), so the trim that follows sees them
    /// freed.
    pub fn release_bulk(&self, finished: &[[u8; 32]]) {
        self.store
            .release(Instant::now(), BULK_KEEP_AT_ROUND_START, finished);
    }

    /// Report the verdict on a gossip message (exactly once per [`Event::Gossip`]).
    pub async fn validate(&self, id: MessageId, source: PeerId, verdict: Verdict) {
        let _ = self
            .send(Command::Validate {
                id,
                source,
                verdict,
            })
            .await;
    }

    /// Ask `peer` something and wait for its answer (bounded by the request timeout).
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, String> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request {
            peer,
            request,
            reply,
        })
        .await?;
        rx.await.map_err(|_| "network task stopped".to_string())?
    }

    pub async fn respond(&self, channel: ResponseChannel<Response>, response: Response) {
        let _ = self.send(Command::Respond { channel, response }).await;
    }

    /// Disconnect `peer` and refuse it from now on.
    pub async fn block(&self, peer: PeerId) {
        let _ = self.send(Command::Block { peer }).await;
    }

    /// Accept `peer` from now on (a member the log admitted) and dial it at `addrs`.
    pub async fn allow(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let _ = self.send(Command::Allow { peer, addrs }).await;
    }

    /// How many peers are subscribed to the network's topic (so that a publish reaches them).
    pub async fn topic_peers(&self) -> usize {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::TopicPeers { reply }).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// The network layer's counters and bulk store size.
    #[cfg(test)]
    pub async fn stats(&self) -> Stats {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Stats { reply }).await.is_err() {
            return Stats::default();
        }
        rx.await.unwrap_or_default()
    }

    #[cfg(test)]
    async fn plant(&self, digest: Digest, body: Vec<u8>) {
        let _ = self.send(Command::Plant { digest, body }).await;
    }

    async fn send(&self, c: Command) -> Result<(), String> {
        self.commands
            .send(c)
            .await
            .map_err(|_| "network task stopped".to_string())
    }
}

/// Build the swarm and start listening. Returns the handle, the event stream and the task to run.
pub fn start(
    config: Config,
) -> anyhow::Result<(
    Handle,
    mpsc::Receiver<Event>,
    impl std::future::Future<Output = ()>,
)> {
    let local = config.keypair.public().to_peer_id();
    let topic = IdentTopic::new(config.topic.clone());
    let gossip_config = gossipsub::ConfigBuilder::default()
        // Bodies over the bulk threshold go by request-response, so frames stay small.
        .max_transmit_size(GOSSIP_FRAME_LIMIT)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .heartbeat_interval(Duration::from_millis(500))
        .message_id_fn(|m: &gossipsub::Message| {
            MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
        })
        // How long a seen message id is remembered, so that a copy arriving later is dropped
        // here. Honest copies arrive within the message cache's gossip window (3 heartbeats,
        // 1.5 s), and a replay after this window is stale for the runtime, which drops it by
        // round. Each remembered id is a few small allocations made during a round's burst, so
        // a long window keeps more small objects between the burst's freed buffers; 60 s
        // (gossipsub's default) bounds that state to a minute. (It was 300 s; a soak A/B did not
        // show a difference in RSS beyond the noise: RELIABILITY.md, "Soak".)
        .duplicate_cache_time(Duration::from_secs(60))
        .build()
        .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
    let mut gossip = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(config.keypair.clone()),
        gossip_config,
    )
    .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
    // No gossipsub peer scoring: its one term the node used (invalid messages) is counted by the
    // task itself (`InvalidPenalty`), without the scorer's 120 s of per-message delivery records.
    gossip
        .subscribe(&topic)
        .context("subscribing to the network topic")?;

    let rpc = request_response::Behaviour::with_codec(
        Codec,
        [(StreamProtocol::new("/fedmesh/rpc/1"), ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
    );
    let bulk = request_response::Behaviour::with_codec(
        BulkCodec {
            max_body: config.max_message_bytes,
        },
        [(StreamProtocol::new(bulk::PROTOCOL), ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(bulk::REQUEST_TIMEOUT),
    );
    let mut allow = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
    for peer in config.members.keys() {
        allow.allow_peer(*peer);
    }
    let l = &config.limits;
    let ip_guard = IpGuard::new(l.handshakes_per_ip);
    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(l.handshakes))
            .with_max_established_per_peer(Some(l.connections_per_peer)),
    );
    let rate = RateLimiter::new(l.messages_per_s, l.mib_per_s * 1024.0 * 1024.0, l.burst_s);

    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .context("building the TCP transport")?
        .with_behaviour(|_| Behaviour {
            ip_guard,
            limits,
            allow,
            gossip,
            rpc,
            bulk,
        })
        .map_err(|e| anyhow::anyhow!("building the network behaviour: {e}"))?
        // Rounds can be quiet for longer than libp2p's 10 s default; keep member connections.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    for addr in &config.listen {
        swarm.listen_on(addr.clone()).with_context(|| {
            format!("cannot listen on {addr}: is the port in use? choose another with --listen")
        })?;
    }
    for (peer, addrs) in &config.members {
        for a in addrs {
            swarm.add_peer_address(*peer, a.clone());
        }
    }

    let store = bulk::SharedStore::new(bulk::Store::new(
        bulk::MAX_BODIES,
        config
            .max_message_bytes
            .saturating_mul(bulk::MAX_BYTES_IN_MESSAGES),
        bulk::BODY_TTL,
    ));
    let (commands, command_rx) = mpsc::channel(256);
    let (event_tx, events) = mpsc::channel(1024);
    let task = Task {
        swarm,
        topic,
        local,
        members: config.members,
        bootstrap: config.bootstrap,
        pending: HashMap::new(),
        events: event_tx,
        blocked: HashSet::new(),
        serve_rate: RateLimiter::new(l.messages_per_s, l.mib_per_s * 1024.0 * 1024.0, l.burst_s),
        rate,
        refused: Refused::default(),
        max_message_bytes: config.max_message_bytes,
        store: store.clone(),
        fetches: HashMap::new(),
        inflight: HashMap::new(),
        per_peer: HashMap::new(),
        delivered: HashMap::new(),
        distrusted: HashMap::new(),
        invalid: InvalidPenalty::default(),
    };
    Ok((Handle { commands, store }, events, task.run(command_rx)))
}

struct Task {
    swarm: Swarm<Behaviour>,
    topic: IdentTopic,
    local: PeerId,
    members: HashMap<PeerId, Vec<Multiaddr>>,
    bootstrap: Vec<Multiaddr>,
    pending: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, String>>>,
    events: mpsc::Sender<Event>,
    blocked: HashSet<PeerId>,
    rate: RateLimiter,
    /// Bounds the bulk bodies this node sends a peer, like `rate` bounds what the peer gossips.
    serve_rate: RateLimiter,
    refused: Refused,
    max_message_bytes: usize,
    /// Bodies this node can serve (published or fetched).
    store: bulk::SharedStore,
    /// Announcements whose body is being fetched, by gossip message id.
    fetches: HashMap<MessageId, Fetch>,
    /// Body requests in flight: which fetch, from which peer.
    inflight: HashMap<OutboundRequestId, (MessageId, PeerId)>,
    /// Body requests in flight per peer.
    per_peer: HashMap<PeerId, usize>,
    /// Fetched announcements handed to the runtime and awaiting its verdict: their body's digest
    /// and when they were handed over.
    delivered: HashMap<MessageId, (Digest, Instant)>,
    /// Peers that served a body that does not match its digest, not asked again until then.
    distrusted: HashMap<PeerId, Instant>,
    /// Invalid messages per peer; the peers graylisted for them (gossipsub's blacklist).
    invalid: InvalidPenalty,
}

/// An announced body being fetched.
struct Fetch {
    announcement: Announcement,
    propagation_source: PeerId,
    source: Option<PeerId>,
    /// Peers still to ask, in order.
    candidates: VecDeque<PeerId>,
    /// A request is in flight.
    asking: bool,
    deadline: Instant,
}

/// Bulk bodies younger than this survive [`Handle::release_bulk`] unless the runtime names them
/// as the finished round's or this node published them: a node that starts its round late may
/// already hold the next round's first bodies, which its peers may still fetch from it.
pub const BULK_KEEP_AT_ROUND_START: Duration = Duration::from_secs(1);

/// The most bulk bodies the store holds at once (so also the most a round can name to
/// [`Handle::release_bulk`]).
pub const MAX_BULK_BODIES: usize = bulk::MAX_BODIES;

/// How long a peer that served a wrong body is not asked for bodies.
const DISTRUST: Duration = Duration::from_secs(60);

/// What the node refused since it started, logged every ten seconds while it grows.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Refused {
    /// Inbound connections denied (non-members, blocked peers, over a limit) or failed.
    connections: u64,
    /// Gossip messages dropped unread and requests left unanswered because their peer was over
    /// its rate limit.
    rate_limited: u64,
    /// Bulk announcements ignored because their body could not be fetched in time.
    bulk_unfetched: u64,
    /// Bulk bodies that did not match their announcement (the serving peer's fault).
    bulk_wrong_bodies: u64,
}

impl Task {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut redial = tokio::time::interval(Duration::from_secs(1));
        let mut report = tokio::time::interval(Duration::from_secs(10));
        let mut bulk_tick = tokio::time::interval(Duration::from_millis(250));
        let mut reported = Refused::default();
        loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break, // every handle dropped: the node is shutting down
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event).await,
                _ = redial.tick() => self.dial_missing(),
                _ = bulk_tick.tick() => self.bulk_tick(),
                _ = report.tick() => {
                    tracing::debug!(
                        bodies = self.store.size().0,
                        bytes = self.store.size().1,
                        fetches = self.fetches.len(),
                        "bulk store"
                    );
                    if self.refused != reported {
                        reported = self.refused;
                        tracing::info!(
                            connections = reported.connections,
                            rate_limited_messages = reported.rate_limited,
                            bulk_unfetched = reported.bulk_unfetched,
                            bulk_wrong_bodies = reported.bulk_wrong_bodies,
                            "refused so far"
                        );
                    }
                }
            }
        }
    }

    /// Dial members we are not connected to (they may have restarted) and the bootstrap list.
    fn dial_missing(&mut self) {
        for (peer, addrs) in &self.members {
            if *peer == self.local || self.blocked.contains(peer) || self.swarm.is_connected(peer) {
                continue;
            }
            let opts = DialOpts::peer_id(*peer)
                .addresses(addrs.clone())
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let _ = self.swarm.dial(opts);
        }
        for addr in self.bootstrap.clone() {
            let known = self.members.values().any(|a| a.contains(&addr));
            if !known {
                let _ = self.swarm.dial(addr);
            }
        }
    }

    /// Publish `data`: on gossip itself, or, over the bulk threshold, as an announcement whose
    /// body waits in the store for the peers that fetch it.
    fn publish(&mut self, data: Vec<u8>) -> Result<(), String> {
        let bulk = data.len() > announce::THRESHOLD;
        tracing::debug!(len = data.len(), bulk, "publish");
        let data = if bulk {
            if u32::try_from(data.len()).is_err() {
                return Err(format!("a message of {} bytes is too large", data.len()));
            }
            let a = Announcement::of(&data);
            let len = data.len();
            if !self
                .store
                .insert_own(a.digest, Arc::new(data), Instant::now())
            {
                return Err(format!(
                    "a message of {len} bytes does not fit the bulk store ({} bytes)",
                    self.max_message_bytes
                        .saturating_mul(bulk::MAX_BYTES_IN_MESSAGES)
                ));
            }
            a.encode()
        } else {
            data
        };
        self.swarm
            .behaviour_mut()
            .gossip
            .publish(self.topic.clone(), data)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn report(&mut self, id: &MessageId, peer: &PeerId, acceptance: MessageAcceptance) {
        if matches!(acceptance, MessageAcceptance::Reject) {
            self.penalise(peer);
        }
        self.swarm
            .behaviour_mut()
            .gossip
            .report_message_validation_result(id, peer, acceptance);
    }

    /// Count an invalid message against the peer that sent it; the one that tips it over
    /// graylists it: gossipsub then drops every message it sends or originates until
    /// [`Self::restore_graylisted`] lifts it.
    fn penalise(&mut self, peer: &PeerId) {
        if self.invalid.invalid(*peer, Instant::now()) {
            tracing::warn!(%peer, "graylisted for sending invalid messages (lifted in a few seconds)");
            self.swarm.behaviour_mut().gossip.blacklist_peer(peer);
        }
    }

    /// Lift the graylisting of peers whose invalid messages have decayed (not of blocked ones).
    fn restore_graylisted(&mut self) {
        for peer in self.invalid.decay(Instant::now()) {
            if !self.blocked.contains(&peer) {
                tracing::debug!(%peer, "graylisting lifted");
                self.swarm
                    .behaviour_mut()
                    .gossip
                    .remove_blacklisted_peer(&peer);
            }
        }
    }

    /// A gossip message: an ordinary one goes to the runtime; an announcement starts a fetch of
    /// its body (or is refused at once when malformed).
    fn on_gossip(
        &mut self,
        id: MessageId,
        propagation_source: PeerId,
        message: gossipsub::Message,
    ) -> Option<Event> {
        let now = Instant::now();
        let announced = match announce::classify(&message.data, self.max_message_bytes) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(peer = %propagation_source, error = %e, "rejected a gossip message");
                self.report(&id, &propagation_source, MessageAcceptance::Reject);
                return Some(Event::Refused {
                    peer: propagation_source,
                    reason: e.to_string(),
                });
            }
        };
        // An announcement costs its peer the body's bytes: it asks us to fetch them.
        let cost = announced.map_or(message.data.len(), |a| a.len as usize);
        if !self.rate.allow(propagation_source, cost, now) {
            self.refused.rate_limited += 1;
            self.report(&id, &propagation_source, MessageAcceptance::Ignore);
            return None;
        }
        let Some(a) = announced else {
            return Some(Event::Gossip {
                id,
                propagation_source,
                source: message.source,
                data: message.data,
            });
        };
        if let Some(body) = self.store.get(&a.digest, now) {
            return Some(self.deliver(id, propagation_source, message.source, a.digest, &body));
        }
        let from_source = self
            .fetches
            .values()
            .filter(|f| f.propagation_source == propagation_source)
            .count();
        if self.fetches.len() >= bulk::MAX_FETCHES || from_source >= bulk::MAX_FETCHES_PER_SOURCE {
            tracing::debug!(peer = %propagation_source, "too many bulk fetches under way: announcement ignored");
            self.refused.bulk_unfetched += 1;
            self.report(&id, &propagation_source, MessageAcceptance::Ignore);
            return None;
        }
        // Ask the peer that forwarded it (it accepted it, so it holds the body), then the
        // publisher, then anyone else connected.
        let mut candidates = VecDeque::from([propagation_source]);
        if let Some(src) = message.source {
            if src != propagation_source && src != self.local {
                candidates.push_back(src);
            }
        }
        for p in self.swarm.connected_peers() {
            if !candidates.contains(p) && *p != self.local {
                candidates.push_back(*p);
            }
        }
        self.fetches.insert(
            id.clone(),
            Fetch {
                announcement: a,
                propagation_source,
                source: message.source,
                candidates,
                asking: false,
                deadline: now + bulk::FETCH_DEADLINE,
            },
        );
        self.advance(&id);
        None
    }

    /// Hand a fetched body to the runtime as the announcement's message.
    fn deliver(
        &mut self,
        id: MessageId,
        propagation_source: PeerId,
        source: Option<PeerId>,
        digest: Digest,
        body: &Arc<Vec<u8>>,
    ) -> Event {
        self.delivered.insert(id.clone(), (digest, Instant::now()));
        Event::Gossip {
            id,
            propagation_source,
            source,
            data: body.as_ref().clone(),
        }
    }

    /// Ask the next peer for the body of fetch `id`, unless a request is in flight; give up when
    /// no peer is left to ask.
    fn advance(&mut self, id: &MessageId) {
        let now = Instant::now();
        let Some(f) = self.fetches.get_mut(id) else {
            return;
        };
        if f.asking {
            return;
        }
        let mut waiting = false;
        let mut pick = None;
        let mut i = 0;
        while i < f.candidates.len() {
            let p = f.candidates[i];
            let distrusted = self.distrusted.get(&p).is_some_and(|until| *until > now);
            if distrusted || self.blocked.contains(&p) {
                f.candidates.remove(i);
            } else if self.per_peer.get(&p).copied().unwrap_or(0) >= bulk::MAX_REQUESTS_PER_PEER {
                waiting = true;
                i += 1;
            } else {
                pick = f.candidates.remove(i);
                break;
            }
        }
        match pick {
            Some(peer) => {
                let rid = self
                    .swarm
                    .behaviour_mut()
                    .bulk
                    .send_request(&peer, f.announcement.digest);
                f.asking = true;
                self.inflight.insert(rid, (id.clone(), peer));
                *self.per_peer.entry(peer).or_default() += 1;
            }
            // Retried when a request finishes or on the next tick.
            None if waiting => {}
            None => self.fail_fetch(id, "no peer served the body"),
        }
    }

    /// Give up fetch `id`: its announcement is ignored (not forwarded, no penalty).
    fn fail_fetch(&mut self, id: &MessageId, why: &str) {
        if let Some(f) = self.fetches.remove(id) {
            tracing::debug!(peer = %f.propagation_source, len = f.announcement.len, why, "bulk body not fetched: announcement ignored");
            self.refused.bulk_unfetched += 1;
            self.report(id, &f.propagation_source, MessageAcceptance::Ignore);
        }
    }

    /// Fetches that wait for a peer under its request limit.
    fn advance_waiting(&mut self) {
        let waiting: Vec<MessageId> = self
            .fetches
            .iter()
            .filter(|(_, f)| !f.asking)
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            self.advance(&id);
        }
    }

    /// Every 250 ms: lift graylistings that have decayed, expire bodies, give up fetches past their deadline, retry waiting ones.
    fn bulk_tick(&mut self) {
        self.restore_graylisted();
        let now = Instant::now();
        self.store.expire(now);
        let late: Vec<MessageId> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            self.fail_fetch(&id, "deadline passed");
        }
        self.advance_waiting();
        // A verdict the runtime never gave (it gives one for every message) must not pin state.
        self.delivered
            .retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(120));
        self.distrusted.retain(|_, until| *until > now);
    }

    fn on_bulk_event(
        &mut self,
        event: request_response::Event<Digest, BulkResponse>,
    ) -> Option<Event> {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request: digest,
                    channel,
                    ..
                } => {
                    let now = Instant::now();
                    let body = self.store.get(&digest, now);
                    let len = body.as_ref().map_or(0, |b| b.len());
                    // Bodies a peer makes us send count against a budget like its gossip: one
                    // over it goes unanswered (its request fails at once).
                    if !self.serve_rate.allow(peer, len, now) {
                        self.refused.rate_limited += 1;
                        drop(channel);
                        return None;
                    }
                    let response = match body {
                        Some(b) => BulkResponse::Body(b),
                        None => BulkResponse::NotHeld,
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .bulk
                        .send_response(channel, response);
                    None
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_body(request_id, peer, Ok(response)),
            },
            request_response::Event::OutboundFailure {
                request_id,
                peer,
                error,
                ..
            } => self.on_body(request_id, peer, Err(error.to_string())),
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound bulk request failed");
                None
            }
            _ => None,
        }
    }

    /// A peer's answer to a body request (or its failure).
    fn on_body(
        &mut self,
        request_id: OutboundRequestId,
        peer: PeerId,
        result: Result<BulkResponse, String>,
    ) -> Option<Event> {
        let (id, _) = self.inflight.remove(&request_id)?;
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
        let mut out = None;
        // Gone when it passed its deadline meanwhile.
        if let Some(f) = self.fetches.get_mut(&id) {
            f.asking = false;
            let a = f.announcement;
            match result {
                Ok(BulkResponse::Body(body)) if a.matches(&body) => {
                    let f = self.fetches.remove(&id)?;
                    self.store.insert(a.digest, body.clone(), Instant::now());
                    out = Some(self.deliver(id, f.propagation_source, f.source, a.digest, &body));
                }
                Ok(BulkResponse::Body(body)) => {
                    tracing::warn!(%peer, len = body.len(), announced = a.len, "a peer served a bulk body that does not match its digest; it is not asked for bodies for a minute");
                    self.refused.bulk_wrong_bodies += 1;
                    self.distrusted.insert(peer, Instant::now() + DISTRUST);
                    self.advance(&id);
                }
                Ok(BulkResponse::NotHeld) => {
                    tracing::debug!(%peer, "bulk body not held by this peer");
                    self.advance(&id);
                }
                Err(error) => {
                    tracing::debug!(%peer, %error, "bulk body request failed");
                    self.advance(&id);
                }
            }
        }
        self.advance_waiting();
        out
    }

    fn on_command(&mut self, c: Command) {
        let b = self.swarm.behaviour_mut();
        match c {
            Command::Publish { data, reply } => {
                let r = self.publish(data);
                let _ = reply.send(r);
            }
            Command::Validate {
                id,
                source,
                verdict,
            } => {
                let mut acceptance = match verdict {
                    Verdict::Accept => MessageAcceptance::Accept,
                    Verdict::Ignore => MessageAcceptance::Ignore,
                    Verdict::Reject => MessageAcceptance::Reject,
                };
                if let Some((digest, _)) = self.delivered.remove(&id) {
                    if verdict != Verdict::Accept {
                        // Not forwarded, so nobody will fetch it from us.
                        self.store.remove(&digest);
                    } else if self.store.get(&digest, Instant::now()).is_none() {
                        // Never forward an announcement whose body we cannot serve.
                        tracing::debug!(?id, "bulk body gone before the verdict: not forwarded");
                        acceptance = MessageAcceptance::Ignore;
                    }
                }
                self.report(&id, &source, acceptance);
            }
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let id = b.rpc.send_request(&peer, request);
                self.pending.insert(id, reply);
            }
            Command::Respond { channel, response } => {
                let _ = b.rpc.send_response(channel, response);
            }
            Command::TopicPeers { reply } => {
                let topic = self.topic.hash();
                let n = b
                    .gossip
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&topic))
                    .count();
                let _ = reply.send(n);
            }
            #[cfg(test)]
            Command::Stats { reply } => {
                let _ = reply.send(Stats {
                    bulk_bodies: self.store.size().0,
                    bulk_bytes: self.store.size().1,
                    bulk_fetches: self.fetches.len(),
                    bulk_unfetched: self.refused.bulk_unfetched,
                    bulk_wrong_bodies: self.refused.bulk_wrong_bodies,
                    rate_limited: self.refused.rate_limited,
                });
            }
            #[cfg(test)]
            Command::Plant { digest, body } => {
                self.store.remove(&digest);
                self.store.insert(digest, Arc::new(body), Instant::now());
            }
            Command::Block { peer } => {
                b.allow.disallow_peer(peer);
                b.gossip.blacklist_peer(&peer);
                self.blocked.insert(peer);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Allow { peer, addrs } => {
                if !self.blocked.contains(&peer) {
                    b.allow.allow_peer(peer);
                    self.members.insert(peer, addrs);
                }
            }
        }
    }

    async fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let out = match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(message_id, propagation_source, message),
            SwarmEvent::Behaviour(BehaviourEvent::Bulk(event)) => self.on_bulk_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    // Requests share the peer's gossip message budget; one over it goes
                    // unanswered (dropping the channel fails the peer's request at once).
                    if self.rate.allow(peer, 0, Instant::now()) {
                        Some(Event::Request {
                            peer,
                            request,
                            channel,
                        })
                    } else {
                        self.refused.rate_limited += 1;
                        drop(channel);
                        None
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                    None
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(
                request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    peer,
                    ..
                },
            )) => {
                if let Some(reply) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(format!("request to {peer} failed: {error}")));
                }
                None
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(
                request_response::Event::InboundFailure { peer, error, .. },
            )) => {
                tracing::debug!(%peer, %error, "inbound request failed");
                None
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } if num_established.get() == 1 => Some(Event::Connected(peer_id)),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.rate.forget(&peer_id);
                self.serve_rate.forget(&peer_id);
                Some(Event::Disconnected(peer_id))
            }
            SwarmEvent::NewListenAddr { address, .. } => Some(Event::Listening(address)),
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                self.refused.connections += 1;
                if self.refused.connections == 1 {
                    tracing::info!(%send_back_addr, %error, "refused a connection (the first; counts follow every 10 s)");
                }
                tracing::debug!(%send_back_addr, %error, "incoming connection refused");
                None
            }
            _ => None,
        };
        if let Some(e) = out {
            // Bounded: if the node falls behind, the swarm waits rather than queueing without end.
            let _ = self.events.send(e).await;
        }
    }
}
