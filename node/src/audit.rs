//! `fedmesh audit show|verify|export`: read a node's log (the node may be stopped or running — sled
//! allows one process, so stop the node or copy its data dir first).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::json;

use fedmesh_crypto::Hash;
use fedmesh_protocol::audit::{self, Entry, Kind, RoundRecord};
use fedmesh_protocol::genesis::Genesis;
use fedmesh_storage::Store;

pub enum Mode {
    Show,
    Verify,
    Export(Option<PathBuf>),
}

/// A log that fails verification, at `height`.
#[derive(Debug)]
pub struct Failure {
    pub height: u64,
    pub reason: String,
}

/// What a verified log holds.
#[derive(Debug)]
pub struct Verified {
    pub entries: u64,
    pub head: Hash,
    pub rounds: u64,
}

pub fn run(
    data_dir: &Path,
    genesis_file: Option<&Path>,
    json_out: bool,
    mode: Mode,
) -> anyhow::Result<ExitCode> {
    if !data_dir.exists() {
        anyhow::bail!("data dir {} does not exist", data_dir.display());
    }
    let store = Store::open(data_dir)?;
    let expected = match genesis_file {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            Some(fedmesh_protocol::genesis::hash_bytes(&bytes))
        }
        None => None,
    };
    match mode {
        Mode::Verify => match verify(&store, expected) {
            Ok(v) => {
                if json_out {
                    println!(
                        "{}",
                        json!({"ok": true, "entries": v.entries, "rounds": v.rounds, "head": v.head.to_string()})
                    );
                } else {
                    println!(
                        "ok: {} entries ({} rounds), head {}",
                        v.entries, v.rounds, v.head
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(f) => {
                if json_out {
                    println!(
                        "{}",
                        json!({"ok": false, "height": f.height, "error": f.reason})
                    );
                } else {
                    println!("FAILED at height {}: {}", f.height, f.reason);
                }
                Ok(ExitCode::from(1))
            }
        },
        Mode::Show => {
            let out = std::io::stdout();
            let mut out = out.lock();
            for e in store.entries() {
                let e = e?;
                let v = summary(&e);
                if json_out {
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(out, "{}", human(&e, &v))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Mode::Export(path) => {
            let mut sink: Box<dyn Write> = match &path {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("cannot create {}", p.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            for e in store.entries() {
                let e = e?;
                let mut v = summary(&e);
                v["prev_hash"] = json!(e.prev_hash.to_string());
                v["body_hash"] = json!(e.body_hash.to_string());
                v["body_hex"] = json!(hex::encode(&e.body));
                v["signatures"] = json!(e
                    .signatures
                    .iter()
                    .map(|s| json!({"member": s.member, "signature": hex::encode(s.signature.0)}))
                    .collect::<Vec<_>>());
                v["threshold_signature"] = json!(hex::encode(&e.threshold_signature));
                writeln!(sink, "{v}")?;
            }
            sink.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn summary(e: &Entry) -> serde_json::Value {
    let mut v = json!({"height": e.height, "hash": e.hash().to_string()});
    match e.kind {
        Kind::Genesis => {
            v["kind"] = json!("genesis");
            if let Ok((g, _)) = Genesis::parse(&e.body) {
                v["network"] = json!(g.spec.network);
                v["mode"] = json!(g.spec.mode.to_string());
                v["members"] = json!(g.members.len());
                v["threshold"] = json!(g.threshold());
            }
        }
        Kind::Round => {
            v["kind"] = json!("round");
            match RoundRecord::decode(&e.body) {
                Ok(r) => {
                    v["round"] = json!(r.round);
                    v["mode"] = json!(r.mode.to_string());
                    v["coordinator"] = json!(r.coordinator);
                    v["attempt"] = json!(r.attempt);
                    v["participants"] =
                        json!(r.participants.iter().map(|c| c.member).collect::<Vec<_>>());
                    v["samples"] = json!(r.participants.iter().map(|c| c.num_samples).sum::<u64>());
                    v["dropouts"] = json!(r.dropouts);
                    v["accuracy"] = json!(r.metrics.accuracy);
                    v["loss"] = json!(r.metrics.loss);
                    v["test_samples"] = json!(r.metrics.test_samples);
                    v["base_model"] = json!(r.base_model.to_string());
                    v["new_model"] = json!(r.new_model.to_string());
                    v["signers"] = json!(e.signatures.iter().map(|s| s.member).collect::<Vec<_>>());
                    v["proposed_at_ms"] = json!(r.proposed_at_ms);
                    if let Some(s) = &r.secure {
                        v["secure"] = json!({
                            "session": s.session,
                            "total_weight": s.total_weight,
                            "unmaskers": s.unmaskers,
                            "dropped_before_sharing": s.dropped_before_sharing,
                            "dropped_after_sharing": s.dropped_after_sharing,
                            "dropped_while_unmasking": s.dropped_while_unmasking,
                        });
                    }
                }
                Err(err) => v["error"] = json!(err.to_string()),
            }
        }
        Kind::Eviction => {
            v["kind"] = json!("eviction");
            match e.eviction_record() {
                Ok(r) => {
                    v["target"] = json!(r.target);
                    v["round"] = json!(r.round);
                    v["effective_round"] = json!(r.effective_round);
                    v["active"] = json!(r.active);
                    v["needed"] = json!(r.needed);
                    v["voters"] = json!(r.votes.iter().map(|s| s.vote.voter).collect::<Vec<_>>());
                    v["scores"] = json!(r.votes.iter().map(|s| s.vote.score).collect::<Vec<_>>());
                    v["signers"] = json!(e.signatures.iter().map(|s| s.member).collect::<Vec<_>>());
                }
                Err(err) => v["error"] = json!(err.to_string()),
            }
        }
    }
    v
}

fn human(e: &Entry, v: &serde_json::Value) -> String {
    match e.kind {
        Kind::Genesis => format!(
            "{:>5}  genesis  {}  network {} mode {} members {} threshold {}",
            e.height,
            e.hash().short(),
            v["network"].as_str().unwrap_or("?"),
            v["mode"].as_str().unwrap_or("?"),
            v["members"],
            v["threshold"]
        ),
        Kind::Round => format!(
            "{:>5}  round {:<4} {}  accuracy {:.4} loss {:.4}  participants {} dropouts {} coordinator {} signers {}",
            e.height,
            v["round"],
            e.hash().short(),
            v["accuracy"].as_f64().unwrap_or(f64::NAN),
            v["loss"].as_f64().unwrap_or(f64::NAN),
            v["participants"],
            v["dropouts"],
            v["coordinator"],
            v["signers"]
        ),
        Kind::Eviction => format!(
            "{:>5}  evict {:<4} {}  after round {} by voters {} ({} of {} needed), out from round {}",
            e.height,
            v["target"],
            e.hash().short(),
            v["round"],
            v["voters"],
            v["needed"],
            v["active"],
            v["effective_round"]
        ),
    }
}

/// Check the whole log: every entry decodes, links to its predecessor, carries valid member and
/// threshold signatures from the genesis keys, follows the previous round, and has a checkpoint
/// whose hash is the recorded model.
pub fn verify(store: &Store, expected_genesis: Option<Hash>) -> Result<Verified, Failure> {
    let fail = |height: u64, reason: String| Failure { height, reason };
    let mut iter = store.entries();
    let first = match iter.next() {
        None => return Err(fail(0, "the log is empty".into())),
        Some(r) => r.map_err(|e| fail(0, e.to_string()))?,
    };
    if first.height != 0 || first.kind != Kind::Genesis {
        return Err(fail(
            first.height,
            "the first entry is not a genesis entry at height 0".into(),
        ));
    }
    let (genesis, gh) =
        Genesis::parse(&first.body).map_err(|e| fail(0, format!("genesis does not parse: {e}")))?;
    if let Some(exp) = expected_genesis {
        if exp != gh {
            return Err(fail(
                0,
                format!("the log's genesis is {gh}, the given genesis file is {exp}"),
            ));
        }
    }
    let bls = genesis.bls().map_err(|e| fail(0, e.to_string()))?;
    let layout = genesis.layout();
    first
        .verify(&genesis, gh, &bls)
        .map_err(|e| fail(0, e.to_string()))?;
    let mut prev = first;
    let mut last: Option<RoundRecord> = None;
    let mut evicted = std::collections::BTreeSet::new();
    let mut count = 1;
    for next in iter {
        let entry = next.map_err(|e| {
            let h = corrupt_height(&e).unwrap_or(prev.height + 1);
            fail(h, e.to_string())
        })?;
        let h = entry.height;
        audit::verify_link(&prev, &entry).map_err(|e| fail(e.height(), e.to_string()))?;
        entry
            .verify(&genesis, gh, &bls)
            .map_err(|e| fail(h, e.to_string()))?;
        if entry.kind == Kind::Eviction {
            let rec = entry
                .eviction_record()
                .map_err(|e| fail(h, e.to_string()))?;
            check_eviction(&rec, last.as_ref(), &evicted, genesis.members.len())
                .map_err(|reason| fail(h, reason))?;
            evicted.insert(rec.target);
            prev = entry;
            count += 1;
            continue;
        }
        let record = entry.record().map_err(|e| fail(h, e.to_string()))?;
        audit::verify_succession(&genesis, last.as_ref(), &entry, &record)
            .map_err(|e| fail(h, e.to_string()))?;
        if let Some(c) = record
            .participants
            .iter()
            .find(|c| evicted.contains(&c.member))
        {
            return Err(fail(
                h,
                format!(
                    "member {} takes part in round {} after its eviction",
                    c.member, record.round
                ),
            ));
        }
        match store.checkpoint(&layout, &record.new_model) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(fail(
                    h,
                    format!("no checkpoint for model {}", record.new_model),
                ))
            }
            Err(e) => {
                return Err(fail(
                    h,
                    format!("checkpoint of model {}: {e}", record.new_model),
                ))
            }
        }
        last = Some(record);
        prev = entry;
        count += 1;
    }
    Ok(Verified {
        entries: count,
        head: prev.hash(),
        rounds: last.map(|r| r.round).unwrap_or(0),
    })
}

/// An eviction follows the log: it is recorded after the round its votes were cast in, its target
/// and voters were still members then, and the quorum was counted over the members active then.
fn check_eviction(
    rec: &fedmesh_protocol::votes::EvictionRecord,
    last: Option<&RoundRecord>,
    evicted: &std::collections::BTreeSet<u32>,
    members: usize,
) -> Result<(), String> {
    let last_round = last.map_or(0, |r| r.round);
    if rec.round != last_round || rec.effective_round != last_round + 1 {
        return Err(format!(
            "eviction of member {} is for round {} (effective {}), but the last round in the log is {last_round}",
            rec.target, rec.round, rec.effective_round
        ));
    }
    if evicted.contains(&rec.target) {
        return Err(format!("member {} is evicted twice", rec.target));
    }
    if let Some(v) = rec.votes.iter().find(|v| evicted.contains(&v.vote.voter)) {
        return Err(format!(
            "member {} votes after its own eviction",
            v.vote.voter
        ));
    }
    let active = members - evicted.len();
    if rec.active as usize != active {
        return Err(format!(
            "eviction of member {} counts {} active members, the log says {active}",
            rec.target, rec.active
        ));
    }
    Ok(())
}

fn corrupt_height(e: &fedmesh_storage::StoreError) -> Option<u64> {
    match e {
        fedmesh_storage::StoreError::Corrupt { height, .. } => Some(*height),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedmesh_protocol::audit::Metrics;
    use fedmesh_protocol::genesis::Mode;
    use fedmesh_protocol::votes::{EvictionRecord, SignedVote, Vote};

    fn round(r: u64) -> RoundRecord {
        RoundRecord {
            round: r,
            mode: Mode::Plain,
            attempt: 0,
            coordinator: 0,
            base_model: Hash::ZERO,
            new_model: Hash::ZERO,
            participants: vec![],
            dropouts: vec![],
            metrics: Metrics {
                accuracy: 0.5,
                loss: 1.0,
                test_samples: 1,
            },
            proposed_at_ms: 0,
            secure: None,
        }
    }

    fn eviction(target: u32, round: u64, active: u32, voters: &[u32]) -> EvictionRecord {
        let key = fedmesh_crypto::identity::SecretKey::from_seed([1; 32]);
        EvictionRecord {
            target,
            round,
            effective_round: round + 1,
            active,
            needed: fedmesh_protocol::votes::needed(active as usize, 2.0 / 3.0) as u32,
            votes: voters
                .iter()
                .map(|&voter| {
                    SignedVote::sign(
                        Hash::ZERO,
                        Vote {
                            round,
                            voter,
                            target,
                            score: 5.0,
                            evidence: Hash::ZERO,
                        },
                        &key,
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn evictions_must_follow_the_log() {
        let none = std::collections::BTreeSet::new();
        let last = round(4);
        check_eviction(&eviction(3, 4, 6, &[0, 1, 2, 4]), Some(&last), &none, 6).unwrap();
        // For another round than the last one in the log.
        let err =
            check_eviction(&eviction(3, 2, 6, &[0, 1, 2, 4]), Some(&last), &none, 6).unwrap_err();
        assert!(err.contains("last round in the log is 4"), "{err}");
        // Counting evicted members as active.
        let gone: std::collections::BTreeSet<u32> = [5].into();
        let err =
            check_eviction(&eviction(3, 4, 6, &[0, 1, 2, 4]), Some(&last), &gone, 6).unwrap_err();
        assert!(err.contains("log says 5"), "{err}");
        // An evicted member voting, or being evicted again.
        let err =
            check_eviction(&eviction(3, 4, 5, &[0, 1, 5, 4]), Some(&last), &gone, 6).unwrap_err();
        assert!(
            err.contains("member 5 votes after its own eviction"),
            "{err}"
        );
        let err =
            check_eviction(&eviction(5, 4, 5, &[0, 1, 2, 4]), Some(&last), &gone, 6).unwrap_err();
        assert!(err.contains("evicted twice"), "{err}");
    }
}
