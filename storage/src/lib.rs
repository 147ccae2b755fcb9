//! fedmesh storage: a node's durable state in one sled database.
//!
//! - the **audit log**, tree `entries`: hash-chained [`Entry`]s keyed by height (big-endian `u64`,
//!   so sled iterates them in order), encoded with [`fedmesh_protocol::codec`];
//! - **checkpoints**, directory `checkpoints/`: global models as safetensors files named by their
//!   model hash ([`Layout::hash`]), so they can be served to peers as they are. They are files, not
//!   sled values, because sled keeps what it stores in memory: a node's memory grew by one model
//!   (≈ 400 KB) per round while they were in a sled tree (RELIABILITY.md). Data dirs written
//!   before that still have them in the tree `checkpoints`, which is read as a fallback;
//! - **node state**, tree `state`: a few small values such as the last round started.
//!
//! The store enforces what it can check on its own: each appended entry extends the head (next
//! height, `prev_hash` = head's hash) and its body matches its `body_hash`; a checkpoint's
//! parameters hash to the hash it is stored under. Signatures are the protocol's business
//! ([`Entry::verify`]). Everything read back from disk is decoded and checked again — a damaged
//! byte surfaces as [`StoreError::Corrupt`] naming the height, never as a panic or as a silently
//! different entry.
//!
//! ```
//! use fedmesh_protocol::audit::Entry;
//! use fedmesh_protocol::model::Layout;
//! use fedmesh_storage::Store;
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path())?;
//! let genesis = Entry::genesis(b"the network's genesis file");
//! store.init_genesis(&genesis)?;
//! assert_eq!(store.head()?.map(|e| e.hash()), Some(genesis.hash()));
//!
//! let layout = Layout::new(vec![4, 2])?;
//! let params = layout.init(7);
//! let hash = store.put_checkpoint(&layout, &params)?;
//! assert_eq!(store.checkpoint(&layout, &hash)?, Some(params));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod checkpoint;
mod error;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use fedmesh_protocol::audit::{self, Entry, Kind};
use fedmesh_protocol::model::Layout;
use fedmesh_protocol::{codec, genesis, Hash};

pub use checkpoint::{check_params, decode_checkpoint, encode_checkpoint};
pub use error::{CheckpointError, StoreError};

const ENTRIES: &str = "entries";
const CHECKPOINTS: &str = "checkpoints";
const STATE: &str = "state";

/// Bytes of sled's page cache. Its default (1 GiB) lets every checkpoint written (≈ 400 KB per
/// round for the default model) stay resident, so a node's memory grew by that much every round
/// (43 % from round 10 to round 100 in the soak test, RELIABILITY.md). A node reads back only the
/// last checkpoint and the occasional entries a peer asks for; 16 MiB holds those many times over.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Subdirectory of the data dir holding the checkpoint files.
const CHECKPOINT_DIR: &str = "checkpoints";
/// Subdirectory of the data dir holding large node state.
const STATE_DIR: &str = "state";

/// A node's database: audit log, checkpoints and node state.
///
/// One `Store` per data directory: sled takes an exclusive lock on it, so a second node (or a
/// second `Store` in the same process) on the same directory fails in [`Store::open`] with
/// [`StoreError::Locked`]. `Store` is `Send + Sync`; share it behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    entries: sled::Tree,
    checkpoints: sled::Tree,
    state: sled::Tree,
    /// Serialises `append` and `init_genesis`: both read the head and then write above it, and
    /// two of them interleaving could otherwise both pass the link check against the same head.
    write: Mutex<()>,
}

