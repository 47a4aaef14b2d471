//! Bounded waiting: every wait in the tests ends, with a message saying what
//! did not happen.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it yields `Some`, or fails after `limit`.
pub async fn until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > limit {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
