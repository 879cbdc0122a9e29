//! `weft top`: the control plane's traffic view (golden metrics per Service
//! and per caller -> callee edge, from `weft control`'s `/traffic`),
//! refreshed every interval. Rendered by `weft_demo::demo::golden`, as
//! `weft demo` shows the same view.
//!
//! On a terminal each frame redraws the screen in place (cursor hidden
//! meanwhile, and 'q' quits when stdin is the terminal too); otherwise
//! frames follow one another, separated by a blank line, for scripts. A
//! control plane that is down or answers something else is shown and
//! asked again at the next refresh: only a signal, 'q' or `--iterations`
//! ends it.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use weft_control::traffic::MAX_WINDOW;
use weft_demo::demo::golden::TrafficFrame;

#[derive(Debug, Args)]
pub struct TopArgs {
    /// The Service (`name` or `name.namespace`): it and its callers and
    /// callees only. All when absent.
    pub service: Option<String>,
    /// The control plane's admin address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15011")]
    pub control: SocketAddr,
    /// The numbers cover the last DURATION (1s to 300s, what the control
    /// plane keeps).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = window)]
    pub window: Duration,
    /// How often the view refreshes.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = interval)]
    pub interval: Duration,
    /// Draw N frames, then exit (for scripts). Default: until Ctrl-C,
    /// SIGTERM or 'q'.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
    /// Admin port with /ready and /metrics (weft_top_refreshes_total,
    /// weft_top_fetch_errors_total). Off by default: `top` is an
    /// interactive viewer, not a service; use it when a script or a
    /// supervisor runs `top` and wants to see that it is refreshing.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
}

fn window(s: &str) -> Result<Duration, String> {
    let d = crate::cli::duration(s)?;
    if d < Duration::from_secs(1) || d > MAX_WINDOW || d.subsec_nanos() != 0 {
        return Err(format!(
            "the window must be whole seconds from 1s to {}s (what the control plane keeps)",
            MAX_WINDOW.as_secs()
        ));
    }
    Ok(d)
}

fn interval(s: &str) -> Result<Duration, String> {
    let d = crate::cli::duration(s)?;
    if d.is_zero() {
        return Err("the refresh interval must be above 0".to_owned());
    }
    Ok(d)
}

/// What `--admin` shows.
struct TopAdmin {
    /// A first frame has been drawn.
    drawn: AtomicBool,
    refreshes: Counter,
    fetch_errors: Counter,
    registry: Registry,
}

impl TopAdmin {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("weft_top");
        let (refreshes, fetch_errors) = (Counter::default(), Counter::default());
        registry.register("refreshes", "Frames drawn", refreshes.clone());
        registry.register(
            "fetch_errors",
            "Refreshes whose control plane was unreachable or answered no traffic view",
            fetch_errors.clone(),
        );
        Self {
            drawn: AtomicBool::new(false),
            refreshes,
            fetch_errors,
            registry,
        }
    }
}