impl Store {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let fail = |e| open_error(dir, e);
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(fail)?;
        let entries = db.open_tree(ENTRIES).map_err(fail)?;
        let checkpoints = db.open_tree(CHECKPOINTS).map_err(fail)?;
        let state = db.open_tree(STATE).map_err(fail)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            db,
            entries,
            checkpoints,
            state,
            write: Mutex::new(()),
        })
    }

    /// The data directory this store was opened in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    // ---- audit log ----------------------------------------------------------------------------

    /// Height 0. On an empty store: append it. On a non-empty store: the stored height-0 hash must
    /// equal `genesis.hash()`, else [`StoreError::GenesisMismatch`] — so a node started with the
    /// wrong genesis file refuses to run instead of mixing two networks' logs. Calling it again
    /// with the same genesis is a no-op, which makes it safe to call on every start.
    pub fn init_genesis(&self, genesis: &Entry) -> Result<(), StoreError> {
        let _guard = self.lock();
        if genesis.height != 0 {
            return Err(StoreError::NotGenesis {
                height: genesis.height,
            });
        }
        let given = genesis.hash();
        if let Some(stored) = self.get(0)? {
            let stored = stored.hash();
            return if stored == given {
                Ok(())
            } else {
                Err(StoreError::GenesisMismatch { stored, given })
            };
        }
        if let Some(height) = self.height()? {
            // Entries above 0 but no height 0: a damaged log, not an empty one.
            return Err(StoreError::Corrupt {
                height: 0,
                reason: format!(
                    "the genesis entry is missing although the log reaches height {height}"
                ),
            });
        }
        self.write_entry(genesis)
    }

    /// Append `entry` at head + 1.
    ///
    /// Checks `entry.height == head.height + 1` and `entry.prev_hash == head.hash()`, so the
    /// stored log is always one unbroken chain from genesis. The entry is a single sled insert —
    /// the head is simply the highest key, so there is no separate head pointer that could
    /// disagree with it — and the database is flushed before `Ok` is returned: a committed entry
    /// survives `kill -9` and power loss. A refused entry changes nothing.
    ///
    /// If the flush itself fails the entry may or may not survive a crash; treat the store as
    /// failed.
    pub fn append(&self, entry: &Entry) -> Result<(), StoreError> {
        self.append_with(entry, || {})
    }

    /// As [`Store::append`], calling `written` after the entry is written to the database and
    /// before it is flushed to disk (not called if the entry is refused).
    ///
    /// This is the window in which a crash loses an entry the node was appending: fault-injection
    /// tests kill the process in `written` to show that a node restarted after such a crash has a
    /// log that verifies (the entry is either wholly there or not at all) and catches up.
    pub fn append_with(&self, entry: &Entry, written: impl FnOnce()) -> Result<(), StoreError> {
        let _guard = self.lock();
        let head = self.head()?.ok_or(StoreError::Uninitialized)?;
        let expected = head.height.saturating_add(1);
        if entry.height != expected || head.height == u64::MAX {
            return Err(StoreError::WrongHeight {
                given: entry.height,
                expected,
            });
        }
        let head_hash = head.hash();
        if entry.prev_hash != head_hash {
            return Err(StoreError::WrongPrevHash {
                height: entry.height,
                given: entry.prev_hash,
                expected: head_hash,
            });
        }
        self.write_entry_with(entry, written)
    }

    /// Encode, insert and flush; the caller holds the write lock and has checked the link.
    fn write_entry(&self, entry: &Entry) -> Result<(), StoreError> {
        self.write_entry_with(entry, || {})
    }

    fn write_entry_with(&self, entry: &Entry, written: impl FnOnce()) -> Result<(), StoreError> {
        // Never write what `get` would later call corrupt.
        if !body_matches(entry) {
            return Err(StoreError::BodyHash {
                height: entry.height,
            });
        }
        let bytes = codec::encode(entry);
        if bytes.len() > codec::HARD_LIMIT {
            return Err(StoreError::EntryTooLarge {
                height: entry.height,
                len: bytes.len(),
                limit: codec::HARD_LIMIT,
            });
        }
        self.entries
            .insert(height_key(entry.height), bytes)
            .map_err(db("writing an audit-log entry"))?;
        written();
        self.flush_for("flushing an appended audit-log entry to disk")
    }

    /// The entry at `height`, or `None` above the head.
    pub fn get(&self, height: u64) -> Result<Option<Entry>, StoreError> {
        match self
            .entries
            .get(height_key(height))
            .map_err(db("reading an audit-log entry"))?
        {
            None => Ok(None),
            Some(bytes) => decode_entry(height, &bytes).map(Some),
        }
    }

    /// Entries `from..to_exclusive`, in order; fewer (or none) where the range passes the head.
    ///
    /// The whole range is loaded into memory, so callers bound it (e.g. a sync batch size). A hole
    /// inside the range is reported as [`StoreError::Corrupt`] for the missing height rather than
    /// skipped, because a caller would otherwise link entries that are not neighbours.
    pub fn range(&self, from: u64, to_exclusive: u64) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        if from >= to_exclusive {
            return Ok(out);
        }
        let mut next = from;
        for item in self
            .entries
            .range(height_key(from)..height_key(to_exclusive))
        {
            let (key, bytes) = item.map_err(db("reading the audit log"))?;
            let height = key_height(&key)?;
            if height != next {
                return Err(missing(next, height));
            }
            out.push(decode_entry(height, &bytes)?);
            next = height.saturating_add(1);
        }
        Ok(out)
    }

    /// The highest entry, or `None` for an empty log.
    pub fn head(&self) -> Result<Option<Entry>, StoreError> {
        match self
            .entries
            .last()
            .map_err(db("reading the audit log's head"))?
        {
            None => Ok(None),
            Some((key, bytes)) => decode_entry(key_height(&key)?, &bytes).map(Some),
        }
    }

    /// The height of the head, or `None` for an empty log. Reads only the key, so it still
    /// answers when the head entry's bytes are damaged.
    pub fn height(&self) -> Result<Option<u64>, StoreError> {
        match self
            .entries
            .last()
            .map_err(db("reading the audit log's head"))?
        {
            None => Ok(None),
            Some((key, _)) => key_height(&key).map(Some),
        }
    }

    /// All entries from height 0 in order.
    ///
    /// An entry that fails to decode, is stored under another height than it names, or whose
    /// body does not match its `body_hash` yields `Err(Corrupt { height, .. })` and iteration goes
    /// on, so one pass finds every damaged height; a hole yields `Corrupt` for its first missing
    /// height. A database read error ends the iteration.
    pub fn entries(&self) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
        Entries {
            iter: self.entries.iter(),
            next: 0,
            pending: None,
            done: false,
        }
    }

    // ---- checkpoints --------------------------------------------------------------------------

    /// Store the global model `params` of `layout` and return its model hash.
    ///
    /// Keyed by `layout.hash(params)`, so storing the same model twice is harmless and a model
    /// can be fetched by the hash a round record names. Flushed before returning, because a
    /// record naming a model the node can no longer load would stall it.
    ///
    /// The file is written beside its final name, synced, renamed into place and the directory
    /// synced: a crash leaves either the whole checkpoint or none (at most a stray `.tmp` file,
    /// overwritten by the next attempt).
    pub fn put_checkpoint(&self, layout: &Layout, params: &[f32]) -> Result<Hash, StoreError> {
        check_params(layout, params)?;
        let hash = layout.hash(params);
        if !self.has_checkpoint(&hash)? {
            self.write_checkpoint_file(&hash, &encode_checkpoint(layout, params))?;
        }
        Ok(hash)
    }

    fn checkpoint_path(&self, hash: &Hash) -> PathBuf {
        self.dir
            .join(CHECKPOINT_DIR)
            .join(format!("{hash}.safetensors"))
    }

    fn write_checkpoint_file(&self, hash: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        write_file(
            &self.dir.join(CHECKPOINT_DIR),
            &self.checkpoint_path(hash),
            bytes,
        )
    }

    /// The parameters of model `hash`, or `None` if not stored.
    ///
    /// Decoded against `layout` and verified against `hash`: disk damage shows up as an error
    /// ([`StoreError::CheckpointMismatch`] or [`StoreError::StoredCheckpoint`]), never as a
    /// silently different model.
    pub fn checkpoint(&self, layout: &Layout, hash: &Hash) -> Result<Option<Vec<f32>>, StoreError> {
        let Some(bytes) = self.checkpoint_bytes(hash)? else {
            return Ok(None);
        };
        let params =
            checkpoint::decode(layout, &bytes).map_err(|source| StoreError::StoredCheckpoint {
                hash: *hash,
                source,
            })?;
        if layout.hash(&params) != *hash {
            return Err(StoreError::CheckpointMismatch { hash: *hash });
        }
        Ok(Some(params))
    }

    /// The stored safetensors bytes of model `hash`, as they are, to serve to peers (who verify
    /// them with [`Store::put_checkpoint_bytes`]).
    pub fn checkpoint_bytes(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.checkpoint_path(hash);
        match std::fs::read(&path) {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::File {
                    op: "reading",
                    path,
                    source,
                })
            }
        }
        Ok(self
            .checkpoints
            .get(hash.as_bytes())
            .map_err(db("reading a checkpoint"))?
            .map(|b| b.to_vec()))
    }

    /// Store checkpoint bytes received from a peer, after decoding them against `layout` and
    /// checking that they hold model `hash`; returns the parameters.
    ///
    /// Nothing is stored unless both checks pass. What is stored is this crate's canonical
    /// encoding of the parameters, not the peer's bytes, so that whatever extra header metadata a
    /// peer sent is not kept or served on.
    pub fn put_checkpoint_bytes(
        &self,
        layout: &Layout,
        hash: &Hash,
        bytes: &[u8],
    ) -> Result<Vec<f32>, StoreError> {
        let params = checkpoint::decode(layout, bytes)?;
        if layout.hash(&params) != *hash {
            return Err(StoreError::CheckpointMismatch { hash: *hash });
        }
        self.put_checkpoint(layout, &params)?;
        Ok(params)
    }

    /// Whether model `hash` is stored.
    pub fn has_checkpoint(&self, hash: &Hash) -> Result<bool, StoreError> {
        if self.checkpoint_path(hash).is_file() {
            return Ok(true);
        }
        self.checkpoints
            .contains_key(hash.as_bytes())
            .map_err(db("reading the checkpoint index"))
    }

    // ---- node state ---------------------------------------------------------------------------

    /// Set a small piece of node state (e.g. `"last_round_started"`). Flushed before returning,
    /// because such values guard against repeating an action after a restart.
    pub fn put_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.state
            .insert(key.as_bytes(), value)
            .map_err(db("writing node state"))?;
        self.flush_for("flushing node state to disk")
    }

    /// A piece of node state, or `None` if never set.
    pub fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .state
            .get(key.as_bytes())
            .map_err(db("reading node state"))?
            .map(|v| v.to_vec()))
    }

    /// Set a large piece of node state (e.g. this member's own update of the round, hundreds of
    /// KB), kept in a file of its own (`state/<key>`) rather than in sled, which would keep
    /// every version in memory. Written whole or not at all, and synced before returning.
    /// `key` is a plain name: ASCII letters, digits, `_` and `-`.
    pub fn put_large_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let dir = self.dir.join(STATE_DIR);
        write_file(&dir, &dir.join(state_file(key)?), value)
    }

    /// A large piece of node state set with [`Store::put_large_state`], or `None`.
    pub fn get_large_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.dir.join(STATE_DIR).join(state_file(key)?);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::File {
                op: "reading",
                path,
                source,
            }),
        }
    }

    /// Write everything to disk (sled otherwise flushes on a timer).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.flush_for("flushing the store to disk")
    }

    fn flush_for(&self, op: &'static str) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(db(op))
    }

    // ---- fault injection ----------------------------------------------------------------------

    /// The stored bytes of the entry at `height`, undecoded. For tests and drills only.
    #[doc(hidden)]
    pub fn raw_entry_bytes(&self, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .entries
            .get(height_key(height))
            .map_err(db("reading an audit-log entry"))?
            .map(|b| b.to_vec()))
    }

    /// Overwrite the stored bytes of the entry at `height` with no checks at all, and flush.
    /// Fault injection for tests and drills only: it is how a drill damages a log on purpose.
    #[doc(hidden)]
    pub fn overwrite_raw_entry(&self, height: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let _guard = self.lock();
        self.entries
            .insert(height_key(height), bytes)
            .map_err(db("writing an audit-log entry"))?;
        self.flush_for("flushing an overwritten audit-log entry to disk")
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a panic while holding it leaves nothing inconsistent.
        self.write
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Iterator behind [`Store::entries`].
struct Entries {
    iter: sled::Iter,
    /// The height the next stored entry should have.
    next: u64,
    /// An entry read ahead while reporting the hole before it.
    pending: Option<(u64, sled::IVec)>,
    done: bool,
}

impl Iterator for Entries {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let (height, bytes) = match self.pending.take() {
            Some(pending) => pending,
            None => match self.iter.next()? {
                Err(e) => {
                    self.done = true;
                    return Some(Err(db("reading the audit log")(e)));
                }
                Ok((key, bytes)) => match key_height(&key) {
                    Ok(height) => (height, bytes),
                    Err(e) => return Some(Err(e)),
                },
            },
        };
        if height > self.next {
            let hole = missing(self.next, height);
            self.next = height;
            self.pending = Some((height, bytes));
            return Some(Err(hole));
        }
        self.next = height.saturating_add(1);
        Some(decode_entry(height, &bytes))
    }
}

