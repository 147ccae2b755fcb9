//! `fedmesh node`: load and check everything, then run the network task and the round runtime.

use std::collections::HashMap;

use anyhow::Context as _;

use fedmesh_protocol::audit::Entry;
use fedmesh_protocol::genesis::Genesis;
use fedmesh_storage::Store;

use crate::config;
use crate::keys::{self, MemberKeys};
use crate::runtime::{Context, Runtime};
use crate::{net, train};

/// Run a node until its rounds are done or it is told to stop.
pub fn run(cfg: config::Node) -> anyhow::Result<()> {
    use tracing::Instrument as _;
    // candle and rayon size their thread pools from this variable; set it before either starts.
    if cfg.threads > 0 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", cfg.threads.to_string());
    }
    // Before any thread is started (logging's included): arenas, once made, stay.
    let arenas_limited = crate::memory::limit_arenas();
    init_logging();
    if !arenas_limited {
        tracing::warn!(
            arenas = crate::memory::ARENAS,
            "could not limit the allocator's arenas; memory may grow over a long run"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if !is_member(&cfg)? {
        rt.block_on(join_first(&cfg))?;
    }
    let prepared = prepare(&cfg, false)?;
    // Before the runtime allocates models and messages: bursts must not become the footprint.
    crate::memory::init(crate::memory::mmap_threshold(
        &prepared.ctx.layout,
        prepared.ctx.genesis.spec.train.batch_size,
    ));
    let span = tracing::info_span!("node", member = prepared.ctx.keys.index);
    rt.block_on(serve(prepared).instrument(span))
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,libp2p_gossipsub=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Open the data dir's log (writing height 0 and the initial model if it is new).
fn open_store(cfg: &config::Node, genesis: &Genesis, bytes: &[u8]) -> anyhow::Result<Store> {
    let store = Store::open(&cfg.data_dir)?;
    store
        .init_genesis(&Entry::genesis(bytes))
        .with_context(|| {
            format!(
                "data dir {} belongs to another network; use a fresh --data-dir for this genesis",
                cfg.data_dir.display()
            )
        })?;
    let layout = genesis.layout();
    if !store.has_checkpoint(&genesis.initial_model)? {
        let h = store.put_checkpoint(&layout, &layout.init(genesis.spec.model.init_seed))?;
        anyhow::ensure!(h == genesis.initial_model, "initial model hash mismatch");
    }
    Ok(store)
}

fn read_genesis(cfg: &config::Node) -> anyhow::Result<(Vec<u8>, Genesis, fedmesh_crypto::Hash)> {
    let bytes = std::fs::read(&cfg.genesis)
        .with_context(|| format!("cannot read genesis file {}", cfg.genesis.display()))?;
    let (genesis, genesis_hash) = Genesis::parse(&bytes)
        .with_context(|| format!("genesis file {}", cfg.genesis.display()))?;
    Ok((bytes, genesis, genesis_hash))
}

/// Whether the key in `cfg.key_dir` is a member: in the genesis, or admitted by the local log.
fn is_member(cfg: &config::Node) -> anyhow::Result<bool> {
    let (bytes, genesis, genesis_hash) = read_genesis(cfg)?;
    let identity = keys::MemberKeys::load_identity(&cfg.key_dir)?;
    if genesis
        .members
        .iter()
        .any(|m| m.public_key == identity.public())
    {
        return Ok(true);
    }
    let store = open_store(cfg, &genesis, &bytes)?;
    let (members, _) = crate::runtime::replay_members(&genesis, genesis_hash, &store)?;
    Ok(members.by_key(&identity.public()).is_some())
}

/// A joiner: write its join request (if it has none yet) and wait for its admission.
async fn join_first(cfg: &config::Node) -> anyhow::Result<()> {
    let path = cfg.data_dir.join(crate::join::REQUEST_FILE);
    if !path.exists() {
        let (_, path) = crate::join::make_request(cfg)?;
        tracing::warn!(
            file = %path.display(),
            "this key is not a member: hand the join request to a member's operator (`fedmesh admit --request FILE`)"
        );
    }
    let (bytes, genesis, genesis_hash) = read_genesis(cfg)?;
    let identity = keys::MemberKeys::load_identity(&cfg.key_dir)?;
    let store = std::sync::Arc::new(open_store(cfg, &genesis, &bytes)?);
    let index =
        crate::join::wait_for_admission(cfg, &genesis, genesis_hash, &identity, store).await?;
    tracing::info!(
        member = index,
        "admitted by the network; starting as a member"
    );
    Ok(())
}

/// Everything a node needs, loaded and checked.
pub struct Prepared {
    pub ctx: Context,
    pub store: Store,
    pub net: net::Config,
    /// The data dir (its control socket lives there).
    pub data_dir: std::path::PathBuf,
}

/// Run the network task and the round runtime.
pub async fn serve(p: Prepared) -> anyhow::Result<()> {
    let (handle, events, task) = net::start(p.net)?;
    let net_task = tokio::spawn(task);
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(8);
    crate::control::listen(&p.data_dir, control_tx)?;
    let runtime = Runtime::new(p.ctx, p.store, handle)?.with_control(control_rx);
    let result = runtime.run(events).await;
    net_task.abort();
    result
}

/// Load the genesis, keys, log and data; `init_logging` installs the log subscriber.
pub fn prepare(cfg: &config::Node, init_logging: bool) -> anyhow::Result<Prepared> {
    let (bytes, genesis, genesis_hash) = read_genesis(cfg)?;
    for m in &genesis.members {
        let expected = keys::peer_id(&m.public_key).to_string();
        if m.peer_id != expected {
            anyhow::bail!(
                "{}: member {} has peer_id {} but its key gives {expected}",
                cfg.genesis.display(),
                m.index,
                m.peer_id
            );
        }
    }
    if init_logging {
        self::init_logging();
    }
    let store = open_store(cfg, &genesis, &bytes)?;
    let (log_members, _) = crate::runtime::replay_members(&genesis, genesis_hash, &store)?;
    let identity = MemberKeys::load_identity(&cfg.key_dir)?;
    let keys = match log_members.by_key(&identity.public()) {
        Some(m) if m.admitted_from.is_some() => {
            anyhow::ensure!(
                log_members.is_active(m.index),
                "member {} was evicted from this network by its members' votes (see `fedmesh audit show`)",
                m.index
            );
            anyhow::ensure!(
                genesis.spec.mode == fedmesh_protocol::genesis::Mode::Plain
                    && genesis.spec.dp.is_none(),
                "admitted members take part in mode plain without spec.dp only; this network runs \
                 mode {}",
                genesis.spec.mode
            );
            MemberKeys::admitted(identity, m.index)
        }
        _ => MemberKeys::load(&cfg.key_dir, &genesis)?,
    };
    if genesis.spec.mode == fedmesh_protocol::genesis::Mode::Paillier {
        anyhow::ensure!(
            keys.paillier.is_some(),
            "mode paillier: no key share loaded"
        );
    }
    let me = keys.index;
    let layout = genesis.layout();
    // An admitted member trains on shard `me` of `me + 1` of the genesis data spec: with
    // synthetic data its rows are its own; with the MNIST file its shard overlaps the genesis
    // members' (a joiner that brings its own data set is future work).
    let data = train::load(
        &genesis.spec.data,
        &cfg.data_path,
        me,
        (genesis.members.len() as u32).max(me + 1),
        genesis.spec.robust.reference_rows,
    )
    .with_context(|| format!("loading member {me}'s data"))?;
    crate::runtime::check_spec(&genesis.spec)?;
    cfg.attack
        .validate(Some(data.train.classes))
        .map_err(|e| anyhow::anyhow!("[attack]: {e}"))?;
    let poisoned = (cfg.attack.poisons_data()).then(|| {
        use rand::SeedableRng;
        let mut rng =
            rand_chacha::ChaCha20Rng::seed_from_u64(genesis.spec.data.seed ^ u64::from(me));
        cfg.attack.poison_data(&data.train, &mut rng)
    });
    if !cfg.attack.is_honest() {
        tracing::warn!(
            attack = cfg.attack.kind.name(),
            "this node is an ATTACKER ([attack] in its config), for drills"
        );
    }
    tracing::info!(
        network = %genesis.spec.network,
        genesis = %genesis_hash.short(),
        train_rows = data.train.len(),
        test_rows = data.test.len(),
        "node starting"
    );

    let mut members = HashMap::new();
    let mut peers = HashMap::new();
    let admitted: Vec<fedmesh_protocol::genesis::Member> = log_members
        .admitted()
        .filter(|m| log_members.is_active(m.index))
        .map(|m| fedmesh_protocol::genesis::Member {
            index: m.index,
            public_key: m.public_key,
            peer_id: m.peer_id.clone(),
            addrs: m.addrs.clone(),
        })
        .collect();
    for m in genesis.members.iter().chain(&admitted) {
        let pid: libp2p::PeerId = m.peer_id.parse().context("peer id in genesis")?;
        let addrs = m.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        members.insert(pid, addrs);
        peers.insert(pid, m.index);
    }
    for (member, addrs) in &cfg.routes {
        let Some(m) = genesis.members.get(*member as usize) else {
            anyhow::bail!(
                "node config: `routes` names member {member}, but the genesis has {} members",
                genesis.members.len()
            );
        };
        let pid: libp2p::PeerId = m.peer_id.parse().context("peer id in genesis")?;
        members.insert(pid, addrs.clone());
    }
    let listen = if cfg.listen.is_empty() {
        genesis
            .member(me)
            .or_else(|| admitted.iter().find(|m| m.index == me))
            .map(|m| m.addrs.iter().filter_map(|a| a.parse().ok()).collect())
            .unwrap_or_default()
    } else {
        cfg.listen.clone()
    };
    let net_cfg = net::Config {
        keypair: keys::libp2p_keypair(&keys.identity),
        listen,
        members,
        bootstrap: cfg.peers.clone(),
        topic: format!("fedmesh/{}", genesis_hash),
        max_message_bytes: genesis.spec.params.max_message_bytes,
        limits: cfg.limits.clone(),
    };
    let paillier = match genesis.spec.mode {
        fedmesh_protocol::genesis::Mode::Paillier => Some(std::sync::Arc::new(
            crate::runtime::PaillierSetup::new(&genesis)?,
        )),
        _ => None,
    };
    let ctx = Context {
        bls: genesis.bls()?,
        layout,
        genesis,
        genesis_hash,
        keys: std::sync::Arc::new(keys),
        data,
        peers,
        rounds: cfg.rounds,
        counters: Default::default(),
        budget: cfg.privacy,
        faults: cfg.faults.clone(),
        attack: cfg.attack.clone(),
        poisoned,
        paillier,
        admission: cfg.admission.clone(),
        admission_keys: cfg.admission_keys.clone(),
    };
    Ok(Prepared {
        ctx,
        store,
        net: net_cfg,
        data_dir: cfg.data_dir.clone(),
    })
}
