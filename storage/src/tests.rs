use super::*;

use fedmesh_protocol::audit::{Metrics, RoundRecord};
use fedmesh_protocol::genesis::Mode;
use proptest::prelude::*;
use tempfile::TempDir;

fn record(round: u64) -> RoundRecord {
    RoundRecord {
        coordinator: (round % 3) as u32,
        metrics: Metrics {
            accuracy: 0.5,
            loss: 1.25,
            test_samples: 100,
        },
        proposed_at_ms: 1_700_000_000_000 + round,
        ..RoundRecord::new(
            round,
            Mode::Plain,
            Hash::of("test base", &round.to_le_bytes()),
            Hash::of("test model", &round.to_le_bytes()),
        )
    }
}

/// Genesis plus `rounds` round entries, correctly linked.
fn chain(rounds: u64) -> Vec<Entry> {
    let mut out = vec![Entry::genesis(b"test genesis file")];
    for h in 1..=rounds {
        let prev = out.last().unwrap().hash();
        out.push(Entry::round(h, prev, &record(h)));
    }
    out
}

fn open() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn filled(rounds: u64) -> (TempDir, Store, Vec<Entry>) {
    let (dir, store) = open();
    let entries = chain(rounds);
    store.init_genesis(&entries[0]).unwrap();
    for e in &entries[1..] {
        store.append(e).unwrap();
    }
    (dir, store, entries)
}

fn all(store: &Store) -> Vec<Entry> {
    store.entries().collect::<Result<Vec<_>, _>>().unwrap()
}

#[test]
fn empty_store_has_no_head() {
    let (_dir, store) = open();
    assert_eq!(store.head().unwrap(), None);
    assert_eq!(store.height().unwrap(), None);
    assert_eq!(store.get(0).unwrap(), None);
    assert!(store.range(0, 10).unwrap().is_empty());
    assert_eq!(store.entries().count(), 0);
    assert!(matches!(
        store.append(&chain(1)[1]),
        Err(StoreError::Uninitialized)
    ));
}

#[test]
fn append_get_range_head_round_trip() {
    let (_dir, store, entries) = filled(5);
    assert_eq!(store.height().unwrap(), Some(5));
    assert_eq!(store.head().unwrap().as_ref(), entries.last());
    for e in &entries {
        assert_eq!(store.get(e.height).unwrap().as_ref(), Some(e));
    }
    assert_eq!(store.get(6).unwrap(), None);
    assert_eq!(store.range(1, 4).unwrap(), entries[1..4].to_vec());
    assert_eq!(store.range(0, u64::MAX).unwrap(), entries);
    assert_eq!(store.range(4, 100).unwrap(), entries[4..].to_vec());
    assert!(store.range(6, 100).unwrap().is_empty());
    assert!(store.range(3, 3).unwrap().is_empty());
    assert!(store.range(4, 2).unwrap().is_empty());
    assert_eq!(all(&store), entries);
    // The stored chain links: every entry's prev_hash is its predecessor's hash.
    for pair in all(&store).windows(2) {
        audit::verify_link(&pair[0], &pair[1]).unwrap();
    }
}

