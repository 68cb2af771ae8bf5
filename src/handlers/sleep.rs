//! Kind `sleep`, from the original design: waits `sleep` nanoseconds, proving it is alive after
//! every slice. A NULL `sleep` hangs forever and never proves anything, which is how the demo's
//! stuck job gets cancelled as dead.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{Handler, Permanent};
use crate::context::JobContext;

/// No slice is longer than this, whatever `dead_after` allows.
const MAX_SLICE: Duration = Duration::from_secs(1);

pub struct Sleep;

#[async_trait]
impl Handler for Sleep {
    async fn run(&self, ctx: &JobContext) -> anyhow::Result<()> {
        let Some(nanos) = ctx.sleep() else {
            return std::future::pending().await;
        };
        let nanos = u64::try_from(nanos)
            .map_err(|_| Permanent::new(format!("sleep must not be negative, got {nanos} ns")))?;
        let deadline = Instant::now() + Duration::from_nanos(nanos);
        let slice = ctx.heartbeat_interval().min(MAX_SLICE);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            tokio::time::sleep(left.min(slice)).await;
            ctx.heartbeat().await;
        }
    }
}
