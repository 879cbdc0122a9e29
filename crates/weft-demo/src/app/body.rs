//! The one response body type of the app, so the hot path needs no boxing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A response body: a fixed buffer, the request's own body echoed back
/// (data and trailers, streamed), or `/stream/N`'s chunks.
#[derive(Debug)]
pub(super) enum AppBody {
    Full(Option<Bytes>),
    Echo(Incoming),
    Chunks(Chunks),
}

impl AppBody {
    pub(super) fn full(bytes: impl Into<Bytes>) -> Self {
        AppBody::Full(Some(bytes.into()))
    }
}

impl Body for AppBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // Every variant is Unpin, so no pin projection is needed.
        match self.get_mut() {
            AppBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            AppBody::Echo(incoming) => Pin::new(incoming).poll_frame(cx),
            AppBody::Chunks(chunks) => chunks.poll_chunk(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AppBody::Full(bytes) => bytes.is_none(),
            AppBody::Echo(incoming) => incoming.is_end_stream(),
            AppBody::Chunks(chunks) => chunks.next == chunks.count,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AppBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            AppBody::Echo(incoming) => incoming.size_hint(),
            // Unknown length: HTTP/1.1 sends it chunked.
            AppBody::Chunks(_) => SizeHint::default(),
        }
    }
}

/// `count` chunks `chunk-<i>\n`, each followed by one yield to the
/// connection so that it is flushed on its own rather than coalesced.
#[derive(Debug)]
pub(super) struct Chunks {
    next: usize,
    count: usize,
    flush_before_next: bool,
}

impl Chunks {
    pub(super) fn new(count: usize) -> Self {
        Chunks {
            next: 0,
            count,
            flush_before_next: false,
        }
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.next == self.count {
            return Poll::Ready(None);
        }
        if self.flush_before_next {
            // Pending makes hyper write out what it has buffered; the wake
            // brings it straight back for the next chunk.
            self.flush_before_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let chunk = Bytes::from(format!("chunk-{}\n", self.next));
        self.next += 1;
        self.flush_before_next = true;
        Poll::Ready(Some(chunk))
    }
}
