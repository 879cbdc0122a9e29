//! Free loopback ports for servers a test starts.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// A loopback port that was free a moment ago.
///
/// The port is found by binding `127.0.0.1:0` and dropping the listener, so
/// another process may take it before the caller binds it. Prefer binding
/// port 0 and asking the server for its address; use this only where a port
/// must be named up front (command-line flags of the `weft` binary).
pub fn free_port() -> u16 {
    free_addr().port()
}

/// `127.0.0.1:<port>` with a port that was free a moment ago; see [`free_port`].
///
/// The port is drawn below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`) when there is room: a port from that
/// range, once let go, can become the source port of any outgoing
/// connection (another test's client, a proxy's upstream connection) before
/// the server binds it, and the server then fails to start or a probe hangs
/// on a stranger's socket. Below the range only another `free_addr` caller
/// can collide, and the draw is random over thousands of ports.
pub fn free_addr() -> SocketAddr {
    if let Some(low) = ephemeral_range_start().filter(|&low| low > LOWEST + 1_000) {
        let span = u64::from(low - LOWEST);
        let mut state = seed();
        for _ in 0..200 {
            state = splitmix(state);
            let port = LOWEST + (state % span) as u16;
            if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                return listener
                    .local_addr()
                    .expect("local address of a bound listener");
            }
        }
    }
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0 for a free port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
}

/// Ports below this are left to well-known services.
const LOWEST: u16 = 10_000;

fn ephemeral_range_start() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// Differs per process and per call, so parallel test processes draw
/// different ports.
fn seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ CALLS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_addr_is_bindable_loopback() {
        let addr = free_addr();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        TcpListener::bind(addr).expect("the port is free again after the probe");
    }

    #[test]
    fn free_addr_stays_out_of_the_ephemeral_range() {
        let Some(low) = ephemeral_range_start().filter(|&low| low > LOWEST + 1_000) else {
            return;
        };
        for _ in 0..50 {
            let port = free_addr().port();
            assert!((LOWEST..low).contains(&port), "{port} not below {low}");
        }
    }
}
