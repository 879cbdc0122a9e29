use std::time::Duration;

use crate::*;

const BASE: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: catalog}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
  endpoints: [{address: "127.0.0.1:9001"}, {address: "127.0.0.1:9002"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{kind: Service, name: catalog, port: 8080}]
  rules:
  - name: read
    matches: [{method: GET}]
    backendRefs: [{name: catalog}]
  - backendRefs: [{name: catalog}]
"#;

fn load(policies: &str) -> Result<Config, Vec<String>> {
    load_str(&format!("{BASE}\n---\n{policies}"), "test.yaml")
        .map_err(|e| e.iter().map(|e| e.to_string()).collect())
}

fn errors(policies: &str) -> Vec<String> {
    match load(policies) {
        Ok(_) => panic!("expected errors for:\n{policies}"),
        Err(e) => e,
    }
}

fn has(errors: &[String], needles: &[&str]) {
    assert!(
        errors.iter().any(|e| needles.iter().all(|n| e.contains(n))),
        "no error with {needles:?} in {errors:#?}"
    );
}

#[test]
fn a_full_policy_loads_with_every_section() {
    let c = load(
        r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: tail}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  loadBalancer:
    type: LatencyAware
    choices: 3
    defaultRtt: 20ms
    decay: 5s
    locality: {minHealthyPercent: 60}
    slowStart: {window: 30s, minWeightPercent: 10, aggression: 2.0}
  failureCodes:
    http: ["5xx", 429, "500-504"]
    grpc: [UNAVAILABLE, 4, DeadlineExceeded]
    header: {name: X-Biz-Code, values: ["5003", "5100-5199", "E_QUOTA"]}
    latencyAbove: 2s
  reweighting: {halfLife: 2s, minWeightPercent: 5, recovery: 20s}
  outlierDetection:
    consecutiveFailures: 3
    baseEjectionTime: 10s
    maxEjectionPercent: 34
    successRate: {minRequests: 50, stdevFactor: 1.5}
    panicThresholdPercent: 40
  hedging: {percentile: 95, minDelay: 5ms, maxDelay: 200ms, requiredHistory: 50, maxAttempts: 3}
  retry: {maxRetries: 3, backoff: {base: 10ms, max: 100ms}, perTryTimeout: 500ms}
  budget: {percent: 5, minPerSecond: 3, window: 10s}
"#,
    )
    .unwrap();
    let p = &c.traffic_policies[0];
    let s = &p.sections;
    let lb = s.load_balancer.as_ref().unwrap();
    assert_eq!((lb.kind, lb.choices), (BalancerKind::LatencyAware, 3));
    assert_eq!(lb.default_rtt, Duration::from_millis(20));
    assert_eq!(lb.slow_start.as_ref().unwrap().aggression, 2.0);
    let fc = s.failure_codes.as_ref().unwrap();
    assert_eq!(fc.http, vec![(500, 599), (429, 429), (500, 504)]);
    assert_eq!(fc.grpc, vec![14, 4, 4]);
    let h = fc.header.as_ref().unwrap();
    assert_eq!(h.name, "x-biz-code");
    assert!(
        h.values[0].matches("5003")
            && h.values[1].matches(" 5150 ")
            && h.values[2].matches("E_QUOTA")
    );
    assert!(!h.values[1].matches("5200"));
    assert!(fc.connect_failure && fc.timeout, "defaults kept");
    assert_eq!(
        s.hedging.as_ref().unwrap().delay,
        HedgeDelay::Percentile {
            percentile: 95.0,
            min_delay: Duration::from_millis(5),
            max_delay: Some(Duration::from_millis(200)),
            required_history: 50
        }
    );
    assert_eq!(s.retry.as_ref().unwrap().max_retries, 3);
    assert_eq!(s.budget.as_ref().unwrap().percent, 5.0);
    assert_eq!(s.set_names().len(), 7);
}

#[test]
fn absent_fields_take_documented_defaults() {
    let c = load(
        r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: d}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  loadBalancer: {}
  outlierDetection: {}
  hedging: {delay: 10ms}
"#,
    )
    .unwrap();
    let s = &c.traffic_policies[0].sections;
    assert_eq!(s.load_balancer.as_ref().unwrap(), &LoadBalancer::default());
    assert_eq!(
        s.outlier_detection.as_ref().unwrap(),
        &OutlierDetection::default()
    );
    let h = s.hedging.as_ref().unwrap();
    assert_eq!((h.max_attempts, h.non_idempotent), (2, false));
    assert_eq!(h.delay, HedgeDelay::Fixed(Duration::from_millis(10)));
}

