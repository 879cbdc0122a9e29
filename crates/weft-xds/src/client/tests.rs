//! The client's cache rules (pure) and the whole client against the ADS
//! server engine on loopback.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, Resource as PbResource,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use super::*;
use crate::node::{DataPlane, NodeInfo};
use crate::resource::TypeUrl::{self, *};
use crate::server::{AdsServer, ServerStatus, SnapshotSource};
use crate::translate::{TranslateOptions, Translator};

const MESH: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: catalog}
spec:
  ports: [{port: 8080, protocol: http}]
  endpoints: [{address: "127.0.0.1:9001", weight: 3}, {address: "127.0.0.1:9002"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: frontend}
spec:
  ports: [{port: 3000, protocol: http}]
  endpoints: [{address: "127.0.0.1:9100"}]
"#;

/// What `weft control` serves the weft sidecar of `frontend` for `yaml`.
fn translated(yaml: &str) -> ResourceSet {
    let config = Arc::new(weft_model::load_str(yaml, "mesh.yaml").unwrap());
    let node = NodeInfo {
        id: "frontend-1".into(),
        cluster: "frontend".into(),
        kind: DataPlane::Weft,
        user_agent: "weft".into(),
    };
    Translator::new(config, TranslateOptions::default()).resources_for(&node)
}

/// A delta response of type `t` carrying `names` from `set`.
fn response(
    set: &ResourceSet,
    t: TypeUrl,
    names: &[&str],
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: set.type_version(t),
        resources: names
            .iter()
            .map(|n| {
                let r = set.get(t, n).unwrap_or_else(|| panic!("no {t} {n}"));
                PbResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                }
            })
            .collect(),
        type_url: t.as_str().into(),
        removed_resources: removed.iter().map(|s| s.to_string()).collect(),
        nonce: "n".into(),
        ..Default::default()
    }
}

fn all(set: &ResourceSet, t: TypeUrl) -> DeltaDiscoveryResponse {
    let names: Vec<&str> = set.of(t).map(|r| r.name.as_str()).collect();
    response(set, t, &names, &[])
}

fn accept(_: &Arc<Resource>) -> Result<(), String> {
    Ok(())
}

fn missing(cache: &ResourceCache) -> Vec<String> {
    cache
        .missing()
        .into_iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect()
}

fn names(set: &BTreeSet<String>) -> Vec<&str> {
    set.iter().map(String::as_str).collect()
}

#[test]
fn references_are_followed_and_waited_for() {
    let set = translated(MESH);
    let mut cache = ResourceCache::default();
    assert_eq!(missing(&cache), ["LDS *", "CDS *"]);

    cache.apply(Listener, &all(&set, Listener), accept).unwrap();
    assert_eq!(names(&cache.wanted(RouteConfiguration)), ["outbound"]);
    assert_eq!(
        missing(&cache),
        ["RDS outbound", "CDS *", "CDS inbound|frontend.default"],
        "listeners name their routes and the inbound listener its cluster"
    );

    cache.apply(Cluster, &all(&set, Cluster), accept).unwrap();
    assert_eq!(
        names(&cache.wanted(ClusterLoadAssignment)),
        ["catalog.default:8080", "frontend.default:3000"],
        "EDS clusters' assignments; the inbound cluster is static"
    );
    assert_eq!(
        missing(&cache),
        [
            "RDS outbound",
            "EDS catalog.default:8080",
            "EDS frontend.default:3000"
        ]
    );
    cache
        .apply(RouteConfiguration, &all(&set, RouteConfiguration), accept)
        .unwrap();
    cache
        .apply(
            ClusterLoadAssignment,
            &response(&set, ClusterLoadAssignment, &["catalog.default:8080"], &[]),
            accept,
        )
        .unwrap();
    assert_eq!(missing(&cache), ["EDS frontend.default:3000"]);
    // The server says it does not exist: nothing left to wait for.
    let applied = cache
        .apply(
            ClusterLoadAssignment,
            &response(&set, ClusterLoadAssignment, &[], &["frontend.default:3000"]),
            accept,
        )
        .unwrap();
    assert!(applied.changed);
    assert!(missing(&cache).is_empty(), "{:?}", missing(&cache));
}

