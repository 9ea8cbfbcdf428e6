//! Prometheus metrics: per route (its template, not the concrete path) a request counter
//! by status and a latency histogram, plus the store's figures.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// (method, route) -> latency histogram.
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
    /// (method, route, status) -> count.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
}

impl Metrics {
    pub fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        *self.requests.lock().entry((method.to_string(), route.to_string(), status)).or_default() += 1;
        let mut latency = self.latency.lock();
        let h = latency.entry((method.to_string(), route.to_string())).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// The text exposition format, with `store` figures (name, value) appended as gauges.
    pub fn render(&self, store: &[(String, f64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP engram_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE engram_http_requests_total counter\n");
        for ((method, route, status), n) in self.requests.lock().iter() {
            let _ = writeln!(
                out,
                "engram_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP engram_http_request_duration_seconds HTTP request latency by route.\n");
        out.push_str("# TYPE engram_http_request_duration_seconds histogram\n");
        for ((method, route), h) in self.latency.lock().iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\"");
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "engram_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "engram_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "engram_http_request_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "engram_http_request_duration_seconds_count{{{labels}}} {}", h.count);
        }
        for (name, value) in store {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {value}");
        }
        out
    }
}

/// A Prometheus metric name for a store property (`data.rocksdb.estimate-num-keys`).
pub fn metric_name(property: &str) -> String {
    let cleaned: String =
        property.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    format!("engram_store_{cleaned}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.record("GET", "/livez", 200, 0.0002);
        m.record("GET", "/livez", 200, 0.003);
        m.record("GET", "/livez", 500, 7.0);
        let text = m.render(&[("engram_store_x".into(), 3.0)]);
        assert!(text.contains("engram_http_requests_total{method=\"GET\",route=\"/livez\",status=\"200\"} 2"));
        assert!(text.contains("le=\"0.00025\"} 1"), "{text}");
        assert!(text.contains("le=\"0.005\"} 2"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("engram_store_x 3"));
        assert_eq!(metric_name("data.rocksdb.total-sst-files-size"), "engram_store_data_rocksdb_total_sst_files_size");
    }
}
