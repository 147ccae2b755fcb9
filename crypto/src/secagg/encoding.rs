//! Byte strings in serde: hex text in human-readable formats (TOML, JSON), raw bytes in binary ones.

use std::fmt;

use serde::{de, Deserializer, Serializer};
use zeroize::Zeroizing;

pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&Zeroizing::new(hex::encode(bytes)))
    } else {
        s.serialize_bytes(bytes)
    }
}

/// At most `max` bytes, so that a peer cannot make us allocate without bound.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    d: D,
    what: &'static str,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, D::Error> {
    let visitor = Bytes { what, max };
    if d.is_human_readable() {
        d.deserialize_str(visitor)
    } else {
        d.deserialize_bytes(visitor)
    }
}

struct Bytes {
    what: &'static str,
    max: usize,
}

impl Bytes {
    fn too_long<E: de::Error>(&self) -> E {
        E::custom(format_args!("{} longer than {} bytes", self.what, self.max))
    }
}

impl<'de> de::Visitor<'de> for Bytes {
    type Value = Zeroizing<Vec<u8>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} as bytes or hex text", self.what)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let v = v.trim();
        if v.len() > 2 * self.max {
            return Err(self.too_long());
        }
        hex::decode(v)
            .map(Zeroizing::new)
            .map_err(|_| E::custom(format_args!("{} is not valid hex", self.what)))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        if v.len() > self.max {
            return Err(self.too_long());
        }
        Ok(Zeroizing::new(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        let v = Zeroizing::new(v);
        if v.len() > self.max {
            return Err(self.too_long());
        }
        Ok(v)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let cap = seq.size_hint().unwrap_or(0).min(self.max);
        let mut out = Zeroizing::new(Vec::with_capacity(cap));
        while let Some(b) = seq.next_element::<u8>()? {
            if out.len() == self.max {
                return Err(self.too_long());
            }
            out.push(b);
        }
        Ok(out)
    }
}
