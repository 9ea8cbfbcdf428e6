//! The bad-input suite: malformed requests generated for every documented route (bodies
//! that are not JSON or not the right JSON, the wrong content type, ids that are not ids,
//! query parameters out of range or of the wrong type, preconditions that do not parse,
//! missing or bad keys). Every one gets a 4xx answer with a JSON error body, and the store
//! is byte-for-byte what it was: the same dump, the same last change.

mod common;

use common::ADMIN_KEY;
use reqwest::Method;
use serde_json::{Value, json};

/// A generated request: method, path, body, content type, extra header, key.
struct Case {
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    content_type: Option<&'static str>,
    header: Option<(&'static str, &'static str)>,
    key: Option<String>,
    what: String,
}

/// The route's path with its parameters filled with valid names of existing things.
fn concrete(path: &str) -> String {
    path.replace("{tenant}", "acme")
        .replace("{key_id}", "nokey")
        .replace("{identity}", "alice")
        .replace("{session}", "s")
        .replace("{seq}", "1")
        .replace("{key}", "task")
        .replace("{memory}", "m1")
        .replace("{sha256}", &"0".repeat(64))
        .replace("{conversation}", "s")
        .replace("{item}", "evt_1")
}

/// Ids that no route accepts in the place of `{identity}`, `{session}`, `{key}`...
const BAD_IDS: &[&str] = &["has%20space", "slash%2Fin", "%C3%A9t%C3%A9", "tab%09", "semi%3Bcolon", "q%3Fmark"];

