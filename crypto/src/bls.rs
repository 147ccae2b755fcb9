//! Threshold BLS signatures (threshold_crypto, BLS12-381) for round records.
//!
//! The dealer draws a [`KeySet`] at genesis: member `i` gets [`SecretShare`] `i`, everybody gets the
//! [`PublicSet`]. Any `threshold` members' [`SignatureShare`]s over the same message combine into
//! one [`Signature`] that verifies under the set's single public key, whichever members signed — so
//! the combined signature is the same on every node.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Size of a signature (and a signature share) in bytes.
pub const SIGNATURE_LEN: usize = 96;

/// The dealer's secret polynomial. Lives only during `fedmesh genesis`.
pub struct KeySet(threshold_crypto::SecretKeySet);

impl KeySet {
    /// Draw a key set for which `threshold` shares are needed to sign (1 ≤ threshold).
    pub fn generate(threshold: usize, seed: [u8; 32]) -> Result<Self, BlsError> {
        use rand07::SeedableRng;
        if threshold == 0 {
            return Err(BlsError::Threshold);
        }
        // threshold_crypto counts the shares that reveal nothing: t-1 of them.
        let mut rng = rand07::rngs::StdRng::from_seed(seed);
        Ok(KeySet(threshold_crypto::SecretKeySet::random(
            threshold - 1,
            &mut rng,
        )))
    }

    pub fn public(&self) -> PublicSet {
        PublicSet(self.0.public_keys())
    }

    pub fn share(&self, index: u32) -> SecretShare {
        SecretShare(self.0.secret_key_share(index as u64))
    }
}

/// The public side of the dealt key set: in the genesis file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicSet(threshold_crypto::PublicKeySet);

impl PublicSet {
    /// Number of shares needed to form a signature.
    pub fn threshold(&self) -> usize {
        self.0.threshold() + 1
    }

    pub fn verify_share(&self, index: u32, msg: &[u8], share: &SignatureShare) -> bool {
        self.0.public_key_share(index as u64).verify(&share.0, msg)
    }

    pub fn verify(&self, msg: &[u8], sig: &Signature) -> bool {
        self.0.public_key().verify(&sig.0, msg)
    }

    /// Combine `threshold()` or more shares (each checked by the caller with
    /// [`verify_share`](Self::verify_share)).
    pub fn combine<'a>(
        &self,
        shares: impl IntoIterator<Item = (u32, &'a SignatureShare)>,
    ) -> Result<Signature, BlsError> {
        let shares: Vec<(u64, &threshold_crypto::SignatureShare)> =
            shares.into_iter().map(|(i, s)| (i as u64, &s.0)).collect();
        if shares.len() < self.threshold() {
            return Err(BlsError::NotEnoughShares {
                have: shares.len(),
                need: self.threshold(),
            });
        }
        self.0
            .combine_signatures(shares)
            .map(Signature)
            .map_err(|e| BlsError::Combine(e.to_string()))
    }

    /// Hex text of the binary encoding, for the genesis file.
    pub fn to_hex(&self) -> String {
        hex::encode(
            bincode::serde::encode_to_vec(&self.0, bincode::config::standard()).expect("encode"),
        )
    }

    pub fn from_hex(s: &str) -> Result<Self, BlsError> {
        let bytes = hex::decode(s.trim()).map_err(|_| BlsError::Encoding("public key set"))?;
        let cfg = bincode::config::standard().with_limit::<65536>();
        let (set, used): (threshold_crypto::PublicKeySet, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg)
                .map_err(|_| BlsError::Encoding("public key set"))?;
        if used != bytes.len() {
            return Err(BlsError::Encoding("public key set"));
        }
        Ok(PublicSet(set))
    }
}

impl fmt::Debug for PublicSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bls::PublicSet(threshold {})", self.threshold())
    }
}

/// One member's share of the BLS secret key.
///
/// # Security
/// Whoever holds `threshold` shares can sign any record. Kept in the member's private folder;
/// zeroized on drop by threshold_crypto; `Debug` prints `<redacted>`.
pub struct SecretShare(threshold_crypto::SecretKeyShare);

impl SecretShare {
    pub fn sign(&self, msg: &[u8]) -> SignatureShare {
        SignatureShare(self.0.sign(msg))
    }

