//! `infer`: serves the exported ONNX image classifier.
//!
//! One lean binary and one axum router for every host: AWS Lambda (`lambda_http`), `cargo lambda
//! watch`, and a plain HTTP server in a container (`infer serve`). The model comes from a file,
//! `s3://bucket/key` or the copy embedded at build time; it carries its own class names, input
//! size and normalisation (the `onnx` crate's metadata contract).
//!
//! - [`runtime`]: finding `libonnxruntime.so`.
//! - [`location`]: `s3://bucket/key` or a path, as flags name them.
//! - [`source`], [`s3`]: fetching model bytes, sha256 sidecar check.
//! - [`model`]: the shared ONNX Runtime session and its contract.
//! - [`scores`]: logits to probabilities and the top-k classes.
//! - [`graph_cache`]: ONNX Runtime's optimised graph kept on disk between starts.
//! - [`preprocess`]: bytes to normalised NCHW floats.
//! - [`batch`]: running inference off the async threads, with optional micro-batching.
//! - [`api`]: the HTTP router: the page, v1, the Open Inference Protocol, errors and the OpenAPI
//!   document.
//! - [`host`]: the Lambda and plain-server hosts around the router.
//! - [`linger`]: the plain server's lingering close, so that a client still sending gets its answer.
//! - [`logging`]: text logs, or JSON lines with the request id when Lambda asks for JSON.
//! - [`bulk`]: classifying every object under an S3 prefix or a folder (`infer predict`), and the
//!   Step Functions Distributed Map worker.

pub mod api;
pub mod batch;
pub mod bulk;
pub mod graph_cache;
pub mod host;
pub mod linger;
pub mod location;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod runtime;
pub mod s3;
pub mod scores;
pub mod source;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
