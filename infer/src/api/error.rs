//! Error replies: each error class is a status and a stable `code`, answered as JSON
//! `{"error": {"code", "message"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::preprocess::PreprocessError;

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(super) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_parameter", message)
    }

    pub(super) fn too_large(max_body: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over the limit of {max_body} bytes"),
        )
    }

    pub(super) fn from_preprocess(err: PreprocessError, which: Option<usize>) -> Self {
        let message = match which {
            Some(i) => format!("image {i}: {err}"),
            None => err.to_string(),
        };
        match err {
            PreprocessError::Empty | PreprocessError::Corrupt(_) => Self::bad_request("bad_image", message),
            PreprocessError::UnknownFormat => Self::bad_request("unknown_image_format", message),
            PreprocessError::UnsupportedFormat(_) => {
                Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_image_format", message)
            }
            PreprocessError::TooLarge(_) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "image_too_large", message),
        }
    }

    pub(super) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}
