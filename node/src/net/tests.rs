//! The framing over real libp2p on 127.0.0.1: three nodes in a line (A – B – C, A and C not
//! connected), so that whatever C hears from A, B forwarded.

use std::collections::HashMap;
use std::time::Duration;

use fedmesh_protocol::fragment::{self, FRAGMENT_BYTES};
use libp2p::{identity, Multiaddr, PeerId};
use tokio::sync::mpsc;

use super::{Config, Event, Handle, Verdict, REASSEMBLED_ID};

const LIMIT: usize = 1 << 20;

struct Node {
    h: Handle,
    events: mpsc::Receiver<Event>,
    peer: PeerId,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A – B – C, each subscribed and meshed with its neighbours.
async fn line() -> [Node; 3] {
    let keys: Vec<identity::Keypair> = (0..3)
        .map(|_| identity::Keypair::generate_ed25519())
        .collect();
    let peers: Vec<PeerId> = keys.iter().map(|k| k.public().to_peer_id()).collect();
    let addrs: Vec<Multiaddr> = (0..3)
        .map(|_| {
            format!("/ip4/127.0.0.1/tcp/{}", free_port())
                .parse()
                .unwrap()
        })
        .collect();
    let neighbours: [&[usize]; 3] = [&[1], &[0, 2], &[1]];
    let mut nodes = Vec::new();
    for i in 0..3 {
        // Every node knows every member (it accepts their fragments), but only its neighbours'
        // addresses, so A and C never dial each other.
        let members: HashMap<PeerId, Vec<Multiaddr>> = (0..3)
            .filter(|&j| j != i)
            .map(|j| {
                let known = neighbours[i].contains(&j).then(|| addrs[j].clone());
                (peers[j], known.into_iter().collect())
            })
            .collect();
        let (h, events, task) = super::start(Config {
            keypair: keys[i].clone(),
            listen: vec![addrs[i].clone()],
            members,
            bootstrap: vec![],
            topic: "fedmesh/net-test".into(),
            max_message_bytes: LIMIT,
            limits: Default::default(),
        })
        .unwrap();
        tokio::spawn(task);
        nodes.push(Node {
            h,
            events,
            peer: peers[i],
        });
    }
    for (i, want) in [1, 2, 1].into_iter().enumerate() {
        let mut n = 0;
        for _ in 0..100 {
            n = nodes[i].h.topic_peers().await;
            if n >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(n, want, "node {i} sees its neighbours on the topic");
    }
    // A few heartbeats, so that B's mesh holds both neighbours.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes.try_into().ok().unwrap()
}

/// The next gossip message or refusal within `within` (other events are skipped).
async fn next(node: &mut Node, within: Duration) -> Option<Event> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, node.events.recv()).await {
            Ok(Some(e @ (Event::Gossip { .. } | Event::Refused { .. }))) => return Some(e),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// The next gossip message: its id, propagation source, publisher and bytes.
async fn gossip(
    node: &mut Node,
) -> (
    libp2p::gossipsub::MessageId,
    PeerId,
    Option<PeerId>,
    Vec<u8>,
) {
    match next(node, Duration::from_secs(10)).await {
        Some(Event::Gossip {
            id,
            propagation_source,
            source,
            data,
        }) => (id, propagation_source, source, data),
        other => panic!("expected a gossip message, got {other:?}"),
    }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8) ^ seed).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_travel_in_fragments_and_are_forwarded_only_once_accepted() {
    let [a, mut b, mut c] = line().await;

    // A model-sized message arrives whole at B, under an id of its own; C hears nothing until
    // B has judged it.
    let m1 = bytes(300_000, 1);
    a.h.publish(m1.clone()).await.unwrap();
    let (id, from, source, data) = gossip(&mut b).await;
    assert_eq!(data, m1);
    assert_eq!((from, source), (a.peer, Some(a.peer)));
    assert!(id.0.starts_with(REASSEMBLED_ID));
    assert!(
        next(&mut c, Duration::from_millis(1500)).await.is_none(),
        "B forwarded fragments before its verdict"
    );
    b.h.validate(id, from, Verdict::Accept).await;
    let (id, from, source, data) = gossip(&mut c).await;
    assert_eq!(data, m1, "C reassembles what B forwarded");
    assert_eq!((from, source), (b.peer, Some(a.peer)));
    c.h.validate(id, from, Verdict::Accept).await;

    // Publishing it again is a duplicate, as for a whole message.
    let again = a.h.publish(m1.clone()).await.unwrap_err();
    assert!(again.contains("Duplicate"), "{again}");

    // Rejected or ignored at B: none of its fragments reaches C.
    for verdict in [Verdict::Ignore, Verdict::Reject] {
        let m = bytes(2 * FRAGMENT_BYTES + 1, verdict as u8 + 2);
        a.h.publish(m.clone()).await.unwrap();
        let (id, from, _, data) = gossip(&mut b).await;
        assert_eq!(data, m);
        b.h.validate(id, from, verdict).await;
        assert!(
            next(&mut c, Duration::from_millis(1500)).await.is_none(),
            "a message B judged {verdict:?} reached C"
        );
    }

    // Small messages go whole, under gossipsub's own id, at both boundaries.
    for len in [10, FRAGMENT_BYTES] {
        let m = bytes(len, 5);
        a.h.publish(m.clone()).await.unwrap();
        let (id, from, _, data) = gossip(&mut b).await;
        assert_eq!(data, m);
        assert!(!id.0.starts_with(REASSEMBLED_ID));
        b.h.validate(id, from, Verdict::Accept).await;
        let (id, from, _, data) = gossip(&mut c).await;
        assert_eq!(data, m);
        c.h.validate(id, from, Verdict::Accept).await;
    }

    // A burst of messages near the limit (250 fragments back to back) all arrive: guards the
    // frame limit's slack for gossipsub's check of its whole read buffer (MAX_TRANSMIT_BYTES).
    // Their lengths differ so that frame boundaries fall anywhere in the reads.
    let burst: Vec<Vec<u8>> = (0..8)
        .map(|i| bytes(LIMIT - i * 4099, 10 + i as u8))
        .collect();
    for m in &burst {
        a.h.publish(m.clone()).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in &burst {
        let (id, from, _, data) = gossip(&mut b).await;
        b.h.validate(id, from, Verdict::Ignore).await;
        got.push(data);
    }
    got.sort();
    let mut want = burst.clone();
    want.sort();
    assert!(got == want, "the burst arrived whole");

    // The sender refuses what no receiver would take.
    let err =
        a.h.publish(vec![0; LIMIT + 64 * 1024 + 1])
            .await
            .unwrap_err();
    assert!(err.contains("exceeds the gossip limit"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_are_refused_before_the_node_sees_them() {
    let [a, mut b, mut c] = line().await;
    let refused = |e: Option<Event>, what: &str, needle: &str| match e {
        Some(Event::Refused {
            peer,
            reason,
            verdict,
        }) => {
            assert_eq!(verdict, Verdict::Reject, "{what}");
            assert!(reason.contains(needle), "{what}: {reason}");
            peer
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    };

    // A frame of another version.
    let mut frame = fragment::split(b"hello").unwrap().remove(0);
    frame[0] = 9;
    a.h.publish_frame(frame).await.unwrap();
    let peer = refused(
        next(&mut b, Duration::from_secs(10)).await,
        "version",
        "version 9",
    );
    assert_eq!(peer, a.peer);

    // Fragments with well-formed headers whose bytes do not hash to their digest: refused once
    // complete, and nothing of it is forwarded.
    let mut frames = fragment::split(&bytes(3 * FRAGMENT_BYTES, 7)).unwrap();
    let last = frames[1].len() - 1;
    frames[1][last] ^= 0xff;
    for f in frames {
        a.h.publish_frame(f).await.unwrap();
    }
    refused(
        next(&mut b, Duration::from_secs(10)).await,
        "forged",
        "does not match its digest",
    );
    assert!(next(&mut c, Duration::from_millis(1500)).await.is_none());

    // A fragment that claims more than the network's limit is refused by its header alone.
    let mut frames = fragment::split(&bytes(LIMIT + 1, 8)).unwrap();
    a.h.publish_frame(frames.swap_remove(0)).await.unwrap();
    refused(
        next(&mut b, Duration::from_secs(10)).await,
        "oversize",
        "exceeds the limit",
    );
    assert!(next(&mut c, Duration::from_millis(500)).await.is_none());
}
