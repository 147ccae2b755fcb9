//! `fedmesh attack flood`: a sybil flood against a running network, for drills.
//!
//! One process plays `identities` outsiders, each with its own libp2p identity. Each dials every
//! member address in the genesis file again and again, and whenever a connection stands it
//! subscribes to the network's topic, publishes well-formed, signed messages (an update with the
//! model's exact size, a status announcement, claiming a member's index or its own) and sends
//! requests (hello, log entries, checkpoints). The members should refuse all of it: the report
//! counts what got through.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identity, noise, tcp, yamux, Multiaddr, StreamProtocol, Swarm};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use fedmesh_crypto::identity as member_identity;
use fedmesh_protocol::genesis::Genesis;
use fedmesh_protocol::wire::{Envelope, Payload, Request, Status, Update};

use crate::net::Codec;

#[derive(NetworkBehaviour)]
struct Behaviour {
    gossip: gossipsub::Behaviour,
    rpc: request_response::Behaviour<Codec>,
}

/// What the flood did and what got through, summed over all identities.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub identities: usize,
    pub seconds: f64,
    /// Dials started.
    pub dials: u64,
    /// Connections that completed the transport handshake on our side (the member may still
    /// close them at once: the allow-list acts right after the handshake).
    pub connections: u64,
    /// Connections that stayed open for more than a second: a member kept talking to us.
    pub long_connections: u64,
    /// Messages we tried to publish; publish only succeeds when a member is subscribed to us.
    pub publish_attempts: u64,
    pub published: u64,
    /// Requests sent, and answers received (any answer is a member doing work for an outsider).
    pub requests: u64,
    pub responses: u64,
    /// Gossip messages from members that reached us.
    pub gossip_received: u64,
}

/// Options of `fedmesh attack flood`.
pub struct Options<'a> {
    pub genesis: &'a Path,
    pub identities: usize,
    pub duration: Duration,
    /// Messages each identity tries to publish per second while it is connected.
    pub rate: f64,
    pub seed: u64,
}

struct Sybil {
    swarm: Swarm<Behaviour>,
    key: member_identity::SecretKey,
    opened: HashMap<libp2p::swarm::ConnectionId, Instant>,
}

fn sybil(genesis: &Genesis, topic: &IdentTopic, seed: [u8; 32]) -> anyhow::Result<Sybil> {
    let key = member_identity::SecretKey::from_seed(seed);
    let keypair = identity::Keypair::ed25519_from_bytes(seed)
        .map_err(|e| anyhow::anyhow!("sybil key: {e}"))?;
    // The same transmit limit as the members, so that our messages are not refused for size.
    let config = gossipsub::ConfigBuilder::default()
        .max_transmit_size(genesis.spec.params.max_message_bytes + 64 * 1024)
        .heartbeat_interval(Duration::from_millis(500))
        .build()
        .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
    let mut gossip = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(keypair.clone()),
        config,
    )
    .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
    gossip.subscribe(topic)?;
    let rpc = request_response::Behaviour::with_codec(
        Codec,
        [(StreamProtocol::new("/fedmesh/rpc/1"), ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
    );
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| Behaviour { gossip, rpc })
        .map_err(|e| anyhow::anyhow!("behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(Sybil {
        swarm,
        key,
        opened: HashMap::new(),
    })
}

