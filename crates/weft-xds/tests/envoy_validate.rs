//! The translation against real Envoy (`WEFT_ENVOY`, set by scripts/test.sh):
//! the sidecar form, made static (routes inlined instead of RDS, endpoints
//! inlined instead of EDS, since there is no control plane here), must pass
//! `envoy --mode validate`, and a running Envoy must route by Host, split,
//! time out, and serve the VIP and inbound listeners the way weft does. The
//! gRPC form's route configurations are validated too.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap, bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, Node, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteAction, RouteConfiguration, route};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::google::protobuf::Any;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::{Message, Name};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use weft_test_support::{HttpClient, TempDir, WeftProcess, free_port, tcp_echo_server, wait_until};
use weft_xds::translate::{TranslateOptions, Translator};
use weft_xds::{DataPlane, NodeInfo, ResourceSet, TypeUrl};

const FAULT: &str = "envoy.filters.http.fault";
const LOCAL_RATE_LIMIT: &str = "envoy.filters.http.local_ratelimit";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

fn envoy() -> Option<PathBuf> {
    match std::env::var_os("WEFT_ENVOY") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            eprintln!("skipping: WEFT_ENVOY is not set (scripts/test.sh sets it)");
            None
        }
    }
}

/// An HTTP/1.1 + h2c upstream answering `NAME VERSION`; `?sleep=MS` delays
/// the answer.
async fn upstream(name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let sleep = req
                        .uri()
                        .query()
                        .and_then(|q| q.strip_prefix("sleep="))
                        .and_then(|ms| ms.parse().ok());
                    if let Some(ms) = sleep {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let body = format!("{name} {:?}", req.version());
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// A loopback address of its own for the VIPs (any 127/8 address is local
/// on Linux), derived from the pid so parallel runs do not collide.
fn vip_ip() -> IpAddr {
    let pid = std::process::id();
    IpAddr::V4(Ipv4Addr::new(127, 77, (pid >> 8) as u8, (pid as u8) | 1))
}

fn free_port_on(ip: IpAddr) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

fn decode<M: Message + Default>(any: &Any) -> M {
    M::decode(any.value.as_slice()).expect("decoding a generated resource")
}

fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// Checks that gamma's TrafficPolicy reached its cluster as Envoy's nearest
/// equivalents (`envoy --mode validate` then checks Envoy accepts them).
fn with_gamma_policy(
    resources: bootstrap::StaticResources,
) -> anyhow::Result<bootstrap::StaticResources> {
    let g = resources
        .clusters
        .iter()
        .find(|c| c.name.starts_with("gamma.default:"))
        .context("no gamma cluster")?;
    anyhow::ensure!(
        g.lb_policy == cluster::LbPolicy::LeastRequest as i32 && g.outlier_detection.is_some(),
        "gamma's cluster lacks its TrafficPolicy: {g:?}"
    );
    Ok(resources)
}

/// Checks that the route policies reached Envoy's routes: gamma's retries
/// and hedging (from its Service policy) on gamma's default route, and the
/// `hedged` rule's hedging on that rule only.
fn check_route_policies(set: &ResourceSet) -> anyhow::Result<()> {
    let rc: RouteConfiguration = decode(
        &set.get(TypeUrl::RouteConfiguration, "outbound")
            .context("no outbound routes")?
            .body,
    );
    let action = |vhost: &str, route: &str| -> anyhow::Result<RouteAction> {
        let r = rc
            .virtual_hosts
            .iter()
            .filter(|v| v.name.starts_with(vhost))
            .flat_map(|v| &v.routes)
            .find(|r| r.name == route)
            .with_context(|| format!("no route {route} in {vhost}"))?;
        anyhow::ensure!(r.metadata.is_some(), "{route}: no policy metadata");
        match &r.action {
            Some(route::Action::Route(a)) => Ok(a.clone()),
            other => bail!("{route}: {other:?}"),
        }
    };
    let gamma = action("gamma.default:", "default")?;
    let retry = gamma.retry_policy.context("gamma: no retry policy")?;
    anyhow::ensure!(
        retry.retry_on.contains("retriable-headers")
            && retry.retriable_status_codes == [429]
            && retry.retry_host_predicate.len() == 1
            && gamma
                .hedge_policy
                .is_some_and(|h| h.hedge_on_per_try_timeout),
        "gamma: {retry:?}"
    );
    let hedged = action("alpha.default:", "alpha-routes/5")?;
    anyhow::ensure!(
        hedged.hedge_policy.is_some()
            && hedged
                .retry_policy
                .as_ref()
                .is_some_and(|r| r.retry_on == "retriable-status-codes"),
        "alpha-routes/5: {hedged:?}"
    );
    // Issue 6: the fault and local rate limit filters before the router,
    // and their per-route configs on the rules with those sections only.
    let l: Listener = decode(
        &set.get(TypeUrl::Listener, "outbound")
            .context("no outbound listener")?
            .body,
    );
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
    else {
        bail!("outbound: no HCM config");
    };
    let hcm: HttpConnectionManager = decode(any);
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    anyhow::ensure!(
        names == [FAULT, LOCAL_RATE_LIMIT, "envoy.filters.http.router"],
        "outbound filters: {names:?}"
    );
    let filters = |route: &str| -> anyhow::Result<Vec<String>> {
        let r = rc
            .virtual_hosts
            .iter()
            .flat_map(|v| &v.routes)
            .find(|r| r.name == route)
            .with_context(|| format!("no route {route}"))?;
        let mut names: Vec<String> = r.typed_per_filter_config.keys().cloned().collect();
        names.sort();
        Ok(names)
    };
    anyhow::ensure!(filters("alpha-routes/6")? == [FAULT]);
    anyhow::ensure!(filters("alpha-routes/7")? == [LOCAL_RATE_LIMIT]);
    anyhow::ensure!(filters("alpha-routes/8")? == [FAULT, LOCAL_RATE_LIMIT]);
    anyhow::ensure!(filters("alpha-routes/5")?.is_empty());
    Ok(())
}

fn make_static(set: &ResourceSet) -> anyhow::Result<bootstrap::StaticResources> {
    let mut listeners = Vec::new();
    for r in set.of(TypeUrl::Listener) {
        let mut l: Listener = decode(&r.body);
        if l.api_listener.is_some() {
            continue;
        }
        for chain in &mut l.filter_chains {
            for f in &mut chain.filters {
                inline_routes(set, f)?;
            }
        }
        listeners.push(l);
    }
    let mut clusters = Vec::new();
    for r in set.of(TypeUrl::Cluster) {
        let mut c: Cluster = decode(&r.body);
        if c.eds_cluster_config.take().is_some() {
            let cla = set
                .get(TypeUrl::ClusterLoadAssignment, &c.name)
                .with_context(|| format!("no assignment for cluster {}", c.name))?;
            c.load_assignment = Some(decode::<ClusterLoadAssignment>(&cla.body));
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Static as i32,
            ));
        }
        clusters.push(c);
    }
    Ok(bootstrap::StaticResources {
        listeners,
        clusters,
        ..Default::default()
    })
}