#[test]
fn bad_values_are_named_by_field() {
    let e = errors(
        r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: bad}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  loadBalancer: {type: Random, choices: 1, decay: 0s}
  failureCodes: {http: ["6xx", "504-500", 700], grpc: [NOPE, OK, 17], header: {name: "bad name", values: []}}
  outlierDetection: {maxEjectionPercent: 150, baseEjectionTime: 1m, maxEjectionTime: 10s}
  hedging: {delay: 10ms, percentile: 95}
  retry: {maxRetries: 50, backoff: {base: 1s, max: 10ms}}
  budget: {percent: 300}
"#,
    );
    has(&e, &["spec.loadBalancer.type", "Random"]);
    has(&e, &["spec.loadBalancer.choices", "2 to 16"]);
    has(&e, &["spec.loadBalancer.decay", "greater than 0"]);
    has(&e, &["spec.failureCodes.http[0]", "6xx"]);
    has(
        &e,
        &["spec.failureCodes.http[1]", "504-500", "above its end"],
    );
    has(&e, &["spec.failureCodes.http[2]", "700"]);
    has(&e, &["spec.failureCodes.grpc[0]", "NOPE"]);
    has(&e, &["spec.failureCodes.grpc[1]", "OK cannot be a failure"]);
    has(&e, &["spec.failureCodes.grpc[2]", "17"]);
    has(&e, &["spec.failureCodes.header.name", "bad name"]);
    has(&e, &["spec.failureCodes.header.values"]);
    has(&e, &["spec.outlierDetection.maxEjectionPercent", "150"]);
    has(&e, &["spec.outlierDetection.maxEjectionTime", "shorter"]);
    has(&e, &["spec.hedging.delay", "not both"]);
    has(&e, &["spec.retry.maxRetries", "at most 10"]);
    has(&e, &["spec.retry.backoff.max", "shorter"]);
    has(&e, &["spec.budget.percent", "300"]);
}

#[test]
fn unknown_fields_and_empty_policies_are_rejected() {
    has(
        &errors(
            r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: typo}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  hedging: {dealy: 10ms}
"#,
        ),
        &["spec.hedging", "dealy"],
    );
    has(
        &errors(
            r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: empty}
spec:
  targetRefs: [{kind: Service, name: catalog}]
"#,
        ),
        &["sets nothing"],
    );
    has(
        &errors(
            r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: untargeted}
spec:
  retry: {}
"#,
        ),
        &["spec.targetRefs", "at least one target"],
    );
}

#[test]
fn targets_must_exist_and_sections_must_name_a_rule_or_port() {
    let e = errors(
        r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: refs}
spec:
  targetRefs:
  - {kind: Service, name: nope}
  - {kind: HTTPRoute, name: shop, sectionName: write}
  - {kind: Service, name: catalog, sectionName: grpc}
  - {kind: Gateway, name: edge}
  - {group: gateway.networking.k8s.io, kind: Service, name: catalog}
  retry: {}
"#,
    );
    has(
        &e,
        &[
            "spec.targetRefs[0].name",
            "Service default/nope does not exist",
        ],
    );
    has(
        &e,
        &[
            "spec.targetRefs[1].sectionName",
            "no rule named \"write\"",
            "read",
        ],
    );
    has(
        &e,
        &[
            "spec.targetRefs[2].sectionName",
            "no port named \"grpc\"",
            "http",
        ],
    );
    has(&e, &["spec.targetRefs[3].kind", "Gateway"]);
    has(&e, &["spec.targetRefs[4].group"]);
}

#[test]
fn two_policies_setting_one_section_on_one_target_conflict() {
    let e = errors(
        r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: a}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  retry: {}
  hedging: {delay: 5ms}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: b}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  retry: {maxRetries: 1}
"#,
    );
    has(
        &e,
        &[
            "TrafficPolicy/default/b",
            "default/a already sets retry",
            "catalog",
        ],
    );
    // Different sections on one target merge.
    load(
        r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: a}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  retry: {}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: b}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  hedging: {delay: 5ms}
"#,
    )
    .unwrap();
}

#[test]
fn the_most_specific_level_wins_per_section() {
    let c = load(
        r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: svc}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  retry: {maxRetries: 1}
  budget: {percent: 20}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: route}