fn height_key(height: u64) -> [u8; 8] {
    height.to_be_bytes()
}

fn key_height(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::CorruptKey {
        tree: ENTRIES,
        key_hex: fedmesh_crypto::hexbytes::encode(key),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Decode the bytes stored under `height` and check that they are a sound entry for it: what the
/// store does with every entry it reads back. Public so that the fuzz targets (`tests/fuzz`) run
/// exactly this code on hostile bytes.
pub fn decode_entry(height: u64, bytes: &[u8]) -> Result<Entry, StoreError> {
    let entry: Entry =
        codec::decode(bytes, codec::HARD_LIMIT).map_err(|e| StoreError::Corrupt {
            height,
            reason: format!("its bytes do not decode ({e})"),
        })?;
    if entry.height != height {
        return Err(StoreError::Corrupt {
            height,
            reason: format!(
                "it is stored under height {height} but names height {}",
                entry.height
            ),
        });
    }
    // The entry hash covers body_hash, not the body, so a damaged body would otherwise go unseen.
    if !body_matches(&entry) {
        return Err(StoreError::Corrupt {
            height,
            reason: "its body does not match its body_hash".into(),
        });
    }
    Ok(entry)
}

fn body_matches(entry: &Entry) -> bool {
    let computed = match entry.kind {
        Kind::Genesis => genesis::hash_bytes(&entry.body),
        Kind::Round => audit::body_hash(&entry.body),
    };
    computed == entry.body_hash
}

fn missing(height: u64, next_stored: u64) -> StoreError {
    StoreError::Corrupt {
        height,
        reason: format!("it is missing (the next stored entry is at height {next_stored})"),
    }
}

/// Write `bytes` to `path` in `dir` atomically: beside it as `.tmp`, synced, renamed into place,
/// directory synced. A crash leaves the old file or the new one, never a part.
fn write_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let fail = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::File { op, path, source }
    };
    std::fs::create_dir_all(dir).map_err(fail("creating", dir))?;
    let mut f = std::fs::File::create(&tmp).map_err(fail("creating", &tmp))?;
    f.write_all(bytes).map_err(fail("writing", &tmp))?;
    f.sync_all().map_err(fail("syncing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(fail("renaming into place", path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("syncing", dir))
}

/// The file name of large state `key`; refuses names that are not plain.
fn state_file(key: &str) -> Result<String, StoreError> {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        Ok(format!("{key}.bin"))
    } else {
        Err(StoreError::StateKey {
            key: key.to_string(),
        })
    }
}

fn db(op: &'static str) -> impl Fn(sled::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

fn open_error(dir: &Path, e: sled::Error) -> StoreError {
    if let sled::Error::Io(io) = &e {
        // sled reports a held lock as an `Other` I/O error with this text.
        if io.kind() == std::io::ErrorKind::WouldBlock
            || io.to_string().contains("could not acquire lock")
        {
            return StoreError::Locked {
                dir: dir.to_path_buf(),
            };
        }
    }
    StoreError::Open {
        dir: dir.to_path_buf(),
        source: e,
    }
}

#[cfg(test)]
mod tests;