#[test]
fn append_refuses_wrong_height_and_wrong_link_and_loses_nothing() {
    let (_dir, store, entries) = filled(3);
    let head = entries[3].hash();

    // Too high, a repeat of the head, and height 0 again.
    let skip = Entry::round(5, head, &record(5));
    match store.append(&skip) {
        Err(StoreError::WrongHeight {
            given: 5,
            expected: 4,
        }) => {}
        other => panic!("expected WrongHeight, got {other:?}"),
    }
    assert!(matches!(
        store.append(&entries[3]),
        Err(StoreError::WrongHeight {
            given: 3,
            expected: 4
        })
    ));
    assert!(matches!(
        store.append(&entries[0]),
        Err(StoreError::WrongHeight {
            given: 0,
            expected: 4
        })
    ));

    // Right height, wrong link.
    let stray = Entry::round(4, entries[2].hash(), &record(4));
    match store.append(&stray) {
        Err(e @ StoreError::WrongPrevHash { .. }) => {
            let StoreError::WrongPrevHash {
                height,
                given,
                expected,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*height, *given, *expected), (4, entries[2].hash(), head));
            assert!(e.to_string().contains(&head.to_string()), "{e}");
        }
        other => panic!("expected WrongPrevHash, got {other:?}"),
    }

    // A body that does not match its body_hash.
    let mut forged = Entry::round(4, head, &record(4));
    forged.body[0] ^= 1;
    assert!(matches!(
        store.append(&forged),
        Err(StoreError::BodyHash { height: 4 })
    ));

    // Nothing was lost or added, and the right entry still goes on top.
    assert_eq!(all(&store), entries);
    assert_eq!(store.height().unwrap(), Some(3));
    let next = Entry::round(4, head, &record(4));
    store.append(&next).unwrap();
    assert_eq!(store.head().unwrap(), Some(next));
}

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let entries = chain(4);
    let layout = Layout::new(vec![3, 4, 2]).unwrap();
    let params = layout.init(11);
    let model;
    {
        let store = Store::open(dir.path()).unwrap();
        store.init_genesis(&entries[0]).unwrap();
        for e in &entries[1..] {
            store.append(e).unwrap();
        }
        model = store.put_checkpoint(&layout, &params).unwrap();
        store
            .put_state("last_round_started", &7u64.to_le_bytes())
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(all(&store), entries);
    assert_eq!(store.head().unwrap().as_ref(), entries.last());
    assert_eq!(store.checkpoint(&layout, &model).unwrap(), Some(params));
    assert_eq!(
        store.get_state("last_round_started").unwrap(),
        Some(7u64.to_le_bytes().to_vec())
    );
    // The same genesis is accepted again on restart, and appending continues.
    store.init_genesis(&entries[0]).unwrap();
    store
        .append(&Entry::round(5, entries[4].hash(), &record(5)))
        .unwrap();
    assert_eq!(store.height().unwrap(), Some(5));
}

#[test]
fn a_second_open_of_a_live_store_says_it_is_locked() {
    let (dir, _store) = open();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, StoreError::Locked { dir: d } if d == dir.path()),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains("another"), "{msg}");
}

#[test]
fn open_error_names_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = Store::open(&file).unwrap_err();
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn genesis_mismatch_names_both_hashes() {
    let (_dir, store, _) = filled(1);
    let other = Entry::genesis(b"another network's genesis file");
    let stored = chain(0)[0].hash();
    let err = store.init_genesis(&other).unwrap_err();
    match &err {
        StoreError::GenesisMismatch {
            stored: s,
            given: g,
        } => {
            assert_eq!((*s, *g), (stored, other.hash()));
        }
        other => panic!("expected GenesisMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&stored.to_string()), "{msg}");
    assert!(msg.contains(&other.hash().to_string()), "{msg}");
    // The log is untouched.
    assert_eq!(store.height().unwrap(), Some(1));
    assert_eq!(store.get(0).unwrap().unwrap().hash(), stored);
}

#[test]
fn init_genesis_rejects_non_genesis_heights() {
    let (_dir, store) = open();
    let e = &chain(1)[1];
    assert!(matches!(
        store.init_genesis(e),
        Err(StoreError::NotGenesis { height: 1 })
    ));
    assert_eq!(store.height().unwrap(), None);
}

#[test]
fn a_flipped_byte_is_caught_at_exactly_its_height() {
    let (_dir, store, entries) = filled(4);
    let target = 2u64;
    let original = store.raw_entry_bytes(target).unwrap().unwrap();
    assert_eq!(original, codec::encode(&entries[2]));
    let mut corrupt_seen = 0;
    for i in 0..original.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bytes = original.clone();
            bytes[i] ^= mask;
            store.overwrite_raw_entry(target, &bytes).unwrap();
            let results: Vec<_> = store.entries().collect();
            assert_eq!(results.len(), entries.len(), "byte {i} mask {mask:#x}");
            for (h, r) in results.iter().enumerate() {
                if h as u64 == target {
                    match r {
                        Err(StoreError::Corrupt { height, .. }) => {
                            assert_eq!(*height, target);
                            corrupt_seen += 1;
                            assert!(matches!(
                                store.get(target),
                                Err(StoreError::Corrupt { height: 2, .. })
                            ));
                        }
                        Ok(e) => assert_ne!(
                            e.hash(),
                            entries[2].hash(),
                            "byte {i} mask {mask:#x} went unnoticed"
                        ),
                        Err(e) => panic!("byte {i}: unexpected error {e:?}"),
                    }
                } else {
                    assert_eq!(
                        r.as_ref().unwrap(),
                        &entries[h],
                        "byte {i} damaged height {h}"
                    );
                }
            }
        }
    }
    assert!(corrupt_seen > 0);
    // Restoring the bytes restores the log.
    store.overwrite_raw_entry(target, &original).unwrap();
    assert_eq!(all(&store), entries);
}

