//! Gossip framing: every gossip message travels as one or more frames of at most
//! [`MAX_FRAME_BYTES`], so that no gossip stream ever carries (and no stream buffer ever grows
//! to) a model-sized frame.
//!
//! A message of at most [`FRAGMENT_BYTES`] goes whole, behind a two-byte header (version, kind).
//! A larger one is cut into `count = ⌈len / FRAGMENT_BYTES⌉` fragments; each carries the message's
//! blake3 digest, its total length, its index and the count, then its bytes — every fragment but
//! the last exactly [`FRAGMENT_BYTES`] long. The layout is canonical: for a given message there is
//! exactly one valid byte string per index, so [`decode`] refuses any header that does not fit it
//! (wrong count, index out of range, wrong length, a total over the network's message limit).
//!
//! ```text
//! whole:    version u8 = 1 | kind u8 = 0 | message bytes (≤ FRAGMENT_BYTES)
//! fragment: version u8 = 1 | kind u8 = 1 | digest [u8; 32] | total u32 BE | index u16 BE
//!           | count u16 BE | bytes
//! ```
//!
//! A [`Reassembler`] collects fragments per publisher and hands back the whole message once every
//! index is in and its digest matches. It is bounded: per publisher at most
//! [`Limits::max_incomplete`] messages in progress and [`Limits::max_bytes`] fragment bytes held
//! (the oldest incomplete message is dropped to make room), and an incomplete message expires
//! after [`Limits::timeout`]. Each fragment comes with an opaque token (the network layer's
//! validation handle), and every token comes back exactly once: with the complete message, with
//! a refusal, or as dropped (evicted or expired) — so the caller can report a verdict for each.
//!
//! ```
//! use std::time::Instant;
//! use fedmesh_protocol::fragment::{self, Frame, Limits, Outcome, Reassembler};
//!
//! let message = vec![7u8; 3 * fragment::FRAGMENT_BYTES + 5];
//! let frames = fragment::split(&message).unwrap();
//! assert_eq!(frames.len(), 4);
//! let mut r = Reassembler::new(Limits::for_messages(1 << 20));
//! let now = Instant::now();
//! let mut done = None;
//! for (i, f) in frames.iter().enumerate().rev() {
//!     let Frame::Fragment { header, bytes } = fragment::decode(f, 1 << 20).unwrap() else {
//!         unreachable!()
//!     };
//!     if let Outcome::Complete { message, tokens } = r.push("alice", header, bytes, i, now).outcome {
//!         done = Some((message, tokens));
//!     }
//! }
//! let (whole, tokens) = done.unwrap();
//! assert_eq!(whole, message);
//! assert_eq!(tokens, vec![3, 2, 1, 0]);
//! ```

use std::collections::HashMap;
use std::hash::Hash as StdHash;
use std::time::{Duration, Instant};

/// Bytes of a message per fragment; a message this long or shorter goes whole. The same on every
/// node: it is part of the wire format.
pub const FRAGMENT_BYTES: usize = 32 * 1024;

/// Version of the framing, the first byte of every frame.
pub const VERSION: u8 = 1;

const KIND_WHOLE: u8 = 0;
const KIND_FRAGMENT: u8 = 1;

/// Header of a whole message: version, kind.
pub const WHOLE_HEADER_BYTES: usize = 2;

/// Header of a fragment: version, kind, digest (32), total (4), index (2), count (2).
pub const FRAGMENT_HEADER_BYTES: usize = 2 + 32 + 4 + 2 + 2;

/// The largest frame [`split`] makes: one full fragment and its header.
pub const MAX_FRAME_BYTES: usize = FRAGMENT_BYTES + FRAGMENT_HEADER_BYTES;

/// The largest message the format can carry (`count` is a `u16`).
pub const MAX_MESSAGE_BYTES: usize = u16::MAX as usize * FRAGMENT_BYTES;

/// Where a fragment sits in its message, as its header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// blake3 of the whole message.
    pub digest: [u8; 32],
    /// Length of the whole message in bytes.
    pub total: u32,
    /// This fragment's position, `0..count`.
    pub index: u16,
    /// Number of fragments of the message.
    pub count: u16,
}

/// A decoded frame, borrowing the bytes it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A message small enough to travel in one frame.
    Whole(&'a [u8]),
    /// One fragment of a larger message.
    Fragment {
        /// Where it belongs.
        header: Header,
        /// Its part of the message.
        bytes: &'a [u8],
    },
}

