//! Delays accurate to tens of microseconds. tokio's timer rounds every
//! deadline up to its 1 ms tick (and the runtime wakes in whole
//! milliseconds), so a "10 ms" delay lasts 10-12 ms; an upstream whose
//! latency is the yardstick of a load generator's accuracy cannot be that
//! loose. One thread keeps the deadlines in a heap and sleeps on a channel
//! with a timeout, which the kernel honours to within its timer slack.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

type Wake = (Instant, oneshot::Sender<()>);

/// A deadline in the heap; ordered by time, then arrival.
struct Entry {
    at: Instant,
    seq: u64,
    wake: oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

fn timer() -> Option<&'static mpsc::Sender<Wake>> {
    static TIMER: OnceLock<Option<mpsc::Sender<Wake>>> = OnceLock::new();
    TIMER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Wake>();
            std::thread::Builder::new()
                .name("weft-app-timer".into())
                .spawn(move || run(&rx))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

fn run(rx: &mpsc::Receiver<Wake>) {
    let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
            if let Some(Reverse(e)) = heap.pop() {
                let _ = e.wake.send(());
            }
        }
        let next = match heap.peek() {
            Some(Reverse(e)) => rx.recv_timeout(e.at.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok((at, wake)) => {
                seq += 1;
                heap.push(Reverse(Entry { at, seq, wake }));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Waits `d`, give or take the kernel's timer slack (~50 µs).
pub(super) async fn sleep(d: Duration) {
    if d.is_zero() {
        return;
    }
    let at = Instant::now() + d;
    let (tx, rx) = oneshot::channel();
    match timer().map(|t| t.send((at, tx))) {
        Some(Ok(())) => {
            let _ = rx.await;
        }
        // No timer thread: fall back to tokio's coarser timer.
        _ => tokio::time::sleep_until(at.into()).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleeps_last_their_duration_to_well_under_a_millisecond() {
        let mut overshoot = Vec::new();
        for _ in 0..21 {
            let start = Instant::now();
            sleep(Duration::from_millis(3)).await;
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(3), "{took:?}");
            overshoot.push(took - Duration::from_millis(3));
        }
        overshoot.sort();
        // tokio's own timer overshoots by 0.5-2 ms.
        assert!(
            overshoot[10] < Duration::from_micros(400),
            "median overshoot {:?}",
            overshoot[10]
        );
    }

    #[tokio::test]
    async fn concurrent_sleeps_wake_in_deadline_order() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for ms in [9u64, 3, 6] {
            let tx = tx.clone();
            tokio::spawn(async move {
                sleep(Duration::from_millis(ms)).await;
                let _ = tx.send(ms);
            });
        }
        drop(tx);
        let mut order = Vec::new();
        while let Some(ms) = rx.recv().await {
            order.push(ms);
        }
        assert_eq!(order, vec![3, 6, 9]);
    }
}