#[test]
fn a_route_to_a_cluster_not_yet_received_is_missing() {
    // A new Service arrives as routes first, then its cluster.
    let old = translated(MESH);
    let new = translated(&format!(
        "{MESH}---\napiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: users}}\nspec:\n  ports: [{{port: 7000, protocol: http}}]\n  endpoints: [{{address: \"127.0.0.1:9200\"}}]\n"
    ));
    let mut cache = ResourceCache::default();
    for t in TypeUrl::ALL {
        cache.apply(t, &all(&old, t), accept).unwrap();
    }
    assert!(missing(&cache).is_empty(), "{:?}", missing(&cache));
    cache
        .apply(RouteConfiguration, &all(&new, RouteConfiguration), accept)
        .unwrap();
    assert_eq!(missing(&cache), ["CDS users.default:7000"]);
    cache
        .apply(
            Cluster,
            &response(&new, Cluster, &["users.default:7000"], &[]),
            accept,
        )
        .unwrap();
    assert_eq!(missing(&cache), ["EDS users.default:7000"]);
    assert!(
        cache
            .wanted(ClusterLoadAssignment)
            .contains("users.default:7000")
    );
}

#[test]
fn removed_resources_are_dropped_and_their_dependents_forgotten() {
    let set = translated(MESH);
    let mut cache = ResourceCache::default();
    for t in TypeUrl::ALL {
        cache.apply(t, &all(&set, t), accept).unwrap();
    }
    assert!(
        cache
            .set()
            .get(ClusterLoadAssignment, "catalog.default:8080")
            .is_some()
    );
    let applied = cache
        .apply(
            Cluster,
            &response(&set, Cluster, &[], &["catalog.default:8080"]),
            accept,
        )
        .unwrap();
    assert!(applied.changed);
    assert!(cache.set().get(Cluster, "catalog.default:8080").is_none());
    assert!(
        !cache
            .wanted(ClusterLoadAssignment)
            .contains("catalog.default:8080")
    );
    assert!(
        cache.forget_unwanted(),
        "its assignment is no longer wanted"
    );
    assert!(
        cache
            .set()
            .get(ClusterLoadAssignment, "catalog.default:8080")
            .is_none()
    );
    // The outbound routes still send to it: the set waits for it again.
    assert_eq!(missing(&cache), ["CDS catalog.default:8080"]);
    // Removing what is not held changes nothing.
    let applied = cache
        .apply(Listener, &response(&set, Listener, &[], &["nope"]), accept)
        .unwrap();
    assert!(!applied.changed);
}

