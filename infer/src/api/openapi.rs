//! The OpenAPI 3.1 document served at `/openapi.json`, derived by `utoipa` from the handlers'
//! attributes and from the types the bodies are read into and written from, so that a field
//! cannot be added to a reply without appearing here. Added here, as no handler can say it: what
//! the router and its layers answer on every route ([`layer_responses`]), the FastAPI clients'
//! `/predict` (the same handler as `/v1/predict`), and the served model's names. The router's own
//! table ([`super::routes`]) is the list of routes; the router tests hold this document to it in
//! both directions.

use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use super::{ErrorBody, V2ErrorBody, is_v2_path, meta, page, v1, v2};
use crate::model::ModelInfo;

#[derive(OpenApi)]
#[openapi(
    info(title = "infer: image classification"),
    paths(
        page::page,
        v1::predict,
        meta::model_info,
        meta::healthz,
        meta::readyz,
        meta::metrics,
        meta::openapi_document,
        v2::server,
        v2::live,
        v2::ready,
        v2::model,
        v2::model_ready,
        v2::infer,
        v2::model_version,
        v2::model_version_ready,
        v2::infer_version,
    ),
    components(schemas(ErrorBody, V2ErrorBody))
)]
struct Derived;

/// The FastAPI clients' path for `/v1/predict`.
const PREDICT_ALIAS: &str = "/predict";

/// The document for the served model.
pub fn document(info: &ModelInfo) -> Result<Value, serde_json::Error> {
    let mut doc = serde_json::to_value(Derived::openapi())?;
    if let Some(doc_info) = doc.get_mut("info").and_then(Value::as_object_mut) {
        doc_info.insert(
            "description".into(),
            json!(format!(
                "Serves {} ({} classes, {}x{} RGB input). V2 inference takes the FP32 input {:?} \
                 ([N, 3, {}, {}]) or the BYTES input {:?} ([N], encoded images).",
                info.name,
                info.num_classes(),
                info.input_height,
                info.input_width,
                info.input_name,
                info.input_height,
                info.input_width,
                super::v2::image_input_name(info),
            )),
        );
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return Ok(doc);
    };
    if let Some(mut alias) = paths.get("/v1/predict").cloned() {
        if let Some(post) = alias.get_mut("post").and_then(Value::as_object_mut) {
            post.insert("operationId".into(), json!("predict_unversioned"));
        }
        paths.insert(PREDICT_ALIAS.into(), alias);
    }
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, operation) in item.iter_mut() {
            let Some(operation) = operation.as_object_mut() else {
                continue;
            };
            name_examples(operation, info);
            let responses = operation
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut();
            if let Some(responses) = responses {
                add_layer_responses(responses, path, method == "post");
            }
        }
    }
    Ok(doc)
}

/// The served model's name and version as the examples of the `{name}` and `{version}` path
/// parameters, which a client can then try as they are.
fn name_examples(operation: &mut Map<String, Value>, info: &ModelInfo) {
    let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) else {
        return;
    };
    for parameter in parameters.iter_mut().filter_map(Value::as_object_mut) {
        let example = match (
            parameter.get("in").and_then(Value::as_str),
            parameter.get("name").and_then(Value::as_str),
        ) {
            (Some("path"), Some("name")) => &info.name,
            (Some("path"), Some("version")) => &info.version,
            _ => continue,
        };
        parameter.insert("example".into(), json!(example));
    }
}

/// What the router and its layers answer on a route besides its handler ([`super::router`]):
/// every path answers another method with 405 and, once shutdown's grace period is over, 503
/// ([`super::Drain`]); the prediction routes (every `POST`) are behind the guard, whose load
/// shedding and deadline answer 503 and 504, and they share the model's queue and the internal
/// errors of decoding and running the model. `(status, description)` for a route, guarded or not.
fn layer_responses(guarded: bool) -> Vec<(&'static str, &'static str)> {
    let mut responses = vec![("405", "The path does not answer this method (`method_not_allowed`)")];
    if guarded {
        responses.extend([
            (
                "503",
                "The server is at its limit of requests in flight (`overloaded`), the model's queue \
                 is full (`queue_full`), its batch workers have stopped (`not_ready`), or it is \
                 shutting down (`shutting_down`)",
            ),
            (
                "504",
                "The request was not answered within the server's deadline (`deadline_exceeded`)",
            ),
            (
                "500",
                "An internal error; the server's log has its cause under the request id (`internal`)",
            ),
        ]);
    } else {
        responses.push(("503", "The server is shutting down (`shutting_down`)"));
    }
    responses
}

fn add_layer_responses(responses: &mut Map<String, Value>, path: &str, guarded: bool) {
    let schema = if is_v2_path(path) { "V2ErrorBody" } else { "ErrorBody" };
    for (status, description) in layer_responses(guarded) {
        let mut response = json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}},
        });
        if status == "503" {
            response["headers"] = json!({"Retry-After": {
                "description": "Seconds after which the same request may succeed (not on `not_ready`)",
                "schema": {"type": "integer"},
            }});
        }
        match responses.get_mut(status).and_then(Value::as_object_mut) {
            // The handler's own answer with this status comes first.
            Some(declared) => {
                let own = declared.get("description").and_then(Value::as_str).unwrap_or_default();
                let mut layer = description.chars();
                let first = layer.next().map(|c| c.to_lowercase().to_string()).unwrap_or_default();
                let both = format!("{own}; or {first}{}", layer.as_str());
                declared.insert("description".into(), json!(both));
            }
            None => {
                responses.insert(status.into(), response);
            }
        }
    }
}
