//! `fedmesh genesis`: the founding ceremony. The dealer draws every member's ed25519 identity and
//! BLS key share (and in mode `paillier` the joint Paillier key and one key share per member), writes the public genesis file and one private folder per member, and then
//! forgets the secrets (they exist only in the member folders it wrote).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use fedmesh_crypto::{bls, identity, paillier};
use fedmesh_protocol::genesis::{Genesis, Member, Mode, Spec, VERSION};

use crate::{config, keys};

/// The dealer's input file (`configs/genesis.toml`): the `[spec]` every member will share and the
/// `[dealer]` settings used only to write the files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DealerFile {
    /// Copied verbatim into the genesis file's `[spec]`.
    pub spec: Spec,
    /// How the member folders are laid out.
    pub dealer: Dealer,
}

/// Settings for the files the dealer writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dealer {
    /// Host every member listens on (a local testnet: 127.0.0.1).
    pub host: String,
    /// Member `i` listens on TCP port `base_port + i`.
    pub base_port: u16,
    /// Written into each member's node.toml: rounds to run (0 = until Ctrl-C).
    pub rounds: u64,
    /// Written into each member's node.toml: the MNIST file.
    pub data_path: PathBuf,
}

impl Default for Dealer {
    fn default() -> Self {
        Dealer {
            host: "127.0.0.1".into(),
            base_port: 7100,
            rounds: 0,
            data_path: PathBuf::from("data/mnist_5k.csv.gz"),
        }
    }
}

/// What `fedmesh genesis` was asked to do.
#[derive(Debug, Clone)]
pub struct Request {
    pub members: usize,
    pub out: PathBuf,
    pub config: Option<PathBuf>,
    pub base_port: Option<u16>,
    pub rounds: Option<u64>,
    pub data_path: Option<PathBuf>,
    pub mode: Option<String>,
}

/// Run the ceremony; returns the genesis hash.
pub fn run(req: &Request) -> anyhow::Result<fedmesh_crypto::Hash> {
    if req.members == 0 {
        anyhow::bail!("--members must be at least 1");
    }
    let mut file = match &req.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read genesis config {}", p.display()))?;
            toml::from_str::<DealerFile>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => DealerFile::default(),
    };
    if let Some(p) = req.base_port {
        file.dealer.base_port = p;
    }
    if let Some(r) = req.rounds {
        file.dealer.rounds = r;
    }
    if let Some(d) = &req.data_path {
        file.dealer.data_path = d.clone();
    }
    if let Some(m) = &req.mode {
        file.spec.mode = toml::Value::String(m.clone()).try_into().map_err(|_| {
            anyhow::anyhow!(
                "--mode {m:?} is not available in this build; available: plain, secagg, paillier"
            )
        })?;
    }
    let layout = file
        .spec
        .validate()
        .map_err(|e| anyhow::anyhow!("genesis config: {e}"))?;
    crate::runtime::check_spec(&file.spec).map_err(|e| anyhow::anyhow!("genesis config: {e}"))?;
    if file.spec.data.source == fedmesh_protocol::genesis::DataSource::Synthetic
        && (layout.inputs() != crate::train::SYNTHETIC_FEATURES || layout.outputs() != 2)
    {
        anyhow::bail!(
            "genesis config: spec.model.layers must start with {} inputs and end with 2 outputs for synthetic data",
            crate::train::SYNTHETIC_FEATURES
        );
    }
    if std::fs::read_dir(&req.out)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        anyhow::bail!(
            "{} is not empty; choose a new --out directory (the dealer never overwrites keys)",
            req.out.display()
        );
    }
    std::fs::create_dir_all(&req.out)
        .with_context(|| format!("cannot create {}", req.out.display()))?;

    let n = req.members;
    let threshold = file.spec.params.threshold_for(n);
    if threshold > n {
        anyhow::bail!("spec.params.signing_threshold {threshold} is more than --members {n}");
    }
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(seed.as_mut());
    let key_set = bls::KeySet::generate(threshold, *seed)?;
    let identities: Vec<identity::SecretKey> = (0..n)
        .map(|_| identity::SecretKey::generate(&mut OsRng))
        .collect();

    // Mode paillier: the joint key, its verification keys and one key share per member.
    let paillier = if file.spec.mode == Mode::Paillier {
        file.spec
            .paillier
            .validate(n)
            .map_err(|e| anyhow::anyhow!("genesis config: {e}"))?;
        let bits = file.spec.paillier.key_bits;
        eprintln!(
            "dealing a {bits}-bit threshold Paillier key ({} of {n}); safe-prime generation takes a while…",
            file.spec.paillier.threshold_for(n)
        );
        let started = std::time::Instant::now();
        let dealing = paillier::deal(bits, file.spec.paillier.threshold_for(n), n, &mut OsRng)?;
        eprintln!(
            "Paillier key dealt in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Some(dealing)
    } else {
        None
    };
    let members = identities
        .iter()
        .enumerate()
        .map(|(i, k)| Member {
            index: i as u32,
            public_key: k.public(),
            peer_id: keys::peer_id(&k.public()).to_string(),
            addrs: vec![format!(
                "/ip4/{}/tcp/{}",
                file.dealer.host,
                file.dealer.base_port as usize + i
            )],
        })
        .collect();
    let genesis = Genesis {
        version: VERSION,
        initial_model: layout.hash(&layout.init(file.spec.model.init_seed)),
        bls_public_set: key_set.public().to_hex(),
        paillier_public_key: paillier.as_ref().map(|d| hex::encode(d.public.to_bytes())),
        paillier_verification_keys: paillier
            .as_ref()
            .map(|d| hex::encode(d.verification.to_bytes(&d.public))),
        spec: file.spec.clone(),
        members,
        admitted: Vec::new(),
    };
    genesis
        .validate()
        .context("the dealt genesis does not validate")?;
    let text = format!(
        "# fedmesh genesis file: shared by every member; its blake3 hash is height 0 of every log.\n# Do not edit: any change makes a different network.\n{}",
        genesis.to_toml()
    );
    let genesis_path = req.out.join("genesis.toml");
    std::fs::write(&genesis_path, &text)
        .with_context(|| format!("cannot write {}", genesis_path.display()))?;
    let (_, hash) = Genesis::parse(text.as_bytes())?;

    let data_path =
        std::path::absolute(&file.dealer.data_path).unwrap_or(file.dealer.data_path.clone());
    for (i, k) in identities.iter().enumerate() {
        let dir = req.out.join(format!("member-{i}"));
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        keys::write_secret(&dir.join(keys::IDENTITY_FILE), &k.to_hex())?;
        keys::write_secret(&dir.join(keys::BLS_FILE), &key_set.share(i as u32).to_hex())?;
        if let Some(d) = &paillier {
            let share = zeroize::Zeroizing::new(hex::encode(d.shares[i].to_bytes()));
            keys::write_secret(&dir.join(keys::PAILLIER_FILE), &share)?;
        }
        let node = config::File {
            genesis: PathBuf::from("../genesis.toml"),
            key_dir: PathBuf::from("."),
            data_dir: PathBuf::from(format!("../data/member-{i}")),
            listen: vec![format!(
                "/ip4/{}/tcp/{}",
                file.dealer.host,
                file.dealer.base_port as usize + i
            )],
            peers: Vec::new(),
            rounds: file.dealer.rounds,
            data_path: data_path.clone(),
            threads: 1,
            ..Default::default()
        };
        write_node_config(&dir.join("node.toml"), &node)?;
    }
    Ok(hash)
}

