//! Span export over OTLP/gRPC (`--otlp-endpoint`), never in the way of
//! requests: a finished span goes into a bounded queue with `try_send`
//! (a full queue drops it: `weft_trace_spans_dropped_total{reason="queue_full"}`);
//! one background task batches the queue (up to [`BATCH`] spans, or every
//! [`FLUSH_EVERY`]) into `ExportTraceServiceRequest`s, each call bounded by
//! [`EXPORT_TIMEOUT`]. A failed, timed-out or rejected export drops its
//! spans (`reason="export_failed"`); while the collector is slow the queue
//! fills and further spans are dropped at the door. One log line when
//! export starts failing, one when it recovers.
//!
//! The messages and the client are the official OpenTelemetry definitions
//! (`opentelemetry-proto` with `gen-tonic`, built against the workspace's
//! tonic 0.14 / prost 0.14), not a vendored copy of the protos.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

use crate::metrics::{ProxyMetrics, SpanDropLabels};
use crate::span::{Kind, SpanRecord, Value};

/// Spans waiting for export at most; more are dropped.
pub const QUEUE: usize = 4096;
/// Spans in one export call at most.
pub const BATCH: usize = 512;
/// A partial batch is sent after this long.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the exporter takes what is queued (small bursts of work for
/// the thread it shares a core with).
const DRAIN: Duration = Duration::from_millis(10);
/// One export call (connect included) at most.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// The request path's handle: cheap to clone, never waits.
#[derive(Clone)]
pub struct Exporter {
    tx: mpsc::Sender<SpanRecord>,
    queue_full: Counter,
}

impl Exporter {
    /// Queues a finished span, or drops and counts it when the queue is full.
    pub fn record(&self, span: SpanRecord) {
        // A closed queue (the proxy stopped) drops the span the same way.
        if self.tx.try_send(span).is_err() {
            self.queue_full.inc();
        }
    }
}

/// The export task, to stop (flushing what is queued) at shutdown.
/// The exporter runs on a thread of its own (its own single-threaded
/// runtime, at the lowest CPU priority): converting and encoding batches
/// of spans is never done by a request worker, and the scheduler runs
/// request work first when they share a core.
pub struct ExportTask {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl ExportTask {
    /// Stops taking spans, exports what is queued (bounded by the export
    /// timeout) and returns.
    pub async fn finish(self) {
        self.stop.send_replace(true);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("--otlp-endpoint {endpoint:?}: {reason}")]
pub struct InvalidEndpoint {
    endpoint: String,
    reason: String,
}

/// Starts exporting to `endpoint` (`HOST:PORT`, or an `http://` URI) with
/// `service.name` = `service`. The connection is made lazily and remade
/// as needed: a collector that is down at start is not an error.
pub fn start(
    endpoint: &str,
    service: &str,
    metrics: &ProxyMetrics,
) -> Result<(Exporter, ExportTask), InvalidEndpoint> {
    let uri = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let invalid = |reason: String| InvalidEndpoint {
        endpoint: endpoint.into(),
        reason,
    };
    let channel = Endpoint::from_shared(uri)
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(EXPORT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT);
    let (tx, rx) = mpsc::channel(QUEUE);
    let (stop, stop_rx) = watch::channel(false);
    let counters = Counters {
        exported: metrics.spans_exported.clone(),
        failed: metrics
            .spans_dropped
            .get_or_create(&SpanDropLabels {
                reason: "export_failed",
            })
            .clone(),
    };
    let queue_full = metrics
        .spans_dropped
        .get_or_create(&SpanDropLabels {
            reason: "queue_full",
        })
        .clone();
    let (resource, endpoint_name) = (resource(service), endpoint.to_string());
    let thread = std::thread::Builder::new()
        .name("weft-otlp".into())
        .spawn(move || {
            crate::background_priority("weft-otlp");
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(error = %e, "no span export: its runtime cannot start");
                    return;
                }
            };
            rt.block_on(async move {
                // The connection lives on this thread's runtime.
                let batcher = Batcher {
                    client: TraceServiceClient::new(channel.connect_lazy()),
                    resource,
                    counters,
                    failing: false,
                    endpoint: endpoint_name.into(),
                };
                batcher.run(rx, stop_rx).await
            })
        })
        .map_err(|e| invalid(format!("cannot start the export thread: {e}")))?;
    Ok((Exporter { tx, queue_full }, ExportTask { stop, thread }))
}

struct Counters {
    exported: Counter,
    failed: Counter,
}

struct Batcher {
    client: TraceServiceClient<Channel>,
    resource: Resource,
    counters: Counters,
    /// The last export failed (for the log lines on change).
    failing: bool,
    endpoint: Arc<str>,
}

