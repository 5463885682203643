//! Error replies: each error class is a status and a stable `code`, answered as JSON
//! `{"error": {"code", "message"}}`, or, on the Open Inference Protocol's routes, as that
//! protocol's `{"error": "<message>"}` ([`V2Error`]). A 500 never carries the internal cause: that
//! goes to the log under the request id, and the reply names the id.

use std::convert::Infallible;

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::preprocess::PreprocessError;

/// The error JSON of every route outside `/v2`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The error's class, stable for clients to match on (`payload_too_large`,
    /// `invalid_parameter`, `overloaded`, ...).
    pub code: &'static str,
    /// For people: names the field, the limit or the step at fault.
    pub message: String,
}

/// The Open Inference Protocol's error JSON, on every `/v2` route.
#[derive(Debug, Serialize, ToSchema)]
pub struct V2ErrorBody {
    /// For people: names the field, the limit or the step at fault.
    pub error: String,
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header: the server is overloaded, not the request at fault.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 503 with `Retry-After`: the server cannot take the request now; the same request may
    /// succeed a moment later.
    pub(super) fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
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

    /// Logs `cause` with the request id and answers a generic message naming the id: the cause
    /// may hold paths, library internals or other requests' details, none of the client's business.
    pub(super) fn internal(id: &RequestId, cause: impl std::fmt::Display) -> Self {
        tracing::error!(request_id = %id.0, "internal error: {cause}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!(
                "internal error; the server's log has the cause under request id {}",
                id.0
            ),
        )
    }
}

/// The request's id (Lambda's, the client's `x-request-id`, or a new one), as the router's
/// request-id layer set it; extracted by the handlers that may log an internal error.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    pub(super) fn of(extensions: &Extensions) -> Self {
        let id = extensions
            .get::<tower_http::request_id::RequestId>()
            .and_then(|id| id.header_value().to_str().ok())
            // Only a router without its request-id layer gets here (the layer always sets one).
            .unwrap_or("-");
        Self(id.to_owned())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self::of(&parts.extensions))
    }
}

/// An [`ApiError`] answered in the Open Inference Protocol's shape, `{"error": "<message>"}`,
/// which its clients (`tritonclient`, KServe's) parse; the status is the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Error(pub ApiError);

impl From<ApiError> for V2Error {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl IntoResponse for V2Error {
    fn into_response(self) -> Response {
        let retry_after = self.0.retry_after;
        with_retry_after(
            (self.0.status, Json(V2ErrorBody { error: self.0.message })).into_response(),
            retry_after,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        with_retry_after((self.status, Json(body)).into_response(), self.retry_after)
    }
}

fn with_retry_after(mut response: Response, seconds: Option<u32>) -> Response {
    if let Some(seconds) = seconds {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
