//! Limits on what a stranger can make the node do before it knows who the stranger is.
//!
//! The allow-list refuses a non-member only once the noise handshake has named its peer id, so
//! every inbound connection still costs a TCP accept and a handshake. [`IpGuard`] bounds how many
//! of those one IP address may have in progress at a time; libp2p's connection-limits behaviour
//! (set up in [`super::start`]) bounds the totals and the connections per peer. [`RateLimiter`]
//! bounds the gossip a connected peer may push per second, checked before the message is decoded.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Instant;

use libp2p::core::multiaddr::Protocol;
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::behaviour::{ConnectionEstablished, ListenFailure};
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Inbound connections still in their handshake, per remote IP address.
pub struct IpGuard {
    max_pending_per_ip: usize,
    pending: HashMap<ConnectionId, IpAddr>,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why [`IpGuard`] refused a connection.
#[derive(Debug, thiserror::Error)]
#[error("{ip} already has {pending} connections in their handshake (limit {limit})")]
pub struct TooManyFromIp {
    pub ip: IpAddr,
    pub pending: usize,
    pub limit: usize,
}

impl IpGuard {
    pub fn new(max_pending_per_ip: usize) -> Self {
        IpGuard {
            max_pending_per_ip,
            pending: HashMap::new(),
            per_ip: HashMap::new(),
        }
    }

    /// Connections of `ip` in their handshake now.
    pub fn pending(&self, ip: &IpAddr) -> usize {
        self.per_ip.get(ip).copied().unwrap_or(0)
    }

    fn admit(&mut self, id: ConnectionId, remote: &Multiaddr) -> Result<(), TooManyFromIp> {
        let Some(ip) = ip_of(remote) else {
            return Ok(());
        };
        let pending = self.pending(&ip);
        if pending >= self.max_pending_per_ip {
            return Err(TooManyFromIp {
                ip,
                pending,
                limit: self.max_pending_per_ip,
            });
        }
        *self.per_ip.entry(ip).or_default() += 1;
        self.pending.insert(id, ip);
        Ok(())
    }

