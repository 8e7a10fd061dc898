//! The job that assembles a complete S3 upload's object from its part and tail objects, off
//! the request path (see [`crate::sink`]). It runs on any node with the `worker` role; until
//! it has run, the upload is read from its pieces, so a late or retried assembly delays
//! nothing but the freeing of the pieces.

use std::sync::Arc;

use async_trait::async_trait;
use common::db::Db;
use common::queue::{Context, Handler, Job, JobError};
use common::store::{Key, Store};

use crate::{record, sink};

/// Runs `assemble_upload` jobs.
pub struct Assembler {
    db: Db,
    store: Store,
}

impl Assembler {
    /// Assembles uploads recorded in `db` into `store`.
    pub fn new(db: Db, store: Store) -> Assembler {
        Assembler { db, store }
    }
}

/// The queue handler for upload assembly.
pub fn handler(db: Db, store: Store) -> Arc<dyn Handler> {
    Arc::new(Assembler::new(db, store))
}

#[async_trait]
impl Handler for Assembler {
    fn kind(&self) -> &'static str {
        record::ASSEMBLE_KIND
    }

    async fn run(&self, job: &Job, _ctx: &Context) -> Result<(), JobError> {
        let Some(id) = job.payload.get("upload").and_then(|v| v.as_str()) else {
            return Err(JobError::permanent("the job names no upload"));
        };
        let retry = |what: &str, e: &dyn std::fmt::Display| JobError::retry(format!("{what}: {e}"));
        let Some(up) = record::get(&self.db, id)
            .await
            .map_err(|e| retry("reading the upload", &e))?
        else {
            // withdrawn (terminated) since: its pieces went with it
            return Ok(());
        };
        if !up.complete {
            return Err(JobError::permanent("the upload is not complete"));
        }
        let parts = record::parts(&self.db, id)
            .await
            .map_err(|e| retry("reading the upload's parts", &e))?;
        if !parts.is_empty() {
            let started = std::time::Instant::now();
            sink::assemble(&self.store, &self.db, &up)
                .await
                .map_err(|e| retry("assembling the upload", &e))?;
            let still_there = record::assembled(&self.db, id)
                .await
                .map_err(|e| retry("recording the assembly", &e))?;
            if !still_there {
                // Withdrawn while we copied: what we made belongs to nobody.
                if let Ok(key) = Key::new(record::source_key(id)) {
                    let _ = self.store.delete(&key).await;
                }
            }
            tracing::info!(
                upload = %id,
                parts = parts.len(),
                bytes = up.length,
                ms = started.elapsed().as_millis() as u64,
                "upload assembled from its parts"
            );
        }
        // (again, when an earlier attempt recorded the assembly but died before this)
        if let Err(e) = sink::cleanup(&self.store, &up).await {
            tracing::warn!(upload = %id, error = %e, "could not remove the upload's part objects");
        }
        Ok(())
    }

    async fn dead(&self, job: &Job, error: &str) {
        tracing::error!(
            job = %job.id,
            upload = ?job.payload.get("upload"),
            error,
            "giving up assembling an upload: it stays readable from its part objects"
        );
    }
}
