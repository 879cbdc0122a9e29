//! Polling with a deadline: the one way tests wait for state.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`wait_until`] polls.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What a [`wait_until`] probe may return: `true`, `Some(v)` or `Ok(v)` end
/// the wait; `false`, `None` or `Err(e)` poll again.
pub trait Readiness {
    /// What the wait yields once ready.
    type Output;

    /// `Ok` when ready; otherwise why not (kept for the timeout error).
    fn into_ready(self) -> Result<Self::Output, Option<String>>;
}

impl Readiness for bool {
    type Output = ();

    fn into_ready(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Readiness for Option<T> {
    type Output = T;

    fn into_ready(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Err` keeps polling, and the last error is named if the wait times out:
/// handy for "until this connect succeeds".
impl<T, E: Display> Readiness for Result<T, E> {
    type Output = T;

    fn into_ready(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:#}")))
    }
}

/// Polls `probe` every 20 ms until it is ready (see [`Readiness`]), or fails
/// with an error naming `what` once `timeout` has passed. A probe still
/// running at the deadline is abandoned, so a hung probe cannot hang the test.
///
/// ```no_run
/// # async fn demo(addr: std::net::SocketAddr) -> anyhow::Result<()> {
/// use std::time::Duration;
/// let stream = weft_test_support::wait_until("upstream accepting", Duration::from_secs(5), || {
///     tokio::net::TcpStream::connect(addr)
/// })
/// .await?;
/// # drop(stream); Ok(()) }
/// ```
pub async fn wait_until<F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> anyhow::Result<<Fut::Output as Readiness>::Output>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Readiness,
{
    let deadline = Instant::now() + timeout;
    let mut last_reason = None;
    loop {
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(outcome) => match outcome.into_ready() {
                Ok(value) => return Ok(value),
                Err(reason) => last_reason = reason.or(last_reason),
            },
            Err(_elapsed) => {
                last_reason = Some("the last probe was still running".to_owned());
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let last = last_reason
                .map(|r| format!(" (last: {r})"))
                .unwrap_or_default();
            anyhow::bail!("timed out after {timeout:?} waiting for {what}{last}");
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn yields_the_value_once_ready() {
        let polls = AtomicUsize::new(0);
        let value = wait_until("third poll", Duration::from_secs(5), || async {
            let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
            (n >= 3).then_some(n)
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_error_names_what_was_awaited() {
        let err = wait_until(
            "the moon to turn blue",
            Duration::from_millis(200),
            || async { false },
        )
        .await
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("the moon to turn blue"), "{msg}");
        assert!(msg.contains("200ms"), "{msg}");
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_error_keeps_the_last_probe_error() {
        let err = wait_until("a connection", Duration::from_millis(100), || async {
            Err::<(), _>("connection refused")
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("connection refused"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_probe_cannot_outlive_the_deadline() {
        let err = wait_until("a hung probe", Duration::from_millis(100), || {
            std::future::pending::<bool>()
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("still running"), "{err}");
    }
}