/// Why a frame or a fragment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Shorter than its header.
    #[error("frame of {len} bytes is shorter than its {needed}-byte header")]
    Truncated { len: usize, needed: usize },
    /// A framing version this build does not speak.
    #[error("frame version {0} is not {VERSION}: the peer runs an incompatible build")]
    UnknownVersion(u8),
    /// Neither whole nor fragment.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A whole message over [`FRAGMENT_BYTES`]: a sender must fragment it.
    #[error("whole message of {len} bytes exceeds the fragment size {FRAGMENT_BYTES}")]
    WholeTooLarge { len: usize },
    /// A fragmented message small enough to have gone whole.
    #[error("message of {total} bytes is fragmented but fits in one frame")]
    NeedlessFragment { total: u32 },
    /// The message would exceed the network's limit.
    #[error("message of {total} bytes exceeds the limit of {limit} bytes")]
    TooLarge { total: u32, limit: usize },
    /// The count does not match the total length.
    #[error(
        "fragment count {count} does not fit a message of {total} bytes (expected {expected})"
    )]
    WrongCount {
        count: u16,
        total: u32,
        expected: usize,
    },
    /// The index is not below the count.
    #[error("fragment index {index} out of range 0..{count}")]
    IndexOutOfRange { index: u16, count: u16 },
    /// The fragment's bytes are not as long as its place in the message says.
    #[error("fragment {index} carries {len} bytes, expected {expected}")]
    WrongLength {
        index: u16,
        len: usize,
        expected: usize,
    },
    /// A fragment of a message already in progress claims a different total or count.
    #[error("fragment says the message has {total} bytes in {count} fragments; earlier fragments of it said otherwise")]
    Inconsistent { total: u32, count: u16 },
    /// The same fragment again, with the same bytes.
    #[error("fragment {index} received twice")]
    Duplicate { index: u16 },
    /// The same fragment again, with different bytes: its publisher signed two versions.
    #[error("fragment {index} received twice with different bytes")]
    Conflicting { index: u16 },
    /// Every fragment is in, but the message does not hash to the digest its headers named.
    #[error("reassembled message does not match its digest")]
    DigestMismatch,
}

impl FrameError {
    /// Whether the frame itself proves its sender broke the format (as opposed to a repeat that
    /// an honest network can produce, or a conflict whose guilty copy cannot be told apart).
    pub fn is_malformed(&self) -> bool {
        !matches!(
            self,
            FrameError::Duplicate { .. } | FrameError::Conflicting { .. }
        )
    }
}

/// Why [`split`] refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SplitError {
    /// Over [`MAX_MESSAGE_BYTES`].
    #[error("message of {len} bytes exceeds the framing's maximum of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge { len: usize },
}

/// Number of fragments of a message of `total` bytes (`total > FRAGMENT_BYTES`).
fn fragment_count(total: usize) -> usize {
    total.div_ceil(FRAGMENT_BYTES)
}

/// Length of fragment `index` of a message of `total` bytes.
fn fragment_len(total: usize, index: usize) -> usize {
    let start = index * FRAGMENT_BYTES;
    (total - start).min(FRAGMENT_BYTES)
}

/// Frame `message` for gossip: one whole frame, or its fragments in index order.
pub fn split(message: &[u8]) -> Result<Vec<Vec<u8>>, SplitError> {
    if message.len() <= FRAGMENT_BYTES {
        let mut frame = Vec::with_capacity(WHOLE_HEADER_BYTES + message.len());
        frame.extend_from_slice(&[VERSION, KIND_WHOLE]);
        frame.extend_from_slice(message);
        return Ok(vec![frame]);
    }
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(SplitError::TooLarge { len: message.len() });
    }
    let digest = *blake3::hash(message).as_bytes();
    let total = message.len() as u32; // ≤ MAX_MESSAGE_BYTES < u32::MAX
    let count = fragment_count(message.len()) as u16; // ≤ u16::MAX by the check above
    Ok(message
        .chunks(FRAGMENT_BYTES)
        .enumerate()
        .map(|(index, bytes)| {
            let mut frame = Vec::with_capacity(FRAGMENT_HEADER_BYTES + bytes.len());
            frame.extend_from_slice(&[VERSION, KIND_FRAGMENT]);
            frame.extend_from_slice(&digest);
            frame.extend_from_slice(&total.to_be_bytes());
            frame.extend_from_slice(&(index as u16).to_be_bytes());
            frame.extend_from_slice(&count.to_be_bytes());
            frame.extend_from_slice(bytes);
            frame
        })
        .collect())
}

