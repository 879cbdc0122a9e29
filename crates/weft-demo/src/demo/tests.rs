//! The demo end to end, in-process: what a user watching it would notice.

use std::future::Future;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use super::*;

/// Runs the demo on the first free `127.<base>.x.y` range from `first`
/// (tests and a user's own demo run side by side; so may two checkouts).
async fn run_somewhere<F: Future<Output = ()>>(
    first: u8,
    opts: DemoOptions,
    shutdown: impl Fn() -> F,
) -> (u8, DemoReport) {
    let start = first.wrapping_add((std::process::id() % 16) as u8 * 2);
    for i in 0..8 {
        let ip_base = start.wrapping_add(i * 32);
        match run(
            DemoOptions {
                ip_base,
                ..opts.clone()
            },
            shutdown(),
        )
        .await
        {
            Ok(report) => return (ip_base, report),
            Err(e) if in_use(&e) => eprintln!("127.{ip_base}.x.y is busy, trying another: {e:#}"),
            Err(e) => panic!("the demo failed: {e:#}"),
        }
    }
    panic!("no free 127.x range for the demo");
}

fn in_use(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == ErrorKind::AddrInUse)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_shows_healthy_services_the_canary_split_and_both_inventory_endpoints() {
    let opts = DemoOptions {
        duration: Some(Duration::from_secs(3)),
        rate: 100,
        plain: true,
        ..DemoOptions::default()
    };
    let (_, report) = run_somewhere(101, opts, std::future::pending).await;

    assert!(
        report.requests >= 200,
        "about 300 requests in 3 s: {report:#?}"
    );
    let success = report.success_rate().unwrap();
    assert!(success > 0.9, "success {success}: {report:#?}");
    for service in ["frontend", "catalog-v1", "catalog-v2", "inventory"] {
        let s = report
            .service(service)
            .unwrap_or_else(|| panic!("no {service}: {report:#?}"));
        assert!(s.requests > 0 && s.p50.is_some() && s.p99 >= s.p50, "{s:?}");
    }
    let v2 = report.share("catalog", "catalog-v2");
    assert!(
        (0.05..=0.15).contains(&v2),
        "catalog-v2 share {v2}: {report:#?}"
    );
    assert!((report.share("catalog", "catalog-v1") + v2 - 1.0).abs() < 1e-9);
    let inventory: Vec<_> = report
        .endpoints
        .iter()
        .filter(|e| e.service == "inventory")
        .collect();
    assert_eq!(inventory.len(), 2, "{report:#?}");
    // Latency-aware balancing (the default) favours whichever endpoint
    // measured faster, so two equal ones need not split evenly at 100
    // req/s; both must take traffic (an unmeasured endpoint is probed).
    for e in inventory {
        assert!((0.02..=0.98).contains(&e.share), "{e:?}");
    }
    assert!(
        !report.config_dir.exists(),
        "the temporary config directory is removed"
    );
}

/// A user's session: start with a config dir, move all catalog traffic to
/// the canary by editing the file, press Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_edit_moves_traffic_and_ctrl_c_frees_every_port() {
    let dir = std::env::temp_dir().join(format!("weft-demo-test-{}", std::process::id()));
    let opts = DemoOptions {
        duration: None,
        rate: 50,
        config_dir: Some(dir.clone()),
        refresh: Duration::from_millis(500),
        plain: true,
        ..DemoOptions::default()
    };
    let file = dir.join("demo.yaml");
    let session = || {
        let file = file.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let config = std::fs::read_to_string(&file).unwrap();
            let all_to_v2 = config
                .replace(
                    "{name: catalog-v1, weight: 90}",
                    "{name: catalog-v1, weight: 0}",
                )
                .replace(
                    "{name: catalog-v2, weight: 10}",
                    "{name: catalog-v2, weight: 100}",
                );
            assert_ne!(all_to_v2, config, "the example config changed shape");
            std::fs::write(&file, all_to_v2).unwrap();
            tokio::time::sleep(Duration::from_millis(2300)).await; // then Ctrl-C
        }
    };
    let started = std::time::Instant::now();
    let (ip_base, report) = run_somewhere(102, opts, session).await;

    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(report.requests > 0 && report.ok > 0, "{report:#?}");
    // 10% for 0.7 s plus the reload delay, then 100% for the rest.
    let v2 = report.share("catalog", "catalog-v2");
    assert!(
        v2 > 0.4,
        "catalog-v2 share {v2} after the edit: {report:#?}"
    );
    for pod in PODS {
        for port in [
            mesh::APP_PORT,
            mesh::ADMIN_PORT,
            mesh::OUTBOUND_PORT,
            mesh::INBOUND_PORT,
        ] {
            let addr = SocketAddr::from((pod.ip(ip_base), port));
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("{addr} still taken: {e}"));
        }
    }
    let frontend = Ipv4Addr::new(127, ip_base, 1, 1);
    let config = std::fs::read_to_string(&file).unwrap();
    assert!(
        config.contains(&format!("address: {frontend}:15006")),
        "{config}"
    );
    assert!(dir.exists(), "a directory the user named is kept");
    std::fs::remove_dir_all(&dir).unwrap();
}