impl Batcher {
    async fn run(mut self, mut rx: mpsc::Receiver<SpanRecord>, mut stop: watch::Receiver<bool>) {
        // The queue is drained every DRAIN rather than awaited: a receiver
        // waiting on it must be woken from the proxy's thread by every
        // span (a futex call each), which cost more than the span.
        let mut batch = Vec::with_capacity(BATCH);
        let mut every = tokio::time::interval(DRAIN);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_export = tokio::time::Instant::now();
        'run: loop {
            tokio::select! {
                _ = every.tick() => {}
                // Stopped (or the proxy is gone): flush below.
                _ = stop.changed() => break,
            }
            loop {
                match rx.try_recv() {
                    Ok(s) => {
                        batch.push(s);
                        if batch.len() == BATCH {
                            self.export(std::mem::take(&mut batch)).await;
                            last_export = tokio::time::Instant::now();
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => break 'run,
                }
            }
            if !batch.is_empty() && last_export.elapsed() >= FLUSH_EVERY {
                self.export(std::mem::take(&mut batch)).await;
                last_export = tokio::time::Instant::now();
            }
        }
        rx.close();
        while let Ok(s) = rx.try_recv() {
            batch.push(s);
            if batch.len() == BATCH {
                self.export(std::mem::take(&mut batch)).await;
            }
        }
        if !batch.is_empty() {
            self.export(batch).await;
        }
    }

    async fn export(&mut self, batch: Vec<SpanRecord>) {
        let n = batch.len() as u64;
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "weft-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: batch.into_iter().map(to_otlp).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let result = tokio::time::timeout(EXPORT_TIMEOUT, self.client.export(req)).await;
        let error = match result {
            Ok(Ok(resp)) => {
                let rejected = resp
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
                    .min(n);
                self.counters.exported.inc_by(n - rejected);
                self.counters.failed.inc_by(rejected);
                None
            }
            Ok(Err(status)) => Some(status.to_string()),
            Err(_) => Some(format!("no answer within {EXPORT_TIMEOUT:?}")),
        };
        match error {
            Some(e) => {
                self.counters.failed.inc_by(n);
                if !self.failing {
                    tracing::warn!(endpoint = %self.endpoint, error = %e,
                        "span export failing; dropping spans until the collector answers");
                }
                self.failing = true;
            }
            None => {
                if self.failing {
                    tracing::info!(endpoint = %self.endpoint, "span export recovered");
                }
                self.failing = false;
            }
        }
    }
}

fn resource(service: &str) -> Resource {
    Resource {
        attributes: vec![kv("service.name", Value::Str(service.into()))],
        ..Default::default()
    }
}

fn kv(key: &str, v: Value) -> KeyValue {
    let value = match v {
        Value::Str(s) => any_value::Value::StringValue(s),
        Value::Int(i) => any_value::Value::IntValue(i),
        Value::Bool(b) => any_value::Value::BoolValue(b),
    };
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn to_otlp(s: SpanRecord) -> Span {
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name,
        kind: match s.kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
        } as i32,
        start_time_unix_nano: unix_nanos(s.start),
        end_time_unix_nano: unix_nanos(s.end),
        attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
        status: s.error.map(|message| Status {
            message,
            code: StatusCode::Error as i32,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_ids_kind_status_and_attributes() {
        let s = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            kind: Kind::Server,
            name: "inbound a.default".into(),
            start: SystemTime::UNIX_EPOCH + Duration::from_nanos(5),
            end: SystemTime::UNIX_EPOCH + Duration::from_nanos(9),
            attributes: vec![("weft.attempt", Value::Int(2))],
            error: Some("HTTP 503".into()),
        };
        let p = to_otlp(s);
        assert_eq!(p.trace_id, vec![1; 16]);
        assert_eq!(p.parent_span_id, vec![3; 8]);
        assert_eq!(p.kind, SpanKind::Server as i32);
        assert_eq!((p.start_time_unix_nano, p.end_time_unix_nano), (5, 9));
        assert_eq!(p.status.unwrap().code, StatusCode::Error as i32);
        assert_eq!(p.attributes[0].key, "weft.attempt");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let m = ProxyMetrics::new();
        // Nothing listens there: exports fail, the queue fills meanwhile.
        let (exporter, task) = start("127.0.0.1:9", "a.default", &m).unwrap();
        let span = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: None,
            kind: Kind::Client,
            name: "outbound b.default".into(),
            start: SystemTime::now(),
            end: SystemTime::now(),
            attributes: Vec::new(),
            error: None,
        };
        for _ in 0..QUEUE + 10 {
            exporter.record(span.clone());
        }
        task.finish().await;
        let text = m.encode();
        let dropped: u64 = ["queue_full", "export_failed"]
            .iter()
            .map(|r| {
                let key = format!("weft_trace_spans_dropped_total{{reason=\"{r}\"}} ");
                text.lines()
                    .find_map(|l| l.strip_prefix(&key))
                    .map_or(0, |v| v.parse().unwrap())
            })
            .sum();
        assert_eq!(dropped, (QUEUE + 10) as u64, "{text}");
        assert!(text.contains("weft_trace_spans_exported_total 0"), "{text}");
    }
}
