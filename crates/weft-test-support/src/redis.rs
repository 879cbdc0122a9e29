//! A throwaway `redis-server` on a free loopback port: no persistence, its
//! own scratch directory, killed on drop.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::net::free_port;
use crate::process::WeftProcess;
use crate::temp::TempDir;

/// How long a fresh `redis-server` may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `redis-server` (see [`RedisServer::start`]).
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    process: Option<WeftProcess>,
}

impl RedisServer {
    /// `redis-server` from `WEFT_REDIS_SERVER` or `PATH`; an error saying how
    /// to install it when missing (tests that need Redis must fail, not skip).
    pub fn binary() -> anyhow::Result<PathBuf> {
        if let Some(p) = std::env::var_os("WEFT_REDIS_SERVER") {
            return Ok(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
            .context(
                "redis-server not found on PATH (nor WEFT_REDIS_SERVER): \
                 run scripts/setup.sh, which installs the Debian package redis-server",
            )
    }

    /// Starts `redis-server` on a free port (`--save "" --appendonly no`, a
    /// scratch `--dir`) and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<Self> {
        let mut dir = TempDir::new("weft-redis")?;
        let mut last = None;
        // A free port may be taken between the probe and redis binding it.
        for _ in 0..3 {
            let mut server = RedisServer {
                port: free_port(),
                dir,
                process: None,
            };
            match server.restart().await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    last = Some(e);
                    dir = server.take_dir()?;
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: no goodbye to clients); `restart` brings
    /// it back on the same port, empty.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// (Re)starts the server on its port and waits until it accepts
    /// connections. Kills a running one first.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let bin = Self::binary()?;
        let port = self.port.to_string();
        let dir = self.dir.path().display().to_string();
        let args = [
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir,
        ];
        let process = WeftProcess::spawn(&bin, &args)?;
        let ready = process
            .wait_for_log("Ready to accept connections", START_TIMEOUT)
            .await;
        if let Err(e) = ready {
            anyhow::bail!("{e}; redis-server said:\n{}", process.logs());
        }
        self.process = Some(process);
        Ok(())
    }

    /// Whether the server process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    fn take_dir(self) -> anyhow::Result<TempDir> {
        let RedisServer { dir, process, .. } = self;
        drop(process);
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn ping(port: u16) -> anyhow::Result<String> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[tokio::test]
    async fn starts_answers_dies_and_comes_back_on_its_port() {
        let mut redis = RedisServer::start().await.unwrap();
        assert_eq!(ping(redis.port()).await.unwrap(), "+PONG\r\n");
        assert!(redis.url().starts_with("redis://127.0.0.1:"));
        redis.kill();
        assert!(ping(redis.port()).await.is_err());
        redis.restart().await.unwrap();
        assert_eq!(ping(redis.port()).await.unwrap(), "+PONG\r\n");
    }
}