fn inline_routes(set: &ResourceSet, f: &mut Filter) -> anyhow::Result<()> {
    let Some(filter::ConfigType::TypedConfig(any)) = &mut f.config_type else {
        return Ok(());
    };
    if any.type_url != HCM_TYPE {
        return Ok(());
    }
    let mut hcm: HttpConnectionManager = decode(any);
    if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
        let rc = set
            .get(TypeUrl::RouteConfiguration, &rds.route_config_name)
            .with_context(|| format!("no route configuration {}", rds.route_config_name))?;
        hcm.route_specifier = Some(http_connection_manager::RouteSpecifier::RouteConfig(
            decode::<RouteConfiguration>(&rc.body),
        ));
    }
    *any = pack(&hcm);
    Ok(())
}

fn bootstrap(node: &NodeInfo, resources: bootstrap::StaticResources, admin_port: u16) -> Bootstrap {
    Bootstrap {
        node: Some(Node {
            id: node.id.clone(),
            cluster: node.cluster.clone(),
            ..Default::default()
        }),
        admin: Some(Admin {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "127.0.0.1".into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(
                        admin_port.into(),
                    )),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        }),
        static_resources: Some(resources),
        ..Default::default()
    }
}

/// Writes `b` as a binary bootstrap (Envoy picks the format by the `.pb`
/// extension) and runs `envoy --mode validate` on it.
fn validate(envoy: &Path, dir: &TempDir, file: &str, b: &Bootstrap) -> anyhow::Result<PathBuf> {
    let path = dir.join(file);
    std::fs::write(&path, b.encode_to_vec())?;
    let out = std::process::Command::new(envoy)
        .args(["--mode", "validate", "-l", "info", "-c"])
        .arg(&path)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "envoy --mode validate rejected {file}: {}\n{said}",
            out.status
        );
    }
    // Deprecated fields are accepted today and rejected in a later release.
    if said.to_ascii_lowercase().contains("deprecated") {
        bail!("{file} uses deprecated fields:\n{said}");
    }
    Ok(path)
}

