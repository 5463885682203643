//! The OpenAPI 3.1 document served at `/openapi.json`, describing every route. The router's own
//! table ([`super::routes`]) is the list of routes; the router tests hold this document to it in both
//! directions.

use serde_json::{Value, json};

use crate::model::ModelInfo;

fn error_responses(codes: &[&str], schema: &str) -> Value {
    let mut map = serde_json::Map::new();
    for code in codes {
        map.insert(
            (*code).to_owned(),
            json!({"description": "error", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}),
        );
    }
    Value::Object(map)
}

fn json_ok(schema: Value) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": schema}}})
}

fn with_errors(ok: Value, codes: &[&str]) -> Value {
    with_errors_as(ok, codes, "Error")
}

/// The Open Inference Protocol's routes answer its own error shape.
fn with_v2_errors(ok: Value, codes: &[&str]) -> Value {
    with_errors_as(ok, codes, "V2Error")
}

fn with_errors_as(ok: Value, codes: &[&str], schema: &str) -> Value {
    let mut responses = error_responses(codes, schema);
    if let Some(map) = responses.as_object_mut() {
        map.insert("200".into(), ok);
    }
    responses
}

/// The document for the served model.
pub fn document(info: &ModelInfo) -> Value {
    let predict = json!({
        "summary": "Classify one image or a batch",
        "parameters": [{"name": "top_k", "in": "query", "required": false,
                        "schema": {"type": "integer", "minimum": 1, "default": 5},
                        "description": "classes per image (more than the model has gives them all)"},
                       {"name": "input_image", "in": "query", "required": false,
                        "schema": {"type": "boolean", "default": false},
                        "description": "also answer each image as the model saw it (resized to its input), a PNG data URL"}],
        "requestBody": {"required": true, "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}}}},
            "application/json": {"schema": {"$ref": "#/components/schemas/PredictJson"}}
        }},
        "responses": with_errors(json_ok(json!({"$ref": "#/components/schemas/PredictResponse"})),
                                 &["400", "413", "415", "422"])
    });
    let name_param = json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"},
                             "example": info.name}]);
    let version_params = json!([
        {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}, "example": info.name},
        {"name": "version", "in": "path", "required": true, "schema": {"type": "string"}, "example": info.version}]);
    let infer_body = json!({"required": true, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/V2InferRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
            "description": "the binary tensor data extension: the JSON request (its length in the Inference-Header-Content-Length header), then each input's bytes"}}});
    let infer_ok = json!({"description": "OK", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/V2InferResponse"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
            "description": "binary outputs: the JSON response (its length in the Inference-Header-Content-Length header), then each binary output's bytes"}}});
    let infer_errors = ["400", "404", "413", "415", "422"];
    let infer = |params: &Value| {
        json!({"post": {
        "summary": format!("V2 inference: {} (FP32 NCHW) or {} (BYTES, encoded images) in, logits or classes out",
                           info.input_name, super::v2::image_input_name(info)),
        "parameters": params,
        "requestBody": infer_body,
        "responses": with_v2_errors(infer_ok.clone(), &infer_errors)}})
    };
    let v2_get = |summary: &str, params: &Value| {
        json!({"get": {"summary": summary, "parameters": params,
        "responses": with_v2_errors(json_ok(json!({"type": "object"})), &["404"])}})
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "infer: image classification", "version": env!("CARGO_PKG_VERSION"),
                 "description": format!("Serves {} ({} classes, {}x{} RGB input).",
                                        info.name, info.num_classes(), info.input_height, info.input_width)},
        "paths": {
            "/": {"get": {"summary": "A page for people: choose, drop, paste or photograph an image and see its classes",
                "responses": {"200": {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/v1/predict": {"post": predict.clone()},
            "/predict": {"post": predict},
            "/v1/model": {"get": {"summary": "The served model's metadata", "responses": {"200": json_ok(json!({"type": "object"}))}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": json_ok(json!({"type": "object"}))}}},
            "/readyz": {"get": {"summary": "Readiness (the model is loaded and warmed up)", "responses": {"200": json_ok(json!({"type": "object"}))}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": json_ok(json!({"type": "object"}))}}},
            "/v2": {"get": {"summary": "V2 server metadata", "responses": {"200": json_ok(json!({"type": "object"}))}}},
            "/v2/health/live": {"get": {"summary": "V2 liveness", "responses": {"200": json_ok(json!({"type": "object"}))}}},
            "/v2/health/ready": {"get": {"summary": "V2 readiness", "responses": {"200": json_ok(json!({"type": "object"}))}}},
            "/v2/models/{name}": v2_get("V2 model metadata", &name_param),
            "/v2/models/{name}/ready": v2_get("V2 model readiness", &name_param),
            "/v2/models/{name}/infer": infer(&name_param),
            "/v2/models/{name}/versions/{version}": v2_get("V2 model metadata of one version", &version_params),
            "/v2/models/{name}/versions/{version}/ready": v2_get("V2 readiness of one model version", &version_params),
            "/v2/models/{name}/versions/{version}/infer": infer(&version_params)
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            "PredictJson": {"type": "object", "properties": {
                "image": {"type": "string", "contentEncoding": "base64"},
                "images": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}}}},
            "Scored": {"type": "object", "properties": {"label": {"type": "string"}, "class_id": {"type": "integer"},
                "probability": {"type": "number"}}},
            "PredictResponse": {"type": "object", "properties": {
                "model": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
                "predictions": {"type": "array", "items": {"type": "object", "properties": {
                    "label": {"type": "string"}, "class_id": {"type": "integer"}, "probability": {"type": "number"},
                    "top_k": {"type": "array", "items": {"$ref": "#/components/schemas/Scored"}}}}},
                "timing": {"type": "object", "properties": {"preprocess_ms": {"type": "number"},
                    "inference_ms": {"type": "number"}, "total_ms": {"type": "number"}}}}},
            "V2Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "V2Tensor": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
                "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                "datatype": {"type": "string", "enum": ["FP32", "BYTES"]},
                "data": {"type": "array", "description": "row-major numbers; BYTES: base64 strings of encoded images"},
                "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}}}},
            "V2RequestedOutput": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"},
                "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"},
                    "classification": {"type": "integer", "description": "answer the top classes as \"<logit>:<index>:<label>\" strings"}}}}},
            "V2InferRequest": {"type": "object", "required": ["inputs"], "properties": {"id": {"type": "string"},
                "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2RequestedOutput"}}}},
            "V2InferResponse": {"type": "object", "properties": {"model_name": {"type": "string"},
                "model_version": {"type": "string"}, "id": {"type": "string"},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}}}}
        }}
    })
}