/// Run the flood for `opts.duration` and report what got through.
pub async fn run(opts: Options<'_>) -> anyhow::Result<Report> {
    // SIGTERM or Ctrl-C end the flood early, with a report like a normal end.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tokio::pin!(stop);
    let bytes = std::fs::read(opts.genesis)
        .with_context(|| format!("cannot read {}", opts.genesis.display()))?;
    let (genesis, genesis_hash) =
        Genesis::parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", opts.genesis.display()))?;
    let topic = IdentTopic::new(format!("fedmesh/{genesis_hash}"));
    let layout = genesis.layout();
    let targets: Vec<Multiaddr> = genesis
        .members
        .iter()
        .flat_map(|m| m.addrs.iter().filter_map(|a| a.parse().ok()))
        .collect();
    anyhow::ensure!(
        !targets.is_empty(),
        "the genesis file lists no member addresses"
    );

    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(opts.seed);
    let mut sybils = (0..opts.identities)
        .map(|_| sybil(&genesis, &topic, rng.gen()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut report = Report {
        identities: opts.identities,
        ..Report::default()
    };
    let delta: Vec<f32> = (0..layout.param_count())
        .map(|_| rng.gen_range(-0.01..0.01))
        .collect();
    let members = genesis.members.len() as u32;

    let start = Instant::now();
    let mut redial = tokio::time::interval(Duration::from_millis(500));
    let mut publish = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.rate.max(0.1)));
    let mut round = 0u64;
    while start.elapsed() < opts.duration {
        // One future per sybil: whichever swarm has an event first.
        let next = futures::future::select_all(
            sybils
                .iter_mut()
                .enumerate()
                .map(|(i, s)| Box::pin(async move { (i, s.swarm.select_next_some().await) })),
        );
        tokio::select! {
            _ = &mut stop => break,
            ((i, event), _, _) = next => on_event(&mut sybils[i], event, &mut report),
            _ = redial.tick() => {
                for s in &mut sybils {
                    for t in &targets {
                        report.dials += 1;
                        let _ = s.swarm.dial(t.clone());
                    }
                }
            }
            _ = publish.tick() => {
                round += 1;
                for (i, s) in sybils.iter_mut().enumerate() {
                    // Claim a member's index (a forged signature) or one past the members.
                    let sender = if i % 2 == 0 { (i as u32) % members } else { members + i as u32 };
                    let payload = if round.is_multiple_of(2) {
                        Payload::Update(Update {
                            base_model: genesis.initial_model,
                            num_samples: 1000,
                            train_loss: 0.1,
                            delta: delta.clone(),
                        })
                    } else {
                        Payload::Status(Status {
                            height: 1 << 40,
                            head: genesis_hash,
                            sent_at_ms: round,
                        })
                    };
                    let env = Envelope::seal(genesis_hash, sender, round, payload, &s.key);
                    report.publish_attempts += 1;
                    if s.swarm.behaviour_mut().gossip.publish(topic.clone(), env.encode()).is_ok() {
                        report.published += 1;
                    }
                    let peers: Vec<_> = s.swarm.connected_peers().copied().collect();
                    for p in peers {
                        let request = match round % 3 {
                            0 => Request::Hello {
                                genesis: genesis_hash,
                                status: Status { height: 0, head: genesis_hash, sent_at_ms: round },
                            },
                            1 => Request::Entries { from: 0, max: u32::MAX },
                            _ => Request::Checkpoint(genesis.initial_model),
                        };
                        report.requests += 1;
                        s.swarm.behaviour_mut().rpc.send_request(&p, request);
                    }
                }
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    let second = Duration::from_secs(1);
    report.long_connections += sybils
        .iter()
        .flat_map(|s| s.opened.values())
        .filter(|t| t.elapsed() > second)
        .count() as u64;
    Ok(report)
}

fn on_event(s: &mut Sybil, event: SwarmEvent<BehaviourEvent>, report: &mut Report) {
    match event {
        SwarmEvent::ConnectionEstablished { connection_id, .. } => {
            report.connections += 1;
            s.opened.insert(connection_id, Instant::now());
        }
        SwarmEvent::ConnectionClosed { connection_id, .. } => {
            if let Some(t) = s.opened.remove(&connection_id) {
                if t.elapsed() > Duration::from_secs(1) {
                    report.long_connections += 1;
                }
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
            message: request_response::Message::Response { .. },
            ..
        })) => report.responses += 1,
        SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message { .. })) => {
            report.gossip_received += 1
        }
        _ => {}
    }
}
