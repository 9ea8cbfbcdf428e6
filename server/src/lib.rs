//! `engram serve`: the HTTP/JSON server over the Engram library, and the admin tool's
//! shared pieces.
//!
//! Every tenant route runs one library call on tokio's blocking pool (through the same
//! [`EngramApi`] the embedded client uses), for the tenant of the caller's API key. The
//! route table is [`openapi::OPERATIONS`]; `/v1/openapi.json` is generated from it.

pub mod auth;
pub mod config;
pub mod http;
pub mod metrics;
pub mod openai;
pub mod openapi;
mod routes;
pub mod tls;
mod transfer;

use crate::auth::{Auth, Caller};
use crate::http::{HttpError, HttpResult};
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, patch, post, put};
use engram::{Embedder, Engram, Options};
use engram_client::{Embedded, ErrorCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

pub use config::Config;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub db: Engram,
    hub: Embedded,
    pub auth: Auth,
    pub metrics: metrics::Metrics,
    openapi: String,
    slots: Semaphore,
    /// One permit per open watch stream.
    watchers: Arc<Semaphore>,
    timeout: Duration,
    /// Set to `true` when the server stops: open watch streams end.
    shutdown: watch::Sender<bool>,
}

impl AppState {
    /// The caller's tenant as an [`EngramApi`]; 403 for the admin key.
    fn api(&self, caller: &Caller) -> HttpResult<Embedded> {
        Ok(self.hub.for_tenant(caller.tenant()?))
    }
}

type Route = (&'static str, &'static str, MethodRouter<Arc<AppState>>);

/// Every route: (method, path, handler). [`openapi::OPERATIONS`] documents the same list.
fn routes() -> Vec<Route> {
    use routes as r;
    vec![
        ("get", "/livez", get(r::livez)),
        ("get", "/readyz", get(r::readyz)),
        ("get", "/metrics", get(r::metrics)),
        ("get", "/v1/openapi.json", get(r::openapi)),
        ("post", "/v1/admin/tenants", post(r::create_tenant)),
        ("get", "/v1/admin/tenants", get(r::list_tenants)),
        ("get", "/v1/admin/tenants/{tenant}", get(r::get_tenant)),
        ("patch", "/v1/admin/tenants/{tenant}", patch(r::update_tenant)),
        ("delete", "/v1/admin/tenants/{tenant}", delete(r::delete_tenant)),
        ("post", "/v1/admin/tenants/{tenant}/keys", post(r::create_key)),
        ("get", "/v1/admin/tenants/{tenant}/keys", get(r::list_keys)),
        ("get", "/v1/admin/keys", get(r::list_all_keys)),
        ("get", "/v1/admin/keys/{key_id}", get(r::get_key)),
        ("delete", "/v1/admin/keys/{key_id}", delete(r::delete_key)),
        ("post", "/v1/admin/verify", post(r::verify)),
        ("get", "/v1/admin/inspect", get(r::inspect)),
        ("get", "/v1/admin/index", get(r::index_stats)),
        ("post", "/v1/admin/retention/sweep", post(r::sweep_retention)),
        ("post", "/v1/admin/compact", post(r::compact)),
        ("post", "/v1/admin/backup", post(r::backup)),
        ("post", "/v1/admin/reindex", post(r::reindex)),
        ("get", "/v1/admin/changes", get(r::changes)),
        ("get", "/v1/admin/dump", get(transfer::dump)),
        ("post", transfer::RESTORE_ROUTE, post(transfer::restore)),
        ("post", "/v1/identities", post(r::create_identity)),
        ("get", "/v1/identities", get(r::list_identities)),
        ("get", "/v1/identities/{identity}", get(r::get_identity)),
        ("delete", "/v1/identities/{identity}", delete(r::forget_identity)),
        ("post", "/v1/identities/{identity}/sessions", post(r::create_session)),
        ("get", "/v1/identities/{identity}/sessions", get(r::list_sessions)),
        ("get", "/v1/identities/{identity}/sessions/{session}", get(r::get_session)),
        ("patch", "/v1/identities/{identity}/sessions/{session}", patch(r::update_session)),
        ("delete", "/v1/identities/{identity}/sessions/{session}", delete(r::delete_session)),
        ("post", "/v1/identities/{identity}/sessions/{session}/events", post(r::append)),
        ("get", "/v1/identities/{identity}/sessions/{session}/events", get(r::history)),
        ("delete", "/v1/identities/{identity}/sessions/{session}/events/{seq}", delete(r::delete_event)),
        ("post", "/v1/identities/{identity}/sessions/{session}/fork", post(r::fork_session)),
        ("get", "/v1/identities/{identity}/sessions/{session}/watch", get(r::watch)),
        ("get", "/v1/identities/{identity}/sessions/{session}/state", get(r::list_session_state)),
        ("get", "/v1/identities/{identity}/sessions/{session}/state/{key}", get(r::get_session_state)),
        ("put", "/v1/identities/{identity}/sessions/{session}/state/{key}", put(r::put_session_state)),
        ("delete", "/v1/identities/{identity}/sessions/{session}/state/{key}", delete(r::delete_session_state)),
        ("get", "/v1/identities/{identity}/state", get(r::list_identity_state)),
        ("get", "/v1/identities/{identity}/state/{key}", get(r::get_identity_state)),
        ("put", "/v1/identities/{identity}/state/{key}", put(r::put_identity_state)),
        ("delete", "/v1/identities/{identity}/state/{key}", delete(r::delete_identity_state)),
        ("post", "/v1/identities/{identity}/memories", post(r::put_memory)),
        ("get", "/v1/identities/{identity}/memories", get(r::list_memories)),
        ("get", "/v1/identities/{identity}/memories/{memory}", get(r::get_memory)),
        ("put", "/v1/identities/{identity}/memories/{memory}", put(r::update_memory)),
        ("delete", "/v1/identities/{identity}/memories/{memory}", delete(r::delete_memory)),
        ("get", "/v1/identities/{identity}/memories/{memory}/history", get(r::memory_history)),
        ("get", "/v1/blobs/{sha256}", get(r::get_blob)),
        ("post", "/v1/search", post(r::search)),
        ("post", "/v1/identities/{identity}/sessions/{session}/context", post(r::context)),
        ("post", "/v1/conversations", oai(post(openai::create))),
        ("get", "/v1/conversations/{conversation}", oai(get(openai::retrieve))),
        ("post", "/v1/conversations/{conversation}", oai(post(openai::update))),
        ("delete", "/v1/conversations/{conversation}", oai(delete(openai::delete))),
        ("post", "/v1/conversations/{conversation}/items", oai(post(openai::add_items))),
        ("get", "/v1/conversations/{conversation}/items", oai(get(openai::list_items))),
        ("get", "/v1/conversations/{conversation}/items/{item}", oai(get(openai::get_item))),
        ("delete", "/v1/conversations/{conversation}/items/{item}", oai(delete(openai::delete_item))),
    ]
}

