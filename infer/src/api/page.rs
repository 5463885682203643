//! The page for people at `GET /`: choose, drop, paste or photograph an image and see the top-5
//! classes, the image as the model saw it, the model's identity and the server's timings. One
//! self-contained file embedded in the binary (no CDN, no build step); every URL in it is
//! relative to the page, so it works unchanged behind a Lambda function URL or an API Gateway
//! stage prefix.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("page.html");

/// A page for people: choose, drop, paste or photograph an image and see its classes
#[utoipa::path(get, path = "/", responses(
    (status = 200, description = "The page", body = String, content_type = "text/html"),
))]
pub(super) async fn page() -> Response {
    let mut response = PAGE.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Scripts and styles are inline; images are the user's own (blob:) and the server's (data:).
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:",
        ),
    );
    response
}
