//! The OpenAPI 3.1 document served at `/openapi.json`, describing every route.

use serde_json::{Value, json};

use crate::model::ModelInfo;

/// Every route the router serves, `(method, path)`; the router tests check each one answers.
pub const ROUTES: [(&str, &str); 13] = [
    ("post", "/v1/predict"),
    ("post", "/predict"),
    ("get", "/v1/model"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/v2"),
    ("get", "/v2/health/live"),
    ("get", "/v2/health/ready"),
    ("get", "/v2/models/{name}"),
    ("get", "/v2/models/{name}/ready"),
    ("post", "/v2/models/{name}/infer"),
];

fn error_responses(codes: &[&str]) -> Value {
    let mut map = serde_json::Map::new();
    for code in codes {
        map.insert(
            (*code).to_owned(),
            json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(map)
}

fn json_ok(schema: Value) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": schema}}})
}

fn with_errors(ok: Value, codes: &[&str]) -> Value {
    let mut responses = error_responses(codes);
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
                        "description": "classes per image (more than the model has gives them all)"}],
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
    json!({
        "openapi": "3.1.0",
        "info": {"title": "infer: image classification", "version": env!("CARGO_PKG_VERSION"),
                 "description": format!("Serves {} ({} classes, {}x{} RGB input).",
                                        info.name, info.num_classes(), info.input_height, info.input_width)},
        "paths": {
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
            "/v2/models/{name}": {"get": {"summary": "V2 model metadata", "parameters": name_param.clone(),
                "responses": with_errors(json_ok(json!({"type": "object"})), &["404"])}},
            "/v2/models/{name}/ready": {"get": {"summary": "V2 model readiness", "parameters": name_param.clone(),
                "responses": with_errors(json_ok(json!({"type": "object"})), &["404"])}},
            "/v2/models/{name}/infer": {"post": {"summary": "V2 inference: FP32 NCHW tensor in, logits out",
                "parameters": name_param,
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V2InferRequest"}}}},
                "responses": with_errors(json_ok(json!({"$ref": "#/components/schemas/V2InferResponse"})),
                                         &["400", "404", "413", "415", "422"])}}
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
            "V2Tensor": {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
                "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                "datatype": {"type": "string", "enum": ["FP32"]}, "data": {"type": "array"}}},
            "V2InferRequest": {"type": "object", "required": ["inputs"], "properties": {"id": {"type": "string"},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}}}},
            "V2InferResponse": {"type": "object", "properties": {"model_name": {"type": "string"},
                "model_version": {"type": "string"}, "id": {"type": "string"},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}}}}
        }}
    })
}