/// A gRPC-form route configuration, checked by Envoy inside a dummy HTTP
/// listener (validate mode binds nothing).
fn grpc_routes_listener(rc: RouteConfiguration, port: u16) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: "grpc_form".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)),
        http_filters: vec![
            envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType::TypedConfig(
                    pack(&envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default()),
                )),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    Listener {
        name: format!("grpc-form-{port}"),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "127.0.0.1".into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port.into())),
                ..Default::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

struct Mesh {
    yaml: String,
    app: SocketAddr,
    vip_http: SocketAddr,
    vip_tcp: SocketAddr,
}

async fn mesh() -> anyhow::Result<Mesh> {
    let (alpha, beta, gamma, omega, app) = (
        upstream("alpha").await?,
        upstream("beta").await?,
        upstream("gamma").await?,
        upstream("omega").await?,
        upstream("app").await?,
    );
    let (echo, _) = tcp_echo_server().await?;
    let vip = vip_ip();
    let vip_http = SocketAddr::new(vip, free_port_on(vip)?);
    let vip_tcp = SocketAddr::new(vip, free_port_on(vip)?);
    let yaml = format!(
        r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: client}}
spec:
  ports: [{{port: {app_port}, protocol: http}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: alpha}}
spec:
  ports: [{{port: 8080, protocol: http}}]
  endpoints: [{{address: "{alpha}", weight: 3, locality: {{region: eu, zone: eu-1a}}}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: beta}}
spec:
  ports: [{{port: 9090, protocol: grpc}}, {{port: 9091, protocol: http}}]
  endpoints: [{{address: "{beta}"}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: gamma}}
spec:
  vip: {vip}
  ports: [{{port: {vip_http_port}, protocol: http}}]
  endpoints: [{{address: "{gamma}"}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: echo}}
spec:
  vip: {vip}
  ports: [{{port: {vip_tcp_port}, protocol: tcp}}]
  endpoints: [{{address: "{echo}"}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: omega, namespace: prod}}
spec:
  ports: [{{port: 80, protocol: http}}]
  endpoints: [{{address: "{omega}"}}]
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: gamma-tail}}
spec:
  targetRefs: [{{kind: Service, name: gamma}}]
  loadBalancer: {{type: LatencyAware, choices: 3, slowStart: {{window: 20s, minWeightPercent: 5, aggression: 1.5}}}}
  outlierDetection: {{consecutiveFailures: 4, maxEjectionPercent: 34, panicThresholdPercent: 40, successRate: {{minRequests: 50, stdevFactor: 1.5}}}}
  budget: {{percent: 15, minPerSecond: 3}}
  hedging: {{percentile: 95, maxDelay: 200ms}}
  retry: {{maxRetries: 2, backoff: {{base: 10ms, max: 100ms}}, perTryTimeout: 2s}}
  failureCodes:
    http: ["5xx", "429"]
    grpc: [UNAVAILABLE, CANCELLED]
    header: {{name: x-biz-code, values: ["5003", "5100-5199", E_STOCK]}}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: alpha-hedge}}
