//! The control plane under test: `weft control` as its own process, its CPU
//! and memory read from /proc, its counters from the admin `/metrics`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct ControlProcess {
    child: Child,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
}

/// The counters the benchmark reads from `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scrape {
    pub sent_bytes: f64,
    pub streams: f64,
    pub generation: f64,
    /// Unix seconds of the last publish.
    pub published_at: f64,
    /// Sum of the time spent in `SnapshotCache::update`.
    pub translate_seconds: f64,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

impl ControlProcess {
    /// Starts `weft control` on free loopback ports and waits for `/ready`.
    pub async fn start(
        weft: &Path,
        config: &Path,
        reload_interval: &str,
        log: &Path,
    ) -> anyhow::Result<ControlProcess> {
        let (xds, admin) = (free_addr()?, free_addr()?);
        let log_file = std::fs::File::create(log)?;
        let child = Command::new(weft)
            .arg("control")
            .arg("--config")
            .arg(config)
            .args(["--xds", &xds.to_string(), "--admin", &admin.to_string()])
            .args(["--reload-interval", reload_interval])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", weft.display()))?;
        let mut cp = ControlProcess { child, xds, admin };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = cp.child.try_wait()? {
                anyhow::bail!("weft control exited ({status}); see {}", log.display());
            }
            if cp.get("/ready").await.is_ok() {
                return Ok(cp);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "weft control not ready after 30 s; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time of the process in seconds: the sum of its threads' run time
    /// (`/proc/PID/task/*/schedstat`, nanoseconds) — the same as utime +
    /// stime, without the 10 ms tick granularity.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&PathBuf::from(format!("/proc/{}", self.pid())))
    }

    /// utime + stime from `/proc/PID/stat`, in seconds (tick granularity).
    pub fn cpu_ticks_seconds(&self) -> f64 {
        stat_cpu_seconds(&format!("/proc/{}/stat", self.pid()))
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        status_kib(&format!("/proc/{}/status", self.pid()), "VmRSS:")
    }

    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        let text = self.get("/metrics").await?;
        let mut s = Scrape::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let name = key.split('{').next().unwrap_or(key);
            match name {
                "weft_xds_sent_bytes_total" => s.sent_bytes += v,
                "weft_xds_streams_connected" => s.streams += v,
                "weft_control_config_generation" => s.generation = v,
                "weft_control_config_last_publish_timestamp_seconds" => s.published_at = v,
                "weft_control_translate_seconds_sum" => s.translate_seconds = v,
                _ => {}
            }
        }
        Ok(s)
    }

    /// GET on the admin port; the body of a 200 response.
    async fn get(&self, path: &str) -> anyhow::Result<String> {
        let mut conn = tokio::net::TcpStream::connect(self.admin).await?;
        conn.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await?;
        let raw = String::from_utf8_lossy(&raw);
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .context("malformed admin response")?;
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
        Ok(body.to_string())
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run time of every thread of a process (`/proc/PID/task/*/schedstat`).
pub fn cpu_seconds(proc_dir: &Path) -> f64 {
    let Ok(tasks) = std::fs::read_dir(proc_dir.join("task")) else {
        return 0.0;
    };
    let ns: u64 = tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// utime + stime (fields 14 and 15 of `/proc/PID/stat`), in seconds.
fn stat_cpu_seconds(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces: count from after its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn status_kib(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// This process's RSS in KiB.
pub fn own_rss_kib() -> u64 {
    status_kib("/proc/self/status", "VmRSS:")
}
