//! The KServe V2 / Open Inference Protocol subset: server and model metadata, health, and
//! inference on FP32 NCHW tensors.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Shared, media_type, read_body, too_many_images};
use crate::model::ModelInfo;

pub(super) async fn v2_server() -> Json<Value> {
    Json(json!({"name": "infer", "version": env!("CARGO_PKG_VERSION"), "extensions": []}))
}

pub(super) async fn v2_live() -> Json<Value> {
    Json(json!({"live": true}))
}

pub(super) async fn v2_ready() -> Json<Value> {
    Json(json!({"ready": true}))
}

fn known_model<'a>(state: &'a Shared, name: &str) -> Result<&'a ModelInfo, ApiError> {
    let info = state.info();
    if name == info.name {
        Ok(info)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("no model {name:?}; this server serves {:?}", info.name),
        ))
    }
}

pub(super) async fn v2_model(State(state): State<Shared>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let info = known_model(&state, &name)?;
    Ok(Json(json!({
        "name": info.name,
        "versions": [info.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": info.input_name, "datatype": "FP32",
                    "shape": [-1, 3, info.input_height, info.input_width]}],
        "outputs": [{"name": info.output_name, "datatype": "FP32", "shape": [-1, info.num_classes()]}],
    })))
}

pub(super) async fn v2_model_ready(State(state): State<Shared>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let info = known_model(&state, &name)?;
    Ok(Json(json!({"name": info.name, "ready": true})))
}

#[derive(Debug, Deserialize)]
struct V2Request {
    id: Option<String>,
    inputs: Vec<V2Tensor>,
}

#[derive(Debug, Deserialize)]
struct V2Tensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Value,
}

/// Flattens `data` (flat or nested, row-major) into `out`.
fn flatten_numbers(value: &Value, out: &mut Vec<f32>, limit: usize) -> Result<(), ApiError> {
    match value {
        Value::Array(items) => {
            for item in items {
                flatten_numbers(item, out, limit)?;
            }
            Ok(())
        }
        Value::Number(n) => {
            if out.len() >= limit {
                return Err(ApiError::unprocessable("`data` has more elements than `shape` says"));
            }
            let v = n.as_f64().unwrap_or(f64::NAN) as f32;
            if !v.is_finite() {
                return Err(ApiError::unprocessable(format!(
                    "`data` element {n} is not a finite FP32"
                )));
            }
            out.push(v);
            Ok(())
        }
        other => Err(ApiError::unprocessable(format!(
            "`data` holds {}, expected numbers",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::String(_) => "a string",
                _ => "an object",
            }
        ))),
    }
}

pub(super) async fn v2_infer(
    State(state): State<Shared>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let info = known_model(&state, &name)?;
    match media_type(&req).as_deref() {
        None | Some("application/json") => {}
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("Content-Type {other:?} is not accepted: the V2 protocol takes application/json"),
            ));
        }
    }
    let body = read_body(req, &state).await?;
    let request: V2Request = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("the inference request is invalid: {e}")))?;
    let [tensor] = request.inputs.as_slice() else {
        return Err(ApiError::unprocessable(format!(
            "expected exactly one input tensor, got {}",
            request.inputs.len()
        )));
    };
    if tensor.name != info.input_name {
        return Err(ApiError::unprocessable(format!(
            "unknown input {:?}; the model's input is {:?}",
            tensor.name, info.input_name
        )));
    }
    if tensor.datatype != "FP32" {
        return Err(ApiError::unprocessable(format!(
            "datatype {:?} is not supported; send FP32",
            tensor.datatype
        )));
    }
    let expected = [3, i64::from(info.input_height), i64::from(info.input_width)];
    let n = match tensor.shape.as_slice() {
        [n, rest @ ..] if rest == expected && *n >= 1 => *n as usize,
        _ => {
            return Err(ApiError::unprocessable(format!(
                "shape {:?} does not match [N, 3, {}, {}] with N >= 1",
                tensor.shape, info.input_height, info.input_width
            )));
        }
    };
    if n > state.limits.max_images {
        return Err(too_many_images(&state));
    }
    let len = n * info.image_len();
    let mut data = Vec::with_capacity(len);
    flatten_numbers(&tensor.data, &mut data, len)?;
    if data.len() != len {
        return Err(ApiError::unprocessable(format!(
            "`data` has {} elements; shape {:?} needs {len}",
            data.len(),
            tensor.shape
        )));
    }
    let logits = state.engine.infer(data, n).await.map_err(|e| {
        tracing::error!("inference failed: {e}");
        ApiError::internal(e.to_string())
    })?;
    let flat: Vec<f32> = logits.into_iter().flatten().collect();
    let mut reply = json!({
        "model_name": info.name,
        "model_version": info.version,
        "outputs": [{"name": info.output_name, "datatype": "FP32", "shape": [n, info.num_classes()], "data": flat}],
    });
    if let (Some(id), Some(obj)) = (request.id, reply.as_object_mut()) {
        obj.insert("id".into(), Value::String(id));
    }
    Ok(Json(reply))
}