spec:
  targetRefs: [{{kind: HTTPRoute, name: alpha-routes, sectionName: hedged}}]
  hedging: {{delay: 100ms}}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: alpha-fault}}
spec:
  targetRefs: [{{kind: HTTPRoute, name: alpha-routes, sectionName: faulty}}]
  fault:
    delay: {{fixed: 20ms, percent: 100}}
    abort: {{httpStatus: 418, percent: 100}}
    headers: [{{name: x-chaos, value: "on"}}]
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: alpha-limit}}
spec:
  targetRefs: [{{kind: HTTPRoute, name: alpha-routes, sectionName: limited}}]
  rateLimit: {{local: {{requestsPerSecond: 0.2, burst: 2}}}}
  admission: {{dropRatio: 0.5, dryRun: true}}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: alpha-drop}}
spec:
  targetRefs: [{{kind: HTTPRoute, name: alpha-routes, sectionName: dropped}}]
  admission: {{dropRatio: 1}}
  rateLimit: {{local: {{requestsPerSecond: 1000, burst: 100}}}}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: empty}}
spec:
  ports: [{{port: 80, protocol: http}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: alpha-routes}}
spec:
  parentRefs: [{{kind: Service, name: alpha}}]
  rules:
  - matches: [{{headers: [{{name: x-canary, value: "yes"}}]}}]
    backendRefs: [{{name: beta}}]
  - matches: [{{path: {{type: PathPrefix, value: /split/}}}}]
    backendRefs: [{{name: alpha, weight: 1}}, {{name: beta, weight: 1}}, {{name: omega, namespace: prod, weight: 0}}]
  - matches: [{{path: {{type: PathPrefix, value: /slow}}}}]
    backendRefs: [{{name: alpha}}]
    timeouts: {{request: 300ms}}
  - matches: [{{path: {{type: Exact, value: /exact}}, method: POST}}]
    backendRefs: [{{name: beta, port: 9091}}]
  - backendRefs: [{{name: alpha}}]
  - name: hedged
    matches: [{{path: {{type: PathPrefix, value: /hedge}}}}]
    backendRefs: [{{name: alpha}}]
  - name: faulty
    matches: [{{path: {{type: PathPrefix, value: /fault}}}}]
    backendRefs: [{{name: alpha}}]
  - name: limited
    matches: [{{path: {{type: PathPrefix, value: /limited}}}}]
    backendRefs: [{{name: alpha}}]
  - name: dropped
    matches: [{{path: {{type: PathPrefix, value: /dropped}}}}]
    backendRefs: [{{name: alpha}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: beta-items}}
spec:
  parentRefs: [{{kind: Service, name: beta, port: 9091}}]
  rules:
  - matches: [{{path: {{type: RegularExpression, value: "/items/[0-9]+"}}}}]
    backendRefs: [{{name: alpha}}]
