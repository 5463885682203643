//! Prometheus text metrics: requests by route and status, a latency histogram per route, and the
//! sizes of the batches the model ran, and how the connections that had to linger were closed
//! ([`crate::linger`]). Every label comes from a closed set (the methods below,
//! the router's own route templates, the status codes), so no client can add a series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Count per bucket (not cumulative); the last slot is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len() + 1];
        }
        let slot = bounds.iter().position(|b| value <= *b).unwrap_or(bounds.len());
        self.counts[slot] += 1;
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The counter of [`Metrics::record_lingering`].
const LINGERING: &str = "infer_lingering_closes_total";

/// A line of [`LINGERING`] in an exposition that [`lingering_closes`] cannot read.
#[derive(Debug, thiserror::Error)]
#[error("a malformed {LINGERING} line in the metrics: {0:?}")]
pub struct MalformedLine(pub String);

/// The lingering closes counted in an exposition that [`Metrics::render`] wrote, by outcome (for
/// the tests and the overload bench, which read `/metrics` over HTTP).
pub fn lingering_closes(exposition: &str) -> Result<BTreeMap<String, u64>, MalformedLine> {
    let prefix = format!("{LINGERING}{{outcome=\"");
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix).map(|rest| (line, rest)))
        .map(|(line, rest)| {
            rest.split_once("\"} ")
                .and_then(|(outcome, n)| Some((outcome.to_owned(), n.parse().ok()?)))
                .ok_or_else(|| MalformedLine(line.to_owned()))
        })
        .collect()
}

/// The methods counted by name; every other one is counted as `other`.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// `method` as a label: one of [`METHODS`], or `other`.
fn method_label(method: &str) -> &'static str {
    METHODS.into_iter().find(|m| *m == method).unwrap_or("other")
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(&'static str, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batches: Histogram,
    images: u64,
    lingering: BTreeMap<&'static str, u64>,
}

/// The server's counters; cheap to update from every request.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// One answered request; `route` is the router's template (or `unmatched`), never the path.
    pub fn record_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner
                .requests
                .entry((method_label(method), route.to_owned(), status))
                .or_default() += 1;
            inner
                .latency
                .entry(route.to_owned())
                .or_default()
                .observe(&LATENCY_BUCKETS, elapsed.as_secs_f64());
        }
    }

    /// One model run over `images` images.
    pub fn record_batch(&self, images: usize) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.batches.observe(&BATCH_BUCKETS, images as f64);
            inner.images += images as u64;
        }
    }

    /// One connection that lingered before it was closed, by how it ended (a closed set of
    /// labels: [`crate::linger::Ending::label`]).
    pub fn record_lingering(&self, outcome: &'static str) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner.lingering.entry(outcome).or_default() += 1;
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(inner) = self.inner.lock() else {
            return out;
        };
        out.push_str("# HELP infer_http_requests_total HTTP requests by method, route and status.\n");
        out.push_str("# TYPE infer_http_requests_total counter\n");
        for ((method, route, status), n) in &inner.requests {
            let _ = writeln!(
                out,
                "infer_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        out.push_str("# HELP infer_http_request_duration_seconds Time from request to response, by route.\n");
        out.push_str("# TYPE infer_http_request_duration_seconds histogram\n");
        for (route, hist) in &inner.latency {
            let labels = format!("route=\"{}\"", escape(route));
            hist.render(
                &mut out,
                "infer_http_request_duration_seconds",
                &labels,
                &LATENCY_BUCKETS,
            );
        }
        out.push_str("# HELP infer_batch_size Images per model run.\n");
        out.push_str("# TYPE infer_batch_size histogram\n");
        inner.batches.render(&mut out, "infer_batch_size", "", &BATCH_BUCKETS);
        out.push_str("# HELP infer_images_total Images classified.\n");
        out.push_str("# TYPE infer_images_total counter\n");
        let _ = writeln!(out, "infer_images_total {}", inner.images);
        let _ = writeln!(
            out,
            "# HELP {LINGERING} Connections closed while the client may still have been sending, by \
             how their lingering ended."
        );
        let _ = writeln!(out, "# TYPE {LINGERING} counter");
        for (outcome, n) in &inner.lingering {
            let _ = writeln!(out, "{LINGERING}{{outcome=\"{outcome}\"}} {n}");
        }
        out
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        m.record_request("POST", "/v1/predict", 200, Duration::from_millis(3));
        m.record_request("POST", "/v1/predict", 200, Duration::from_millis(30));
        m.record_request("GET", "/nope", 404, Duration::from_micros(10));
        m.record_batch(3);
        let text = m.render();
        assert!(text.contains("infer_http_requests_total{method=\"POST\",route=\"/v1/predict\",status=\"200\"} 2"));
        assert!(text.contains("infer_http_request_duration_seconds_bucket{route=\"/v1/predict\",le=\"0.005\"} 1"));
        assert!(text.contains("infer_http_request_duration_seconds_bucket{route=\"/v1/predict\",le=\"0.05\"} 2"));
        assert!(text.contains("infer_batch_size_bucket{le=\"2\"} 0"));
        assert!(text.contains("infer_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("infer_images_total 3"));
    }

    #[test]
    fn invented_methods_share_one_series() {
        let m = Metrics::default();
        for method in ["BREW", "WHEN", "X-ANYTHING-AT-ALL"] {
            m.record_request(method, "unmatched", 405, Duration::from_micros(10));
        }
        let text = m.render();
        assert!(
            text.contains("infer_http_requests_total{method=\"other\",route=\"unmatched\",status=\"405\"} 3"),
            "{text}"
        );
        assert!(!text.contains("BREW"), "{text}");
    }

    #[test]
    fn lingering_closes_read_back_as_rendered() -> Result<(), MalformedLine> {
        let m = Metrics::default();
        assert!(lingering_closes(&m.render())?.is_empty());
        for outcome in ["drained", "drained", "refused"] {
            m.record_lingering(outcome);
        }
        let counts = lingering_closes(&m.render())?;
        let expected = BTreeMap::from([("drained".to_owned(), 2), ("refused".to_owned(), 1)]);
        assert_eq!(counts, expected);
        assert!(lingering_closes(&format!("{LINGERING}{{outcome=\"idle\"}} many")).is_err());
        Ok(())
    }
}
