//! weft's sample upstream app and the local demo mesh.
//!
//! [`app`] is the upstream built into the `weft` binary: the demo mesh runs
//! several of them, the proxy benchmark uses one as a fast upstream, and
//! integration tests use it to see what a proxy forwarded. [`demo`] is
//! `weft demo`: a small mesh of those apps and weft sidecars on loopback,
//! traffic through it and a live view of the sidecars' metrics.
//!
//! This crate sits at the tool end of the dependency arrows: it may use the
//! proxy and model crates, and nothing below it may depend on it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod demo;
