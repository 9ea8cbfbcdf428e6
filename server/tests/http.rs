//! The HTTP API over a real socket: routes, tenant isolation on every route, bad input on
//! every route, auth, ETags, watch resumption, limits, graceful shutdown.

mod common;

use common::ADMIN_KEY;
use engram_client::Remote;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// A raw HTTP caller: status, headers and parsed body, nothing interpreted.
struct Http {
    client: reqwest::Client,
    base: String,
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Http {
    fn new(base: &str) -> Self {
        Http { client: reqwest::Client::new(), base: base.to_string() }
    }

    fn request(&self, method: Method, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, format!("{}{path}", self.base));
        match key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder) -> Reply {
        let response = rb.send().await.expect("the server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("a body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        Reply { status, headers, body }
    }

    async fn call(&self, method: Method, path: &str, key: Option<&str>, body: Option<Value>) -> Reply {
        let mut rb = self.request(method, path, key);
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        self.send(rb).await
    }
}

/// Every route the API promises, as (method, path) with the path's parameters named.
const PROMISED: &[(&str, &str)] = &[
    ("get", "/livez"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/openapi.json"),
    ("post", "/v1/admin/tenants"),
    ("get", "/v1/admin/tenants"),
    ("post", "/v1/admin/tenants/{tenant}/keys"),
    ("delete", "/v1/admin/keys/{key_id}"),
    ("get", "/v1/identities"),
    ("get", "/v1/identities/{identity}"),
    ("delete", "/v1/identities/{identity}"),
    ("post", "/v1/identities/{identity}/sessions"),
    ("get", "/v1/identities/{identity}/sessions"),
    ("get", "/v1/identities/{identity}/sessions/{session}"),
    ("delete", "/v1/identities/{identity}/sessions/{session}"),
    ("post", "/v1/identities/{identity}/sessions/{session}/events"),
    ("get", "/v1/identities/{identity}/sessions/{session}/events"),
    ("delete", "/v1/identities/{identity}/sessions/{session}/events/{seq}"),
    ("post", "/v1/identities/{identity}/sessions/{session}/fork"),
    ("get", "/v1/identities/{identity}/sessions/{session}/watch"),
    ("get", "/v1/identities/{identity}/sessions/{session}/state/{key}"),
    ("put", "/v1/identities/{identity}/sessions/{session}/state/{key}"),
    ("delete", "/v1/identities/{identity}/sessions/{session}/state/{key}"),
    ("get", "/v1/identities/{identity}/state/{key}"),
    ("put", "/v1/identities/{identity}/state/{key}"),
    ("delete", "/v1/identities/{identity}/state/{key}"),
    ("post", "/v1/identities/{identity}/memories"),
    ("get", "/v1/identities/{identity}/memories"),
    ("get", "/v1/identities/{identity}/memories/{memory}"),
    ("put", "/v1/identities/{identity}/memories/{memory}"),
    ("delete", "/v1/identities/{identity}/memories/{memory}"),
    ("get", "/v1/identities/{identity}/memories/{memory}/history"),
    ("get", "/v1/blobs/{sha256}"),
    ("post", "/v1/search"),
    ("post", "/v1/identities/{identity}/sessions/{session}/context"),
    ("post", "/v1/conversations"),
    ("get", "/v1/conversations/{conversation}"),
    ("post", "/v1/conversations/{conversation}"),
    ("delete", "/v1/conversations/{conversation}"),
    ("post", "/v1/conversations/{conversation}/items"),
    ("get", "/v1/conversations/{conversation}/items"),
    ("get", "/v1/conversations/{conversation}/items/{item}"),
    ("delete", "/v1/conversations/{conversation}/items/{item}"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route_and_every_documented_route_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::open_server(dir.path()).await;
    let http = Http::new(&server.url());
    let doc = http.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().expect("paths");
    for (method, path) in PROMISED {
        assert!(paths.get(*path).and_then(|p| p.get(*method)).is_some(), "{method} {path} missing from openapi.json");
    }
    // Every documented operation is routed (never a no_route / method_not_allowed).
    for (path, ops) in paths {
        for method in ops.as_object().expect("operations").keys() {
            let concrete = path.replace(['{', '}'], "");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
            let rb = http.request(method.clone(), &concrete, None).timeout(Duration::from_secs(2));
            let response = match rb.send().await {
                Ok(response) => response,
                // A watch stream stays open: its headers came, its body does not end.
                Err(e) if path.ends_with("/watch") && e.is_timeout() => continue,
                Err(e) => panic!("{method} {path}: {e}"),
            };
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let code = body["error"]["code"].as_str().unwrap_or("");
            assert!(code != "no_route" && code != "method_not_allowed", "{method} {path}: {status} {body}");
        }
    }
    // Alternate success statuses and the ETag are documented where the server sends them.
    let put_state = &paths["/v1/identities/{identity}/state/{key}"]["put"]["responses"];
    for status in ["200", "201"] {
        assert!(put_state[status]["headers"]["ETag"].is_object(), "PUT state {status}: {put_state}");
    }
    let append = &paths["/v1/identities/{identity}/sessions/{session}/events"]["post"]["responses"];
    assert!(append["201"].is_object() && append["200"].is_object(), "{append}");
    let missing = http.call(Method::GET, "/v1/nothing", None, None).await;
    assert_eq!((missing.status.as_u16(), missing.code()), (404, "no_route"));
    let wrong = http.call(Method::PATCH, "/v1/identities", None, None).await;
    assert_eq!((wrong.status.as_u16(), wrong.code()), (405, "method_not_allowed"));
    server.shutdown().await.expect("shutdown");
}

struct Tenants {
    http: Http,
    key_a: String,
    key_b: String,
    memory: String,
    blob: String,
}

async fn two_tenants(server: &engram_server::Server) -> Tenants {
    let http = Http::new(&server.url());
    let admin = Some(ADMIN_KEY);
    for name in ["a", "b"] {
        let r = http.call(Method::POST, "/v1/admin/tenants", admin, Some(json!({"name": name}))).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let mut keys = Vec::new();
    for name in ["a", "b"] {
        let r = http.call(Method::POST, &format!("/v1/admin/tenants/{name}/keys"), admin, Some(json!({}))).await;
        assert_eq!(r.status, 201, "{}", r.body);
        keys.push(r.body["secret"].as_str().expect("a secret").to_string());
    }
    let ka = Some(keys[0].as_str());
    let big = "y".repeat(20_000);
    let events = json!({"events": [
        {"kind": "message", "role": "user", "text": "my secret is 42"},
        {"kind": "message", "role": "tool", "text": big},
    ]});
    let r = http.call(Method::POST, "/v1/identities/alice/sessions/s/events", ka, Some(events)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    http.call(Method::PUT, "/v1/identities/alice/sessions/s/state/task", ka, Some(json!({"step": 1}))).await;
    http.call(Method::PUT, "/v1/identities/alice/state/prefs", ka, Some(json!({"lang": "fr"}))).await;
    let m = http.call(Method::POST, "/v1/identities/alice/memories", ka, Some(json!({"text": "likes tea"}))).await;
    assert_eq!(m.status, 201, "{}", m.body);
    let h = http.call(Method::GET, "/v1/identities/alice/sessions/s/events", ka, None).await;
    let blob = h.body["events"][1]["blob"]["sha256"].as_str().expect("a blob").to_string();
    Tenants {
        key_a: keys[0].clone(),
        key_b: keys[1].clone(),
        memory: m.body["id"].as_str().expect("id").into(),
        blob,
        http,
    }
}

/// Tenant A's data, as tenant A sees it.
async fn snapshot(t: &Tenants) -> Value {
    let ka = Some(t.key_a.as_str());
    let mut out = serde_json::Map::new();
    for path in [
        "/v1/identities".to_string(),
        "/v1/identities/alice".into(),
        "/v1/identities/alice/sessions".into(),
        "/v1/identities/alice/sessions/s/events".into(),
        "/v1/identities/alice/sessions/s/state".into(),
        "/v1/identities/alice/state".into(),
        "/v1/identities/alice/memories".into(),
        format!("/v1/identities/alice/memories/{}/history", t.memory),
    ] {
        let r = t.http.call(Method::GET, &path, ka, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        out.insert(path, r.body);
    }
    Value::Object(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_b_never_reads_lists_or_deletes_tenant_a() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::keyed_server(dir.path()).await;
    let t = two_tenants(&server).await;
    let before = snapshot(&t).await;
    let kb = Some(t.key_b.as_str());
    let m = &t.memory;
    // Reads and deletes of A's names with B's key: not found, or empty lists.
    let not_found: Vec<(Method, String)> = vec![
        (Method::GET, "/v1/identities/alice".into()),
        (Method::DELETE, "/v1/identities/alice".into()),
        (Method::GET, "/v1/identities/alice/sessions".into()),
        (Method::GET, "/v1/identities/alice/sessions/s".into()),
        (Method::DELETE, "/v1/identities/alice/sessions/s".into()),
        (Method::DELETE, "/v1/identities/alice/sessions/s/events/1".into()),
        (Method::GET, "/v1/identities/alice/sessions/s/events".into()),
        (Method::GET, "/v1/identities/alice/sessions/s/watch".into()),
        (Method::GET, "/v1/identities/alice/sessions/s/state/task".into()),
        (Method::DELETE, "/v1/identities/alice/sessions/s/state/task".into()),
        (Method::GET, "/v1/identities/alice/state/prefs".into()),
        (Method::DELETE, "/v1/identities/alice/state/prefs".into()),
        (Method::GET, format!("/v1/identities/alice/memories/{m}")),
        (Method::DELETE, format!("/v1/identities/alice/memories/{m}")),
        (Method::GET, format!("/v1/identities/alice/memories/{m}/history")),
        (Method::GET, format!("/v1/blobs/{}", t.blob)),
    ];
    for (method, path) in &not_found {
        let r = t.http.call(method.clone(), path, kb, None).await;
        assert_eq!(r.status, 404, "{method} {path} with B's key: {}", r.body);
        assert_eq!(r.code(), "not_found");
    }
    // Search with B's key finds nothing of A; A's key finds it.
    let secret = json!({"text": "secret", "consistent": true});
    let r = t.http.call(Method::POST, "/v1/search", kb, Some(secret.clone())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["hits"].as_array().map(Vec::len), Some(0), "B finds A's words: {}", r.body);
    let r = t.http.call(Method::POST, "/v1/search", Some(t.key_a.as_str()), Some(secret)).await;
    assert_eq!(r.body["hits"].as_array().map(Vec::len), Some(1), "{}", r.body);
    for (method, path, body) in [
        (Method::PATCH, "/v1/identities/alice/sessions/s", json!({"retention": {"keep_last": 1}})),
        (Method::POST, "/v1/identities/alice/sessions/s/fork", json!({"id": "f"})),
        (Method::POST, "/v1/identities/alice/sessions/s/context", json!({"budget_tokens": 1000})),
        (Method::PUT, &*format!("/v1/identities/alice/memories/{m}"), json!({"text": "overwritten"})),
    ] {
        let r = t.http.call(method.clone(), path, kb, Some(body)).await;
        assert_eq!(r.status, 404, "{method} {path} with B's key: {}", r.body);
    }
    for path in [
        "/v1/identities",
        "/v1/identities/alice/sessions/s/state",
        "/v1/identities/alice/state",
        "/v1/identities/alice/memories",
    ] {
        let r = t.http.call(Method::GET, path, kb, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let items = r.body["items"].as_array().expect("items");
        assert!(items.is_empty(), "{path} with B's key lists {items:?}");
    }
    // B's writes under the same names land in B's own space.
    let r = t
        .http
        .call(
            Method::POST,
            "/v1/identities/alice/sessions/s/events",
            kb,
            Some(json!({"events": [{"kind": "message", "role": "user", "text": "b's own"}]})),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.body["first_seq"].as_u64()), (201, Some(1)), "{}", r.body);
    t.http.call(Method::PUT, "/v1/identities/alice/state/prefs", kb, Some(json!({"lang": "de"}))).await;
    let r = t.http.call(Method::POST, "/v1/identities/alice/memories", kb, Some(json!({"text": "b"}))).await;
    assert_eq!(r.status, 201);
    // Administration is not for tenant keys.
    for (method, path) in [
        (Method::GET, "/v1/admin/tenants"),
        (Method::POST, "/v1/admin/tenants/a/keys"),
        (Method::DELETE, "/v1/admin/tenants/a"),
        (Method::GET, "/v1/admin/changes"),
        (Method::GET, "/v1/admin/keys"),
        (Method::GET, "/v1/admin/keys/k_1"),
        (Method::POST, "/v1/admin/verify"),
        (Method::GET, "/v1/admin/inspect"),
        (Method::GET, "/v1/admin/index"),
    ] {
        let r = t.http.call(method.clone(), path, kb, Some(json!({}))).await;
        assert_eq!((r.status.as_u16(), r.code()), (403, "forbidden"), "{method} {path}");
    }
    // Tenant A's data is exactly as it was.
    assert_eq!(snapshot(&t).await, before);
    let ka = Some(t.key_a.as_str());
    let blob = t.http.send(t.http.request(Method::GET, &format!("/v1/blobs/{}", t.blob), ka)).await;
    assert_eq!(blob.status, 200);
    // Deleting tenant B removes its keys.
    let r = t.http.call(Method::DELETE, "/v1/admin/tenants/b", Some(ADMIN_KEY), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = t.http.call(Method::GET, "/v1/identities", kb, None).await;
    assert_eq!((r.status.as_u16(), r.code()), (401, "unauthorized"));
    assert_eq!(snapshot(&t).await, before);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_json_error_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = engram_server::Config { max_body_bytes: 64 * 1024, ..common::config(dir.path()) };
    let server = common::start(config).await;
    let http = Http::new(&server.url());
    // A tenant with a declared dimension, and some data to not change.
    let ok = http
        .call(
            Method::POST,
            "/v1/identities/alice/sessions/s/events",
            None,
            Some(json!({"events": [
                {"kind": "message", "role": "user", "text": "hi", "embedding": [0.1, 0.2, 0.3]}
            ]})),
        )
        .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    http.call(Method::PUT, "/v1/identities/alice/state/k", None, Some(json!(1))).await;
    let seq_before = server.db().last_change_seq();

    let ev = "/v1/identities/alice/sessions/s/events";
    // Two changes in one request, the second refused: the first must not land either.
    let trim_and_huge_metadata = json!({"retention": {"keep_last": 1}, "metadata": {"n": "n".repeat(17 * 1024)}});
    let trim_and_huge_metadata = trim_and_huge_metadata.to_string();
    let json_cases: Vec<(Method, &str, &[u8], &str)> = vec![
        (Method::POST, ev, b"{\"events\": [", "bad_request"),
        (Method::POST, ev, b"{\"events\": \"x\"}", "bad_request"),
        (Method::POST, ev, b"{\"events\": [], \"extra\": 1}", "bad_request"),
        (Method::POST, ev, b"{\"events\": [{\"kind\": \"message\", \"txt\": \"hi\"}]}", "bad_request"),
        (Method::POST, ev, b"{\"events\": [{\"kind\": \"shout\", \"text\": \"hi\"}]}", "bad_request"),
        (Method::POST, ev, b"{\"events\": [{\"kind\": \"message\", \"role\": \"user\", \"text\": \"\xff\xfe\"}]}", "bad_request"),
        (Method::POST, ev, b"{\"events\": [{\"kind\": \"message\", \"role\": \"user\", \"text\": \"a\", \"embedding\": [NaN, 1, 2]}]}", "bad_request"),
        (Method::POST, ev, b"{\"events\": [{\"kind\": \"message\", \"role\": \"user\", \"text\": \"a\", \"embedding\": [1e999, 1, 2]}]}", "bad_request"),
        (Method::POST, ev, b"{\"events\": [{\"kind\": \"message\", \"role\": \"user\", \"text\": \"a\", \"embedding\": [1, 2]}]}", "invalid_argument"),
        (Method::POST, ev, b"{\"events\": []}", "invalid_argument"),
        (Method::POST, ev, b"{\"events\": [{\"kind\": \"message\"}]}", "invalid_argument"),
        (Method::POST, ev, b"{\"events\": [{\"kind\": \"message\", \"role\": \"user\", \"text\": \"a\"}], \"expected_head\": \"one\"}", "bad_request"),
        (Method::POST, ev, b"{\"events\": [{\"kind\": \"message\", \"role\": \"user\", \"text\": \"a\"}], \"expected_head\": 7}", "head_mismatch"),
        (Method::POST, "/v1/identities/bad%20id/sessions/s/events", b"{\"events\": [{\"kind\": \"message\", \"role\": \"user\", \"text\": \"a\"}]}", "invalid_argument"),
        (Method::POST, "/v1/identities/%FF/sessions/s/events", b"{\"events\": [{\"kind\": \"message\", \"role\": \"user\", \"text\": \"a\"}]}", "bad_request"),
        (Method::POST, "/v1/identities/alice/sessions", b"{\"metadata\": {}}", "bad_request"),
        (Method::POST, "/v1/identities/alice/sessions", b"{\"id\": \"s\"}", "already_exists"),
        (Method::POST, "/v1/identities/alice/sessions", b"{\"id\": \"a/b\"}", "invalid_argument"),
        (Method::POST, "/v1/identities/alice/sessions", b"{\"id\": \"x\", \"retention\": {\"keep_last\": -1}}", "bad_request"),
        (Method::POST, "/v1/identities", b"{\"id\": 5}", "bad_request"),
        (Method::POST, "/v1/identities/alice/sessions/s/fork", b"{\"id\": \"f\", \"at\": 99}", "invalid_argument"),
        (Method::POST, "/v1/identities/alice/memories", b"{\"text\": \"t\", \"importance\": \"high\"}", "bad_request"),
        (Method::POST, "/v1/identities/alice/memories", b"{\"text\": \"t\", \"importance\": 7}", "invalid_argument"),
        (Method::POST, "/v1/identities/alice/memories", b"{\"text\": \"t\", \"embedding\": [1, 2, 3, 4]}", "invalid_argument"),
        (Method::POST, "/v1/identities/alice/memories", b"{\"text\": \"t\", \"colour\": 1}", "bad_request"),
        (Method::PUT, "/v1/identities/alice/memories/mem_none", b"{\"text\": \"t\"}", "not_found"),
        (Method::PUT, "/v1/identities/alice/state/k", b"{not json", "bad_request"),
        (Method::PATCH, "/v1/identities/alice/sessions/s", b"{\"retention\": {\"keep_last\": 0}}", "invalid_argument"),
        (Method::PATCH, "/v1/identities/alice/sessions/s", b"{}", "invalid_argument"),
        (Method::PATCH, "/v1/identities/alice/sessions/s", trim_and_huge_metadata.as_bytes(), "invalid_argument"),
        (Method::PATCH, "/v1/admin/tenants/default", b"{\"retention\": {\"ttl_ms\": 1}, \"embedder\": \"local\"}", "invalid_argument"),
        (Method::DELETE, "/v1/identities/alice/sessions/s/events/x", b"", "bad_request"),
        (Method::POST, "/v1/admin/tenants", b"{\"name\": \"bad name\"}", "invalid_argument"),
        (Method::POST, "/v1/admin/tenants", b"{\"name\": \"t\", \"metric\": \"manhattan\"}", "bad_request"),
        (Method::POST, "/v1/admin/tenants", b"{\"name\": \"t\", \"vector_dim\": 0}", "invalid_argument"),
        (Method::POST, "/v1/admin/tenants/nope/keys", b"{}", "not_found"),
        (Method::POST, "/v1/admin/backup", b"{\"path\": \"relative/dir\"}", "invalid_argument"),
        (Method::POST, "/v1/search", b"{}", "invalid_argument"),
        (Method::POST, "/v1/search", b"{\"text\": \"x\", \"k\": 0}", "invalid_argument"),
        (Method::POST, "/v1/search", b"{\"text\": \"x\", \"colour\": 1}", "bad_request"),
        (Method::POST, "/v1/search", b"{\"vector\": [1, 2]}", "invalid_argument"),
        (Method::POST, "/v1/search", b"{\"text\": \"x\", \"fusion\": {\"method\": \"max\"}}", "bad_request"),
        (Method::POST, "/v1/search", b"{\"text\": \"x\", \"sessions\": [\"s\"]}", "invalid_argument"),
        (Method::POST, "/v1/search", b"{\"text\": \"x\", \"over\": \"everything\"}", "bad_request"),
        (Method::POST, "/v1/identities/alice/sessions/s/context", b"{\"budget_tokens\": 0}", "invalid_argument"),
        (Method::POST, "/v1/identities/alice/sessions/s/context", b"{\"budget\": 100}", "bad_request"),
        (Method::POST, "/v1/identities/alice/sessions/s/context", b"{\"tokenizer\": \"gpt2\"}", "bad_request"),
        (Method::POST, "/v1/identities/alice/sessions/s/context", b"{\"shares\": {\"recent\": 2}}", "invalid_argument"),
    ];
    for (method, path, body, code) in &json_cases {
        let rb =
            http.request(method.clone(), path, None).header("content-type", "application/json").body(body.to_vec());
        let r = http.send(rb).await;
        let shown = String::from_utf8_lossy(body);
        assert!(r.status.is_client_error(), "{method} {path} {shown}: {} {}", r.status, r.body);
        assert_eq!(r.code(), *code, "{method} {path} {shown}: {}", r.body);
        assert!(r.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Missing content type, oversized body, bad headers and query parameters.
    let rb = http.request(Method::POST, ev, None).body("{\"events\": []}");
    assert_eq!(http.send(rb).await.code(), "unsupported_media_type");
    let huge = json!({"events": [{"kind": "message", "role": "user", "text": "z".repeat(100 * 1024)}]});
    let r = http.call(Method::POST, ev, None, Some(huge)).await;
    assert_eq!((r.status.as_u16(), r.code()), (413, "payload_too_large"));
    let rb = http.request(Method::POST, ev, None).header("Idempotency-Key", "one").json(&json!({
        "events": [{"kind": "message", "role": "user", "text": "a"}], "idempotency_key": "two"}));
    assert_eq!(http.send(rb).await.code(), "invalid_argument");
    let rb =
        http.request(Method::PUT, "/v1/identities/alice/state/k", None).header("If-Match", "banana").json(&json!(2));
    assert_eq!(http.send(rb).await.code(), "bad_request");
    let rb = http.request(Method::GET, "/v1/identities/alice/sessions/s/watch", None).header("Last-Event-ID", "x");
    assert_eq!(http.send(rb).await.code(), "bad_request");
    for (path, code) in [
        ("/v1/identities/alice/sessions/s/events?limit=abc", "bad_request"),
        ("/v1/identities/alice/sessions/s/events?order=sideways", "bad_request"),
        ("/v1/identities/alice/sessions/s/events?kind=bogus", "bad_request"),
        ("/v1/identities/alice/sessions/s/events?limit=100000", "invalid_argument"),
        ("/v1/identities/alice/sessions/s/events?colour=red", "bad_request"),
        ("/v1/identities?metadata=notjson", "bad_request"),
        ("/v1/identities?limit=0", "invalid_argument"),
        ("/v1/blobs/nothex", "invalid_argument"),
        ("/v1/admin/changes?after=-1", "bad_request"),
    ] {
        let r = http.call(Method::GET, path, None, None).await;
        assert!(r.status.is_client_error(), "{path}: {}", r.status);
        assert_eq!(r.code(), code, "{path}: {}", r.body);
    }
    assert_eq!(server.db().last_change_seq(), seq_before, "a refused request wrote something");
    let h = http.call(Method::GET, ev, None, None).await;
    assert_eq!(h.body["events"].as_array().map(Vec::len), Some(1));
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_required_checked_and_revocable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::keyed_server(dir.path()).await;
    let http = Http::new(&server.url());
    let r = http.call(Method::GET, "/v1/identities", None, None).await;
    assert_eq!((r.status.as_u16(), r.code()), (401, "unauthorized"));
    assert_eq!(r.headers.get("www-authenticate").map(|v| v.as_bytes()), Some(&b"Bearer"[..]));
    let forged = format!("egk_{}_{}", "ab".repeat(8), "cd".repeat(32));
    for key in ["nonsense", forged.as_str(), "egk_"] {
        let r = http.call(Method::GET, "/v1/identities", Some(key), None).await;
        assert_eq!(r.status, 401, "{key}");
    }
    let r = http.call(Method::GET, "/v1/identities", Some(ADMIN_KEY), None).await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "forbidden"), "the admin key has no tenant");
    let key =
        http.call(Method::POST, "/v1/admin/tenants/default/keys", Some(ADMIN_KEY), Some(json!({"label": "ci"}))).await;
    assert_eq!(key.status, 201, "{}", key.body);
    let secret = key.body["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("egk_"));
    let listed = http.call(Method::GET, "/v1/admin/tenants/default/keys", Some(ADMIN_KEY), None).await;
    assert_eq!(listed.body["items"][0]["label"], "ci");
    assert!(!listed.body.to_string().contains(&secret[20..]), "a listing never shows the secret");
    assert_eq!(http.call(Method::GET, "/v1/identities", Some(&secret), None).await.status, 200);
    let mut tampered = secret.clone();
    tampered.pop();
    tampered.push(if secret.ends_with('0') { '1' } else { '0' });
    assert_eq!(http.call(Method::GET, "/v1/identities", Some(&tampered), None).await.status, 401);
    let key_id = key.body["key_id"].as_str().expect("key id");
    let r = http.call(Method::DELETE, &format!("/v1/admin/keys/{key_id}"), Some(ADMIN_KEY), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(http.call(Method::GET, "/v1/identities", Some(&secret), None).await.status, 401);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_servers_stay_on_loopback_and_close_once_a_key_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let everywhere = engram_server::Config { listen: "0.0.0.0:0".parse().expect("addr"), ..common::config(dir.path()) };
    let err = engram_server::start(everywhere).await.expect_err("no keys beyond loopback");
    assert!(err.to_string().contains("without keys"), "{err}");

    let server = common::open_server(dir.path()).await;
    let http = Http::new(&server.url());
    assert_eq!(http.call(Method::GET, "/v1/identities", None, None).await.status, 200);
    // A request for another host name (DNS rebinding from a browser) is refused.
    let rb = http.request(Method::GET, "/v1/identities", None).header("host", "evil.example:7700");
    assert_eq!(http.send(rb).await.code(), "forbidden");
    let key = http.call(Method::POST, "/v1/admin/tenants/default/keys", None, Some(json!({}))).await;
    assert_eq!(key.status, 201);
    let r = http.call(Method::GET, "/v1/identities", None, None).await;
    assert_eq!(r.status, 401, "keys exist now: anonymous access ends");
    let secret = key.body["secret"].as_str().expect("secret");
    assert_eq!(http.call(Method::GET, "/v1/identities", Some(secret), None).await.status, 200);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_header_alone_dedupes_a_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::open_server(dir.path()).await;
    let http = Http::new(&server.url());
    let path = "/v1/identities/alice/sessions/s/events";
    let body = json!({"events": [{"kind": "message", "role": "user", "text": "once"}]});
    let send = |key: &'static str| {
        http.send(http.request(Method::POST, path, None).header("Idempotency-Key", key).json(&body))
    };
    let first = send("req-1").await;
    assert_eq!((first.status.as_u16(), first.body["first_seq"].as_u64()), (201, Some(1)), "{}", first.body);
    let retry = send("req-1").await;
    assert_eq!(retry.status, 200, "a retry is answered, not created: {}", retry.body);
    assert_eq!((retry.body["first_seq"].as_u64(), retry.body["deduplicated"].as_bool()), (Some(1), Some(true)));
    let other = send("req-2").await;
    assert_eq!((other.status.as_u16(), other.body["first_seq"].as_u64()), (201, Some(2)));
    let history = http.call(Method::GET, path, None, None).await;
    assert_eq!(history.body["events"].as_array().map(Vec::len), Some(2), "{}", history.body);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_etags_and_preconditions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::open_server(dir.path()).await;
    let http = Http::new(&server.url());
    let path = "/v1/identities/alice/sessions/s/state/plan";
    let put = |v: Value, header: Option<(&'static str, &'static str)>| {
        let mut rb = http.request(Method::PUT, path, None).json(&v);
        if let Some((name, value)) = header {
            rb = rb.header(name, value);
        }
        http.send(rb)
    };
    let r = put(json!({"step": 1}), Some(("If-None-Match", "*"))).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.headers["etag"], "\"1\"");
    assert_eq!(put(json!({}), Some(("If-None-Match", "*"))).await.status, 412);
    let r = put(json!({"step": 2}), Some(("If-Match", "\"1\""))).await;
    assert_eq!((r.status.as_u16(), r.headers["etag"].as_bytes()), (200, &b"\"2\""[..]));
    let stale = put(json!({"step": 3}), Some(("If-Match", "\"1\""))).await;
    assert_eq!((stale.status.as_u16(), stale.code()), (412, "precondition_failed"));
    let got = http.call(Method::GET, path, None, None).await;
    assert_eq!((got.body["value"]["step"].as_u64(), got.headers["etag"].as_bytes()), (Some(2), &b"\"2\""[..]));
    let rb = http.request(Method::DELETE, path, None).header("If-Match", "\"1\"");
    assert_eq!(http.send(rb).await.status, 412);
    let rb = http.request(Method::DELETE, path, None).header("If-Match", "2");
    assert_eq!(http.send(rb).await.status, 204);
    assert_eq!(http.call(Method::GET, path, None, None).await.status, 404);
    server.shutdown().await.expect("shutdown");
}

/// Reads SSE frames until `n` events have arrived; returns their ids.
async fn read_ids(response: &mut reqwest::Response, buf: &mut String, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    while ids.len() < n {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            if let Some(id) = frame.lines().find_map(|l| l.strip_prefix("id:")) {
                ids.push(id.trim().parse().expect("numeric id"));
            }
        }
        if ids.len() >= n {
            break;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("more data");
        buf.push_str(&String::from_utf8_lossy(&chunk).replace('\r', ""));
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_last_event_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::open_server(dir.path()).await;
    let http = Http::new(&server.url());
    let ev = "/v1/identities/alice/sessions/s/events";
    let five: Vec<Value> =
        (1..=5).map(|i| json!({"kind": "message", "role": "user", "text": format!("turn {i}")})).collect();
    assert_eq!(http.call(Method::POST, ev, None, Some(json!({"events": five}))).await.status, 201);
    let watch = "/v1/identities/alice/sessions/s/watch";
    let mut response = http.request(Method::GET, watch, None).header("Last-Event-ID", "3").send().await.expect("open");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("text/event-stream"));
    let mut buf = String::new();
    assert_eq!(read_ids(&mut response, &mut buf, 2).await, vec![4, 5]);
    let one = json!({"events": [{"kind": "message", "role": "user", "text": "turn 6"}]});
    assert_eq!(http.call(Method::POST, ev, None, Some(one)).await.status, 201);
    assert_eq!(read_ids(&mut response, &mut buf, 1).await, vec![6]);
    // A reconnect with the last id seen gets only what came after.
    drop(response);
    let more = json!({"events": [{"kind": "message", "role": "user", "text": "turn 7"}]});
    assert_eq!(http.call(Method::POST, ev, None, Some(more)).await.status, 201);
    let mut again = http.request(Method::GET, watch, None).header("Last-Event-ID", "6").send().await.expect("open");
    let mut buf = String::new();
    assert_eq!(read_ids(&mut again, &mut buf, 1).await, vec![7]);
    // The client's stream agrees.
    let api = Remote::new(&server.url(), None).expect("client");
    use engram_client::EngramApi;
    let mut stream = api.watch("alice", "s", 5).await.expect("watch");
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("in time");
    assert_eq!(first.expect("item").expect("event").seq, 6);
    // Shutdown ends open streams instead of waiting for them.
    tokio::time::timeout(Duration::from_secs(20), server.shutdown())
        .await
        .expect("shutdown does not wait for watchers")
        .expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Buffered: acknowledged writes are not yet synced; shutdown must flush them.
    let config =
        engram_server::Config { durability: engram_server::config::Durability::Buffered, ..common::config(dir.path()) };
    let server = common::start(config).await;
    let url = server.url();
    let mut writers = Vec::new();
    for w in 0..6 {
        let url = url.clone();
        writers.push(tokio::spawn(async move {
            let http = Http::new(&url);
            let mut acked = Vec::new();
            for i in 0.. {
                let body = json!({"events": [{"kind": "message", "role": "user", "text": format!("w{w} #{i}")}]});
                let rb =
                    http.request(Method::POST, &format!("/v1/identities/u/sessions/w{w}/events"), None).json(&body);
                match rb.send().await {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = r.json().await.expect("json");
                        acked.push((v["first_seq"].as_u64().expect("seq"), format!("w{w} #{i}")));
                    }
                    _ => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.shutdown().await.expect("clean shutdown");
    let mut total = 0;
    let db = engram::Engram::open(dir.path(), engram::Options::default()).expect("reopen");
    for (w, writer) in writers.into_iter().enumerate() {
        let acked = writer.await.expect("writer");
        total += acked.len();
        for (seq, text) in acked {
            let q = engram::HistoryQuery { after: Some(seq - 1), limit: 1, ..Default::default() };
            let page = db.history("default", "u", &format!("w{w}"), &q).expect("history");
            assert_eq!(page.events.first().and_then(|e| e.text.clone()), Some(text), "acknowledged write lost");
        }
    }
    assert!(total > 0, "no write was acknowledged before shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_rate_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = engram_server::Config {
        rate_limit_per_sec: Some(0.01),
        rate_limit_burst: Some(3.0),
        ..common::config(dir.path())
    };
    let server = common::start(config).await;
    let http = Http::new(&server.url());
    assert_eq!(http.call(Method::GET, "/livez", None, None).await.body["status"], "ok");
    assert_eq!(http.call(Method::GET, "/readyz", None, None).await.status, 200);
    let statuses: Vec<u16> = futures::future::join_all(
        (0..5).map(|_| async { http.call(Method::GET, "/v1/identities", None, None).await.status.as_u16() }),
    )
    .await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    let limited = http.call(Method::GET, "/v1/identities", None, None).await;
    assert_eq!((limited.status.as_u16(), limited.code()), (429, "rate_limited"));
    assert!(limited.headers.contains_key("retry-after"));
    let metrics = http.send(http.request(Method::GET, "/metrics", None)).await;
    let text = metrics.body.as_str().expect("text");
    assert!(
        text.contains("engram_http_requests_total{method=\"GET\",route=\"/v1/identities\",status=\"200\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("engram_http_requests_total{method=\"GET\",route=\"/v1/identities\",status=\"429\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("engram_http_request_duration_seconds_bucket{method=\"GET\",route=\"/livez\",le=\"+Inf\"} 1")
    );
    assert!(text.contains("engram_store_data_rocksdb_estimate_num_keys"), "{text}");
    for name in ["engram_index_lag_changes ", "engram_index_applied_seq ", "engram_index_text_visible_seq "] {
        assert!(text.contains(name), "{name}missing: {text}");
    }
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_indexes_catching_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::open_server(dir.path()).await;
    let http = Http::new(&server.url());
    let ok = http
        .call(
            Method::POST,
            "/v1/identities/alice/sessions/s/events",
            None,
            Some(json!({"events": [{"kind": "message", "role": "user", "text": "counted"}]})),
        )
        .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    server.db().wait_for_indexes().expect("indexes caught up");
    let metrics = http.send(http.request(Method::GET, "/metrics", None)).await;
    let text = metrics.body.as_str().expect("text");
    let figure = |name: &str| {
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
    };
    let last = server.db().last_change_seq() as f64;
    assert!(last > 0.0);
    for name in ["engram_last_change_seq", "engram_index_applied_seq", "engram_index_text_visible_seq"] {
        assert_eq!(figure(name), Some(last), "{name}: {text}");
    }
    assert_eq!(figure("engram_index_lag_changes"), Some(0.0), "{text}");
    assert_eq!(figure("engram_history_cache_sessions"), Some(0.0), "nothing read yet: {text}");

    // The first read goes to storage, the second fills the session's tail, the third is
    // answered from it.
    for _ in 0..3 {
        let page =
            http.call(Method::GET, "/v1/identities/alice/sessions/s/events?order=desc&limit=5", None, None).await;
        assert_eq!(page.body["events"][0]["text"], "counted", "{}", page.body);
    }
    let metrics = http.send(http.request(Method::GET, "/metrics", None)).await;
    let text = metrics.body.as_str().expect("text");
    let figure = |name: &str| {
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
    };
    assert_eq!(figure("engram_history_cache_sessions"), Some(1.0), "{text}");
    assert_eq!(figure("engram_history_cache_hits"), Some(1.0), "{text}");
    assert!(figure("engram_history_cache_misses").is_some_and(|m| m >= 1.0), "{text}");
    assert!(figure("engram_history_cache_bytes").is_some_and(|b| b > 0.0), "{text}");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_the_configured_certificate() {
    use engram_client::EngramApi;
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let config = engram_server::Config {
        tls_cert_file: Some(tls.join("cert.pem")),
        tls_key_file: Some(tls.join("key.pem")),
        ..common::config(dir.path())
    };
    let server = common::start(config).await;
    assert!(server.url().starts_with("https://"));
    let pem = std::fs::read(tls.join("ca.pem")).expect("ca");
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client");
    let api = Remote::with_http_client(&server.url(), None, trusting).expect("remote");
    let r = api
        .append("alice", "s", vec![engram::NewEvent::message(engram::Role::User, "over tls")], Default::default())
        .await
        .expect("append over https");
    assert_eq!(r.first_seq, 1);
    // A client that does not trust the certificate gets no answer, and plain HTTP none either.
    let untrusting = Remote::new(&server.url(), None).expect("remote");
    assert_eq!(
        untrusting.get_identity("alice").await.expect_err("untrusted").code,
        engram_client::ErrorCode::Transport
    );
    let plain = reqwest::get(format!("http://{}/livez", server.local_addr())).await;
    assert!(plain.is_err() || !plain.expect("response").status().is_success());
    // Mismatched or missing files are refused at start.
    let half = engram_server::Config { tls_cert_file: Some(tls.join("cert.pem")), ..common::config(dir.path()) };
    assert!(engram_server::start(half).await.is_err());
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::start(engram_server::Config { max_watch_streams: 1, ..common::config(dir.path()) }).await;
    let http = Http::new(&server.url());
    let one = json!({"events": [{"kind": "message", "role": "user", "text": "hi"}]});
    assert_eq!(http.call(Method::POST, "/v1/identities/a/sessions/s/events", None, Some(one)).await.status, 201);
    let watch = "/v1/identities/a/sessions/s/watch";
    let first = http.request(Method::GET, watch, None).send().await.expect("open");
    assert_eq!(first.status(), 200);
    let second = http.send(http.request(Method::GET, watch, None)).await;
    assert_eq!((second.status.as_u16(), second.code()), (503, "unavailable"));
    drop(first);
    // The slot comes back once the first stream is gone.
    let mut reopened = false;
    for _ in 0..100 {
        let r = http.request(Method::GET, watch, None).send().await.expect("open");
        if r.status() == 200 {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reopened, "a closed stream's slot was not released");
    server.shutdown().await.expect("shutdown");
}
