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

use crate::net;

/// What checking fetched entries needs: the network's genesis, its keys and the model layout.
pub(crate) struct Chain {
    pub genesis: fedmesh_protocol::genesis::Genesis,
    pub genesis_hash: fedmesh_crypto::Hash,
    pub bls: fedmesh_crypto::bls::PublicSet,
    pub layout: fedmesh_protocol::model::Layout,
}

/// Catch up the log from one peer.
pub(crate) struct Job {
    pub chain: Arc<Chain>,
    pub store: Arc<Store>,
    pub net: net::Handle,
    pub peer: PeerId,
    pub head: Entry,
    pub last: Option<RoundRecord>,
    /// The member set the log has so far (fetched entries must respect it).
    pub members: fedmesh_protocol::membership::Members,
}

/// Where the log stands after catching up.
pub(crate) struct Outcome {
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
                    .put_checkpoint_bytes(&self.chain.layout, &record.new_model, &bytes)
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
        let ctx = &self.chain;
        audit::verify_link(&self.head, entry)?;
        entry.verify(&ctx.genesis, ctx.genesis_hash, &ctx.bls)?;
        let record = entry.record()?;
        audit::verify_succession(&ctx.genesis, self.last.as_ref(), entry, &record)?;
        let active: Vec<u32> = self.members.active().collect();
        audit::check_groups(&ctx.genesis, entry.prev_hash, &active, &record).map_err(|reason| {
            anyhow::anyhow!("height {}: groups summary: {reason}", entry.height)
        })?;
        audit::check_membership(&mut self.members, entry.height, &record)?;
        Ok(record)
    }
}