/// Decode a frame from a peer and check that its header fits the canonical layout of a message
/// of at most `max_message_bytes`. Reads no more than the header; never allocates.
pub fn decode(frame: &[u8], max_message_bytes: usize) -> Result<Frame<'_>, FrameError> {
    let truncated = |needed| FrameError::Truncated {
        len: frame.len(),
        needed,
    };
    let [version, kind, rest @ ..] = frame else {
        return Err(truncated(WHOLE_HEADER_BYTES));
    };
    if *version != VERSION {
        return Err(FrameError::UnknownVersion(*version));
    }
    match *kind {
        KIND_WHOLE if rest.len() > FRAGMENT_BYTES => {
            Err(FrameError::WholeTooLarge { len: rest.len() })
        }
        KIND_WHOLE => Ok(Frame::Whole(rest)),
        KIND_FRAGMENT => {
            if frame.len() < FRAGMENT_HEADER_BYTES {
                return Err(truncated(FRAGMENT_HEADER_BYTES));
            }
            let (head, bytes) = rest.split_at(FRAGMENT_HEADER_BYTES - WHOLE_HEADER_BYTES);
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&head[..32]);
            let total = u32::from_be_bytes([head[32], head[33], head[34], head[35]]);
            let index = u16::from_be_bytes([head[36], head[37]]);
            let count = u16::from_be_bytes([head[38], head[39]]);
            let total_len = total as usize;
            if total_len <= FRAGMENT_BYTES {
                return Err(FrameError::NeedlessFragment { total });
            }
            let limit = max_message_bytes.min(MAX_MESSAGE_BYTES);
            if total_len > limit {
                return Err(FrameError::TooLarge { total, limit });
            }
            let expected = fragment_count(total_len);
            if count as usize != expected {
                return Err(FrameError::WrongCount {
                    count,
                    total,
                    expected,
                });
            }
            if index >= count {
                return Err(FrameError::IndexOutOfRange { index, count });
            }
            let expected = fragment_len(total_len, index as usize);
            if bytes.len() != expected {
                return Err(FrameError::WrongLength {
                    index,
                    len: bytes.len(),
                    expected,
                });
            }
            Ok(Frame::Fragment {
                header: Header {
                    digest,
                    total,
                    index,
                    count,
                },
                bytes,
            })
        }
        other => Err(FrameError::UnknownKind(other)),
    }
}

/// Bounds of a [`Reassembler`], per publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Incomplete messages held at once; a new one beyond this drops the oldest.
    pub max_incomplete: usize,
    /// Fragment bytes held at once; at least one whole message of the network's limit.
    pub max_bytes: usize,
    /// How long an incomplete message waits for its missing fragments.
    pub timeout: Duration,
}

