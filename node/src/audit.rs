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

/// A record's groups summary, for `audit show` and the node's round reports (with public
/// reference rows: each judged group's effect on the reference loss, and that loss).
pub fn groups_json(g: &fedmesh_protocol::audit::GroupsSummary) -> serde_json::Value {
    json!({
        "size": g.size,
        "drawn": g.drawn,
        "revealed": g.revealed.iter().map(|s| json!({
            "group": s.group,
            "session": s.session,
            "contributors": s.contributors,
            "unmaskers": s.unmaskers,
            "total_weight": s.total_weight,
            "sum_hash": s.sum_hash.to_string(),
            "score": s.score,
            "flagged": s.flagged,
            "reference": s.reference,
        })).collect::<Vec<_>>(),
        "skipped": g.skipped,
        "decided": g.decided,
        "reference_loss": g.reference_loss,
        "reference_spread": g.reference_spread,
        "reference_scale": g.reference_scale,
        "reference_best": g.reference_best,
    })
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
                v["dp"] = json!(g.spec.dp.level.to_string());
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
                    if let Some(g) = &r.groups {
                        v["groups"] = groups_json(g);
                    }
                    if let Some(s) = &r.paillier {
                        v["paillier"] = json!({
                            "sum_hash": s.sum_hash.to_string(),
                            "update_hashes": r
                                .participants
                                .iter()
                                .map(|c| json!({"member": c.member, "hash": c.update_hash.to_string()}))
                                .collect::<Vec<_>>(),
                            "decryptors": s.decryptors,
                            "rejected": s.rejected,
                            "clipped": s.clipped,
                        });
                    }
                    v["evicted"] = json!(r.evictions.iter().map(|x| x.target).collect::<Vec<_>>());
                    v["admitted"] = json!(r
                        .admissions
                        .iter()
                        .map(|a| json!({
                            "index": a.index,
                            "peer_id": a.request.request.peer_id,
                            "public_key": hex::encode(a.request.request.public_key.to_bytes()),
                            "voters": a.votes.iter().map(|v| v.vote.voter).collect::<Vec<_>>(),
                            "needed": a.needed,
                            "active": a.active,
                            "member_from_round": a.effective_round,
                        }))
                        .collect::<Vec<_>>());
                    // Members caught equivocating: the evidence itself (two signed envelopes
                    // each) is checked by `audit verify` and exported with the body by `audit export`.
                    v["equivocators"] =
                        json!(r.evidence.iter().map(|x| x.member).collect::<Vec<_>>());
                    // Late evidence (of the round before) shows which round it is for.
                    v["evidence"] = json!(r
                        .evidence
                        .iter()
                        .map(|x| json!({
                            "member": x.member,
                            "round": x.round,
                            // Two approvals of records of one attempt, or two messages for
                            // one slot.
                            "kind": if x.proposals.is_empty() { "messages" } else { "approvals" },
                        }))
                        .collect::<Vec<_>>());
                    if !r.evictions.is_empty() {
                        v["evictions"] = json!(r
                            .evictions
                            .iter()
                            .map(|x| json!({
                                "target": x.target,
                                "out_from_round": x.effective_round,
                                "active": x.active,
                                "needed": x.needed,
                                "voters": x.votes.iter().map(|s| s.vote.voter).collect::<Vec<_>>(),
                                "scores": x.votes.iter().map(|s| s.vote.score).collect::<Vec<_>>(),
                            }))
                            .collect::<Vec<_>>());
                    }
                    if let Some(p) = &r.privacy {
                        v["privacy"] = json!({
                            "level": p.level.to_string(),
                            "mechanism": format!("{:?}", p.mechanism).to_lowercase(),
                            "noise_multiplier": p.noise_multiplier,
                            "sample_rate": p.sample_rate,
                            "steps": p.steps,
                            "delta": p.delta,
                            "spent": p.spent.iter().map(|s| json!({
                                "member": s.member,
                                "rounds": s.rounds,
                                "epsilon": s.epsilon,
                            })).collect::<Vec<_>>(),
                        });
                    }
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
            "{:>5}  genesis  {}  network {} mode {} members {} threshold {} dp {}",
            e.height,
            e.hash().short(),
            v["network"].as_str().unwrap_or("?"),
            v["mode"].as_str().unwrap_or("?"),
            v["members"],
            v["threshold"],
            v["dp"].as_str().unwrap_or("?")
        ),
        Kind::Round => {
            let mut line = round_line(e, v);
            line.push_str(&privacy_line(&v["privacy"]));
            for x in v["evictions"].as_array().into_iter().flatten() {
                line.push_str(&format!(
                    "\n       evicted member {} (votes of {}, {} of {} needed), out from round {}",
                    x["target"], x["voters"], x["needed"], x["active"], x["out_from_round"]
                ));
            }
            for x in v["admitted"].as_array().into_iter().flatten() {
                line.push_str(&format!(
                    "\n       admitted member {} = peer {} (votes of {}, {} of {} needed), member from round {}",
                    x["index"], x["peer_id"], x["voters"], x["needed"], x["active"], x["member_from_round"]
                ));
            }
            line
        }
    }
}