fn generate(paths: &serde_json::Map<String, Value>, key: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |method: &Method, path: String, body: Option<&[u8]>, ct: Option<&'static str>, what: String| {
        cases.push(Case {
            method: method.clone(),
            path,
            body: body.map(<[u8]>::to_vec),
            content_type: ct,
            header: None,
            key: Some(key.to_string()),
            what,
        });
    };
    for (path, ops) in paths {
        if path.starts_with("/v1/admin") || !path.starts_with("/v1/") || path == "/v1/openapi.json" {
            continue;
        }
        for method in ops.as_object().into_iter().flat_map(|o| o.keys()) {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let base = concrete(path);
            let writes = matches!(method, Method::POST | Method::PUT | Method::PATCH);
            if writes {
                for (body, what) in [
                    (&b"{"[..], "truncated JSON"),
                    (b"not json at all", "not JSON"),
                    (b"{\"a\": }", "a JSON syntax error"),
                    (b"\xff\xfe\x00", "not UTF-8"),
                    (b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "unclosed nesting"),
                ] {
                    add(&method, base.clone(), Some(body), Some("application/json"), format!("body: {what}"));
                }
                if !path.ends_with("/state/{key}") {
                    // State documents take any JSON value; every other body is an object.
                    for (body, what) in [(&b"[1, 2]"[..], "an array"), (b"\"text\"", "a string"), (b"42", "a number")] {
                        add(&method, base.clone(), Some(body), Some("application/json"), format!("body: {what}"));
                    }
                }
                add(&method, base.clone(), Some(b"{}"), Some("text/plain"), "content type text/plain".into());
            }
            // Every path parameter but the first in turn replaced by a non-id.
            for param in ["{identity}", "{session}", "{key}", "{memory}"] {
                if !path.contains(param) {
                    continue;
                }
                for bad in BAD_IDS.iter().take(if writes { 2 } else { BAD_IDS.len() }) {
                    let p = concrete(&path.replace(param, bad));
                    let body = writes.then_some(&b"{}"[..]);
                    add(&method, p, body, writes.then_some("application/json"), format!("{param} = {bad}"));
                }
            }
            if path.contains("{seq}") {
                for bad in ["x", "-1", "1.5", "99999999999999999999999"] {
                    add(
                        &method,
                        path.replace("{seq}", bad).replace("{identity}", "alice").replace("{session}", "s"),
                        None,
                        None,
                        format!("seq = {bad}"),
                    );
                }
            }
            if path.contains("{sha256}") {
                for bad in ["xyz", "00", &"g".repeat(64)] {
                    add(&method, path.replace("{sha256}", bad), None, None, format!("sha256 = {bad}"));
                }
            }
            if method == Method::GET {
                let lists = ops["get"]["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == "limit" && p["in"] == "query"));
                if lists {
                    for q in ["limit=0", "limit=abc", "limit=-5", "limit=100000"] {
                        add(&method, format!("{base}?{q}"), None, None, format!("query {q}"));
                    }
                }
                let ordered = ops["get"]["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == "order" && p["in"] == "query"));
                if ordered {
                    add(&method, format!("{base}?order=sideways"), None, None, "query order=sideways".into());
                }
            }
        }
    }
    // Keys: none, a made-up one, the wrong scheme (keyed server: all refused).
    for (path, method) in
        [("/v1/identities", Method::GET), ("/v1/search", Method::POST), ("/v1/conversations", Method::POST)]
    {
        for (k, what) in [(None, "no key"), (Some("egk_made_up".to_string()), "a made-up key")] {
            cases.push(Case {
                method: method.clone(),
                path: path.into(),
                body: (method == Method::POST).then(|| b"{}".to_vec()),
                content_type: (method == Method::POST).then_some("application/json"),
                header: None,
                key: k,
                what: what.into(),
            });
        }
    }
    // Preconditions that do not parse.
    for (h, v) in [("if-match", "abc"), ("if-match", "-3"), ("if-none-match", "5")] {
        cases.push(Case {
            method: Method::PUT,
            path: "/v1/identities/alice/state/task".into(),
            body: Some(b"{\"step\": 9}".to_vec()),
            content_type: Some("application/json"),
            header: Some((h, v)),
            key: Some(key.to_string()),
            what: format!("{h}: {v}"),
        });
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_4xx_json_error_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::keyed_server(dir.path()).await;
    let base = server.url();
    let http = reqwest::Client::new();
    let admin =
        |m: Method, p: &str, b: Value| http.request(m, format!("{base}{p}")).bearer_auth(ADMIN_KEY).json(&b).send();
    assert_eq!(admin(Method::POST, "/v1/admin/tenants", json!({"name": "acme"})).await.expect("tenant").status(), 201);
    let key: Value =
        admin(Method::POST, "/v1/admin/tenants/acme/keys", json!({})).await.expect("key").json().await.expect("json");
    let key = key["secret"].as_str().expect("secret").to_string();
    let call = |m: Method, p: &str, b: Value| http.request(m, format!("{base}{p}")).bearer_auth(&key).json(&b).send();
    let seed = json!({"events": [
        {"kind": "message", "role": "user", "text": "hello"},
        {"kind": "tool_call", "name": "f", "call_id": "c1", "data": {"x": 1}},
    ]});
    assert_eq!(call(Method::POST, "/v1/identities/alice/sessions/s/events", seed).await.expect("seed").status(), 201);
    assert!(
        call(Method::PUT, "/v1/identities/alice/state/task", json!({"step": 1}))
            .await
            .expect("state")
            .status()
            .is_success()
    );
    let m = call(Method::POST, "/v1/identities/alice/memories", json!({"id": "m1", "text": "likes tea"}))
        .await
        .expect("memory");
    assert_eq!(m.status(), 201);
    server.db().wait_for_indexes().expect("indexed");

    let snapshot = |db: &engram::Engram| {
        let mut out = Vec::new();
        db.dump(&engram::DumpFilter::default(), &mut out).expect("dump");
        (out, db.last_change_seq())
    };
    let before = snapshot(server.db());
    let doc: Value = http.get(format!("{base}/v1/openapi.json")).send().await.expect("doc").json().await.expect("json");
    let cases = generate(doc["paths"].as_object().expect("paths"), &key);
    assert!(cases.len() >= 200, "only {} generated requests", cases.len());
    for case in &cases {
        let mut rb = http.request(case.method.clone(), format!("{base}{}", case.path));
        if let Some(k) = &case.key {
            rb = rb.bearer_auth(k);
        }
        if let Some(ct) = case.content_type {
            rb = rb.header("content-type", ct);
        }
        if let Some((h, v)) = case.header {
            rb = rb.header(h, v);
        }
        if let Some(body) = &case.body {
            rb = rb.body(body.clone());
        }
        let response = rb.send().await.expect("the server answers");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let label = format!("{} {} ({})", case.method, case.path, case.what);
        assert!(status.is_client_error(), "{label}: {status} {text}");
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{label}: not JSON: {text}"));
        assert!(body["error"]["message"].is_string(), "{label}: no error message: {text}");
    }
    let after = snapshot(server.db());
    assert_eq!(after.1, before.1, "a malformed request wrote a change");
    assert!(after.0 == before.0, "a malformed request changed the store (dumps differ)");
    eprintln!("{} malformed requests, all refused, store unchanged", cases.len());
    server.shutdown().await.expect("shutdown");
}
