//! Opaque TCP forwarding: bytes both ways until either side closes.

use std::net::SocketAddr;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::metrics::ListenerLabels;
use crate::snapshot::Cluster;
use crate::state::Shared;

/// Forwards to an endpoint of `cluster`; when a connect fails, the next
/// endpoint is tried (up to three), since nothing was sent yet.
pub async fn forward(downstream: TcpStream, prefix: Bytes, cluster: &Cluster, shared: &Shared) {
    let tries = cluster.endpoints.len().min(3);
    for _ in 0..tries {
        let Some(ep) = cluster.pick() else { break };
        match connect(ep.addr, shared).await {
            Ok(up) => return splice(downstream, up, prefix, &cluster.label, shared).await,
            Err(e) => tracing::debug!(endpoint = %ep.label, error = %e, "tcp connect failed"),
        }
    }
    tracing::debug!(service = %cluster.label, "no endpoint accepted the tcp connection");
}

/// Forwards to one fixed address (the local app).
pub async fn forward_to(downstream: TcpStream, prefix: Bytes, addr: SocketAddr, shared: &Shared) {
    match connect(addr, shared).await {
        Ok(up) => splice(downstream, up, prefix, &shared.local_service, shared).await,
        Err(e) => tracing::debug!(app = %addr, error = %e, "tcp connect to the app failed"),
    }
}

async fn connect(addr: SocketAddr, shared: &Shared) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(shared.limits.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn splice(
    mut down: TcpStream,
    mut up: TcpStream,
    prefix: Bytes,
    label: &std::sync::Arc<str>,
    shared: &Shared,
) {
    if !prefix.is_empty() && up.write_all(&prefix).await.is_err() {
        return;
    }
    let counted = match tokio::io::copy_bidirectional(&mut down, &mut up).await {
        Ok((a, b)) => a + b,
        Err(e) => {
            tracing::debug!(error = %e, "tcp connection ended with an error");
            0
        }
    };
    shared
        .metrics
        .tcp_bytes
        .get_or_create(&ListenerLabels {
            listener: label.clone(),
        })
        .inc_by(counted + prefix.len() as u64);
}
