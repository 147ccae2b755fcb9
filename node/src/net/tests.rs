//! Bulk transfer over real swarms on 127.0.0.1: a body relayed along a line, a peer that serves a
//! wrong body, and bodies that never come.

use std::time::Duration;

use fedmesh_protocol::bulk::{self, Announcement};
use tokio::time::timeout;

use super::*;

const LIMIT: usize = 1 << 20;

/// A TCP port free on 127.0.0.1 right now (for tests that start swarms).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    handle: Handle,
    events: mpsc::Receiver<Event>,
    peer: PeerId,
}

/// Start one swarm per key with links `edges` (each node allows and dials only its neighbours),
/// and wait until every node sees all its neighbours on the topic.
async fn start_graph(n: usize, edges: &[(usize, usize)]) -> Vec<Node> {
    let keys: Vec<identity::Keypair> = (0..n)
        .map(|_| identity::Keypair::generate_ed25519())
        .collect();
    let addrs: Vec<Multiaddr> = (0..n)
        .map(|_| {
            format!("/ip4/127.0.0.1/tcp/{}", free_port())
                .parse()
                .unwrap()
        })
        .collect();
    let mut nodes = Vec::new();
    for i in 0..n {
        let mut members = HashMap::new();
        for &(a, b) in edges {
            let other = if a == i {
                b
            } else if b == i {
                a
            } else {
                continue;
            };
            members.insert(
                keys[other].public().to_peer_id(),
                vec![addrs[other].clone()],
            );
        }
        let (handle, events, task) = start(Config {
            keypair: keys[i].clone(),
            listen: vec![addrs[i].clone()],
            members,
            bootstrap: vec![],
            topic: "bulk-test".into(),
            max_message_bytes: LIMIT,
            limits: Default::default(),
        })
        .unwrap();
        tokio::spawn(task);
        nodes.push(Node {
            handle,
            events,
            peer: keys[i].public().to_peer_id(),
        });
    }
    for (i, node) in nodes.iter().enumerate() {
        let degree = edges.iter().filter(|(a, b)| *a == i || *b == i).count();
        let mut ok = false;
        for _ in 0..200 {
            if node.handle.topic_peers().await >= degree {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            ok,
            "node {i} did not see its {degree} neighbours on the topic"
        );
    }
    // Meshes form on the heartbeat (0.5 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes
}

/// The next gossip event (refusals included), or None within `within`.
async fn next_event(node: &mut Node, within: Duration) -> Option<Event> {
    let end = tokio::time::Instant::now() + within;
    loop {
        match timeout(end - tokio::time::Instant::now(), node.events.recv()).await {
            Ok(Some(e @ (Event::Gossip { .. } | Event::Refused { .. }))) => return Some(e),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// A–B–C in a line: A's large message reaches C only through B, and only after B accepted it;
/// C fetches the body from B (A is not even allowed to talk to C), and the runtime of each sees
/// the body with the announcement's id and publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_message_is_relayed_along_a_line_after_acceptance() {
    let mut nodes = start_graph(3, &[(0, 1), (1, 2)]).await;
    let big = body(300_000, 1);
    nodes[0].handle.publish(big.clone()).await.unwrap();
    let a = nodes[0].peer;
    let b = nodes[1].peer;

    let Some(Event::Gossip {
        id,
        propagation_source,
        source,
        data,
    }) = next_event(&mut nodes[1], Duration::from_secs(10)).await
    else {
        panic!("B got no message");
    };
    assert_eq!(data, big, "B's runtime sees the body, not the announcement");
    assert_eq!((propagation_source, source), (a, Some(a)));
    assert!(
        next_event(&mut nodes[2], Duration::from_millis(1500))
            .await
            .is_none(),
        "nothing reaches C before B's verdict"
    );
    nodes[1]
        .handle
        .validate(id, propagation_source, Verdict::Accept)
        .await;

    let Some(Event::Gossip {
        propagation_source,
        source,
        data,
        ..
    }) = next_event(&mut nodes[2], Duration::from_secs(10)).await
    else {
        panic!("C got no message after B accepted");
    };
    assert_eq!(data, big);
    assert_eq!((propagation_source, source), (b, Some(a)));
    let stats = nodes[2].handle.stats().await;
    assert_eq!((stats.bulk_bodies, stats.bulk_bytes), (1, big.len()));
    assert_eq!(
        nodes[1].handle.stats().await.bulk_bodies,
        1,
        "B holds it to serve C"
    );

    // Small messages still ride on gossip itself.
    nodes[0].handle.publish(b"small".to_vec()).await.unwrap();
    match next_event(&mut nodes[1], Duration::from_secs(10)).await {
        Some(Event::Gossip { data, .. }) => assert_eq!(data, b"small"),
        other => panic!("B did not get the small message: {other:?}"),
    }
}

/// A rejected (or ignored) body is dropped from the store and its announcement is not forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_bulk_message_stops_at_the_relay() {
    let mut nodes = start_graph(3, &[(0, 1), (1, 2)]).await;
    nodes[0].handle.publish(body(40_000, 2)).await.unwrap();
    let Some(Event::Gossip {
        id,
        propagation_source,
        ..
    }) = next_event(&mut nodes[1], Duration::from_secs(10)).await
    else {
        panic!("B got no message");
    };
    nodes[1]
        .handle
        .validate(id, propagation_source, Verdict::Reject)
        .await;
    assert!(
        next_event(&mut nodes[2], Duration::from_secs(3))
            .await
            .is_none(),
        "a rejected announcement is not forwarded"
    );
    assert_eq!(
        nodes[1].handle.stats().await.bulk_bodies,
        0,
        "B dropped the body"
    );
}

/// A serves a body that does not hash to its announcement: C counts it, stops asking A, and
/// fetches the right body from B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_body_is_refused_and_fetched_elsewhere() {
    let mut nodes = start_graph(3, &[(0, 2), (1, 2)]).await;
    let good = body(50_000, 3);
    let digest = Announcement::of(&good).digest;
    nodes[1].handle.plant(digest, good.clone()).await;
    // Planted first: A's publish keeps the body already held under the digest.
    nodes[0].handle.plant(digest, body(50_000, 4)).await;
    nodes[0].handle.publish(good.clone()).await.unwrap();
    match next_event(&mut nodes[2], Duration::from_secs(15)).await {
        Some(Event::Gossip { data, source, .. }) => {
            assert_eq!(data, good, "C's runtime only ever sees the announced body");
            assert_eq!(source, Some(nodes[0].peer));
        }
        other => panic!("C got no body: {other:?}"),
    }
    let stats = nodes[2].handle.stats().await;
    assert_eq!(stats.bulk_wrong_bodies, 1, "{stats:?}");
    assert_eq!(stats.bulk_unfetched, 0, "{stats:?}");
}

/// Announcements whose body nobody serves are ignored once (nothing reaches the runtime, nothing
/// hangs); malformed and oversized announcements are refused at once; the next message flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_never_come_are_ignored_and_bad_announcements_refused() {
    let mut nodes = start_graph(3, &[(0, 2), (1, 2)]).await;
    let orphan = Announcement::of(&body(60_000, 5));
    nodes[0].handle.publish(orphan.encode()).await.unwrap();
    assert!(
        next_event(&mut nodes[2], Duration::from_secs(3))
            .await
            .is_none(),
        "an unserved announcement never reaches the runtime"
    );
    let stats = nodes[2].handle.stats().await;
    assert_eq!(
        (stats.bulk_unfetched, stats.bulk_fetches),
        (1, 0),
        "{stats:?}"
    );

    let too_large = Announcement {
        len: LIMIT as u32 + 1,
        ..orphan
    };
    let mut bad_version = orphan.encode();
    bad_version[bulk::MAGIC.len()] = 9;
    for (what, bytes) in [
        ("too large", too_large.encode()),
        ("bad version", bad_version),
        ("truncated", orphan.encode()[..20].to_vec()),
    ] {
        nodes[0].handle.publish(bytes).await.unwrap();
        match next_event(&mut nodes[2], Duration::from_secs(5)).await {
            Some(Event::Refused { peer, .. }) => assert_eq!(peer, nodes[0].peer, "{what}"),
            other => panic!("{what}: not refused: {other:?}"),
        }
    }

    let fine = body(20_000, 6);
    nodes[1].handle.publish(fine.clone()).await.unwrap();
    match next_event(&mut nodes[2], Duration::from_secs(10)).await {
        Some(Event::Gossip { data, .. }) => assert_eq!(data, fine),
        other => panic!("the next message did not arrive: {other:?}"),
    }
}