/// The privacy spent so far by every member, as a round record states it:
/// `  ε(δ=1e-5) 0:1.23 1:1.23 2:0.98`.
fn privacy_line(p: &serde_json::Value) -> String {
    let Some(spent) = p["spent"].as_array() else {
        return String::new();
    };
    let delta = p["delta"].as_f64().unwrap_or(f64::NAN);
    let mut line = if delta > 0.0 {
        format!("  ε(δ={delta:e})")
    } else {
        "  ε(pure)".to_string()
    };
    for s in spent {
        let eps = s["epsilon"]
            .as_f64()
            .map_or("∞".to_string(), |e| format!("{e:.3}"));
        line.push_str(&format!(" {}:{eps}", s["member"]));
    }
    line
}

fn round_line(e: &Entry, v: &serde_json::Value) -> String {
    format!(
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
    )
}

/// Check the whole log: every entry decodes, links to its predecessor, carries valid member and
/// threshold signatures from the genesis keys, follows the previous round, keeps evicted members
/// out (and evicts only with a quorum of valid votes), states the privacy spent that follows from
/// the genesis and the rounds before it, and has a checkpoint whose hash is the recorded model.
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
    let mut log_members = audit::Members::new(&genesis, gh);
    let mut count = 1;
    // The privacy spent, recomputed round by round: every record must state what follows from
    // the genesis and from who took part.
    let mut ledger = fedmesh_protocol::dp::Ledger::new();
    let members: Vec<u32> = genesis.members.iter().map(|m| m.index).collect();
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
        let record = entry.record().map_err(|e| fail(h, e.to_string()))?;
        audit::verify_succession(&genesis, last.as_ref(), &entry, &record)
            .map_err(|e| fail(h, e.to_string()))?;
        let active: Vec<u32> = log_members.active().collect();
        audit::check_groups(&genesis, entry.prev_hash, &active, &record)
            .map_err(|reason| fail(h, format!("groups summary: {reason}")))?;
        audit::check_membership(&mut log_members, h, &record)
            .map_err(|e| fail(h, e.to_string()))?;
        let participants: Vec<u32> = record.participants.iter().map(|c| c.member).collect();
        let expected = ledger
            .summary(
                &genesis.spec.dp,
                genesis.spec.train.epochs,
                &members,
                &participants,
            )
            .map_err(|e| fail(h, format!("privacy accounting: {e}")))?;
        fedmesh_protocol::dp::Ledger::check(expected.as_ref(), record.privacy.as_ref())
            .map_err(|e| fail(h, e.to_string()))?;
        ledger.add_record(&record);
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

fn corrupt_height(e: &fedmesh_storage::StoreError) -> Option<u64> {
    match e {
        fedmesh_storage::StoreError::Corrupt { height, .. } => Some(*height),
        _ => None,
    }
}