/// A conversation route: its errors leave in OpenAI's envelope.
fn oai(route: MethodRouter<Arc<AppState>>) -> MethodRouter<Arc<AppState>> {
    route.layer(axum::middleware::map_response(openai::openai_errors))
}

/// Timeout, concurrency slots, metrics and the request log, around every route.
async fn guard(State(st): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map_or("(none)", |p| p.as_str()).to_string();
    let timed_out = || {
        HttpError::new(
            ErrorCode::Timeout,
            "the request timed out; a write may still complete: retry it with its idempotency key",
        )
        .into_response()
    };
    let response = match tokio::time::timeout(st.timeout, st.slots.acquire()).await {
        Err(_) => timed_out(),
        Ok(Err(_)) => HttpError::new(ErrorCode::Unavailable, "shutting down").into_response(),
        Ok(Ok(_slot)) => {
            // A restore streams a whole store in: its handler takes as long as the upload.
            if route == transfer::RESTORE_ROUTE {
                next.run(request).await
            } else {
                let left = st.timeout.saturating_sub(started.elapsed());
                tokio::time::timeout(left, next.run(request)).await.unwrap_or_else(|_| timed_out())
            }
        }
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    // Only standard methods become labels: made-up ones must not grow the metric set.
    let method_label = match method.as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "OTHER",
    };
    st.metrics.record(method_label, &route, status, elapsed.as_secs_f64());
    tracing::info!(target: "engram::http", %method, route, status, micros = elapsed.as_micros() as u64);
    response
}

/// The router over `state`.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in routes() {
        router = router.route(path, handler);
    }
    router
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), guard))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    https: bool,
    state: Arc<AppState>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// How long shutdown waits for requests in flight (and then for the store to close).
    grace: Duration,
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, or `https://localhost:<port>` when serving TLS.
    pub fn url(&self) -> String {
        if self.https { format!("https://localhost:{}", self.addr.port()) } else { format!("http://{}", self.addr) }
    }

    pub fn db(&self) -> &Engram {
        &self.state.db
    }

    /// Stops accepting, finishes the requests in flight (within the shutdown grace), ends
    /// watch streams, syncs the store and closes it.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.run_until(std::future::ready(())).await
    }

    /// Serves until `signal` completes (then shuts down as [`Server::shutdown`] does) or the
    /// server fails on its own. The store is synced in both cases.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let Server { state, mut task, grace, .. } = self;
        let outcome = tokio::select! {
            () = signal => {
                state.shutdown.send_replace(true);
                // Make what is acknowledged so far durable before draining connections.
                let early = state.db.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || early.sync()).await {
                    tracing::error!(error = %e, "sync at shutdown failed");
                }
                task.await
            }
            outcome = &mut task => outcome,
        };
        let served = outcome.map_err(|e| anyhow::anyhow!("server task failed: {e}")).and_then(|r| r);
        let db = state.db.clone();
        drop(state);
        // A request's blocking task may hold its handle a moment after its answer went out:
        // wait for it, so that the data directory is free when this returns.
        let synced = tokio::task::spawn_blocking(move || {
            db.sync()?;
            if let Err(e) = db.close(grace) {
                tracing::warn!(error = %e, "the store was still in use after the shutdown grace period");
            }
            Ok::<(), engram::Error>(())
        })
        .await;
        match synced {
            Ok(Ok(())) => tracing::info!("store synced and closed"),
            Ok(Err(e)) => return Err(anyhow::anyhow!("final sync failed: {e}")),
            Err(e) => return Err(anyhow::anyhow!("final sync did not run: {e}")),
        }
        served
    }
}