#[test]
fn garbage_and_misfiled_entries_are_corrupt() {
    let (_dir, store, entries) = filled(3);
    store.overwrite_raw_entry(1, b"").unwrap();
    // Entry 3's bytes stored under height 2.
    store
        .overwrite_raw_entry(2, &codec::encode(&entries[3]))
        .unwrap();
    let heights: Vec<_> = store
        .entries()
        .map(|r| match r {
            Ok(e) => Ok(e.height),
            Err(StoreError::Corrupt { height, .. }) => Err(height),
            Err(e) => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(heights, vec![Ok(0), Err(1), Err(2), Ok(3)]);
    let err = store.range(0, 4).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { height: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("height 1"), "{err}");
    // A corrupt head blocks appending rather than being built upon.
    store.overwrite_raw_entry(3, &[0xff; 10]).unwrap();
    assert_eq!(store.height().unwrap(), Some(3));
    let next = Entry::round(4, entries[3].hash(), &record(4));
    assert!(matches!(
        store.append(&next),
        Err(StoreError::Corrupt { height: 3, .. })
    ));
}

#[test]
fn a_hole_in_the_log_is_reported() {
    let (_dir, store, entries) = filled(4);
    store.entries.remove(height_key(2)).unwrap();
    let results: Vec<_> = store.entries().collect();
    assert_eq!(results.len(), 5);
    assert!(matches!(
        results[2],
        Err(StoreError::Corrupt { height: 2, .. })
    ));
    assert_eq!(results[3].as_ref().unwrap(), &entries[3]);
    assert_eq!(results[4].as_ref().unwrap(), &entries[4]);
    assert!(matches!(
        store.range(1, 5),
        Err(StoreError::Corrupt { height: 2, .. })
    ));
    assert_eq!(store.range(3, 5).unwrap(), entries[3..].to_vec());

    // No genesis but a later entry: init_genesis does not paper over it.
    store.entries.remove(height_key(0)).unwrap();
    assert!(matches!(
        store.init_genesis(&entries[0]),
        Err(StoreError::Corrupt { height: 0, .. })
    ));
}

#[test]
fn malformed_keys_are_reported_not_panicked_on() {
    let (_dir, store, _) = filled(1);
    store.entries.insert(b"bad", &b"x"[..]).unwrap();
    assert!(store
        .entries()
        .any(|r| matches!(r, Err(StoreError::CorruptKey { .. }))));
}

#[test]
fn checkpoint_round_trip_and_hash_check() {
    let (_dir, store) = open();
    let layout = Layout::new(vec![5, 4, 3]).unwrap();
    let params = layout.init(42);
    let hash = store.put_checkpoint(&layout, &params).unwrap();
    assert_eq!(hash, layout.hash(&params));
    assert!(store.has_checkpoint(&hash).unwrap());
    assert_eq!(
        store.checkpoint(&layout, &hash).unwrap(),
        Some(params.clone())
    );
    let bytes = store.checkpoint_bytes(&hash).unwrap().unwrap();
    assert_eq!(bytes, encode_checkpoint(&layout, &params));
    assert_eq!(decode_checkpoint(&layout, &bytes).unwrap(), params);

    // Absent models.
    let unknown = Hash::of("test", b"no such model");
    assert!(!store.has_checkpoint(&unknown).unwrap());
    assert_eq!(store.checkpoint(&layout, &unknown).unwrap(), None);
    assert_eq!(store.checkpoint_bytes(&unknown).unwrap(), None);

    // Wrong parameter count.
    assert!(matches!(
        store.put_checkpoint(&layout, &params[1..]),
        Err(StoreError::Checkpoint(CheckpointError::ParamCount { .. }))
    ));

    // A peer's bytes land on another node and decode to the same model.
    let (_dir2, other) = open();
    assert_eq!(
        other.put_checkpoint_bytes(&layout, &hash, &bytes).unwrap(),
        params
    );
    assert_eq!(
        other.checkpoint(&layout, &hash).unwrap(),
        Some(params.clone())
    );

    // Bytes of a different model offered under this hash are refused and not stored.
    let (_dir3, third) = open();
    let impostor = encode_checkpoint(&layout, &layout.init(43));
    let err = third
        .put_checkpoint_bytes(&layout, &hash, &impostor)
        .unwrap_err();
    assert!(
        matches!(err, StoreError::CheckpointMismatch { hash: h } if h == hash),
        "{err:?}"
    );
    assert!(err.to_string().contains(&hash.to_string()), "{err}");
    assert!(!third.has_checkpoint(&hash).unwrap());
    assert!(matches!(
        third.put_checkpoint_bytes(&layout, &hash, b"garbage"),
        Err(StoreError::Checkpoint(CheckpointError::Format(_)))
    ));
    assert!(!third.has_checkpoint(&hash).unwrap());

    // Asked with another layout: a clear error, not a wrong model.
    let other_layout = Layout::new(vec![5, 4, 4]).unwrap();
    assert!(matches!(
        store.checkpoint(&other_layout, &hash),
        Err(StoreError::StoredCheckpoint {
            source: CheckpointError::WrongShape { .. },
            ..
        })
    ));
}

#[test]
fn a_damaged_stored_checkpoint_is_detected() {
    let (_dir, store) = open();
    let layout = Layout::new(vec![3, 2]).unwrap();
    let params = layout.init(1);
    let hash = store.put_checkpoint(&layout, &params).unwrap();
    let mut bytes = store.checkpoint_bytes(&hash).unwrap().unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40; // a data byte: still a valid file, but another model
    std::fs::write(store.checkpoint_path(&hash), bytes).unwrap();
    assert!(
        matches!(store.checkpoint(&layout, &hash), Err(StoreError::CheckpointMismatch { hash: h }) if h == hash)
    );
    std::fs::write(store.checkpoint_path(&hash), b"\x01\x02").unwrap();
    assert!(
        matches!(store.checkpoint(&layout, &hash), Err(StoreError::StoredCheckpoint { hash: h, .. }) if h == hash)
    );
}

#[test]
fn state_round_trip() {
    let (_dir, store) = open();
    assert_eq!(store.get_state("last_round_started").unwrap(), None);
    store.put_state("last_round_started", b"3").unwrap();
    store.put_state("other", b"").unwrap();
    store.put_state("last_round_started", b"4").unwrap();
    assert_eq!(
        store.get_state("last_round_started").unwrap(),
        Some(b"4".to_vec())
    );
    assert_eq!(store.get_state("other").unwrap(), Some(vec![]));
    store.flush().unwrap();
}

#[test]
fn store_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();

    // Racing appends of the same height: exactly one wins, the chain stays linked.
    let (_dir, store, entries) = filled(0);
    let store = std::sync::Arc::new(store);
    let genesis = entries[0].hash();
    let handles: Vec<_> = (0..8u64)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut r = record(1);
                r.proposed_at_ms = i;
                store.append(&Entry::round(1, genesis, &r)).is_ok()
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(wins, 1);
    assert_eq!(store.height().unwrap(), Some(1));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Peer bytes with any one byte damaged are either refused (and not stored) or are the exact
    /// same model.
    #[test]
    fn damaged_peer_checkpoints_are_never_stored_as_another_model(
        seed in any::<u64>(),
        pos in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let (_dir, store) = open();
        let layout = Layout::new(vec![4, 3, 2]).unwrap();
        let params = layout.init(seed);
        let hash = layout.hash(&params);
        let mut bytes = encode_checkpoint(&layout, &params);
        let i = pos.index(bytes.len());
        bytes[i] ^= mask;
        match store.put_checkpoint_bytes(&layout, &hash, &bytes) {
            Ok(got) => {
                prop_assert_eq!(&got, &params);
                prop_assert_eq!(store.checkpoint(&layout, &hash).unwrap(), Some(params));
            }
            Err(_) => prop_assert!(!store.has_checkpoint(&hash).unwrap()),
        }
    }
}

/// `append_with` calls its hook once the entry is written (readable) and only for entries it
/// accepts: the fault-injection point "appending" of the node relies on both.
#[test]
fn append_with_calls_its_hook_after_the_write_and_only_for_accepted_entries() {
    let (_dir, store, entries) = filled(2);
    let refused = Entry::round(7, entries[2].hash(), &record(7));
    let mut called = false;
    assert!(store.append_with(&refused, || called = true).is_err());
    assert!(!called, "the hook ran for a refused entry");

    let next = Entry::round(3, entries[2].hash(), &record(3));
    let mut seen = None;
    store
        .append_with(&next, || seen = Some(store.get(3).unwrap()))
        .unwrap();
    assert_eq!(
        seen,
        Some(Some(next.clone())),
        "the hook runs after the write"
    );
    assert_eq!(store.head().unwrap(), Some(next));
}

/// Checkpoints are files in the data dir (sled kept every stored model in memory), written whole
/// or not at all; a data dir from before, with its checkpoints in the sled tree, still serves them.
#[test]
fn checkpoints_are_files_and_old_tree_checkpoints_still_load() {
    let (dir, store) = open();
    let layout = Layout::new(vec![3, 2]).unwrap();
    let params = layout.init(1);
    let hash = store.put_checkpoint(&layout, &params).unwrap();
    let file = dir
        .path()
        .join("checkpoints")
        .join(format!("{hash}.safetensors"));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        encode_checkpoint(&layout, &params)
    );
    assert!(!file.with_extension("tmp").exists());
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.checkpoint(&layout, &hash).unwrap(), Some(params));

    let old = layout.init(2);
    let old_hash = layout.hash(&old);
    store
        .checkpoints
        .insert(old_hash.as_bytes(), encode_checkpoint(&layout, &old))
        .unwrap();
    assert!(store.has_checkpoint(&old_hash).unwrap());
    assert_eq!(store.checkpoint(&layout, &old_hash).unwrap(), Some(old));
}

/// Large state lives in a file per key, survives reopening, and a key cannot name a path.
#[test]
fn large_state_round_trips_and_refuses_path_keys() {
    let (dir, store) = open();
    assert_eq!(store.get_large_state("own_update").unwrap(), None);
    store.put_large_state("own_update", &[7; 1000]).unwrap();
    store.put_large_state("own_update", &[8; 10]).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.get_large_state("own_update").unwrap(),
        Some(vec![8; 10])
    );
    for bad in ["", "../x", "a/b", "a.b"] {
        assert!(
            matches!(
                store.put_large_state(bad, b"x"),
                Err(StoreError::StateKey { .. })
            ),
            "{bad:?}"
        );
    }
}
