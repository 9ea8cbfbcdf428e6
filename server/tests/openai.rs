//! The OpenAI-compatible Conversations API: OpenAI's own Python clients (the `openai`
//! package and the Agents SDK, installed from PyPI) run against the server unmodified, and
//! the items they write are ordinary Engram turns.

mod common;

use common::ADMIN_KEY;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        identity: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self.client.request(method, format!("{}{path}", self.base)).bearer_auth(&self.key);
        if let Some(identity) = identity {
            rb = rb.header("Engram-Identity", identity);
        }
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        let response = rb.send().await.expect("the server answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// A keyed server with one tenant and its API key.
async fn setup(dir: &std::path::Path) -> (engram_server::Server, Api) {
    let server = common::keyed_server(dir).await;
    let client = reqwest::Client::new();
    let base = server.url();
    let r = client
        .post(format!("{base}/v1/admin/tenants"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "acme"}))
        .send()
        .await
        .expect("create tenant");
    assert_eq!(r.status(), 201);
    let r = client
        .post(format!("{base}/v1/admin/tenants/acme/keys"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({}))
        .send()
        .await
        .expect("create key");
    let key: Value = r.json().await.expect("json");
    let key = key["secret"].as_str().expect("secret").to_string();
    (server, Api { client, base, key })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_clients_work_unmodified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, api) = setup(dir.path()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_conversations.py");
    let out = tokio::task::spawn_blocking(move || {
        common::python_with("engram-openai", &["openai", "openai-agents"], "agents")
            .arg(script)
            .env("ENGRAM_URL", &api.base)
            .env("ENGRAM_KEY", &api.key)
            .output()
            .expect("python3 runs")
    })
    .await
    .expect("joins");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("openai package: ok") && stdout.contains("agents sdk: ok"), "{stdout}");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_items_are_engram_turns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, api) = setup(dir.path()).await;
    let items = json!({"items": [
        {"role": "system", "content": "You are terse."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Where is the Zanzibar office?"}]},
        {"type": "function_call", "call_id": "call_9", "name": "lookup_office", "arguments": "{\"name\":\"Zanzibar\"}"},
        {"type": "function_call_output", "call_id": "call_9", "output": "Stone Town, 3rd floor"},
        {"role": "assistant", "content": "Stone Town, third floor."},
    ], "metadata": {"channel": "web"}});
    let (status, conv) = api.call(Method::POST, "/v1/conversations", Some("ada"), Some(items)).await;
    assert_eq!(status, 200, "{conv}");
    let id = conv["id"].as_str().expect("id").to_string();
    assert_eq!(conv["object"], "conversation");
    assert_eq!(conv["metadata"], json!({"channel": "web"}));

    // The same session through the native API: messages, a tool call and its result.
    let (status, page) = api.call(Method::GET, &format!("/v1/identities/ada/sessions/{id}/events"), None, None).await;
    assert_eq!(status, 200, "{page}");
    let kinds: Vec<&str> =
        page["events"].as_array().expect("events").iter().map(|e| e["kind"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds, ["message", "message", "tool_call", "tool_result", "message"]);
    assert_eq!(page["events"][2]["call_id"], "call_9");
    assert_eq!(page["events"][3]["text"], "Stone Town, 3rd floor");
    // Searchable and usable by context assembly like any other turn.
    let (status, found) = api
        .call(
            Method::POST,
            "/v1/search",
            None,
            Some(json!({"text": "Zanzibar office", "identity": "ada", "consistent": true})),
        )
        .await;
    assert_eq!(status, 200, "{found}");
    assert!(!found["hits"].as_array().expect("hits").is_empty(), "{found}");
    let (status, ctx) = api
        .call(
            Method::POST,
            &format!("/v1/identities/ada/sessions/{id}/context"),
            None,
            Some(json!({"budget_tokens": 500})),
        )
        .await;
    assert_eq!(status, 200, "{ctx}");
    let roles: Vec<&str> =
        ctx["messages"].as_array().expect("messages").iter().map(|m| m["role"].as_str().unwrap_or("")).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "assistant"], "{ctx}");

    // A native append reads as an item too.
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/v1/identities/ada/sessions/{id}/events"),
            None,
            Some(json!({"events": [{"kind": "message", "role": "user", "text": "thanks"}]})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, list) =
        api.call(Method::GET, &format!("/v1/conversations/{id}/items?limit=2"), Some("ada"), None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], "evt_6");
    assert_eq!(list["data"][0]["content"][0], json!({"type": "input_text", "text": "thanks"}));
    assert_eq!(list["data"][1]["content"][0]["type"], "output_text");
    assert_eq!(list["has_more"], true);
    let (status, item) = api.call(Method::GET, &format!("/v1/conversations/{id}/items/evt_6"), Some("ada"), None).await;
    assert_eq!((status, item["role"].as_str()), (StatusCode::OK, Some("user")));

    // A retried add with the same Idempotency-Key writes nothing more.
    for _ in 0..2 {
        let r = api
            .client
            .post(format!("{}/v1/conversations/{id}/items", api.base))
            .bearer_auth(&api.key)
            .header("Engram-Identity", "ada")
            .header("Idempotency-Key", "add-1")
            .json(&json!({"items": [{"role": "user", "content": "once"}]}))
            .send()
            .await
            .expect("answers");
        assert_eq!(r.status(), 200);
    }
    let (_, list) = api.call(Method::GET, &format!("/v1/conversations/{id}/items?limit=100"), Some("ada"), None).await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(7), "{list}");

    // Another tenant's key does not see it, whatever identity it names.
    let r = api
        .client
        .post(format!("{}/v1/admin/tenants", api.base))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "other"}))
        .send()
        .await
        .expect("tenant");
    assert_eq!(r.status(), 201);
    let r = api
        .client
        .post(format!("{}/v1/admin/tenants/other/keys", api.base))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({}))
        .send()
        .await
        .expect("key");
    let other: Value = r.json().await.expect("json");
    let other = Api {
        client: api.client.clone(),
        base: api.base.clone(),
        key: other["secret"].as_str().expect("secret").into(),
    };
    let (status, _) = other.call(Method::GET, &format!("/v1/conversations/{id}"), Some("ada"), None).await;
    assert_eq!(status, 404);
    let (status, _) = other.call(Method::GET, &format!("/v1/conversations/{id}/items"), Some("ada"), None).await;
    assert_eq!(status, 404);

    // Conversations belong to the identity the header names.
    let (status, err) = api.call(Method::GET, &format!("/v1/conversations/{id}"), Some("bob"), None).await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["type"], "invalid_request_error", "{err}");
    assert!(err["error"]["message"].as_str().expect("message").contains(&id));
    let (status, _) = api.call(Method::GET, &format!("/v1/conversations/{id}"), None, None).await;
    assert_eq!(status, 404, "the default identity does not hold it");

    // Errors in OpenAI's envelope, with OpenAI's statuses.
    let too_many: Vec<Value> = (0..21).map(|i| json!({"role": "user", "content": format!("m{i}")})).collect();
    let (status, err) = api
        .call(Method::POST, &format!("/v1/conversations/{id}/items"), Some("ada"), Some(json!({"items": too_many})))
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "items");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    let cases = [
        (json!({"items": [{"role": "robot", "content": "x"}]}), "items[0].role"),
        (json!({"items": [{"type": "function_call", "name": "f", "arguments": "{}"}]}), "items[0].call_id"),
        (json!({"items": ["not an object"]}), "items[0]"),
        (json!({"items": []}), "items"),
    ];
    for (body, param) in cases {
        let (status, err) =
            api.call(Method::POST, &format!("/v1/conversations/{id}/items"), Some("ada"), Some(body)).await;
        assert_eq!((status, err["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some(param)), "{err}");
    }
    let (status, err) = api.call(Method::POST, "/v1/conversations", None, Some(json!({"metadata": {"n": 1}}))).await;
    assert_eq!((status, err["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("metadata")), "{err}");
    let (status, err) =
        api.call(Method::GET, &format!("/v1/conversations/{id}/items?limit=0"), Some("ada"), None).await;
    assert_eq!((status, err["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("limit")), "{err}");
    let (status, err) =
        api.call(Method::GET, &format!("/v1/conversations/{id}/items?after=msg_nope"), Some("ada"), None).await;
    assert_eq!(status, 404, "{err}");
    let (status, err) = api.call(Method::GET, "/v1/conversations/x", Some("not valid!"), None).await;
    assert_eq!((status, err["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("engram-identity")), "{err}");
    let bad_key = api
        .client
        .post(format!("{}/v1/conversations", api.base))
        .bearer_auth("egk_nope")
        .json(&json!({}))
        .send()
        .await
        .expect("answers");
    assert_eq!(bad_key.status(), 401);
    let err: Value = bad_key.json().await.expect("json");
    assert_eq!(err["error"]["code"], "invalid_api_key", "{err}");

    // A failed create leaves nothing behind.
    let (status, _) = api
        .call(
            Method::POST,
            "/v1/conversations",
            Some("cy"),
            Some(json!({"items": [{"role": "user", "content": "x".repeat(9 << 20)}]})),
        )
        .await;
    assert!(status.is_client_error(), "{status}");
    let (_, sessions) = api.call(Method::GET, "/v1/identities/cy/sessions", None, None).await;
    assert!(sessions["items"].as_array().is_none_or(|s| s.is_empty()), "{sessions}");
    server.shutdown().await.expect("shutdown");
}