    fn done(&mut self, id: ConnectionId) {
        if let Some(ip) = self.pending.remove(&id) {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
    }
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl NetworkBehaviour for IpGuard {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.admit(connection_id, remote)
            .map_err(ConnectionDenied::new)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.done(connection_id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. })
            | FromSwarm::ConnectionEstablished(ConnectionEstablished { connection_id, .. }) => {
                self.done(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Per-peer token buckets for gossip: `messages` per second and `bytes` per second, each with a
/// burst of `burst_seconds` worth. A message over either budget is dropped unread.
pub struct RateLimiter {
    messages_per_s: f64,
    bytes_per_s: f64,
    burst_seconds: f64,
    buckets: HashMap<PeerId, Bucket>,
}

struct Bucket {
    messages: f64,
    bytes: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(messages_per_s: f64, bytes_per_s: f64, burst_seconds: f64) -> Self {
        RateLimiter {
            messages_per_s,
            bytes_per_s,
            burst_seconds,
            buckets: HashMap::new(),
        }
    }

    /// Take one message of `len` bytes from `peer`'s budget at time `now`; false if over it
    /// (the budget is then left as it was).
    pub fn allow(&mut self, peer: PeerId, len: usize, now: Instant) -> bool {
        let (max_messages, max_bytes) = (
            self.messages_per_s * self.burst_seconds,
            self.bytes_per_s * self.burst_seconds,
        );
        let b = self.buckets.entry(peer).or_insert(Bucket {
            messages: max_messages,
            bytes: max_bytes,
            at: now,
        });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.at = now;
        b.messages = (b.messages + dt * self.messages_per_s).min(max_messages);
        b.bytes = (b.bytes + dt * self.bytes_per_s).min(max_bytes);
        let len = len as f64;
        if b.messages < 1.0 || b.bytes < len {
            return false;
        }
        b.messages -= 1.0;
        b.bytes -= len;
        true
    }

    /// Forget a peer that disconnected (it starts with a full budget when it comes back).
    pub fn forget(&mut self, peer: &PeerId) {
        self.buckets.remove(peer);
    }
}

/// How fast a peer's count of invalid messages decays: it keeps this share of itself per second
/// (gossipsub's `invalid_message_deliveries_decay`, which the node used before).
const INVALID_DECAY_PER_S: f64 = 0.9;
/// A peer whose decayed count of invalid messages is above this is graylisted: its third invalid
/// message within a few seconds (1 + 0.9 + 1 > 2 when they come a second apart) puts it there.
const GRAYLIST_ABOVE: f64 = 2.0;
/// A count that has decayed below this is forgotten (gossipsub's `decay_to_zero`).
const FORGET_BELOW: f64 = 0.1;

/// Invalid messages per peer (the node's `Reject` verdicts), decaying by 10 % a second, and which
/// peers are graylisted for them: a peer is graylisted while its count is above 2, so its third
/// invalid message in a few seconds does it, and it is heard again about 4 s after its last one
/// (sooner or later with how many it sent).
///
/// This is the whole of what gossipsub's peer scoring did for the node (only its
/// invalid-message term was weighted), without its per-message delivery records: those live
/// 120 s (hard-coded in libp2p-gossipsub) for every message the node sees, with a set of every
/// peer that delivered it, and were a megabyte or two of small objects that kept growing for the
/// first two minutes of a node's life (RELIABILITY.md, Soak, Session 8). The state here is one
/// entry per peer that sent something invalid in the last ~20 s, and members only (the
/// allow-list refuses everyone else).
#[derive(Default)]
pub struct InvalidPenalty {
    counts: HashMap<PeerId, Penalty>,
}

struct Penalty {
    count: f64,
    at: Instant,
    graylisted: bool,
}

impl Penalty {
    fn decay_to(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.count *= INVALID_DECAY_PER_S.powf(dt);
        self.at = now;
    }
}

impl InvalidPenalty {
    /// Count one invalid message from `peer` at `now`. True when this one graylists the peer
    /// (it was not graylisted before): the caller stops hearing it then.
    pub fn invalid(&mut self, peer: PeerId, now: Instant) -> bool {
        let p = self.counts.entry(peer).or_insert(Penalty {
            count: 0.0,
            at: now,
            graylisted: false,
        });
        p.decay_to(now);
        p.count += 1.0;
        if p.count > GRAYLIST_ABOVE && !p.graylisted {
            p.graylisted = true;
            return true;
        }
        false
    }

    /// Decay every count to `now`. Returns the peers whose graylisting ends now (their count fell
    /// to 2 or below); counts that decayed to almost nothing are forgotten.
    pub fn decay(&mut self, now: Instant) -> Vec<PeerId> {
        let mut restored = Vec::new();
        self.counts.retain(|peer, p| {
            p.decay_to(now);
            if p.graylisted && p.count <= GRAYLIST_ABOVE {
                p.graylisted = false;
                restored.push(*peer);
            }
            p.graylisted || p.count >= FORGET_BELOW
        });
        restored
    }

    #[cfg(test)]
    /// Whether `peer` is graylisted now (as of the last [`Self::invalid`] or [`Self::decay`]).
    pub fn is_graylisted(&self, peer: &PeerId) -> bool {
        self.counts.get(peer).is_some_and(|p| p.graylisted)
    }

    #[cfg(test)]
    /// Peers with a count (graylisted or not).
    pub fn len(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The third invalid message in quick succession graylists; the graylisting ends once the
    /// count has decayed (about 4 s after the third of three), and the entry is forgotten later.
    #[test]
    fn invalid_messages_graylist_then_decay() {
        let mut p = InvalidPenalty::default();
        let a = PeerId::random();
        let b = PeerId::random();
        let t0 = Instant::now();
        assert!(!p.invalid(a, t0));
        assert!(!p.invalid(a, t0 + Duration::from_millis(100)));
        assert!(!p.is_graylisted(&a));
        assert!(
            p.invalid(a, t0 + Duration::from_millis(200)),
            "the third graylists"
        );
        assert!(p.is_graylisted(&a));
        assert!(
            !p.invalid(a, t0 + Duration::from_millis(300)),
            "reported once"
        );
        assert!(!p.is_graylisted(&b), "only the sender is penalised");
        // 4 at 0.3 s decays to 2 after log(0.5)/log(0.9) ≈ 6.6 s.
        assert!(p.decay(t0 + Duration::from_secs(6)).is_empty());
        assert!(p.is_graylisted(&a));
        assert_eq!(p.decay(t0 + Duration::from_secs(7)), vec![a]);
        assert!(!p.is_graylisted(&a));
        assert_eq!(p.len(), 1, "the count is kept while it matters");
        // 2 decays below 0.1 after ≈ 28 s more.
        assert!(p.decay(t0 + Duration::from_secs(40)).is_empty());
        assert_eq!(p.len(), 0, "forgotten");
    }

    /// Invalid messages that come seldom never add up to a graylisting.
    #[test]
    fn slow_invalid_messages_are_not_graylisted() {
        let mut p = InvalidPenalty::default();
        let a = PeerId::random();
        let t0 = Instant::now();
        for i in 0..20 {
            // One every 10 s: the count right after each stays below 1 / (1 − 0.9¹⁰) ≈ 1.54.
            assert!(
                !p.invalid(a, t0 + Duration::from_secs(10 * i)),
                "message {i}"
            );
        }
        assert!(!p.is_graylisted(&a));
    }
    use std::time::Duration;

    #[test]
    fn ip_guard_counts_handshakes_per_ip() {
        let mut g = IpGuard::new(2);
        let a: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        let b: Multiaddr = "/ip4/10.0.0.2/tcp/4001".parse().unwrap();
        let ids: Vec<ConnectionId> = (0..5).map(ConnectionId::new_unchecked).collect();
        g.admit(ids[0], &a).unwrap();
        g.admit(ids[1], &a).unwrap();
        let err = g.admit(ids[2], &a).unwrap_err();
        assert_eq!((err.pending, err.limit), (2, 2));
        // Another address is not affected, and a finished handshake frees its slot.
        g.admit(ids[3], &b).unwrap();
        g.done(ids[0]);
        g.admit(ids[4], &a).unwrap();
        assert_eq!(g.pending(&ip_of(&a).unwrap()), 2);
        g.done(ids[1]);
        g.done(ids[4]);
        g.done(ids[3]);
        assert!(g.per_ip.is_empty() && g.pending.is_empty());
        // Addresses without an IP (e.g. in-memory transports) are not limited here.
        let mem: Multiaddr = "/memory/1".parse().unwrap();
        for i in 10..20 {
            g.admit(ConnectionId::new_unchecked(i), &mem).unwrap();
        }
    }

    #[test]
    fn rate_limiter_allows_bursts_then_refills() {
        let mut r = RateLimiter::new(10.0, 1000.0, 2.0);
        let p = PeerId::random();
        let q = PeerId::random();
        let t0 = Instant::now();
        // Burst: 20 messages of 50 bytes (1000 bytes, within 2 s × 1000 B/s).
        for i in 0..20 {
            assert!(r.allow(p, 50, t0), "message {i}");
        }
        assert!(
            !r.allow(p, 1, t0),
            "the 21st message of the burst is refused"
        );
        assert!(r.allow(q, 50, t0), "other peers have their own budget");
        // Half a second later, 5 more messages fit.
        let t1 = t0 + Duration::from_millis(500);
        for _ in 0..5 {
            assert!(r.allow(p, 10, t1));
        }
        assert!(!r.allow(p, 10, t1));
        // Bytes bind too: a message larger than the byte budget is refused, and leaves the
        // message budget untouched.
        let t2 = t1 + Duration::from_secs(10);
        assert!(!r.allow(p, 5000, t2));
        assert!(r.allow(p, 2000, t2));
        assert!(!r.allow(p, 1, t2), "byte budget spent");
        r.forget(&p);
        assert!(r.allow(p, 1, t2));
    }
}
