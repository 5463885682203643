//! Where `tracing` events go, and in which shape: text on stderr, or, when Lambda asks for JSON
//! (`AWS_LAMBDA_LOG_FORMAT=JSON`, which Lambda sets from the function's `LoggingConfig.LogFormat`),
//! one JSON object a line, as Lambda's JSON application logs are: `timestamp` (RFC 3339),
//! `level`, `message`, and the invocation's `requestId`. For a custom runtime Lambda passes lines
//! through as they are, but reads `level` and `timestamp` from a JSON line for its log-level
//! filtering; a text line counts as INFO.
//!
//! The request id: `lambda_runtime` runs every invocation inside a span named
//! [`INVOCATION_SPAN`] whose `requestId` field is the invocation's id. tracing-subscriber's JSON
//! formatter writes span fields only nested (in `spans`), so each line's `requestId` is lifted to
//! the top, where Lambda's own runtimes put it and where CloudWatch Logs Insights finds it.

use std::fmt;
use std::io::IsTerminal;

use serde_json::Value;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The variable in which Lambda names the function's log format (`Text` or `JSON`).
pub const LOG_FORMAT_VARIABLE: &str = "AWS_LAMBDA_LOG_FORMAT";

/// The span `lambda_runtime` opens around each invocation, with its `requestId`.
pub const INVOCATION_SPAN: &str = "Lambda runtime invoke";

/// What is logged when `RUST_LOG` says nothing: ONNX Runtime's INFO lines are its session
/// set-up, a hundred lines a start.
const DEFAULT_FILTER: &str = "info,ort=warn";

/// A duration in milliseconds to the microsecond, as logs and replies give it (`ms=0.073`, not
/// the `0.07342800000000001` of a float of nanoseconds).
pub fn millis(duration: std::time::Duration) -> f64 {
    (duration.as_secs_f64() * 1e6).round() / 1e3
}

/// Whether the environment asks for JSON lines (Lambda writes `JSON`; the case is not relied on).
pub fn json_requested() -> bool {
    std::env::var(LOG_FORMAT_VARIABLE).is_ok_and(|v| v.eq_ignore_ascii_case("json"))
}

/// Installs the process-wide subscriber on stderr, filtered by `RUST_LOG`. Text is coloured only
/// on a terminal outside Lambda (CloudWatch, files and CI logs show ANSI escapes literally).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json_requested() {
        builder
            .fmt_fields(JsonFields::new())
            .event_format(LambdaJson::default())
            .try_init()
    } else {
        builder
            .with_ansi(!crate::host::on_lambda() && std::io::stderr().is_terminal())
            .try_init()
    };
}

/// tracing-subscriber's JSON line (event fields at the top, the spans listed), with the
/// invocation's `requestId` lifted to the top.
#[derive(Debug)]
pub struct LambdaJson(Format<Json>);

impl Default for LambdaJson {
    fn default() -> Self {
        Self(
            tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(true),
        )
    }
}

impl<S, N> FormatEvent<S, N> for LambdaJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&lift_request_id(&line))
    }
}

/// `line` (one JSON object and its newline) with `requestId` set from the innermost span that has
/// one; unchanged when it has none (start-up, before any invocation) or is not an object.
pub fn lift_request_id(line: &str) -> String {
    let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(line.trim_end()) else {
        return line.to_owned();
    };
    let id = object
        .get("spans")
        .and_then(Value::as_array)
        .and_then(|spans| spans.iter().rev().find_map(|s| s.get("requestId").cloned()));
    match id {
        Some(id) => {
            object.insert("requestId".to_owned(), id);
            format!("{}\n", Value::Object(object))
        }
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_are_rounded_to_the_microsecond() {
        use std::time::Duration;
        assert_eq!(millis(Duration::from_nanos(73_428_000)).to_string(), "73.428");
        assert_eq!(millis(Duration::from_nanos(73_428)).to_string(), "0.073");
        assert_eq!(millis(Duration::from_nanos(114_493_173)).to_string(), "114.493");
        assert_eq!(millis(Duration::ZERO).to_string(), "0");
    }

    #[test]
    fn the_request_id_of_the_invocation_span_goes_to_the_top() {
        let line = r#"{"timestamp":"2026-12-06T12:00:00.000000Z","level":"INFO","message":"done","target":"infer::api","spans":[{"requestId":"abc-1","name":"Lambda runtime invoke"},{"id":"r","name":"request"}]}"#;
        let lifted: Value = serde_json::from_str(&lift_request_id(&format!("{line}\n"))).expect("JSON");
        assert_eq!(lifted["requestId"], "abc-1");
        assert_eq!((&lifted["level"], &lifted["message"]), (&"INFO".into(), &"done".into()));

        let start_up = "{\"level\":\"INFO\",\"message\":\"model loaded\"}\n";
        assert_eq!(lift_request_id(start_up), start_up);
        assert_eq!(lift_request_id("not json\n"), "not json\n");
    }
}
