//! The limits the service enforces, by descriptor value.

use std::collections::HashMap;
use std::sync::Arc;

use weft_model::{Config, GlobalRateLimit};

/// Every `rateLimit.global` of a config, by its descriptor value
/// (`<namespace>/<policy name>`). Immutable: a config change builds a new one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    by_descriptor: HashMap<Arc<str>, GlobalRateLimit>,
}

impl Limits {
    /// The global limits of every TrafficPolicy that has one.
    pub fn from_config(config: &Config) -> Self {
        config
            .traffic_policies
            .iter()
            .filter_map(|p| p.sections.rate_limit.as_ref()?.global.clone())
            .collect()
    }

    /// The limit counted under `descriptor`, with the descriptor as an
    /// `Arc<str>` (metric labels share it).
    pub fn get(&self, descriptor: &str) -> Option<(&Arc<str>, &GlobalRateLimit)> {
        self.by_descriptor.get_key_value(descriptor)
    }

    pub fn len(&self) -> usize {
        self.by_descriptor.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_descriptor.is_empty()
    }

    /// All limits, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &GlobalRateLimit> {
        self.by_descriptor.values()
    }
}

impl FromIterator<GlobalRateLimit> for Limits {
    fn from_iter<I: IntoIterator<Item = GlobalRateLimit>>(iter: I) -> Self {
        Limits {
            by_descriptor: iter
                .into_iter()
                .map(|l| (Arc::from(l.descriptor.as_str()), l))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_model::{FailureMode, RateLimitUnit};

    #[test]
    fn every_policy_with_a_global_limit_is_listed_by_descriptor() {
        let dir = weft_test_support::TempDir::new("weft-rl-limits").unwrap();
        std::fs::write(
            dir.join("config.yaml"),
            r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: catalog}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
  endpoints: [{address: "127.0.0.1:9001"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: inventory}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
  endpoints: [{address: "127.0.0.1:9002"}]
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: shared, namespace: default}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  rateLimit: {global: {requestsPerUnit: 600, unit: minute, failureMode: closed}}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: local-only}
spec:
  targetRefs: [{kind: Service, name: inventory}]
  rateLimit: {local: {requestsPerSecond: 5}}
"#,
        )
        .unwrap();
        let config = weft_model::load_dir(dir.path()).unwrap();
        let limits = Limits::from_config(&config);
        assert_eq!(limits.len(), 1);
        let (name, limit) = limits.get("default/shared").unwrap();
        assert_eq!(&**name, "default/shared");
        assert_eq!(limit.requests_per_unit, 600);
        assert_eq!(limit.unit, RateLimitUnit::Minute);
        assert_eq!(limit.failure_mode, FailureMode::Closed);
        assert!(limits.get("default/local-only").is_none());
    }
}
