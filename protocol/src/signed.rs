//! Signed protocol messages, shared by the secure-aggregation modes: a body with its sender's
//! ed25519 signature over a hash bound to the protocol (`DOMAIN`), the message kind and the
//! network (genesis hash).

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::crypto::{hash::Hasher, identity, Hash};

/// A message with its sender's ed25519 signature, bound to the network and the message kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signed<T> {
    pub body: T,
    pub signature: identity::Signature,
}

/// What a round must tell about itself to check a signed message.
pub trait RoundKeys {
    /// The network the message must be bound to.
    fn genesis(&self) -> Hash;
    /// The round the message must belong to.
    fn round(&self) -> u64;
    /// The key of `member`, if it takes part.
    fn key(&self, member: u32) -> Option<&identity::PublicKey>;
}

/// Why a signed message was refused; every variant names the sender. Each protocol turns it
/// into its own error type.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    WrongRound {
        culprit: u32,
        found: u64,
        expected: u64,
    },
    NotMember {
        culprit: u32,
    },
    Signature {
        culprit: u32,
        what: &'static str,
    },
}

/// Messages that can be signed: they say who sent them, for which round, and under which name.
pub trait Body: Serialize + DeserializeOwned + Clone {
    /// The protocol's signing context (e.g. `fedmesh secagg v1 message`).
    const DOMAIN: &'static str;
    /// The message kind, also signed.
    const KIND: &'static str;
    /// The round parameters a message is checked against.
    type Params: RoundKeys;
    /// The protocol's error type.
    type Error: From<Refused>;
    fn sender(&self) -> u32;
    fn round(&self) -> u64;
}

fn signing_hash<T: Body>(genesis: Hash, body: &T) -> Hash {
    let mut h = Hasher::new(T::DOMAIN);
    h.update_field(T::KIND.as_bytes());
    h.update(genesis.as_bytes());
    h.update_field(&crate::codec::encode(body));
    h.finalize()
}

impl<T: Body> Signed<T> {
    pub fn sign(genesis: Hash, body: T, key: &identity::SecretKey) -> Signed<T> {
        let signature = key.sign(signing_hash(genesis, &body).as_bytes());
        Signed { body, signature }
    }

    /// Check round, membership and signature; returns the body.
    pub fn verify(&self, params: &T::Params) -> Result<&T, T::Error> {
        let culprit = self.body.sender();
        if self.body.round() != params.round() {
            return Err(Refused::WrongRound {
                culprit,
                found: self.body.round(),
                expected: params.round(),
            }
            .into());
        }
        let key = params.key(culprit).ok_or(Refused::NotMember { culprit })?;
        key.verify(
            signing_hash(params.genesis(), &self.body).as_bytes(),
            &self.signature,
        )
        .map_err(|_| Refused::Signature {
            culprit,
            what: T::KIND,
        })?;
        Ok(&self.body)
    }
}
