//! `engram serve --embedding-model`: text-only turns become hybrid-searchable over HTTP,
//! tenants opt in, and the backlog shows in /metrics.

mod common;

use common::ADMIN_KEY;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_model_embeds_text_and_queries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tokio::task::spawn_blocking(common::minilm::minilm_dir).await.expect("model");
    let config = engram_server::Config {
        admin_key: Some(ADMIN_KEY.into()),
        embedding_model: Some(model),
        ..common::config(dir.path())
    };
    let server = common::start(config).await;
    let base = server.url();
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, key: &str, body: Option<Value>| {
        let mut rb = http.request(method, format!("{base}{path}")).bearer_auth(key);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        async move {
            let r = rb.send().await.expect("answers");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    use reqwest::Method;
    // The default tenant uses the model; a new tenant opts in.
    let (status, t) = call(Method::GET, "/v1/admin/tenants/default", ADMIN_KEY, None).await;
    assert_eq!((status, t["embedder"].as_str(), t["vector_dim"].as_u64()), (200, Some("local"), Some(384)), "{t}");
    let (status, t) = call(Method::POST, "/v1/admin/tenants", ADMIN_KEY, Some(json!({"name": "acme"}))).await;
    assert_eq!((status, t["embedder"].as_str()), (201, Some("none")), "{t}");
    let (status, t) =
        call(Method::PATCH, "/v1/admin/tenants/acme", ADMIN_KEY, Some(json!({"embedder": "local"}))).await;
    assert_eq!((status, t["embedder"].as_str()), (200, Some("local")), "{t}");
    let (_, key) = call(Method::POST, "/v1/admin/tenants/acme/keys", ADMIN_KEY, Some(json!({}))).await;
    let key = key["secret"].as_str().expect("secret").to_string();
    let turns = json!({"events": [
        {"kind": "message", "role": "user", "text": "My kitten knocked a glass off the table."},
        {"kind": "message", "role": "user", "text": "The stock market fell three percent today."},
    ]});
    let (status, _) = call(Method::POST, "/v1/identities/ann/sessions/s/events", &key, Some(turns)).await;
    assert_eq!(status, 201);
    // "cat" shares no word with either turn: the vectors find the kitten.
    let (status, found) =
        call(Method::POST, "/v1/search", &key, Some(json!({"text": "cat", "consistent": true, "k": 2}))).await;
    assert_eq!(status, 200, "{found}");
    let first = &found["hits"][0];
    assert!(first["item"]["event"]["text"].as_str().expect("text").contains("kitten"), "{found}");
    assert!(first["scores"]["vector"].as_f64().is_some(), "{found}");
    let metrics = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("engram_embedder_backlog_changes"), "{metrics}");
    // A vector of another dimension is refused for a local tenant.
    let bad = json!({"events": [{"kind": "message", "role": "user", "text": "x", "embedding": [1.0, 0.0]}]});
    let (status, err) = call(Method::POST, "/v1/identities/ann/sessions/s/events", &key, Some(bad)).await;
    assert_eq!((status, err["error"]["code"].as_str()), (422, Some("invalid_argument")), "{err}");
    server.shutdown().await.expect("shutdown");
}