fn write_node_config(path: &Path, node: &config::File) -> anyhow::Result<()> {
    let text = format!(
        "# fedmesh node config (see configs/node.toml for every field). Paths are relative to this file.\n{}",
        toml::to_string(node).context("node config to TOML")?
    );
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MemberKeys;

    /// Mode paillier: the genesis carries the public key and verification keys, each member's
    /// folder a private key share that loads and matches its index; another member's share is
    /// refused.
    #[test]
    fn paillier_genesis_deals_key_shares() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("dealer.toml");
        // A 256-bit key keeps the test fast; real networks use the 2048-bit default.
        std::fs::write(
            &cfg,
            "[spec.model]\nlayers = [4, 3, 2]\n[spec.paillier]\nkey_bits = 256\n",
        )
        .unwrap();
        let out = dir.path().join("net");
        run(&Request {
            members: 3,
            out: out.clone(),
            config: Some(cfg),
            base_port: Some(7300),
            rounds: Some(1),
            data_path: None,
            mode: Some("paillier".into()),
        })
        .unwrap();
        let bytes = std::fs::read(out.join("genesis.toml")).unwrap();
        let (genesis, _) = Genesis::parse(&bytes).unwrap();
        assert_eq!(genesis.spec.mode, Mode::Paillier);
        let pk = genesis.paillier_keys().unwrap();
        assert_eq!((pk.public.bits(), pk.verification.threshold()), (256, 2));
        for i in 0..3u32 {
            let member = out.join(format!("member-{i}"));
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(member.join(keys::PAILLIER_FILE))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o077, 0, "key share readable by others");
            }
            let keys = MemberKeys::load(&member, &genesis).unwrap();
            assert_eq!(keys.paillier.as_ref().map(|s| s.index()), Some(i));
        }
        // Member 1's share in member 0's folder is refused.
        std::fs::remove_file(out.join("member-0").join(keys::PAILLIER_FILE)).unwrap();
        std::fs::copy(
            out.join("member-1").join(keys::PAILLIER_FILE),
            out.join("member-0").join(keys::PAILLIER_FILE),
        )
        .unwrap();
        let err = MemberKeys::load(&out.join("member-0"), &genesis).unwrap_err();
        assert!(
            format!("{err:#}").contains("does not belong to member 0"),
            "{err:#}"
        );
    }
}
