//! Isolation as a property: two tenants perform random interleaved operations through the
//! server, under the same identity and session names; no response to one ever carries a
//! marker the other wrote (bodies, counts, errors, search hits, context, conversations,
//! watch streams).
//! The seed is printed; `ENGRAM_TEST_SEED` replays a run.

mod common;

use common::ADMIN_KEY;
use common::rng::{Rng, test_seed};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_to_one_tenant_carries_the_others_data() {
    let seed = test_seed("isolation");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::keyed_server(dir.path()).await;
    let base = server.url();
    let http = reqwest::Client::new();
    let mut keys = Vec::new();
    for name in ["ta", "tb"] {
        let r = http.post(format!("{base}/v1/admin/tenants")).bearer_auth(ADMIN_KEY).json(&json!({"name": name}));
        assert_eq!(r.send().await.expect("tenant").status(), 201);
        let r = http.post(format!("{base}/v1/admin/tenants/{name}/keys")).bearer_auth(ADMIN_KEY).json(&json!({}));
        let key: Value = r.send().await.expect("key").json().await.expect("json");
        keys.push(key["secret"].as_str().expect("secret").to_string());
    }
    // Tenant B watches its alice/s1 while both tenants write there: the stream carries B's
    // turns and never A's.
    for (t, key) in keys.iter().enumerate() {
        let first =
            json!({"events": [{"kind": "message", "role": "user", "text": format!("mark{}x-start", ["ta", "tb"][t])}]});
        let r = http.post(format!("{base}/v1/identities/alice/sessions/s1/events")).bearer_auth(key).json(&first);
        assert_eq!(r.send().await.expect("append").status(), 201);
    }
    let mut watch = http
        .get(format!("{base}/v1/identities/alice/sessions/s1/watch?after=0"))
        .bearer_auth(&keys[1])
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), 200);
    let streamed = tokio::spawn(async move {
        let mut seen = String::new();
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout(std::time::Duration::from_secs(3), watch.chunk()).await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        seen
    });
    let identities = ["alice", "bob"];
    let sessions = ["s1", "s2", "s3"];
    let mut conversations: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    let mut checked = 0;
    // Responses that carried the caller's own markers: the check is not vacuous.
    let mut own_seen = [0u32; 2];
    for n in 0..300 {
        let t = rng.below(2) as usize;
        let marker = format!("mark{}x{n}", ["ta", "tb"][t]);
        let identity = identities[rng.below(2) as usize];
        let session = sessions[rng.below(3) as usize];
        let (method, path, body): (Method, String, Option<Value>) = match rng.below(14) {
            0..=3 => (
                Method::POST,
                format!("/v1/identities/{identity}/sessions/{session}/events"),
                Some(json!({"events": [{"kind": "message", "role": "user", "text": format!("note {marker}")}]})),
            ),
            4 => {
                (Method::PUT, format!("/v1/identities/{identity}/state/k{}", rng.below(3)), Some(json!({"v": marker})))
            }
            5 => (
                Method::POST,
                format!("/v1/identities/{identity}/memories"),
                Some(json!({"text": format!("fact {marker}")})),
            ),
            6 => (Method::POST, "/v1/search".into(), Some(json!({"text": "note fact", "consistent": true, "k": 50}))),
            7 => (Method::GET, format!("/v1/identities/{identity}/sessions/{session}/events?limit=1000"), None),
            8 => (Method::GET, format!("/v1/identities/{identity}/memories"), None),
            9 => (
                Method::POST,
                format!("/v1/identities/{identity}/sessions/{session}/context"),
                Some(json!({"budget_tokens": 4000, "query": "note fact"})),
            ),
            10 => (Method::GET, "/v1/identities".into(), None),
            11 => match conversations[t].last() {
                Some(c) if rng.below(2) == 0 => (Method::GET, format!("/v1/conversations/{c}/items?limit=100"), None),
                _ => (
                    Method::POST,
                    "/v1/conversations".into(),
                    Some(json!({"items": [{"role": "user", "content": format!("conv {marker}")}]})),
                ),
            },
            12 => (Method::GET, format!("/v1/identities/{identity}/sessions"), None),
            _ => match rng.below(4) {
                0 => (Method::DELETE, format!("/v1/identities/{identity}/sessions/{session}"), None),
                1 => (Method::DELETE, format!("/v1/identities/{identity}"), None),
                _ => (Method::GET, format!("/v1/identities/{identity}/state"), None),
            },
        };
        let mut rb = http.request(method.clone(), format!("{base}{path}")).bearer_auth(&keys[t]);
        if let Some(b) = &body {
            rb = rb.json(b);
        }
        let response = rb.send().await.expect("answers");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let other = format!("mark{}x", ["tb", "ta"][t]);
        assert!(!text.contains(&other), "seed {seed}, op {n}: {method} {path} as {} leaked: {text}", ["ta", "tb"][t]);
        if text.contains(&format!("mark{}x", ["ta", "tb"][t])) {
            own_seen[t] += 1;
        }
        assert!(
            status.is_success() || status.is_client_error(),
            "seed {seed}, op {n}: {method} {path}: {status} {text}"
        );
        if path == "/v1/conversations" && status.is_success() {
            let v: Value = serde_json::from_str(&text).expect("json");
            conversations[t].push(v["id"].as_str().expect("id").to_string());
        }
        checked += 1;
    }
    assert!(own_seen.iter().all(|&n| n > 10), "seed {seed}: too few responses carried data: {own_seen:?}");
    let streamed = streamed.await.expect("watch task");
    assert!(streamed.contains("marktbx-start"), "seed {seed}: the watch streamed nothing: {streamed}");
    assert!(!streamed.contains("marktax"), "seed {seed}: tenant A's turn reached B's watch: {streamed}");
    for (t, key) in keys.iter().enumerate() {
        let r = http
            .post(format!("{base}/v1/search"))
            .bearer_auth(key)
            .json(&json!({"text": "note fact conv", "consistent": true, "k": 1000}))
            .send()
            .await
            .expect("search");
        let text = r.text().await.expect("text");
        let other = format!("mark{}x", ["tb", "ta"][t]);
        assert!(!text.contains(&other), "seed {seed}: final search leaked: {text}");
    }
    eprintln!("isolation: {checked} operations checked");
    server.shutdown().await.expect("shutdown");
}