spec:
  targetRefs: [{kind: HTTPRoute, name: shop}]
  retry: {maxRetries: 2}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: rule}
spec:
  targetRefs: [{kind: HTTPRoute, name: shop, sectionName: read}]
  retry: {maxRetries: 3}
  hedging: {delay: 5ms}
"#,
    )
    .unwrap();
    let scope = |rule: Option<&'static str>| PolicyScope {
        namespace: "default",
        service: "catalog",
        port_name: Some("http"),
        route: Some((PolicyTargetKind::HTTPRoute, "shop", rule)),
    };
    let read = c.effective_policy(scope(Some("read")));
    assert_eq!(read.sections.retry.as_ref().unwrap().max_retries, 3);
    assert!(read.sections.hedging.is_some());
    assert_eq!(read.sections.budget.as_ref().unwrap().percent, 20.0);
    assert!(read.sources.contains(&("retry", "default/rule".to_owned())));
    assert!(read.sources.contains(&("budget", "default/svc".to_owned())));
    let other = c.effective_policy(scope(None));
    assert_eq!(other.sections.retry.as_ref().unwrap().max_retries, 2);
    assert!(other.sections.hedging.is_none());
    let direct = c.effective_policy(PolicyScope {
        namespace: "default",
        service: "catalog",
        port_name: None,
        route: None,
    });
    assert_eq!(direct.sections.retry.as_ref().unwrap().max_retries, 1);
    assert_eq!(direct.sources.len(), 2);
}

#[test]
fn locality_preference_is_named_as_not_enforced_everywhere() {
    let c = load(
        r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: tail}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  hedging: {delay: 5ms}
  retry: {}
"#,
    )
    .unwrap();
    assert!(
        c.not_yet_enforced().is_empty(),
        "hedging and retry are enforced"
    );
    let c = load(
        r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: zones}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  loadBalancer: {locality: {minHealthyPercent: 70}}
"#,
    )
    .unwrap();
    let w = c.not_yet_enforced();
    assert_eq!(w.len(), 1);
    assert!(
        w[0].contains("default/zones") && w[0].contains("--zone"),
        "{w:?}"
    );
    assert!(
        load_str(BASE, "base.yaml")
            .unwrap()
            .not_yet_enforced()
            .is_empty()
    );
}

// ---- issue 6 sections ------------------------------------------------------

fn flow_policy(body: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: flow}}\nspec:\n  targetRefs: [{{kind: Service, name: catalog}}]\n{body}"
    )
}

#[test]
fn flow_sections_load_with_their_defaults() {
    let c = load(&flow_policy(
        "  admission: {dropRatio: 0.25, sources: [frontend], deniedSources: [batch]}\n  rateLimit: {local: {requestsPerSecond: 50.5}}\n  fault:\n    delay: {fixed: 50ms, percent: 10}\n    abort: {grpcStatus: Unavailable}\n    headers: [{name: X-Chaos, value: \"on\"}]\n  deadline: {margin: 2ms}\n",
    ))
    .unwrap();
    let s = &c.traffic_policies[0].sections;
    let a = s.admission.as_ref().unwrap();
    assert_eq!((a.drop_ratio, a.dry_run), (0.25, false));
    assert_eq!(a.sources, ["frontend"]);
    assert_eq!(a.denied_sources, ["batch"]);
    let l = s.rate_limit.as_ref().unwrap().local.as_ref().unwrap();
    assert_eq!((l.requests_per_second, l.burst), (50.5, 51));
    let f = s.fault.as_ref().unwrap();
    assert_eq!(f.delay.as_ref().unwrap().fixed, Duration::from_millis(50));
    assert_eq!(f.abort.as_ref().unwrap().status, AbortStatus::Grpc(14));
    assert_eq!(f.abort.as_ref().unwrap().percent, 100.0);
    assert_eq!(f.headers, [("x-chaos".to_string(), "on".to_string())]);
    let d = s.deadline.as_ref().unwrap();
    assert!(d.propagate);
    assert_eq!(d.margin, Duration::from_millis(2));
    assert_eq!(
        s.set_names(),
        ["admission", "rateLimit", "fault", "deadline"]
    );
    let w = c.not_yet_enforced();
    assert!(
        w.len() == 1
            && w[0].contains("admission, rateLimit, fault: enforced by weft proxies")
            && w[0].contains("Envoy nodes get the fault, local and global rate limit filters"),
        "{w:?}"
    );
    // The JSON the control plane sends proxies round-trips.
    let json = serde_json::to_string(s).unwrap();
    assert_eq!(&serde_json::from_str::<PolicySections>(&json).unwrap(), s);
}

