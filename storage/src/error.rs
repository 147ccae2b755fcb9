//! The errors of this crate: [`StoreError`] for everything a [`crate::Store`] does, and
//! [`CheckpointError`] for checkpoint bytes that do not describe a model of the expected layout.
//!
//! Every message says what went wrong and what to do about it, because these errors end up in a
//! node operator's log, not in front of a developer with a debugger.

use std::path::PathBuf;

use fedmesh_protocol::model::LayoutError;
use fedmesh_protocol::Hash;

/// Why a [`crate::Store`] operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process holds the database lock on this directory.
    #[error(
        "the data directory {} is locked by another process, most likely another fedmesh node \
         that is still running with it; stop that node or give this one a different data directory",
        dir.display()
    )]
    Locked { dir: PathBuf },

    /// The database could not be opened or created.
    #[error(
        "cannot open the store in {}: {source}; check that the directory can be created and \
         written by this user and that it holds a fedmesh data directory (or is empty)",
        dir.display()
    )]
    Open {
        dir: PathBuf,
        #[source]
        source: sled::Error,
    },

    /// A read, write or flush of the database failed.
    #[error(
        "storage failed while {op}: {source}; check free disk space and the permissions of the \
         data directory"
    )]
    Db {
        op: &'static str,
        #[source]
        source: sled::Error,
    },

    /// Reading or writing a checkpoint file failed.
    #[error(
        "storage failed while {op} {}: {source}; check free disk space and the permissions of \
         the data directory",
        path.display()
    )]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A large-state key that is not a plain name (letters, digits, `_`, `-`).
    #[error("{key:?} is not a valid state key: use ASCII letters, digits, '_' and '-'")]
    StateKey { key: String },

    /// The directory holds the log of another network (or another genesis file).
    #[error(
        "this data directory belongs to a different network: its genesis hash is {stored}, but \
         the genesis file given hashes to {given}; use the genesis file this directory was \
         created with, or start from an empty data directory"
    )]
    GenesisMismatch { stored: Hash, given: Hash },

    /// `init_genesis` was given an entry that is not at height 0.
    #[error("the genesis entry must be at height 0, this one is at height {height}")]
    NotGenesis { height: u64 },

    /// `append` on a log that has no genesis entry yet.
    #[error(
        "the audit log is empty; initialise it with the network's genesis entry before appending"
    )]
    Uninitialized,

    /// `append` of an entry that is not the next height.
    #[error(
        "cannot append an entry at height {given}: the next height of the log is {expected}; \
         entries must be appended in order, one height at a time"
    )]
    WrongHeight { given: u64, expected: u64 },

    /// `append` of an entry that does not link to the head.
    #[error(
        "cannot append the entry at height {height}: its prev_hash {given} is not the hash of \
         the log's head {expected}; the entry extends a different chain, resynchronise from peers"
    )]
    WrongPrevHash {
        height: u64,
        given: Hash,
        expected: Hash,
    },

    /// `append`/`init_genesis` of an entry whose body does not match its `body_hash`.
    #[error(
        "refusing to store the entry at height {height}: its body does not match its body_hash; \
         the entry was damaged or forged, verify entries before storing them"
    )]
    BodyHash { height: u64 },

    /// An entry too large to ever be decoded again.
    #[error(
        "refusing to store the entry at height {height}: it encodes to {len} bytes, more than \
         the limit of {limit} that reading it back allows"
    )]
    EntryTooLarge {
        height: u64,
        len: usize,
        limit: usize,
    },

    /// The stored entry at `height` is damaged or missing.
    #[error(
        "the stored audit-log entry at height {height} is corrupt: {reason}; the data directory \
         is damaged, restore it from a backup or resynchronise the log from peers"
    )]
    Corrupt { height: u64, reason: String },

    /// A key in one of the trees is not of the form this crate writes.
    #[error(
        "the {tree} tree holds a malformed key {key_hex}; the data directory is damaged, restore \
         it from a backup or start from an empty data directory"
    )]
    CorruptKey { tree: &'static str, key_hex: String },

    /// Checkpoint parameters do not hash to the model hash they were stored or offered under.
    #[error(
        "the checkpoint does not hold model {hash}: its parameters hash to a different model; \
         do not use it, fetch the checkpoint again (from another peer if it came from one)"
    )]
    CheckpointMismatch { hash: Hash },

    /// Checkpoint bytes (or parameters) given to the store do not fit the layout.
    #[error("checkpoint rejected: {0}")]
    Checkpoint(#[from] CheckpointError),

    /// A stored checkpoint does not decode against the layout it was asked for.
    #[error(
        "the stored checkpoint {hash} cannot be read with this model layout: {source}; either it \
         was saved for another layout or the data directory is damaged (it can be fetched again \
         from peers)"
    )]
    StoredCheckpoint {
        hash: Hash,
        #[source]
        source: CheckpointError,
    },
}

/// Why parameters or safetensors bytes do not form a checkpoint of a given layout.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The layout itself is invalid.
    #[error("the model layout is invalid: {0}")]
    Layout(#[source] LayoutError),

    /// A parameter vector of the wrong length.
    #[error(
        "{found} parameters given, but the layout has {expected}; pass the complete flat \
         parameter vector of this layout"
    )]
    ParamCount { expected: usize, found: usize },

    /// The bytes are not a safetensors file at all.
    #[error("not a valid safetensors file: {0}")]
    Format(String),

    /// A tensor of the layout is absent.
    #[error("tensor `{name}` is missing; the checkpoint was made for a different model layout")]
    MissingTensor { name: String },

    /// A tensor that the layout does not have.
    #[error(
        "tensor `{name}` is not part of this model layout; the checkpoint was made for a \
         different model layout"
    )]
    UnexpectedTensor { name: String },

    /// A tensor of a dtype other than F32.
    #[error("tensor `{name}` has dtype {found}, but checkpoints hold F32 tensors only")]
    WrongDtype { name: String, found: String },

    /// A tensor whose shape differs from the layout's.
    #[error(
        "tensor `{name}` has shape {found:?}, but the layout expects {expected:?}; the \
         checkpoint was made for a different model layout"
    )]
    WrongShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
}
