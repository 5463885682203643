//! Health, the served model's metadata, Prometheus metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use onnx::ModelMetadata;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{ApiError, ErrorBody, Shared, not_ready, openapi};

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Liveness {
    /// `ok` whenever the process answers.
    status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Readiness {
    /// `ready`.
    status: &'static str,
    model: String,
    version: String,
}

/// The served model, as a client needs to know it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ModelDescription {
    name: String,
    /// The first 12 hex digits of `sha256`: changes whenever the weights do.
    version: String,
    /// Of the model file.
    sha256: String,
    /// By class id.
    class_names: Vec<String>,
    input: InputDescription,
    output: OutputDescription,
    /// Whether concurrent requests are run through the model together.
    batching: bool,
    /// The exporter's metadata, when the model carries it.
    #[schema(value_type = Option<Object>)]
    metadata: Option<ModelMetadata>,
}

/// The image tensor the model takes.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct InputDescription {
    name: String,
    height: u32,
    width: u32,
    #[schema(value_type = String, example = "RGB")]
    channel_order: onnx::ChannelOrder,
    #[schema(value_type = String, example = "NCHW")]
    layout: onnx::Layout,
    /// Per channel, subtracted from pixels in [0, 1].
    mean: [f32; 3],
    /// Per channel, what the difference is divided by.
    std: [f32; 3],
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct OutputDescription {
    name: String,
    classes: usize,
}

/// Liveness
#[utoipa::path(get, path = "/healthz", responses(
    (status = 200, description = "The process answers", body = Liveness),
))]
pub(super) async fn healthz() -> Json<Liveness> {
    Json(Liveness { status: "ok" })
}

/// Readiness: the model is loaded, warmed up, and a batch worker is left to run it
// The model is loaded and warmed up before the router exists, so a router that answers is ready
// while a batch worker is left.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "The model can be run", body = Readiness),
    (status = 503, description = "The model's batch workers have stopped (`not_ready`)", body = ErrorBody),
))]
pub(super) async fn readyz(State(state): State<Shared>) -> Result<Json<Readiness>, ApiError> {
    if !state.ready() {
        return Err(not_ready());
    }
    let info = state.info();
    Ok(Json(Readiness {
        status: "ready",
        model: info.name.clone(),
        version: info.version.clone(),
    }))
}

/// The served model's metadata
#[utoipa::path(get, path = "/v1/model", responses(
    (status = 200, description = "The served model", body = ModelDescription),
))]
pub(super) async fn model_info(State(state): State<Shared>) -> Json<ModelDescription> {
    let info = state.info();
    Json(ModelDescription {
        name: info.name.clone(),
        version: info.version.clone(),
        sha256: info.sha256.clone(),
        class_names: info.class_names.clone(),
        input: InputDescription {
            name: info.input_name.clone(),
            height: info.input_height,
            width: info.input_width,
            channel_order: info.channel_order,
            layout: info.layout,
            mean: info.mean,
            std: info.std,
        },
        output: OutputDescription {
            name: info.output_name.clone(),
            classes: info.num_classes(),
        },
        batching: state.engine.batching(),
        metadata: info.metadata.clone(),
    })
}

/// Prometheus metrics
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus' text exposition format", body = String, content_type = "text/plain"),
))]
pub(super) async fn metrics(State(state): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

/// This document
#[utoipa::path(get, path = "/openapi.json", responses(
    (status = 200, description = "The OpenAPI 3.1 document of this server", body = Object),
    (status = 500, description = "The document could not be written (`internal`)", body = ErrorBody),
))]
pub(super) async fn openapi_document(State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    openapi::document(state.info()).map(Json).map_err(|e| {
        tracing::error!("writing the OpenAPI document: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    })
}
