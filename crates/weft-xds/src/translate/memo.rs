//! A small thread-safe memo table: each value is computed once per key.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

/// Key -> value, filled on first use. Values are cheap to clone (`Arc`s).
pub(super) struct Memo<K, V>(Mutex<HashMap<K, V>>);

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Memo(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash, V: Clone> Memo<K, V> {
    /// The value for `key`, computing it with `make` the first time. `make`
    /// runs without the lock held, so slow pieces do not serialize callers;
    /// if two threads race, the first value stored wins and both return it.
    pub(super) fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
        if let Some(v) = self.lock().get(&key) {
            return v.clone();
        }
        let value = make();
        self.lock().entry(key).or_insert(value).clone()
    }

    pub(super) fn get(&self, key: &K) -> Option<V> {
        self.lock().get(key).cloned()
    }

    pub(super) fn insert(&self, key: K, value: V) {
        self.lock().insert(key, value);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, V>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (single insert), so a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
