//! Launching the real `weft` binary for process-level tests.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::http::HttpClient;
use crate::temp::TempDir;
use crate::wait::wait_until;

/// A running `weft` process (or any binary) whose stdout and stderr go to one
/// log file.
///
/// Dropping it kills the process; if the test is panicking, the log is
/// printed to stderr first so the failure shows what the process said.
#[derive(Debug)]
pub struct WeftProcess {
    child: Child,
    command_line: String,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
    // Holds the log file's directory; removed on drop.
    _log_dir: TempDir,
}

impl WeftProcess {
    /// Starts `bin` with `args`, stdin closed, stdout and stderr captured.
    pub fn spawn(bin: &Path, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_with_env(bin, args, &[])
    }

    /// [`spawn`](Self::spawn) with extra environment variables (e.g. `RUST_LOG`).
    pub fn spawn_with_env(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let log_dir = TempDir::new("weft-process")?;
        let log_path = log_dir.join("output.log");
        let stdout = File::create(&log_path)
            .with_context(|| format!("creating log file {}", log_path.display()))?;
        let stderr = stdout
            .try_clone()
            .context("duplicating the log file handle")?;
        let command_line = std::iter::once(bin.display().to_string())
            .chain(args.iter().map(|a| a.to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning `{command_line}`"))?;
        Ok(WeftProcess {
            child,
            command_line,
            log_path,
            exit: None,
            _log_dir: log_dir,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the process to shut down gracefully (`kill -TERM <pid>`). Does
    /// nothing if it has already exited.
    ///
    /// # Panics
    /// If `kill` cannot be run or refuses: the test cannot go on meaningfully.
    pub fn sigterm(&mut self) {
        if self.try_exit_status().is_some() {
            return;
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running `kill -TERM`");
        // The process may have exited between the check and the signal.
        assert!(
            status.success() || self.try_exit_status().is_some(),
            "`kill -TERM {}` failed: {status}",
            self.pid()
        );
    }

    /// Waits for the process to exit, polling every 20 ms; errors (naming the
    /// command) if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let what = format!("`{}` (pid {}) to exit", self.command_line, self.pid());
        wait_until(&what, timeout, || {
            std::future::ready(self.try_exit_status())
        })
        .await
    }

    /// Everything the process has written to stdout and stderr so far.
    pub fn logs(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<cannot read {}: {e}>", self.log_path.display()),
        }
    }

    /// The log file (stdout and stderr interleaved).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Waits until the logs contain `needle` (e.g. a "listening on" line).
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let what = format!("`{needle}` in the logs of `{}`", self.command_line);
        wait_until(&what, timeout, || {
            std::future::ready(self.logs().contains(needle))
        })
        .await
    }

    /// Polls `GET /ready` on the process's admin address until it answers
    /// 200, bounded by `timeout`. Each probe has its own short timeout, so a
    /// connection that hangs (another process on the port) does not eat the
    /// whole budget; a process that exits fails at once, with its output.
    pub async fn wait_admin_ready(
        &mut self,
        admin: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let client = HttpClient::http1().with_timeout(Duration::from_secs(1));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                anyhow::bail!(
                    "`{}` exited ({status}) before {admin}/ready answered 200; its output:\n{}",
                    self.command_line,
                    self.logs()
                );
            }
            let last = match client.get(admin, "admin", "/ready").await {
                Ok(r) if r.status.is_success() => return Ok(()),
                Ok(r) => format!("/ready answered {}", r.status),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for `{}` to be ready on {admin} (last: {last})",
                    self.command_line
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }
}

impl Drop for WeftProcess {
    fn drop(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- output of `{}` (pid {}) -----\n{}\n----- end of output -----",
                self.command_line,
                self.pid(),
                self.logs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> WeftProcess {
        WeftProcess::spawn(Path::new("/bin/sh"), &["-c", script]).unwrap()
    }

    #[tokio::test]
    async fn captures_stdout_and_stderr_and_exit_status() {
        let mut p = sh("echo to-stdout; echo to-stderr >&2; exit 3");
        let status = p.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert_eq!(status.code(), Some(3));
        let logs = p.logs();
        assert!(
            logs.contains("to-stdout") && logs.contains("to-stderr"),
            "{logs}"
        );
    }

    #[tokio::test]
    async fn sigterm_runs_the_process_term_handler() {
        let mut p =
            sh("trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.05; done");
        p.wait_for_log("ready", Duration::from_secs(10))
            .await
            .unwrap();
        p.sigterm();
        let status = p.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert_eq!(status.code(), Some(7), "logs: {}", p.logs());
        assert!(p.logs().contains("got-term"));
        // Signalling an exited process is harmless.
        p.sigterm();
    }

    #[tokio::test]
    async fn wait_exit_times_out_naming_the_command() {
        let mut p = sh("sleep 30");
        let err = p.wait_exit(Duration::from_millis(100)).await.unwrap_err();
        assert!(err.to_string().contains("sleep 30"), "{err}");
    }

    #[test]
    fn drop_kills_the_process() {
        let p = sh("sleep 30");
        let pid = p.pid().to_string();
        drop(p);
        // `kill -0` fails once the (reaped) process is gone.
        let alive = Command::new("kill")
            .args(["-0", &pid])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!alive.success());
    }
}
