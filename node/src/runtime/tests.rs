//! A hostile member against a real node, in-process over real libp2p on 127.0.0.1.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use fedmesh_protocol::wire::{Envelope, Payload, Request, Response, Update};

use crate::keys::{self, MemberKeys};
use crate::net::tests::free_port;
use crate::{config, dealer, net, node};

/// Publish until gossipsub has a subscribed peer to send to.
async fn publish(h: &net::Handle, data: Vec<u8>) {
    for _ in 0..100 {
        match h.publish(data.clone()).await {
            Ok(()) => return,
            Err(e) if e.contains("Duplicate") => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("could not publish: no subscribed peer");
}

/// Wait until `counter` exceeds `before`; false on timeout.
async fn grows(counter: &std::sync::atomic::AtomicU64, before: u64, within: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if counter.load(Relaxed) > before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Members 1 and 2 turn hostile: garbage, forged and foreign-network envelopes, truncated and
/// oversize messages, wrong-length updates. The honest node refuses each (counted as rejected),
/// never crashes, and gossipsub's scoring stops listening to an attacker after three; stale
/// messages are ignored without penalty; the node still answers requests afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_member_is_refused_penalised_and_the_node_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let dealer_cfg = dir.path().join("dealer.toml");
    std::fs::write(
        &dealer_cfg,
        "[spec.params]\nupdate_timeout_ms = 120000\nmax_message_bytes = 1048576\n",
    )
    .unwrap();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist_5k.csv.gz");
    dealer::run(&dealer::Request {
        members: 3,
        out: dir.path().join("net"),
        config: Some(dealer_cfg),
        base_port: Some(free_port()),
        rounds: Some(0),
        data_path: Some(data.into()),
        mode: None,
    })
    .unwrap();
    let cfg = config::Node::load(
        &dir.path().join("net/member-0/node.toml"),
        Default::default(),
    )
    .unwrap();
    let honest = node::prepare(&cfg, false).unwrap();
    let counters = honest.ctx.counters.clone();
    let genesis = honest.ctx.genesis.clone();
    let gh = honest.ctx.genesis_hash;
    let limit = genesis.spec.params.max_message_bytes;
    let attacker_net = honest.net.clone();
    let honest_peer = keys::peer_id(&genesis.members[0].public_key);
    let node_task = tokio::spawn(node::serve(honest));
    let start_attacker = |member: usize| {
        let keys =
            MemberKeys::load(&dir.path().join(format!("net/member-{member}")), &genesis).unwrap();
        let mut cfg = attacker_net.clone();
        cfg.keypair = keys::libp2p_keypair(&keys.identity);
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        let (h, mut events, task) = net::start(cfg).unwrap();
        tokio::spawn(task);
        let h2 = h.clone();
        tokio::spawn(async move {
            // The attacker accepts whatever the honest node gossips (it must report every message).
            while let Some(e) = events.recv().await {
                if let net::Event::Gossip {
                    id,
                    propagation_source,
                    ..
                } = e
                {
                    h2.validate(id, propagation_source, net::Verdict::Accept)
                        .await;
                }
            }
        });
        (h, keys)
    };
    let (h, attacker) = start_attacker(1);
    let (h_b, attacker_b) = start_attacker(2);

    let round = 1;
    let base = genesis.initial_model;
    let params = genesis.layout().param_count();
    let update = |len: usize, loss: f32| {
        Payload::Update(Update {
            base_model: base,
            num_samples: 10,
            train_loss: loss,
            delta: vec![0.001; len],
        })
    };
    // Stale but well-formed: ignored, no penalty. Sent first so that it is judged before any graylist.
    publish(
        &h,
        Envelope::seal(gh, 1, 0, update(params, 0.5), &attacker.identity).encode(),
    )
    .await;
    assert!(
        grows(&counters.ignored, 0, Duration::from_secs(20)).await,
        "a stale message is ignored"
    );
    assert_eq!(counters.rejected.load(Relaxed), 0);

    let forged = Envelope::seal(gh, 1, round, update(params, 0.1), &attacker.identity);
    let mut claims_member_0 = forged.clone();
    claims_member_0.sender = 0;
    let valid = forged.encode();
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\xff not an envelope".to_vec()),
        ("forged sender", claims_member_0.encode()),
        ("truncated", valid[..valid.len() / 2].to_vec()),
        ("valid after three rejects", valid.clone()),
    ];
    let forged_b = Envelope::seal(gh, 2, round, update(params, 0.1), &attacker_b.identity);
    let hostile_b: Vec<(&str, Vec<u8>)> = vec![
        (
            "another network",
            Envelope::seal(
                fedmesh_crypto::Hash::ZERO,
                2,
                round,
                update(params, 0.2),
                &attacker_b.identity,
            )
            .encode(),
        ),
        (
            "wrong length",
            Envelope::seal(gh, 2, round, update(params - 1, 0.3), &attacker_b.identity).encode(),
        ),
        (
            "oversize",
            Envelope::seal(
                gh,
                2,
                round,
                update(limit / 4 + 10, 0.4),
                &attacker_b.identity,
            )
            .encode(),
        ),
        ("valid after three rejects", forged_b.encode()),
    ];
    for (handle, batch) in [(&h, hostile), (&h_b, hostile_b)] {
        let mut refused = Vec::new();
        for (what, bytes) in batch {
            let before = counters.rejected.load(Relaxed);
            publish(handle, bytes).await;
            if grows(&counters.rejected, before, Duration::from_secs(3)).await {
                refused.push(what);
            } else {
                break; // graylisted: the node no longer hears the attacker at all
            }
        }
        eprintln!("refused before graylisting: {refused:?}");
        assert_eq!(
            refused.len(),
            3,
            "each hostile message is rejected until the attacker is graylisted: {refused:?}"
        );
    }
    assert_eq!(
        counters.accepted.load(Relaxed),
        0,
        "nothing hostile was accepted, not even the valid update of a graylisted peer"
    );

    // The node is alive and answers.
    match h
        .request(
            honest_peer,
            Request::Hello {
                genesis: gh,
                status: fedmesh_protocol::wire::Status {
                    height: 0,
                    head: gh,
                    sent_at_ms: 0,
                },
            },
        )
        .await
    {
        Ok(Response::Hello { status }) => assert_eq!(status.height, 0),
        other => panic!("the node does not answer after the attack: {other:?}"),
    }
    assert!(!node_task.is_finished(), "the node is still running");
    node_task.abort();
}

/// Robust rules and votes in a secure mode need more than one revealed sum: refused in modes
/// secagg and paillier without groups (the error says to set group_size), allowed in both with
/// groups (member-level DP still refused with groups).
#[test]
fn robust_rules_and_votes_in_secure_modes_need_groups() {
    use fedmesh_protocol::genesis::{Mode, RuleKind, Spec};
    let mut spec = Spec {
        mode: Mode::Secagg,
        ..Spec::default()
    };
    spec.robust.rule = RuleKind::Median;
    spec.robust.votes = true;
    let err = super::check_spec(&spec).unwrap_err().to_string();
    assert!(err.contains("group_size"), "{err}");
    spec.robust.group_size = 3;
    super::check_spec(&spec).unwrap();
    spec.dp.level = fedmesh_protocol::genesis::DpLevel::Member;
    let err = super::check_spec(&spec).unwrap_err().to_string();
    assert!(err.contains("level = \"record\""), "{err}");
    spec.dp.level = fedmesh_protocol::genesis::DpLevel::Record;
    super::check_spec(&spec).unwrap();
    spec.mode = Mode::Paillier;
    super::check_spec(&spec).unwrap();
    spec.dp.level = fedmesh_protocol::genesis::DpLevel::Member;
    let err = super::check_spec(&spec).unwrap_err().to_string();
    assert!(err.contains("level = \"record\""), "{err}");
    spec.dp.level = fedmesh_protocol::genesis::DpLevel::Record;
    spec.robust.group_size = 0;
    assert!(super::check_spec(&spec).is_err());
    spec.robust.rule = RuleKind::Mean;
    spec.robust.votes = false;
    super::check_spec(&spec).unwrap();
}
