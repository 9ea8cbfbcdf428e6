//! `GET /v1/admin/dump` and `POST /v1/admin/restore`: the library's `dump` and
//! `restore_dump` over HTTP, both streamed (a store does not fit in a request or a reply).
//!
//! A dump runs on the blocking pool and writes into a bounded channel that is the reply's
//! body: a slow client slows the dump, a departed one stops it. A dump that fails midway
//! ends the reply with an error, so the client sees a broken transfer rather than a
//! complete-looking, short dump. A restore reads the request body as it arrives; the body
//! limit does not apply to it, nor the request timeout once it has a slot (admin key only).

use crate::AppState;
use crate::auth::Caller;
use crate::http::{HttpError, HttpResult, Query};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use engram::DumpFilter;
use engram_client::{ApiError, ErrorCode};
use engram_core::model::EventKind;
use futures::TryStreamExt;
use serde::Deserialize;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// The restore route, which the request timeout leaves alone.
pub const RESTORE_ROUTE: &str = "/v1/admin/restore";

/// Bytes a dump gathers before handing them to the reply.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight between the dump and the reply.
const CHUNKS_IN_FLIGHT: usize = 4;
/// What a refused restore still reads of the body before answering.
const DRAIN_BYTES: u64 = 8 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpParams {
    tenant: Option<String>,
    identity: Option<String>,
    session: Option<String>,
    /// Comma-separated event kinds.
    kind: Option<String>,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    #[serde(default)]
    no_vectors: bool,
    #[serde(default)]
    no_blobs: bool,
}

/// A `Write` whose bytes become the chunks of a reply body (used on a blocking thread).
struct ChunkWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    runtime: tokio::runtime::Handle,
    /// How long a chunk may wait for the client to take it before the dump gives up.
    stall: Duration,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES)));
        match self.runtime.block_on(tokio::time::timeout(self.stall, self.tx.send(chunk))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")),
            // A client that stops reading would hold a snapshot and a thread for good.
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")),
        }
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

pub async fn dump(
    State(st): State<Arc<AppState>>,
    caller: Caller,
    Query(p): Query<DumpParams>,
) -> HttpResult<Response> {
    caller.require_admin()?;
    if p.session.is_some() && p.identity.is_none() {
        return Err(HttpError(
            ApiError::new(ErrorCode::InvalidArgument, "a session is named within an identity: give identity too")
                .with_field("session"),
        ));
    }
    let filter = DumpFilter {
        tenant: p.tenant,
        identity: p.identity,
        session: p.session,
        kinds: crate::routes::parse_list("kind", p.kind, EventKind::parse)?,
        from_ms: p.from_ms,
        to_ms: p.to_ms,
        no_vectors: p.no_vectors,
        no_blobs: p.no_blobs,
    };
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    // Set only once the whole dump is in the channel: the reply ends cleanly only then. A
    // dump that failed, panicked or gave up on a stalled client drops its sender without
    // it, and the reply ends with an error, never as a short dump that looks whole.
    let completed = Arc::new(AtomicBool::new(false));
    let db = st.db.clone();
    let (runtime, stall, done) = (tokio::runtime::Handle::current(), st.timeout, Arc::clone(&completed));
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter { tx, buf: Vec::with_capacity(CHUNK_BYTES), runtime, stall };
        let dumped = db.dump(&filter, &mut out).map_err(|e| e.to_string());
        match dumped.and_then(|_| out.flush().map_err(|e| e.to_string())) {
            Ok(()) => done.store(true, Ordering::Release),
            Err(e) => {
                tracing::warn!(target: "engram::http", error = %e, "dump failed midway; the reply ends with an error")
            }
        }
    });
    let chunks = futures::stream::unfold((rx, completed, false), |(mut rx, completed, ended)| async move {
        if ended {
            return None;
        }
        match rx.recv().await {
            Some(chunk) => Some((Ok(chunk), (rx, completed, false))),
            None if completed.load(Ordering::Acquire) => None,
            None => Some((
                Err(std::io::Error::other("the dump failed midway (see the server's log)")),
                (rx, completed, true),
            )),
        }
    });
    let body = Body::from_stream(chunks);
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

pub async fn restore(State(st): State<Arc<AppState>>, caller: Caller, body: Body) -> HttpResult<Response> {
    caller.require_admin()?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let restored = crate::routes::blocking(&st, move |db| {
        let mut input = std::io::BufReader::with_capacity(CHUNK_BYTES, reader);
        let result = db.restore_dump(&mut input);
        if result.is_err() {
            // Read (a bounded part of) what the client is still sending, so that it gets
            // to read the answer instead of a connection reset.
            let _ = std::io::copy(&mut input.take(DRAIN_BYTES), &mut std::io::sink());
        }
        result
    })
    .await;
    Ok(axum::Json(restored?).into_response())
}
