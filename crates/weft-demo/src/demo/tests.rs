//! The demo end to end, in-process: what a user watching it would notice.

use std::future::Future;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use weft_test_support::{HttpClient, wait_until};

use super::*;

/// Runs the demo on the first free `127.<base>.x.y` range from `first`
/// (tests and a user's own demo run side by side; so may two checkouts).
/// `shutdown` gets the range's base.
async fn run_somewhere<F: Future<Output = ()>>(
    first: u8,
    opts: DemoOptions,
    shutdown: impl Fn(u8) -> F,
) -> (u8, DemoReport) {
    let start = first.wrapping_add((std::process::id() % 16) as u8 * 2);
    for i in 0..8 {
        let ip_base = start.wrapping_add(i * 32);
        match run(
            DemoOptions {
                ip_base,
                ..opts.clone()
            },
            shutdown(ip_base),
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

/// The value of the first sample of `name` whose labels contain every
/// one of `labels` (`key="value"`), from a sidecar's `/metrics`.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    scrape::samples(text)
        .find(|s| {
            s.name == name
                && labels.iter().all(|want| {
                    s.labels
                        .iter()
                        .any(|(k, v)| format!("{k}=\"{v}\"") == *want)
                })
        })
        .map(|s| s.value)
}

/// Ends the run once the frontend's sidecar has seen each governance
/// capability act (a backup won on pricing; catalog-v1-2 weighted well
/// down) and a few seconds of traffic are in, or after a generous bound
/// on a slow machine (the report's assertions then say what was missing).
async fn until_governance_acted(ip_base: u8) {
    let admin = SocketAddr::from((Ipv4Addr::new(127, ip_base, 1, 1), mesh::ADMIN_PORT));
    let erroring = format!("endpoint=\"127.{ip_base}.2.3:15006\"");
    let client = HttpClient::http1().with_timeout(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let acted = wait_until("governance acting", Duration::from_secs(40), || async {
        if started.elapsed() < Duration::from_secs(4) {
            return Err("warming up".to_owned());
        }
        let r = client
            .get(admin, "admin", "/metrics")
            .await
            .map_err(|e| format!("{e:#}"))?;
        let text = String::from_utf8_lossy(&r.body);
        let won = metric(
            &text,
            "weft_hedges_total",
            &["service=\"pricing.default\"", "reason=\"won\""],
        )
        .unwrap_or(0.0);
        let ratio = metric(
            &text,
            "weft_endpoint_weight_ratio",
            &["service=\"catalog-v1.default\"", &erroring],
        );
        match ratio {
            Some(r) if won >= 1.0 && r < 0.3 => Ok(()),
            _ => Err(format!("hedges won {won}, catalog-v1-2 weight {ratio:?}")),
        }
    })
    .await;
    if let Err(e) = acted {
        eprintln!("{e:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_shows_the_canary_split_and_each_governance_capability_acting() {
    let opts = DemoOptions {
        rate: 100,
        plain: true,
        // The script would heal the slow endpoint at 15 s.
        script: false,
        ..DemoOptions::default()
    };
    let (_, report) = run_somewhere(101, opts, until_governance_acted).await;

    assert!(
        report.requests >= 200,
        "at least 4 s at 100 req/s: {report:#?}"
    );
    for service in [
        "frontend",
        "catalog-v1",
        "catalog-v2",
        "inventory",
        "pricing",
    ] {
        let s = report
            .service(service)
            .unwrap_or_else(|| panic!("no {service}: {report:#?}"));
        assert!(s.requests > 0 && s.p50.is_some() && s.p99 >= s.p50, "{s:?}");
    }
    // The canary split holds; catalog-v1's two endpoints share its 90%.
    let v2 = report.share("catalog", "catalog-v2");
    assert!(
        (0.05..=0.15).contains(&v2),
        "catalog-v2 share {v2}: {report:#?}"
    );
    assert!((report.share("catalog", "catalog-v1") + v2 - 1.0).abs() < 1e-9);

    // A slow endpoint loses its traffic (an even split would give it a third).
    let slow = report.share("inventory", "inventory-3");
    assert!(slow < 0.15, "inventory-3 share {slow}: {report:#?}");
    for fast in ["inventory-1", "inventory-2"] {
        let e = report.endpoint(fast).unwrap();
        assert!(e.requests > 0, "an unmeasured endpoint is probed: {e:?}");
    }

    // An endpoint answering business errors is weighted down (round robin
    // would give it half of catalog-v1's traffic) and retries hide them.
    let erroring = report.endpoint("catalog-v1-2").unwrap();
    let weight = erroring.weight_ratio.unwrap_or(1.0);
    assert!(
        weight < 0.5 || erroring.ejected,
        "catalog-v1-2 weight {weight}: {erroring:?}"
    );
    let of_v1 = erroring.share / report.share("catalog", "catalog-v1");
    assert!(
        of_v1 < 0.4,
        "catalog-v1-2 took {of_v1} of catalog-v1's traffic"
    );
    let catalog = report.calls_to("catalog").unwrap();
    assert!(catalog.retries > 0, "{catalog:?}");
    let success = catalog.success_rate().unwrap();
    assert!(success >= 0.99, "callers' success {success}: {catalog:?}");
    let success = report.success_rate().unwrap();
    assert!(success >= 0.99, "ingress success {success}: {report:#?}");

    // Backups trim pricing's tail.
    let pricing = report.calls_to("pricing").unwrap();
    assert!(
        pricing.hedges_won > 0 && pricing.hedges_sent >= pricing.hedges_won,
        "{pricing:?}"
    );
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
    let session = |_| {
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
    assert!(
        report
            .events
            .iter()
            .any(|e| e.what == "config generation 2 applied by every sidecar"),
        "the edit shows as an event: {:#?}",
        report.events
    );
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
