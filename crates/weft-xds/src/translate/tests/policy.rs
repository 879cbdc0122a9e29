use super::*;
use envoy_types::pb::google::protobuf::value;

const POLICY: &str = r#"
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: catalog-tail}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  loadBalancer: {type: LatencyAware, choices: 3, slowStart: {window: 20s, minWeightPercent: 5}}
  outlierDetection:
    consecutiveFailures: 4
    maxEjectionPercent: 34
    panicThresholdPercent: 40
    successRate: {minRequests: 50, stdevFactor: 1.5}
  budget: {percent: 15, minPerSecond: 3}
  hedging: {percentile: 95}
"#;

fn with_policy() -> Arc<Config> {
    Arc::new(weft_model::load_str(&format!("{MESH}{POLICY}"), "mesh.yaml").unwrap())
}

fn cluster_of(config: &Arc<Config>, name: &str) -> Cluster {
    let set = resources_for(
        config,
        &node(DataPlane::Envoy, "frontend"),
        &TranslateOptions::default(),
    );
    decode(&set, TypeUrl::Cluster, name)
}

#[test]
fn a_service_policy_becomes_envoys_nearest_equivalents_on_its_clusters() {
    let config = with_policy();
    let c = cluster_of(&config, "catalog.default:8080");
    assert_eq!(c.lb_policy, cluster::LbPolicy::LeastRequest as i32);
    let Some(cluster::LbConfig::LeastRequestLbConfig(lr)) = &c.lb_config else {
        panic!("{:?}", c.lb_config)
    };
    assert_eq!(lr.choice_count.map(|v| v.value), Some(3));
    let ss = lr.slow_start_config.as_ref().unwrap();
    assert_eq!(ss.slow_start_window.as_ref().unwrap().seconds, 20);
    assert_eq!(ss.min_weight_percent.as_ref().unwrap().value, 5.0);
    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx.map(|v| v.value), Some(4));
    assert_eq!(od.max_ejection_percent.map(|v| v.value), Some(34));
    assert_eq!(od.success_rate_stdev_factor.map(|v| v.value), Some(1500));
    assert_eq!(od.success_rate_request_volume.map(|v| v.value), Some(50));
    assert_eq!(
        c.common_lb_config
            .as_ref()
            .unwrap()
            .healthy_panic_threshold
            .as_ref()
            .unwrap()
            .value,
        40.0
    );
    let rb = c.circuit_breakers.as_ref().unwrap().thresholds[0]
        .retry_budget
        .unwrap();
    assert_eq!(rb.budget_percent.unwrap().value, 15.0);
    assert_eq!(rb.min_retry_concurrency.map(|v| v.value), Some(3));
    // The whole policy rides along for weft proxies.
    let md = &c.metadata.as_ref().unwrap().filter_metadata[translate_policy_key()];
    let Some(value::Kind::StringValue(json)) = &md.fields["json"].kind else {
        panic!("{md:?}")
    };
    let json: serde_json::Value = serde_json::from_str(json).unwrap();
    assert!(json["hedging"]["delay"].is_object(), "{json}");
    assert_eq!(json["load_balancer"]["choices"], 3, "{json}");
    // Every port of the Service, and no other Service.
    assert_eq!(
        cluster_of(&config, "catalog.default:8081").lb_policy,
        cluster::LbPolicy::LeastRequest as i32
    );
    let other = cluster_of(&config, "catalog-v2.default:8080");
    assert_eq!(other.lb_policy, cluster::LbPolicy::RoundRobin as i32);
    assert!(other.outlier_detection.is_none() && other.metadata.is_none());
}

fn translate_policy_key() -> &'static str {
    super::super::policy::POLICY_METADATA_KEY
}

#[test]
fn a_policy_change_rebuilds_clusters_even_when_services_are_unchanged() {
    let before = mesh();
    let after = with_policy();
    let t1 = Translator::new(before, TranslateOptions::default());
    let n = node(DataPlane::Envoy, "frontend");
    let a = t1.resources_for(&n);
    let b = t1.next(after.clone()).resources_for(&n);
    assert_eq!(
        b,
        Translator::new(after, TranslateOptions::default()).resources_for(&n)
    );
    assert_ne!(
        a.get(TypeUrl::Cluster, "catalog.default:8080")
            .unwrap()
            .version,
        b.get(TypeUrl::Cluster, "catalog.default:8080")
            .unwrap()
            .version
    );
}