/// Opens the store and starts serving on `config.listen`.
///
/// # Errors
/// When the store cannot be opened, the address cannot be bound, or the server would
/// listen beyond loopback without any key.
pub async fn start(config: Config) -> anyhow::Result<Server> {
    config.check()?;
    let embedder: Option<Arc<dyn engram::Embedder>> = match &config.embedding_model {
        None => None,
        Some(dir) => {
            let dir = dir.clone();
            let model = tokio::task::spawn_blocking(move || engram::BertEmbedder::load(&dir)).await??;
            tracing::info!(model = ?config.embedding_model, dim = model.dim(), "local embedder loaded");
            Some(Arc::new(model))
        }
    };
    let options = Options {
        durability: match config.durability {
            config::Durability::Durable => engram::Durability::Durable,
            config::Durability::Buffered => engram::Durability::Buffered,
        },
        embedder: embedder.clone(),
        history_cache_bytes: config.history_cache_bytes,
        ..Options::default()
    };
    let data_dir = config.data_dir.clone();
    let db = tokio::task::spawn_blocking(move || {
        let db = Engram::open(&data_dir, options)?;
        // With a model, the default tenant derives its vectors (unless it holds vectors of
        // another dimension, which the log says).
        if embedder.is_some()
            && db.get_tenant(engram::DEFAULT_TENANT)?.embedder != engram::EmbedderKind::Local
            && let Err(e) = db.set_tenant_embedder(engram::DEFAULT_TENANT, engram::EmbedderKind::Local)
        {
            tracing::warn!(error = %e, "the default tenant keeps its own vectors");
        }
        Ok::<_, engram::Error>(db)
    })
    .await?
    .map_err(|e| anyhow::anyhow!("opening {}: {e}", config.data_dir.display()))?;
    let has_keys = db.has_api_keys()?;
    let open = config.admin_key.is_none() && !has_keys;
    if open && !config.listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {} without keys: set an admin key (ENGRAM_ADMIN_KEY) and create API keys, or listen on loopback",
            config.listen
        );
    }
    let rate = config.rate_limit_per_sec.map(|r| (r, config.rate_limit_burst.unwrap_or(r.max(1.0))));
    let (shutdown, _) = watch::channel(false);
    let state = Arc::new(AppState {
        hub: Embedded::new(db.clone(), engram::DEFAULT_TENANT),
        db,
        auth: Auth::new(config.admin_key.as_deref(), has_keys, rate),
        metrics: metrics::Metrics::default(),
        openapi: openapi::document().to_string(),
        slots: Semaphore::new(config.max_concurrent_requests),
        watchers: Arc::new(Semaphore::new(config.max_watch_streams)),
        timeout: Duration::from_millis(config.request_timeout_ms),
        shutdown,
    });
    let acceptor = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    if open {
        tracing::warn!(
            %addr,
            "no API keys and no admin key: serving the default tenant without authentication (loopback only)"
        );
    }
    let https = acceptor.is_some();
    tracing::info!(%addr, https, data_dir = %config.data_dir.display(), "engram serving");
    let app = router(Arc::clone(&state), config.max_body_bytes);
    let stop = state.shutdown.subscribe();
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let task = match acceptor {
        Some(acceptor) => tokio::spawn(serve_until(tls::TlsListener::new(listener, acceptor)?, app, stop, grace)),
        None => tokio::spawn(serve_until(listener, app, stop, grace)),
    };
    Ok(Server { addr, https, state, task, grace })
}

/// Serves `app` on `listener` until `stop` turns true, then drains the requests in flight
/// for at most `grace`.
async fn serve_until<L>(listener: L, app: Router, stop: watch::Receiver<bool>, grace: Duration) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let (mut draining, mut deadline) = (stop.clone(), stop);
    let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = draining.wait_for(|s| *s).await;
        tracing::info!("shutting down: finishing requests in flight");
    });
    let cut_off = async move {
        let _ = deadline.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = serving.into_future() => served.map_err(anyhow::Error::from),
        () = cut_off => {
            tracing::warn!(?grace, "shutdown grace elapsed: closing the remaining connections");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn router_and_openapi_list_the_same_routes() {
        let routed: BTreeSet<(String, String)> =
            routes().into_iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
        let documented: BTreeSet<(String, String)> =
            openapi::OPERATIONS.iter().map(|op| (op.method.to_string(), op.path.to_string())).collect();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(undocumented.is_empty(), "routes missing from openapi.json: {undocumented:?}");
        assert!(unrouted.is_empty(), "documented but not routed: {unrouted:?}");
        assert_eq!(routed.len(), routes().len(), "a route is listed twice");
    }

    #[test]
    fn openapi_references_resolve() {
        let doc = openapi::document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().expect("a name");
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
        assert!(schemas.contains_key("NewEvent"));
    }
}