    pub fn to_hex(&self) -> zeroize::Zeroizing<String> {
        let secret = threshold_crypto::serde_impl::SerdeSecret(&self.0);
        let bytes = zeroize::Zeroizing::new(
            bincode::serde::encode_to_vec(&secret, bincode::config::standard()).expect("encode"),
        );
        zeroize::Zeroizing::new(hex::encode(bytes.as_slice()))
    }

    pub fn from_hex(s: &str) -> Result<Self, BlsError> {
        let bytes = zeroize::Zeroizing::new(
            hex::decode(s.trim()).map_err(|_| BlsError::Encoding("key share"))?,
        );
        let cfg = bincode::config::standard().with_limit::<1024>();
        let (secret, _): (
            threshold_crypto::serde_impl::SerdeSecret<threshold_crypto::SecretKeyShare>,
            usize,
        ) = bincode::serde::decode_from_slice(&bytes, cfg)
            .map_err(|_| BlsError::Encoding("key share"))?;
        Ok(SecretShare(secret.into_inner()))
    }

    /// Whether this share belongs to member `index` of `set`.
    pub fn matches(&self, set: &PublicSet, index: u32) -> bool {
        self.0.public_key_share() == set.0.public_key_share(index as u64)
    }
}

impl fmt::Debug for SecretShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bls::SecretShare(<redacted>)")
    }
}

/// One member's share of a threshold signature.
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureShare(threshold_crypto::SignatureShare);

impl SignatureShare {
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        self.0.to_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlsError> {
        let arr: &[u8; SIGNATURE_LEN] = bytes
            .try_into()
            .map_err(|_| BlsError::Encoding("signature share"))?;
        threshold_crypto::SignatureShare::from_bytes(arr)
            .map(SignatureShare)
            .map_err(|_| BlsError::Encoding("signature share"))
    }
}

impl fmt::Debug for SignatureShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bls::SignatureShare({}…)",
            hex::encode(&self.to_bytes()[..8])
        )
    }
}

/// A combined threshold signature.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature(threshold_crypto::Signature);

impl Signature {
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        self.0.to_bytes()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlsError> {
        let arr: &[u8; SIGNATURE_LEN] = bytes
            .try_into()
            .map_err(|_| BlsError::Encoding("signature"))?;
        threshold_crypto::Signature::from_bytes(arr)
            .map(Signature)
            .map_err(|_| BlsError::Encoding("signature"))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bls::Signature({}…)", hex::encode(&self.to_bytes()[..8]))
    }
}

/// What can go wrong with threshold signatures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlsError {
    #[error("threshold must be at least 1")]
    Threshold,
    #[error("{0} is not a valid encoding")]
    Encoding(&'static str),
    #[error("{have} signature shares, {need} needed")]
    NotEnoughShares { have: usize, need: usize },
    #[error("combining signature shares failed: {0}")]
    Combine(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_subset_gives_the_same_signature() {
        let set = KeySet::generate(3, [9u8; 32]).unwrap();
        let public = set.public();
        assert_eq!(public.threshold(), 3);
        let msg = b"record";
        let shares: Vec<_> = (0..5).map(|i| (i, set.share(i).sign(msg))).collect();
        for (i, s) in &shares {
            assert!(public.verify_share(*i, msg, s));
            assert!(!public.verify_share(*i, b"other", s));
        }
        let a = public
            .combine(shares[..3].iter().map(|(i, s)| (*i, s)))
            .unwrap();
        let b = public
            .combine(shares[2..].iter().map(|(i, s)| (*i, s)))
            .unwrap();
        assert_eq!(a, b);
        assert!(public.verify(msg, &a));
        assert!(public
            .combine(shares[..2].iter().map(|(i, s)| (*i, s)))
            .is_err());
    }

    #[test]
    fn encodings_round_trip() {
        let set = KeySet::generate(2, [1u8; 32]).unwrap();
        let public = PublicSet::from_hex(&set.public().to_hex()).unwrap();
        assert_eq!(public, set.public());
        let share = SecretShare::from_hex(&set.share(1).to_hex()).unwrap();
        assert!(share.matches(&public, 1));
        assert!(!share.matches(&public, 0));
        let sig = share.sign(b"m");
        assert_eq!(SignatureShare::from_bytes(&sig.to_bytes()).unwrap(), sig);
        assert!(SignatureShare::from_bytes(&[0u8; 10]).is_err());
        assert!(PublicSet::from_hex("zz").is_err());
    }
}
