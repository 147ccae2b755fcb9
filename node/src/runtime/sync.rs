//! Catching up: fetch the log entries a peer has and this member lacks, verify each one (hash
//! link, member signatures, threshold signature, round succession, member set) and its model checkpoint, then
//! append them. A peer that sends anything that does not verify is dropped and nothing of what it
//! sent is kept.

use std::sync::Arc;

use anyhow::Context as _;
use libp2p::PeerId;

use fedmesh_protocol::audit::{self, Entry, RoundRecord};
use fedmesh_protocol::wire::{Request, Response, MAX_ENTRIES_PER_REQUEST};
use fedmesh_storage::Store;

use super::Context;
use crate::net;

pub(super) struct Job {
    pub ctx: Arc<Context>,
    pub store: Arc<Store>,
    pub net: net::Handle,
    pub peer: PeerId,
    pub head: Entry,
    pub last: Option<RoundRecord>,
    /// Members the log has evicted so far (fetched entries must respect them).
    pub evicted: std::collections::BTreeSet<u32>,
}

/// Where the log stands after catching up.
pub(super) struct Outcome {
    pub head: Entry,
    pub last: Option<RoundRecord>,
    /// The new global model, if any entry was appended.
    pub global: Option<Vec<f32>>,
}

impl Job {
    pub async fn run(mut self) -> anyhow::Result<Outcome> {
        let mut global = None;
        loop {
            let from = self.head.height + 1;
            let response = self
                .net
                .request(
                    self.peer,
                    Request::Entries {
                        from,
                        max: MAX_ENTRIES_PER_REQUEST,
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            let entries = match response {
                Response::Entries(e) => e,
                other => anyhow::bail!(
                    "peer {} answered {other:?} to a request for entries",
                    self.peer
                ),
            };
            if entries.is_empty() {
                break;
            }
            for entry in entries {
                let record = self.check(&entry)?;
                let bytes = match self
                    .net
                    .request(self.peer, Request::Checkpoint(record.new_model))
                    .await
                {
                    Ok(Response::Checkpoint(Some(b))) => b,
                    _ => anyhow::bail!(
                        "peer {} did not send the checkpoint of model {}",
                        self.peer,
                        record.new_model
                    ),
                };
                let params = self
                    .store
                    .put_checkpoint_bytes(&self.ctx.layout, &record.new_model, &bytes)
                    .with_context(|| {
                        format!(
                            "checkpoint for height {} from peer {}",
                            entry.height, self.peer
                        )
                    })?;
                self.store
                    .append(&entry)
                    .context("appending a fetched entry")?;
                tracing::info!(
                    height = entry.height,
                    round = record.round,
                    accuracy = record.metrics.accuracy,
                    "caught up one round"
                );
                super::report_round(&entry, &record);
                self.head = entry;
                self.last = Some(record);
                global = Some(params);
            }
        }
        Ok(Outcome {
            head: self.head,
            last: self.last,
            global,
        })
    }

    fn check(&mut self, entry: &Entry) -> anyhow::Result<RoundRecord> {
        let ctx = &self.ctx;
        audit::verify_link(&self.head, entry)?;
        entry.verify(&ctx.genesis, ctx.genesis_hash, &ctx.bls)?;
        let record = entry.record()?;
        audit::verify_succession(&ctx.genesis, self.last.as_ref(), entry, &record)?;
        let active: Vec<u32> = ctx
            .genesis
            .members
            .iter()
            .map(|m| m.index)
            .filter(|m| !self.evicted.contains(m))
            .collect();
        audit::check_groups(&ctx.genesis, entry.prev_hash, &active, &record).map_err(|reason| {
            anyhow::anyhow!("height {}: groups summary: {reason}", entry.height)
        })?;
        audit::check_membership(&ctx.genesis, &mut self.evicted, entry.height, &record)?;
        Ok(record)
    }
}
