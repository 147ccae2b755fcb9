//! A member's private folder: `identity.key` (ed25519 seed, hex) and `bls.share` (BLS key share,
//! hex), both mode 0600. The ed25519 seed is also the member's libp2p key.

use std::path::Path;

use anyhow::Context as _;
use fedmesh_crypto::{bls, identity};
use fedmesh_protocol::genesis::Genesis;

pub const IDENTITY_FILE: &str = "identity.key";
pub const BLS_FILE: &str = "bls.share";
/// Mode `paillier`: the member's share of the joint decryption key (hex of
/// `paillier::KeyShare::to_bytes`).
pub const PAILLIER_FILE: &str = "paillier.share";

/// The secrets of one member, matched against the genesis file (or, for a member admitted after
/// genesis, against the log's member set).
#[derive(Debug)]
pub struct MemberKeys {
    pub index: u32,
    pub identity: identity::SecretKey,
    /// The member's BLS key share: genesis members only. Admitted members have none, so they do
    /// not approve log entries; the genesis members remain the signing committee.
    pub bls: Option<bls::SecretShare>,
    /// Mode `paillier` only: the member's share of the joint decryption key.
    pub paillier: Option<fedmesh_crypto::paillier::KeyShare>,
}

/// The libp2p keypair of an identity (same ed25519 key).
pub fn libp2p_keypair(key: &identity::SecretKey) -> libp2p::identity::Keypair {
    let mut seed = *key.seed();
    libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)
        .expect("a 32-byte seed is a valid ed25519 key")
}

/// The libp2p peer id of a member's public key.
pub fn peer_id(key: &identity::PublicKey) -> libp2p::PeerId {
    let public = libp2p::identity::ed25519::PublicKey::try_from_bytes(&key.to_bytes())
        .expect("a valid ed25519 public key");
    libp2p::identity::PublicKey::from(public).to_peer_id()
}

fn read_secret(dir: &Path, name: &str) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: is key_dir the member's private folder?",
            path.display()
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "secret key file is readable by others; run chmod 600 on it");
            }
        }
    }
    Ok(zeroize::Zeroizing::new(text))
}

impl MemberKeys {
    pub fn load(dir: &Path, genesis: &Genesis) -> anyhow::Result<MemberKeys> {
        let identity = identity::SecretKey::from_hex(&read_secret(dir, IDENTITY_FILE)?)
            .with_context(|| {
                format!("{}: not an ed25519 key", dir.join(IDENTITY_FILE).display())
            })?;
        let bls = bls::SecretShare::from_hex(&read_secret(dir, BLS_FILE)?)
            .with_context(|| format!("{}: not a BLS key share", dir.join(BLS_FILE).display()))?;
        let public = identity.public();
        let member = genesis
            .members
            .iter()
            .find(|m| m.public_key == public)
            .with_context(|| {
                format!(
                    "the key in {} is not a member of this genesis (public key {public})",
                    dir.join(IDENTITY_FILE).display()
                )
            })?;
        let set = genesis.bls().context("genesis bls_public_set")?;
        if !bls.matches(&set, member.index) {
            anyhow::bail!(
                "{} does not belong to member {} of this genesis",
                dir.join(BLS_FILE).display(),
                member.index
            );
        }
        let paillier = if genesis.spec.mode == fedmesh_protocol::genesis::Mode::Paillier {
            Some(load_paillier_share(dir, genesis, member.index)?)
        } else {
            None
        };
        Ok(MemberKeys {
            index: member.index,
            identity,
            bls: Some(bls),
            paillier,
        })
    }

    /// The identity in `dir` alone (`identity.key`): a joiner's, before or after its admission.
    pub fn load_identity(dir: &Path) -> anyhow::Result<identity::SecretKey> {
        identity::SecretKey::from_hex(&read_secret(dir, IDENTITY_FILE)?)
            .with_context(|| format!("{}: not an ed25519 key", dir.join(IDENTITY_FILE).display()))
    }

    /// The keys of a member admitted by the log as `index`: its identity only.
    pub fn admitted(identity: identity::SecretKey, index: u32) -> MemberKeys {
        MemberKeys {
            index,
            identity,
            bls: None,
            paillier: None,
        }
    }
}

/// Read the member's Paillier key share and check it against the genesis key.
fn load_paillier_share(
    dir: &Path,
    genesis: &Genesis,
    index: u32,
) -> anyhow::Result<fedmesh_crypto::paillier::KeyShare> {
    let path = dir.join(PAILLIER_FILE);
    let bytes = zeroize::Zeroizing::new(
        hex::decode(read_secret(dir, PAILLIER_FILE)?.trim())
            .with_context(|| format!("{}: not hex", path.display()))?,
    );
    let share = fedmesh_crypto::paillier::KeyShare::from_bytes(&bytes)
        .with_context(|| format!("{}: not a Paillier key share", path.display()))?;
    let keys = genesis.paillier_keys().context("genesis Paillier keys")?;
    if share.index() != index
        || share.key_bits() != keys.public.bits()
        || share.parties() != keys.verification.parties()
        || share.threshold() != keys.verification.threshold()
    {
        anyhow::bail!(
            "{} does not belong to member {index} of this genesis",
            path.display()
        );
    }
    Ok(share)
}

/// Write a secret file readable only by its owner.
pub fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}
