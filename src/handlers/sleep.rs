//! Kind `sleep`, from the original design: waits `sleep` nanoseconds, checkpointing the time slept
//! after every slice, so a paused job sleeps only what is left when resumed, and a released or
//! rescued one continues where it stopped. A NULL `sleep` hangs forever and never checkpoints,
//! which is how the demo's stuck job gets cancelled as dead.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Handler, Permanent};
use crate::context::JobContext;

/// No slice is longer than this, whatever `dead_after` allows.
const MAX_SLICE: Duration = Duration::from_secs(1);

pub struct Sleep;

/// What a checkpoint of a sleep job says.
#[derive(Serialize, Deserialize, Default)]
struct Slept {
    slept_ns: u64,
}

#[async_trait]
impl Handler for Sleep {
    async fn run(&self, ctx: &JobContext) -> anyhow::Result<()> {
        let Some(nanos) = ctx.sleep() else {
            return std::future::pending().await;
        };
        let nanos = u64::try_from(nanos)
            .map_err(|_| Permanent::new(format!("sleep must not be negative, got {nanos} ns")))?;
        let mut slept = ctx.progress_as::<Slept>()?.unwrap_or_default().slept_ns;
        let slice = ctx.heartbeat_interval().min(MAX_SLICE);
        while slept < nanos {
            let nap = Duration::from_nanos(nanos - slept).min(slice);
            tokio::time::sleep(nap).await;
            slept += u64::try_from(nap.as_nanos()).unwrap_or(u64::MAX);
            // The last slice needs no checkpoint: the outcome says it all.
            if slept < nanos {
                ctx.checkpoint(&Slept { slept_ns: slept }).await?;
            }
        }
        Ok(())
    }
}
