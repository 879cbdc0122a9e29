//! Where the window counters live: in this process ([`MemoryStore`]) or in
//! Redis ([`RedisStore`]), shared by every replica of the service.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

/// A store of expiring counters.
pub trait CounterStore: Send + Sync + 'static {
    /// What it is, for logs and the `store` metric label: `memory`, `redis`.
    fn kind(&self) -> &'static str;

    /// Where it is, for the startup log (`in memory`, `redis 127.0.0.1:6379`).
    fn describe(&self) -> String {
        self.kind().to_string()
    }

    /// Adds `hits` to the counter `key` (created at 0) and returns its new
    /// value; the counter expires `ttl` after this call.
    fn incr<'a>(
        &'a self,
        key: &'a str,
        hits: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
}

// The messages carry their cause, so no variant has a `source`: printed as
// an error chain (`{:#}`), the cause would show twice.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid Redis URL {url} (want redis://HOST:PORT[/DB]): {reason}")]
    InvalidUrl {
        /// The URL with any password replaced by `***`.
        url: String,
        reason: String,
    },
    #[error("redis: {0}")]
    Redis(redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// Counters in this process: one replica's view only. Counters of past
/// windows are swept once they expire.
#[derive(Debug, Default)]
pub struct MemoryStore {
    counters: Mutex<MemoryCounters>,
}

#[derive(Debug, Default)]
struct MemoryCounters {
    by_key: HashMap<String, MemoryCounter>,
    next_sweep: Option<Instant>,
}

#[derive(Debug)]
struct MemoryCounter {
    value: u64,
    expires: Instant,
}

/// How often expired counters are dropped (at most; only while incremented).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters held now, expired or not (tests watch the sweep).
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryCounters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`CounterStore::incr`] at a given moment.
    pub(crate) fn incr_at(&self, key: &str, hits: u64, ttl: Duration, now: Instant) -> u64 {
        // One short critical section per call: no await inside, so a plain
        // mutex serializes increments without holding up the runtime.
        let mut c = self.lock();
        if c.next_sweep.is_none_or(|t| now >= t) {
            c.by_key.retain(|_, v| v.expires > now);
            c.next_sweep = Some(now + SWEEP_EVERY);
        }
        let counter = c.by_key.entry(key.to_string()).or_insert(MemoryCounter {
            value: 0,
            expires: now,
        });
        if counter.expires <= now {
            counter.value = 0;
        }
        counter.value = counter.value.saturating_add(hits);
        counter.expires = now + ttl;
        counter.value
    }
}

impl CounterStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn describe(&self) -> String {
        "in memory".to_string()
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        hits: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let value = self.incr_at(key, hits, ttl, Instant::now());
        Box::pin(std::future::ready(Ok(value)))
    }
}

/// Counters in Redis, shared by every replica pointed at the same server.
///
/// Uses the `redis` crate rather than a hand-written RESP client: it is well
/// kept (the community's standard Rust client) and its `ConnectionManager`
/// multiplexes concurrent calls over one connection and reconnects in the
/// background after Redis restarts, which is exactly the failure this
/// service must ride out.
#[derive(Clone)]
pub struct RedisStore {
    manager: redis::aio::ConnectionManager,
    address: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisStore {
    /// How long one increment may take before the call counts as a store
    /// failure: a dead Redis must not hold requests up.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

    /// A store for `url` (`redis://[:password@]host:port[/db]`). Only the URL
    /// is checked here: the connection is made on first use and remade
    /// whenever it breaks, so the service starts (and fails open or closed)
    /// while Redis is down. Must be called inside a Tokio runtime.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let invalid = |e: redis::RedisError| StoreError::InvalidUrl {
            url: redact(url),
            reason: e.to_string(),
        };
        let client = redis::Client::open(url).map_err(invalid)?;
        let address = client.get_connection_info().addr().to_string();
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Self::DEFAULT_TIMEOUT))
            // Reconnect quickly and give up soon: the next call starts a
            // new attempt anyway, and the service answers from the
            // failure mode meanwhile.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        let manager =
            redis::aio::ConnectionManager::new_lazy_with_config(client, config).map_err(invalid)?;
        Ok(RedisStore {
            manager,
            address,
            timeout: Self::DEFAULT_TIMEOUT,
        })
    }

    /// Changes the per-call timeout (default [`Self::DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `host:port` of the server.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends `PING`: whether Redis answers now (the startup log says so).
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let mut conn = self.manager.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(timeout, ping).await {
            Ok(r) => r.map(drop).map_err(StoreError::Redis),
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }
}

impl CounterStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn describe(&self) -> String {
        format!("redis {}", self.address)
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        hits: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut conn = self.manager.clone();
            // One round trip: INCRBY returns the new value; EXPIRE keeps the
            // key from outliving its window (refreshed on every hit, harmless:
            // the key names one window only).
            let mut pipe = redis::pipe();
            pipe.cmd("INCRBY").arg(key).arg(hits);
            pipe.cmd("EXPIRE")
                .arg(key)
                .arg(ttl.as_secs().max(1))
                .ignore();
            let call = pipe.query_async::<(u64,)>(&mut conn);
            match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok((value,))) => Ok(value),
                Ok(Err(e)) => Err(StoreError::Redis(e)),
                Err(_) => Err(StoreError::Timeout(self.timeout)),
            }
        })
    }
}

/// `url` with the password (if any) replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let hidden = userinfo
                .split_once(':')
                .map_or("***".to_string(), |(user, _)| format!("{user}:***"));
            format!("{scheme}://{hidden}@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_counts_every_increment_once_under_concurrency() {
        let store = Arc::new(MemoryStore::new());
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    for _ in 0..100 {
                        seen.push(store.incr("k", 1, Duration::from_secs(5)).await.unwrap());
                        tokio::task::yield_now().await;
                    }
                    seen
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort_unstable();
        // Every caller saw a distinct value: no lost or doubled increment.
        assert_eq!(all, (1..=3200).collect::<Vec<u64>>());
    }

    #[test]
    fn memory_counters_expire_and_old_windows_are_swept() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(2);
        assert_eq!(store.incr_at("w1", 3, ttl, t0), 3);
        assert_eq!(store.incr_at("w1", 2, ttl, t0 + Duration::from_secs(1)), 5);
        // Expired: starts again from zero.
        assert_eq!(store.incr_at("w1", 1, ttl, t0 + Duration::from_secs(4)), 1);
        assert_eq!(store.incr_at("w2", 1, ttl, t0 + Duration::from_secs(4)), 1);
        assert_eq!(store.len(), 2);
        // Both lapse; the next increment (another key) sweeps them.
        store.incr_at("w3", 1, ttl, t0 + Duration::from_secs(10));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn bad_redis_urls_are_named_without_their_password() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let err = RedisStore::open("http://user:secret@host:1").unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("invalid Redis URL"), "{msg}");
            assert!(!msg.contains("secret"), "{msg}");
            assert!(RedisStore::open("redis://127.0.0.1:1").is_ok());
        });
    }

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact("redis://u:pw@h/1"), "redis://u:***@h/1");
        assert_eq!(redact("redis://pw@h"), "redis://***@h");
    }
}
