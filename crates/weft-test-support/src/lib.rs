//! Test harness for weft's integration and process-level tests: free
//! loopback ports, polling with a deadline, a launcher for the real `weft`
//! binary, a small HTTP client that keeps trailers, and tiny upstreams (TCP
//! echo, HTTP upgrade echo), a throwaway `redis-server` and an OTLP/gRPC
//! trace receiver.
//!
//! A dev-dependency only: no production crate may depend on it. It depends
//! on no weft crate either, so every crate's tests can use it.
//!
//! Tests wait for state with [`wait_until`], never with bare sleeps.

#![forbid(unsafe_code)]

mod http;
mod net;
mod otlp;
mod process;
mod redis;
mod temp;
mod upstream;
mod wait;

pub use http::{HttpClient, TestResponse, http_get};
pub use net::{free_addr, free_port};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use process::WeftProcess;
pub use redis::RedisServer;
pub use temp::TempDir;
pub use upstream::{UPGRADE_PROTOCOL, tcp_echo_server, upgrade_echo_server};
pub use wait::{Readiness, wait_until};