"#,
        app_port = app.port(),
        vip_http_port = vip_http.port(),
        vip_tcp_port = vip_tcp.port(),
    );
    Ok(Mesh {
        yaml,
        app,
        vip_http,
        vip_tcp,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_accepts_and_routes_the_sidecar_form() -> anyhow::Result<()> {
    let Some(envoy) = envoy() else {
        return Ok(());
    };
    let mesh = mesh().await?;
    let config = Arc::new(
        weft_model::load_str(&mesh.yaml, "mesh.yaml").map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let opts = TranslateOptions {
        outbound_port: free_port(),
        inbound_port: free_port(),
        connect_timeout: Duration::from_millis(500),
        ..TranslateOptions::default()
    };
    let translator = Translator::new(config, opts.clone());
    let dir = TempDir::new("weft-envoy-validate")?;

    // The gRPC form's route configurations are valid Envoy routes too.
    let grpc = NodeInfo {
        id: "grpc-1".into(),
        cluster: "client".into(),
        kind: DataPlane::Grpc,
        user_agent: "gRPC Python".into(),
    };
    let grpc_set = translator.resources_for(&grpc);
    let mut grpc_static = make_static(&grpc_set)?;
    assert!(
        grpc_static.listeners.is_empty(),
        "gRPC listeners are API listeners"
    );
    for (i, r) in grpc_set.of(TypeUrl::RouteConfiguration).enumerate() {
        let port = 20000 + i as u16;
        grpc_static
            .listeners
            .push(grpc_routes_listener(decode(&r.body), port));
    }
    validate(
        &envoy,
        &dir,
        "grpc-form.pb",
        &bootstrap(&grpc, grpc_static, free_port()),
    )?;

    // The sidecar form: validate, then serve.
    let node = NodeInfo {
        id: "client-1".into(),
        cluster: "client".into(),
        kind: DataPlane::Envoy,
        user_agent: "envoy".into(),
    };
    let set = translator.resources_for(&node);
    check_route_policies(&set)?;
    let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port());
    let path = validate(
        &envoy,
        &dir,
        "sidecar.pb",
        &bootstrap(&node, with_gamma_policy(make_static(&set)?)?, admin.port()),
    )?;
    let base_id = (std::process::id() % 60_000).to_string();
    let path = path.to_string_lossy().into_owned();
    let _envoy = WeftProcess::spawn(
        &envoy,
        &[
            "-c",
            &path,
            "--disable-hot-restart",
            "--base-id",
            &base_id,
            "--concurrency",
            "1",
            "-l",
            "warning",
        ],
    )?;
    let client = HttpClient::http1().with_timeout(Duration::from_secs(10));
    wait_until("envoy ready", Duration::from_secs(30), || async {
        let r = client.get(admin, "admin", "/ready").await?;
        anyhow::ensure!(r.status == StatusCode::OK, "ready: {}", r.status);
        Ok(())
    })
    .await?;

    let outbound = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), opts.outbound_port);
    let get = |host: &'static str, path: &'static str| {
        let client = client.clone();
        async move { client.get(outbound, host, path).await }
    };
    // Every host form the weft proxy accepts.
    for host in [
        "alpha",
        "alpha:8080",
        "alpha.default",
        "ALPHA.default.svc",
        "alpha.default.svc.cluster.local:8080",
        "alpha.default.svc.cluster.local.",
    ] {
        let r = get(host, "/").await?;
        assert_eq!(r.text(), "alpha HTTP/1.1", "Host: {host}");
    }
    // gRPC port: HTTP/2 upstream; the port-less name is the first port.
    assert_eq!(get("beta:9090", "/").await?.text(), "beta HTTP/2.0");
    assert_eq!(get("beta", "/").await?.text(), "beta HTTP/2.0");
    assert_eq!(get("beta:9092", "/").await?.status, StatusCode::NOT_FOUND);
    // Bare names only in the node's namespace; unknown ports and hosts: 404.
    assert_eq!(get("omega.prod", "/").await?.text(), "omega HTTP/1.1");
    for host in ["omega", "alpha:9999", "nowhere"] {
        assert_eq!(
            get(host, "/").await?.status,
            StatusCode::NOT_FOUND,
            "{host}"
        );
    }
    // No endpoints: 503.
    assert_eq!(
        get("empty", "/").await?.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // Route matches.
    let canary = Request::get("/")
        .header("host", "alpha")
        .header("x-canary", "yes")
        .body(Full::default())?;
    assert_eq!(
        client.send_to(outbound, canary).await?.text(),
        "beta HTTP/2.0"
    );
    // Regexes match the whole path; a port with a route attached has no
    // default rule.
    assert_eq!(
        get("beta:9091", "/items/42").await?.text(),
        "alpha HTTP/1.1"
    );
    for path in ["/items/x", "/items/42/more", "/"] {
        let r = get("beta:9091", path).await?;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    let post = client.post(outbound, "alpha", "/exact", "x").await?;
    assert_eq!(post.text(), "beta HTTP/1.1");
    assert_eq!(get("alpha", "/exact").await?.text(), "alpha HTTP/1.1");
    assert_eq!(get("alpha", "/splitx").await?.text(), "alpha HTTP/1.1");

    // Timeouts: 300 ms on /slow; none elsewhere (not Envoy's 15 s default,
    // which a 1 s wait cannot show, but at least no shorter one).
    let slow = get("alpha", "/slow?sleep=1000").await?;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    let patient = get("alpha", "/other?sleep=1000").await?;
    assert_eq!(patient.text(), "alpha HTTP/1.1");

    // Hedging (rule `hedged`, 100 ms, 2 attempts in all): a request still
    // running after 100 ms gets exactly one backup, and the client one
    // answer. alpha has no other retry policy, so its retry counter counts
    // the hedges.
    let hedged = get("alpha", "/hedge?sleep=400").await?;
    assert_eq!(hedged.text(), "alpha HTTP/1.1");
    wait_until("one hedge of /hedge", Duration::from_secs(5), || async {
        let stats = client
            .get(admin, "admin", "/stats?filter=upstream_rq_retry")
            .await?
            .text();
        let hedges: Vec<&str> = stats
            .lines()
            .filter(|l| l.starts_with("cluster.alpha.") && l.contains(".upstream_rq_retry:"))
            .collect();
        anyhow::ensure!(hedges.len() == 1 && hedges[0].ends_with(": 1"), "{stats}");
        Ok(())
    })
    .await?;

    // Issue 6. The fault: only requests with `x-chaos: on`, delayed, then
    // aborted with 418.
    assert_eq!(get("alpha", "/fault").await?.text(), "alpha HTTP/1.1");
    let chaos = Request::get("/fault")
        .header("host", "alpha")
        .header("x-chaos", "on")
        .body(Full::default())?;
    let started = std::time::Instant::now();
    let r = client.send_to(outbound, chaos).await?;
    assert_eq!(r.status, StatusCode::IM_A_TEAPOT);
    assert!(started.elapsed() >= Duration::from_millis(20));
    // A drop ratio of 1: every request answered 503 (the rate limit there
    // is far above this test's rate).
    for _ in 0..5 {
        let r = get("alpha", "/dropped").await?;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // The local rate limit: a burst of 2, then 429 (one token per 5 s);
    // the dry-run drop ratio drops nothing.
    let limited = [
        get("alpha", "/limited").await?,
        get("alpha", "/limited").await?,
        get("alpha", "/limited").await?,
    ];
    assert_eq!(limited[0].text(), "alpha HTTP/1.1");
    assert_eq!(limited[1].text(), "alpha HTTP/1.1");
    assert_eq!(limited[2].status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        limited[0]
            .headers
            .get("x-ratelimit-limit")
            .map(|v| v.to_str().unwrap_or_default().to_owned()),
        Some("2".into()),
        "{:?}",
        limited[0].headers
    );
    // Other routes are not limited.
    for _ in 0..5 {
        assert_eq!(get("alpha", "/other").await?.text(), "alpha HTTP/1.1");
    }

    // The split: 1:1 between alpha and beta, weight-0 omega never.
    let (mut alpha, mut beta) = (0, 0);
    for _ in 0..200 {
        match get("alpha", "/split/x").await?.text().as_str() {
            "alpha HTTP/1.1" => alpha += 1,
            "beta HTTP/2.0" => beta += 1,
            other => bail!("unexpected answer {other:?}"),
        }
    }
    assert!(
        (60..=140).contains(&alpha),
        "alpha {alpha}, beta {beta} of 200"
    );

    // VIP listeners: HTTP whatever the Host, TCP byte for byte.
    let r = client.get(mesh.vip_http, "anything", "/").await?;
    assert_eq!(r.text(), "gamma HTTP/1.1");
    let mut tcp = TcpStream::connect(mesh.vip_tcp).await?;
    tcp.write_all(b"ping over tcp").await?;
    let mut buf = [0u8; 13];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut buf)).await??;
    assert_eq!(&buf, b"ping over tcp");

    // Inbound: to the app on 127.0.0.1:<Service port>.
    let inbound = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), opts.inbound_port);
    let r = client.get(inbound, "client", "/").await?;
    assert_eq!(r.text(), "app HTTP/1.1", "app at {}", mesh.app);
    Ok(())
}
