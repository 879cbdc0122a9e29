//! The ADS server engine over a real loopback socket: a tonic client plays
//! the data plane (Envoy, gRPC, the weft proxy) and a fake snapshot source
//! plays the control plane. Assertions are what a client would notice.

mod delta;
mod slow;
mod sotw;
mod support;