impl Limits {
    /// The defaults for a network whose messages are at most `max_message_bytes`: 4 incomplete
    /// messages and twice the message limit in bytes per publisher, 10 s to complete.
    pub fn for_messages(max_message_bytes: usize) -> Self {
        Limits {
            max_incomplete: 4,
            max_bytes: 2 * max_message_bytes.min(MAX_MESSAGE_BYTES),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What [`Reassembler::push`] did with a fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Stored; its message still misses fragments.
    Held,
    /// The fragment completed its message: the message's bytes (digest checked) and the tokens
    /// of all its fragments, in arrival order (the completing one last).
    Complete { message: Vec<u8>, tokens: Vec<T> },
    /// The fragment was refused. With [`FrameError::DigestMismatch`] the whole message is
    /// refused: `others` holds the tokens of its other fragments.
    Refused {
        token: T,
        error: FrameError,
        others: Vec<T>,
    },
}

/// The result of [`Reassembler::push`].
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed<T> {
    /// What happened to the fragment.
    pub outcome: Outcome<T>,
    /// Tokens of the publisher's other incomplete messages dropped on the way (expired, or the
    /// oldest, to make room under the limits): their fragments will never be delivered.
    pub dropped: Vec<T>,
}

struct Partial<T> {
    digest: [u8; 32],
    total: u32,
    count: u16,
    started: Instant,
    parts: Vec<Option<Vec<u8>>>,
    received: usize,
    bytes: usize,
    tokens: Vec<T>,
}

struct Publisher<T> {
    /// Oldest first.
    partials: Vec<Partial<T>>,
    bytes: usize,
}

impl<T> Publisher<T> {
    fn remove(&mut self, i: usize) -> Partial<T> {
        let p = self.partials.remove(i);
        self.bytes -= p.bytes;
        p
    }
}

/// Collects fragments per publisher `S` into whole messages; each fragment carries a token `T`
/// that is handed back exactly once. Bounded by [`Limits`] (see the module docs).
pub struct Reassembler<S, T> {
    limits: Limits,
    publishers: HashMap<S, Publisher<T>>,
}

impl<S: StdHash + Eq + Clone, T> Reassembler<S, T> {
    /// An empty reassembler. `limits.max_bytes` is raised to [`FRAGMENT_BYTES`] if lower.
    pub fn new(mut limits: Limits) -> Self {
        limits.max_bytes = limits.max_bytes.max(FRAGMENT_BYTES);
        limits.max_incomplete = limits.max_incomplete.max(1);
        Reassembler {
            limits,
            publishers: HashMap::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Take one fragment of `publisher`'s (its header and bytes as [`decode`] checked them) at
    /// time `now`.
    pub fn push(
        &mut self,
        publisher: S,
        header: Header,
        bytes: &[u8],
        token: T,
        now: Instant,
    ) -> Pushed<T> {
        let limits = self.limits;
        let mut dropped = Vec::new();
        let p = self
            .publishers
            .entry(publisher.clone())
            .or_insert_with(|| Publisher {
                partials: Vec::new(),
                bytes: 0,
            });
        // Expired messages of this publisher go first, so they never block a live one.
        let mut i = 0;
        while i < p.partials.len() {
            if now.saturating_duration_since(p.partials[i].started) >= limits.timeout {
                dropped.extend(p.remove(i).tokens);
            } else {
                i += 1;
            }
        }
        let at = match p.partials.iter().position(|x| x.digest == header.digest) {
            Some(at) => {
                let x = &p.partials[at];
                if x.total != header.total || x.count != header.count {
                    let error = FrameError::Inconsistent {
                        total: header.total,
                        count: header.count,
                    };
                    return self.refused(publisher, token, error, dropped);
                }
                if let Some(held) = &x.parts[header.index as usize] {
                    let error = if held.as_slice() == bytes {
                        FrameError::Duplicate {
                            index: header.index,
                        }
                    } else {
                        FrameError::Conflicting {
                            index: header.index,
                        }
                    };
                    return self.refused(publisher, token, error, dropped);
                }
                at
            }
            None => {
                while p.partials.len() >= limits.max_incomplete {
                    dropped.extend(p.remove(0).tokens);
                }
                p.partials.push(Partial {
                    digest: header.digest,
                    total: header.total,
                    count: header.count,
                    started: now,
                    parts: vec![None; header.count as usize],
                    received: 0,
                    bytes: 0,
                    tokens: Vec::new(),
                });
                p.partials.len() - 1
            }
        };
        // Room for the bytes: drop the oldest other messages first (a single message always
        // fits, since `max_bytes` is at least one message of the limit).
        let mut at = at;
        while p.bytes + bytes.len() > limits.max_bytes && p.partials.len() > 1 {
            let oldest = if at == 0 { 1 } else { 0 };
            dropped.extend(p.remove(oldest).tokens);
            if oldest < at {
                at -= 1;
            }
        }
        let x = &mut p.partials[at];
        x.parts[header.index as usize] = Some(bytes.to_vec());
        x.received += 1;
        x.bytes += bytes.len();
        x.tokens.push(token);
        p.bytes += bytes.len();
        if x.received < x.count as usize {
            return Pushed {
                outcome: Outcome::Held,
                dropped,
            };
        }
        let done = p.remove(at);
        if p.partials.is_empty() {
            self.publishers.remove(&publisher);
        }
        let mut message = Vec::with_capacity(done.total as usize);
        for part in done.parts.into_iter().flatten() {
            message.extend_from_slice(&part);
        }
        let mut tokens = done.tokens;
        let outcome = if *blake3::hash(&message).as_bytes() == done.digest {
            Outcome::Complete { message, tokens }
        } else {
            let token = tokens.pop().expect("the completing fragment's token");
            Outcome::Refused {
                token,
                error: FrameError::DigestMismatch,
                others: tokens,
            }
        };
        Pushed { outcome, dropped }
    }

    fn refused(&mut self, publisher: S, token: T, error: FrameError, dropped: Vec<T>) -> Pushed<T> {
        if self
            .publishers
            .get(&publisher)
            .is_some_and(|p| p.partials.is_empty())
        {
            self.publishers.remove(&publisher);
        }
        Pushed {
            outcome: Outcome::Refused {
                token,
                error,
                others: Vec::new(),
            },
            dropped,
        }
    }

    /// Drop every incomplete message older than the timeout at `now`; returns their tokens.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let timeout = self.limits.timeout;
        let mut dropped = Vec::new();
        self.publishers.retain(|_, p| {
            let mut i = 0;
            while i < p.partials.len() {
                if now.saturating_duration_since(p.partials[i].started) >= timeout {
                    dropped.extend(p.remove(i).tokens);
                } else {
                    i += 1;
                }
            }
            !p.partials.is_empty()
        });
        dropped
    }

    /// Fragment bytes held now, over all publishers.
    pub fn held_bytes(&self) -> usize {
        self.publishers.values().map(|p| p.bytes).sum()
    }

    /// Incomplete messages held now, over all publishers.
    pub fn incomplete(&self) -> usize {
        self.publishers.values().map(|p| p.partials.len()).sum()
    }
}

#[cfg(test)]
mod tests;
