//! Collects the clients' ACKs and decides when a change has arrived: every
//! concerned client has ACKed the version the translation predicts for each
//! type that changed, and then nothing more came for a quiet period.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::client::Event;
use crate::mesh::Versions;

pub struct Tracker {
    rx: mpsc::UnboundedReceiver<Event>,
    /// Streams that ended, with why (they should not).
    pub closed: Vec<(u32, String)>,
}

/// What arrived between a mark and the quiet after it.
#[derive(Debug, Default)]
pub struct Window {
    /// Per concerned client: when it ACKed the last of its expected versions.
    pub done: HashMap<u32, SystemTime>,
    /// Concerned clients that did not get there before the deadline.
    pub missing: usize,
    /// Encoded size of every response received.
    pub bytes: u64,
    pub responses: u64,
    /// Clients that received anything.
    pub pushed: usize,
}

impl Tracker {
    pub fn new(rx: mpsc::UnboundedReceiver<Event>) -> Tracker {
        Tracker {
            rx,
            closed: Vec::new(),
        }
    }

    /// Takes events until every client in `expect` has ACKed its versions
    /// (or `deadline` passes), then until no event came for `quiet`.
    pub async fn collect(
        &mut self,
        expect: &HashMap<u32, Versions>,
        deadline: Duration,
        quiet: Duration,
    ) -> Window {
        let mut remaining = expect.clone();
        remaining.retain(|_, v| !v.is_empty());
        let mut w = Window::default();
        let mut pushed = HashSet::new();
        let give_up = Instant::now() + deadline;
        let mut last_event = Instant::now();
        loop {
            let wait_until = if remaining.is_empty() {
                (last_event + quiet).min(give_up + quiet)
            } else {
                give_up
            };
            let event = tokio::select! {
                e = self.rx.recv() => e,
                _ = tokio::time::sleep_until(wait_until.into()) => None,
            };
            let Some(event) = event else { break };
            last_event = Instant::now();
            match event {
                Event::Ack {
                    client,
                    type_url,
                    version,
                    bytes,
                    at,
                } => {
                    w.bytes += bytes as u64;
                    w.responses += 1;
                    pushed.insert(client);
                    if let Some(want) = remaining.get_mut(&client)
                        && want.get(&type_url) == Some(&version)
                    {
                        want.remove(&type_url);
                        let t = w.done.entry(client).or_insert(at);
                        *t = (*t).max(at);
                        if want.is_empty() {
                            remaining.remove(&client);
                        }
                    }
                }
                Event::Closed { client, why } => self.closed.push((client, why)),
            }
        }
        w.done.retain(|c, _| !remaining.contains_key(c));
        w.missing = remaining.len();
        w.pushed = pushed.len();
        w
    }
}
