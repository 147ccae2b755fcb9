//! Joining a running network: `fedmesh join` makes the signed join request, and a node whose key
//! is not (yet) a member waits for its admission before it runs.
//!
//! The request travels out of band (a file the joiner hands to the operator of any member, who
//! submits it with `fedmesh admit --request FILE`): members never talk to a node that is not a
//! member, so the allow-list that refuses outsiders right after the noise handshake stays as it
//! is and a flood of joiners costs the members nothing. Once a quorum of members has voted and an
//! admission record is in the log, the members allow the joiner's peer id; the waiting joiner's
//! dials then succeed, it catches up the log (verifying every entry as any member does, with
//! the member set replayed from genesis), finds itself admitted, and starts as a member.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fedmesh_crypto::identity;
use fedmesh_protocol::admission::{JoinRequest, SignedJoinRequest};
use fedmesh_protocol::genesis::Genesis;
use fedmesh_storage::Store;

use crate::runtime::sync;
use crate::{config, keys, net};

/// File name of the join request in the joiner's data dir.
pub const REQUEST_FILE: &str = "join-request.hex";

/// Make (or reuse) the joiner's identity in `cfg.key_dir`, sign a join request for the network of
/// `cfg.genesis` with the listen addresses of `cfg`, and write it (hex) to the data dir. Returns
/// the request and the path written.
pub fn make_request(cfg: &config::Node) -> anyhow::Result<(SignedJoinRequest, std::path::PathBuf)> {
    let bytes = std::fs::read(&cfg.genesis)
        .with_context(|| format!("cannot read genesis file {}", cfg.genesis.display()))?;
    let (genesis, genesis_hash) = Genesis::parse(&bytes)
        .with_context(|| format!("genesis file {}", cfg.genesis.display()))?;
    let key_file = cfg.key_dir.join(keys::IDENTITY_FILE);
    let identity = if key_file.exists() {
        keys::MemberKeys::load_identity(&cfg.key_dir)?
    } else {
        std::fs::create_dir_all(&cfg.key_dir)
            .with_context(|| format!("cannot create {}", cfg.key_dir.display()))?;
        let key = identity::SecretKey::generate(&mut rand::rngs::OsRng);
        keys::write_secret(&key_file, &key.to_hex())?;
        key
    };
    if let Some(m) = genesis
        .members
        .iter()
        .find(|m| m.public_key == identity.public())
    {
        anyhow::bail!(
            "the key in {} is genesis member {}; it needs no admission (run `fedmesh node`)",
            key_file.display(),
            m.index
        );
    }
    anyhow::ensure!(
        !cfg.listen.is_empty(),
        "a joiner must say where it listens: set `listen` in its node.toml (members dial it there)"
    );
    let request = JoinRequest {
        genesis: genesis_hash,
        public_key: identity.public(),
        peer_id: keys::peer_id(&identity.public()).to_string(),
        addrs: cfg.listen.iter().map(|a| a.to_string()).collect(),
        issued_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        nonce: rand::random(),
    };
    let signed = SignedJoinRequest::sign(request, &identity)?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    let path = cfg.data_dir.join(REQUEST_FILE);
    std::fs::write(&path, format!("{}\n", hex::encode(signed.encode())))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok((signed, path))
}

/// Wait until the log that members serve admits `identity`, catching it up into `store`.
/// Returns the member index the log gave it. Gives up with an error if the identity is evicted.
pub async fn wait_for_admission(
    cfg: &config::Node,
    genesis: &Genesis,
    genesis_hash: fedmesh_crypto::Hash,
    identity: &identity::SecretKey,
    store: Arc<Store>,
) -> anyhow::Result<u32> {
    let me = identity.public();
    let (members, _) = crate::runtime::replay_members(genesis, genesis_hash, &store)?;
    if let Some(m) = members.by_key(&me) {
        anyhow::ensure!(
            members.is_active(m.index),
            "this identity was member {} and has been evicted; it cannot rejoin",
            m.index
        );
        return Ok(m.index);
    }
    let mut known = std::collections::HashMap::new();
    for m in members.active_members() {
        let peer: libp2p::PeerId = m.peer_id.parse().context("peer id of a member")?;
        known.insert(
            peer,
            m.addrs.iter().filter_map(|a| a.parse().ok()).collect(),
        );
    }
    let peers: Vec<libp2p::PeerId> = known.keys().copied().collect();
    let (handle, mut events, task) = net::start(net::Config {
        keypair: keys::libp2p_keypair(identity),
        listen: cfg.listen.clone(),
        members: known,
        bootstrap: cfg.peers.clone(),
        topic: format!("fedmesh/{genesis_hash}"),
        max_message_bytes: genesis.spec.params.max_message_bytes,
        limits: cfg.limits.clone(),
    })?;
    let net_task = tokio::spawn(task);
    // Gossip and requests from members are not for a joiner; drain them so the task never blocks.
    let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
    tracing::info!(
        peer = %keys::peer_id(&me),
        "not a member yet: waiting for the members to admit this identity (see `fedmesh admit`)"
    );
    let chain = Arc::new(sync::Chain {
        genesis: genesis.clone(),
        genesis_hash,
        bls: genesis.bls()?,
        layout: genesis.layout(),
    });
    let result = loop {
        for peer in &peers {
            let head = store.head()?.context("the log has no genesis entry")?;
            let last = match head.height {
                0 => None,
                _ => Some(head.record()?),
            };
            let (members, _) = crate::runtime::replay_members(genesis, genesis_hash, &store)?;
            let job = sync::Job {
                chain: chain.clone(),
                store: store.clone(),
                net: handle.clone(),
                peer: *peer,
                head,
                last,
                members,
            };
            match job.run().await {
                Ok(out) if out.global.is_some() => break, // the log moved: look at it
                Ok(_) => {}
                Err(e) => tracing::debug!(%peer, error = %e, "catching up from this member failed"),
            }
        }
        let (members, _) = crate::runtime::replay_members(genesis, genesis_hash, &store)?;
        if let Some(m) = members.by_key(&me) {
            break if members.is_active(m.index) {
                Ok(m.index)
            } else {
                Err(anyhow::anyhow!(
                    "this identity was admitted as member {} and then evicted",
                    m.index
                ))
            };
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    store.flush()?;
    // The node proper listens on the same address: let this swarm go first.
    net_task.abort();
    let _ = net_task.await;
    drain.abort();
    result
}
