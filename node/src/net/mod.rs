//! The libp2p wrapper: one task owns the `Swarm`; the rest of the node talks to it through a
//! cloneable [`Handle`] (commands over a bounded channel, `oneshot` replies) and hears from it
//! through [`Event`]s, so nothing outside this module sees a `SwarmEvent`.
//!
//! Transport: TCP + noise + yamux. Gossipsub carries the round's messages (one topic per network,
//! named after the genesis hash) with `validate_messages()`: nothing is forwarded before the node
//! has checked it, and every message gets exactly one validation report. Request-response carries
//! the handshake, log catch-up, checkpoints and lost updates. Only genesis members may connect
//! (an allow-list), so a stranger's connection is refused before any of its bytes are read.

mod codec;
mod guard;

use std::collections::{HashMap, HashSet};
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

use fedmesh_protocol::wire::{Request, Response};

use crate::config::Limits;
pub use codec::Codec;
use guard::{IpGuard, RateLimiter};

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
    /// Largest gossip message; every member uses the same value.
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
}

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
}

/// A cloneable handle to the swarm task.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
}

impl Handle {
    /// Publish on the network's topic. Fails when no member is subscribed yet.
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish { data, reply }).await?;
        rx.await.map_err(|_| "network task stopped".to_string())?
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
        .max_transmit_size(config.max_message_bytes + 64 * 1024)
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
    let (score_params, thresholds) = peer_scoring(&topic);
    gossip
        .with_peer_score(score_params, thresholds)
        .map_err(|e| anyhow::anyhow!("gossipsub peer scoring: {e}"))?;
    gossip
        .subscribe(&topic)
        .context("subscribing to the network topic")?;

    let rpc = request_response::Behaviour::with_codec(
        Codec,
        [(StreamProtocol::new("/fedmesh/rpc/1"), ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(60)),
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
        rate,
        refused: Refused::default(),
    };
    Ok((Handle { commands }, events, task.run(command_rx)))
}

/// Gossipsub peer scoring tuned for federated rounds: members are few, quiet between rounds and
/// may share an IP (a local testnet, a NAT), so only invalid messages count. Each message the node
/// rejects costs the peer that sent it `-20 × count²` (the count decays by 10 % a second): after
/// two, the node stops publishing to it; after three, it ignores it entirely (graylist).
fn peer_scoring(
    topic: &IdentTopic,
) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic_params = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -20.0,
        invalid_message_deliveries_decay: 0.9,
        ..Default::default()
    };
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    params.topics.insert(topic.hash(), topic_params);
    (params, gossipsub::PeerScoreThresholds::default())
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
    refused: Refused,
}

/// What the node refused since it started, logged every ten seconds while it grows.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Refused {
    /// Inbound connections denied (non-members, blocked peers, over a limit) or failed.
    connections: u64,
    /// Gossip messages dropped unread and requests left unanswered because their peer was over
    /// its rate limit.
    rate_limited: u64,
}

impl Task {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut redial = tokio::time::interval(Duration::from_secs(1));
        let mut report = tokio::time::interval(Duration::from_secs(10));
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
                _ = report.tick() => {
                    if self.refused != reported {
                        reported = self.refused;
                        tracing::info!(
                            connections = reported.connections,
                            rate_limited_messages = reported.rate_limited,
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

    fn on_command(&mut self, c: Command) {
        let b = self.swarm.behaviour_mut();
        match c {
            Command::Publish { data, reply } => {
                let r = b
                    .gossip
                    .publish(self.topic.clone(), data)
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
            Command::Validate {
                id,
                source,
                verdict,
            } => {
                let acceptance = match verdict {
                    Verdict::Accept => MessageAcceptance::Accept,
                    Verdict::Ignore => MessageAcceptance::Ignore,
                    Verdict::Reject => MessageAcceptance::Reject,
                };
                b.gossip
                    .report_message_validation_result(&id, &source, acceptance);
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
            })) if !self
                .rate
                .allow(propagation_source, message.data.len(), Instant::now()) =>
            {
                self.refused.rate_limited += 1;
                self.swarm
                    .behaviour_mut()
                    .gossip
                    .report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        MessageAcceptance::Ignore,
                    );
                None
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => Some(Event::Gossip {
                id: message_id,
                propagation_source,
                source: message.source,
                data: message.data,
            }),
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