#[test]
fn bad_flow_settings_are_named() {
    for (body, field, words) in [
        (
            "  admission: {dropRatio: 1.5}\n",
            "spec.admission.dropRatio",
            "not a ratio",
        ),
        (
            "  admission: {dropRatio: -0.1}\n",
            "spec.admission.dropRatio",
            "not a ratio",
        ),
        (
            "  admission: {dryRun: true}\n",
            "spec.admission",
            "dropRatio or deniedSources",
        ),
        (
            "  admission: {dropRatio: 0.1, sources: [a], deniedSources: [a]}\n",
            "spec.admission.deniedSources",
            "also in sources",
        ),
        (
            "  rateLimit: {local: {requestsPerSecond: 0}}\n",
            "spec.rateLimit.local.requestsPerSecond",
            "above 0",
        ),
        (
            "  rateLimit: {local: {requestsPerSecond: 1e9}}\n",
            "spec.rateLimit.local.requestsPerSecond",
            "at most",
        ),
        (
            "  rateLimit: {local: {requestsPerSecond: 10, burst: 0}}\n",
            "spec.rateLimit.local.burst",
            "at least 1",
        ),
        ("  rateLimit: {}\n", "spec.rateLimit", "needs local"),
        (
            "  fault: {abort: {httpStatus: 700}}\n",
            "spec.fault.abort.httpStatus",
            "not an HTTP status",
        ),
        (
            "  fault: {abort: {httpStatus: 503, grpcStatus: Internal}}\n",
            "spec.fault.abort",
            "exactly one",
        ),
        (
            "  fault: {abort: {grpcStatus: OK}}\n",
            "spec.fault.abort.grpcStatus",
            "not an abort",
        ),
        (
            "  fault: {delay: {fixed: 10ms, percent: 101}}\n",
            "spec.fault.delay.percent",
            "not a percentage",
        ),
        (
            "  fault: {headers: [{name: x, value: \"v\"}]}\n",
            "spec.fault",
            "delay or abort",
        ),
        (
            "  fault: {abort: {httpStatus: 503}, headers: [{name: \"bad name\", value: \"v\"}]}\n",
            "spec.fault.headers[0].name",
            "not a header name",
        ),
        (
            "  deadline: {margin: 5s}\n",
            "spec.deadline.margin",
            "more than 1s",
        ),
    ] {
        let errs = errors(&flow_policy(body));
        assert!(
            errs.iter().any(|e| e.contains(field) && e.contains(words)),
            "{body}: want {field} ({words}) in {errs:?}"
        );
    }
}

#[test]
fn global_rate_limit_is_named_after_its_policy_and_bad_values_are_named() {
    let ok = r#"
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: shared}
spec:
  targetRefs: [{kind: Service, name: catalog}]
  rateLimit: {global: {requestsPerUnit: 600, unit: minute, failureMode: closed}}
"#;
    let config = load(ok).unwrap();
    let g = config.traffic_policies[0]
        .sections
        .rate_limit
        .as_ref()
        .unwrap()
        .global
        .clone()
        .unwrap();
    assert_eq!(g.requests_per_unit, 600);
    assert_eq!(g.unit, crate::RateLimitUnit::Minute);
    assert_eq!(g.failure_mode, crate::FailureMode::Closed);
    assert_eq!(g.descriptor, "default/shared");
    assert!(!g.per_source);

    for (spec, want) in [
        ("{requestsPerUnit: 0}", "global.requestsPerUnit"),
        ("{requestsPerUnit: 5000000000}", "global.requestsPerUnit"),
        ("{requestsPerUnit: 10, unit: week}", "global.unit"),
        (
            "{requestsPerUnit: 10, failureMode: maybe}",
            "global.failureMode",
        ),
        (
            "{requestsPerUnit: 10}, local: {requestsPerSecond: 5, perSource: true}",
            "local.perSource",
        ),
    ] {
        let bad = ok.replace(
            "{requestsPerUnit: 600, unit: minute, failureMode: closed}",
            spec,
        );
        has(&errors(&bad), &[want]);
    }
}