impl weft_admin::AdminEndpoints for TopAdmin {
    fn ready(&self) -> bool {
        self.drawn.load(Ordering::Relaxed)
    }
    fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Why the loop ended.
enum Stop {
    Done,
    Signal(&'static str),
    Quit,
}

pub async fn top(a: TopArgs) -> anyhow::Result<ExitCode> {
    // Listen before the first frame: a signal right after it must end top
    // cleanly, not kill it with the cursor hidden.
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let stats = Arc::new(TopAdmin::new());
    let _admin = match a.admin {
        Some(addr) => Some(weft_admin::start(addr, stats.clone()).await?),
        None => None,
    };
    let screen = Screen::new();
    let mut quit = screen.keys();
    let mut ticker = tokio::time::interval(a.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // The first tick is now.
    let mut drawn = 0u64;
    let stop = loop {
        let frame = tokio::select! {
            f = TrafficFrame::fetch(a.control, a.window, a.service.as_deref()) => f,
            _ = term.recv() => break Stop::Signal("SIGTERM"),
            _ = int.recv() => break Stop::Signal("SIGINT"),
            Some(()) = quit.recv() => break Stop::Quit,
        };
        if frame.snapshot.is_err() {
            stats.fetch_errors.inc();
        }
        screen.show(&frame.render("weft top"), a.interval);
        stats.refreshes.inc();
        stats.drawn.store(true, Ordering::Relaxed);
        drawn += 1;
        if a.iterations.is_some_and(|n| drawn >= n) {
            break Stop::Done;
        }
        tokio::select! {
            _ = ticker.tick() => {}
            _ = term.recv() => break Stop::Signal("SIGTERM"),
            _ = int.recv() => break Stop::Signal("SIGINT"),
            Some(()) = quit.recv() => break Stop::Quit,
        }
    };
    drop(screen);
    match stop {
        Stop::Signal(signal) => tracing::debug!(signal, "stopping"),
        Stop::Quit => tracing::debug!("'q' pressed: stopping"),
        Stop::Done => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Where frames go. On a terminal: redrawn in place, the cursor hidden
/// until this is dropped, and keys read unbuffered (restored on drop).
struct Screen {
    tty: bool,
    /// The terminal's settings before keys were read one by one (`stty -g`).
    saved_tty: Option<String>,
}

impl Screen {
    fn new() -> Self {
        let tty = std::io::stdout().is_terminal();
        let mut screen = Screen {
            tty,
            saved_tty: None,
        };
        if tty {
            screen.write("\x1b[?25l\x1b[2J");
            if std::io::stdin().is_terminal() {
                screen.saved_tty = single_keys();
            }
        }
        screen
    }

    /// 'q' presses (only when stdin is the terminal).
    fn keys(&self) -> mpsc::UnboundedReceiver<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        if self.tty && std::io::stdin().is_terminal() {
            // A plain thread: a blocked read must not hold up the runtime's
            // shutdown, as `spawn_blocking` would.
            std::thread::spawn(move || {
                use std::io::Read as _;
                let mut stdin = std::io::stdin();
                let mut byte = [0u8; 1];
                while let Ok(1) = stdin.read(&mut byte) {
                    if matches!(byte[0], b'q' | b'Q') && tx.send(()).is_err() {
                        return;
                    }
                }
            });
        }
        rx
    }

    fn show(&self, frame: &str, every: Duration) {
        if self.tty {
            let mut text = String::from("\x1b[H");
            for line in frame.lines() {
                text.push_str(line);
                text.push_str("\x1b[K\n");
            }
            let quit = if self.saved_tty.is_some() {
                "q or Ctrl-C quits"
            } else {
                "Ctrl-C quits"
            };
            text.push_str(&format!(
                "\x1b[K\n(refreshing every {}; {quit})\x1b[K\n\x1b[J",
                humanize(every)
            ));
            self.write(&text);
        } else {
            self.write(&format!("{frame}\n"));
        }
    }

    fn write(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        // A closed stdout (`| head`) must not end top with a panic.
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if let Some(saved) = self.saved_tty.take() {
            let _ = std::process::Command::new("stty")
                .arg(saved)
                .stdin(std::process::Stdio::inherit())
                .status();
        }
        if self.tty {
            self.write("\x1b[?25h");
        }
    }
}

/// Lets the terminal hand over each key as it is pressed, not echoed
/// (`stty -icanon -echo`; Ctrl-C still signals), returning the settings to
/// restore; `None` (keys then wait for Enter) when `stty` cannot.
fn single_keys() -> Option<String> {
    use std::process::{Command, Stdio};
    let saved = Command::new("stty")
        .arg("-g")
        .stdin(Stdio::inherit())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let saved = String::from_utf8(saved.stdout).ok()?.trim().to_owned();
    let set = Command::new("stty")
        .args(["-icanon", "-echo", "min", "1"])
        .stdin(Stdio::inherit())
        .status()
        .ok()?;
    set.success().then_some(saved)
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