#[test]
fn unchanged_resources_are_not_checked_again() {
    let set = translated(MESH);
    let mut cache = ResourceCache::default();
    cache.apply(Listener, &all(&set, Listener), accept).unwrap();
    let mut checked = 0;
    let applied = cache
        .apply(Listener, &all(&set, Listener), |_| {
            checked += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!((checked, applied.changed), (0, false));
}

#[test]
fn a_garbage_resource_rejects_the_whole_response() {
    let set = translated(MESH);
    let mut cache = ResourceCache::default();
    let mut resp = all(&set, Cluster);
    resp.resources.push(PbResource {
        name: "garbage".into(),
        version: "1".into(),
        resource: Some(Any {
            type_url: Cluster.as_str().into(),
            value: vec![0xff, 0xff, 0xff, 0x0f],
        }),
        ..Default::default()
    });
    let err = cache.apply(Cluster, &resp, accept).unwrap_err();
    assert!(
        err.starts_with("Cluster \"garbage\": cannot decode"),
        "{err}"
    );
    assert!(cache.set().of(Cluster).next().is_none(), "nothing applied");
    assert_eq!(
        missing(&cache),
        ["LDS *", "CDS *"],
        "not even counted as an answer"
    );
}

#[test]
fn wrong_types_names_and_the_data_planes_verdict_are_rejected() {
    let set = translated(MESH);
    let mut cache = ResourceCache::default();
    let mut wrong_type = all(&set, Listener);
    wrong_type.resources[0].resource.as_mut().unwrap().type_url = Cluster.as_str().into();
    let err = cache.apply(Listener, &wrong_type, accept).unwrap_err();
    assert!(
        err.contains("envoy.config.cluster.v3.Cluster") && err.contains("in a Listener response"),
        "{err}"
    );

    let mut renamed = all(&set, Listener);
    renamed.resources[0].name = "other".into();
    let err = cache.apply(Listener, &renamed, accept).unwrap_err();
    assert!(
        err.contains("Listener \"other\": the resource inside is named"),
        "{err}"
    );

    let err = cache
        .apply(Listener, &all(&set, Listener), |r| {
            Err(format!("Listener {:?}: not today", r.name))
        })
        .unwrap_err();
    assert!(err.contains("Listener \"outbound\": not today"), "{err}");
    assert!(cache.set().of(Listener).next().is_none());
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let b = Backoff::default();
    for attempt in 0..20 {
        let d = b.delay(attempt);
        let base =
            (Duration::from_millis(100) * 2u32.pow(attempt.min(10))).min(Duration::from_secs(5));
        assert!(d >= base / 2 && d <= base, "attempt {attempt}: {d:?}");
    }
    let draws: BTreeSet<Duration> = (0..20).map(|_| b.delay(3)).collect();
    assert!(draws.len() > 1, "jittered");
}

/// A control plane in a box: the ADS server engine serving one set, on a
/// runtime of its own so that stopping it closes every connection at once,
/// as a killed process would.
struct Server {
    addr: SocketAddr,
    set: watch::Sender<Arc<ResourceSet>>,
    status: Arc<ServerStatus>,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct OneSet(watch::Receiver<Arc<ResourceSet>>);

impl SnapshotSource for OneSet {
    fn watch(&self, _: &NodeInfo) -> watch::Receiver<Arc<ResourceSet>> {
        self.0.clone()
    }
}

impl Server {
    fn start(addr: SocketAddr, set: ResourceSet) -> Server {
        let (tx, rx) = watch::channel(Arc::new(set));
        let status = Arc::new(ServerStatus::new());
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let service = AdsServer::new(Arc::new(OneSet(rx)), status.clone()).into_service();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(TcpListenerStream::new(listener));
                tokio::select! {
                    _ = serve => {}
                    _ = killed => {}
                }
            });
            // Dropping the runtime drops every connection task.
        });
        Server {
            addr,
            set: tx,
            status,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Records what it is given; rejects resources named `reject`.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(ResourceSet, bool)>>>);

impl ConfigSink for Recorder {
    fn check(&mut self, r: &Arc<Resource>) -> Result<(), String> {
        if r.name.contains("reject") {
            Err(format!("{:?} is not welcome", r.name))
        } else {
            Ok(())
        }
    }
    fn publish(&mut self, set: &ResourceSet, complete: bool) -> Result<(), String> {
        self.0.lock().unwrap().push((set.clone(), complete));
        Ok(())
    }
}

impl Recorder {
    async fn wait_for(&self, what: &str, cond: impl Fn(&ResourceSet) -> bool) -> ResourceSet {
        let poll = async {
            loop {
                if let Some((set, _)) = self.0.lock().unwrap().last()
                    && cond(set)
                {
                    return set.clone();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), poll)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    fn publishes(&self) -> Vec<bool> {
        self.0.lock().unwrap().iter().map(|(_, c)| *c).collect()
    }
}

fn options(addr: SocketAddr) -> ClientOptions {
    let mut o = ClientOptions::new(addr.to_string(), "frontend-1", "frontend");
    o.backoff = Backoff {
        min: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    o
}

async fn wait(what: &str, cond: impl Fn() -> bool) {
    let poll = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test]
async fn a_wildcard_admin_announces_the_address_that_routes_to_the_server() {
    let specific: SocketAddr = "10.1.2.3:15000".parse().unwrap();
    assert_eq!(
        announce_address(specific, "127.0.0.1:15010").await,
        "10.1.2.3:15000"
    );
    let wildcard: SocketAddr = "0.0.0.0:15000".parse().unwrap();
    assert_eq!(
        announce_address(wildcard, "http://127.0.0.1:15010").await,
        "127.0.0.1:15000"
    );
    assert_eq!(
        announce_address(wildcard, "no-such-host.invalid:15010").await,
        "127.0.0.1:15000",
        "loopback when the server does not resolve"
    );
}

#[tokio::test]
async fn follows_a_control_plane_publishing_only_complete_sets() {
    let set = translated(MESH);
    let server = Server::start("127.0.0.1:0".parse().unwrap(), set.clone());
    let sink = Recorder::default();
    let mut opts = options(server.addr);
    opts.admin = Some("127.0.0.1:15999".into());
    let status = Arc::new(ClientStatus::new(&opts));
    let (stop_tx, stop) = watch::channel(false);
    let client = tokio::spawn(run(opts, sink.clone(), status.clone(), stop));

    let got = sink.wait_for("the first set", |s| *s == set).await;
    assert_eq!(got, set);
    assert_eq!(sink.publishes(), [true], "one publish, once complete");
    // The server saw a weft node, its admin address and its ACKs of all
    // four types.
    let streams = server.status.streams();
    assert_eq!(streams[0].kind, DataPlane::Weft);
    assert_eq!(streams[0].admin.as_deref(), Some("127.0.0.1:15999"));
    wait("ACKs of every type", || {
        let s = &server.status.streams()[0];
        TypeUrl::ALL
            .iter()
            .all(|t| s.types.get(t).is_some_and(|x| x.acked_version.is_some()))
    })
    .await;

    // An endpoint change arrives as one assignment and is published.
    let moved = translated(&MESH.replace("127.0.0.1:9002", "127.0.0.1:9003"));
    server.set.send_replace(Arc::new(moved.clone()));
    sink.wait_for("the endpoint change", |s| *s == moved).await;

    // A resource the data plane rejects: NACKed with its message, nothing published.
    let mut bad = moved.clone();
    bad.insert(Resource::new(
        Cluster,
        "reject-me",
        &envoy_types::pb::envoy::config::cluster::v3::Cluster {
            name: "reject-me".into(),
            ..Default::default()
        },
    ));
    let before = sink.publishes().len();
    server.set.send_replace(Arc::new(bad));
    wait("the NACK", || {
        server.status.streams()[0]
            .types
            .get(&Cluster)
            .is_some_and(|t| t.last_nack.is_some())
    })
    .await;
    let nack = server.status.streams()[0].types[&Cluster]
        .last_nack
        .clone()
        .unwrap();
    assert!(
        nack.message.contains("\"reject-me\" is not welcome"),
        "{}",
        nack.message
    );
    assert!(status.types()[&Cluster].last_nack.is_some());
    assert_eq!(
        sink.publishes().len(),
        before,
        "the rejected update changed nothing"
    );

    stop_tx.send_replace(true);
    client.await.unwrap();
}

#[tokio::test]
async fn reconnects_to_a_restarted_control_plane_and_sends_what_it_has() {
    let set = translated(MESH);
    let server = Server::start("127.0.0.1:0".parse().unwrap(), set.clone());
    let addr = server.addr;
    let sink = Recorder::default();
    let opts = options(addr);
    let status = Arc::new(ClientStatus::new(&opts));
    let (_stop_tx, stop) = watch::channel(false);
    tokio::spawn(run(opts, sink.clone(), status.clone(), stop));
    sink.wait_for("the first set", |s| *s == set).await;
    wait("connected", || status.is_connected()).await;

    // The control plane goes away: the client notices and keeps its set.
    let mut server = server;
    server.kill();
    wait("disconnected", || !status.is_connected()).await;
    assert_eq!(sink.publishes().len(), 1);

    // It comes back on the same address with one endpoint changed: only
    // that assignment is sent, and it is applied.
    let moved = translated(&MESH.replace("127.0.0.1:9002", "127.0.0.1:9003"));
    let server = Server::start(addr, moved.clone());
    sink.wait_for("the change after the restart", |s| *s == moved)
        .await;
    assert!(status.is_connected());
    assert_eq!(
        server.status.counters().resources_sent,
        1,
        "only the changed assignment is resent"
    );
}
