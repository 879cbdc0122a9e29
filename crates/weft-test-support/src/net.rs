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
pub fn free_addr() -> SocketAddr {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0 for a free port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
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
}
