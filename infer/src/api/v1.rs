//! `/v1/predict` (and `/predict`, the FastAPI clients' path): images in any of four forms
//! (raw body, multipart, JSON base64, a JSON batch), top-k classes out.

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::StatusCode;
use base64::Engine as _;
use image::{ImageFormat, RgbImage};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiError, ErrorBody, RequestId, Shared, media_type, preprocess_images, read_body, run_model, too_many_images,
};
use crate::scores::{Scored, top_k};

// Read as text and parsed by hand, so that a bad value is answered with our message naming it;
// the document gives the types the text must parse as.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PredictQuery {
    /// Classes per image (more than the model has gives them all).
    #[param(value_type = Option<u32>, minimum = 1, default = json!(DEFAULT_TOP_K))]
    top_k: Option<String>,
    /// Also answer each image as the model saw it (resized to its input), as a PNG data URL.
    #[param(value_type = Option<bool>, default = false)]
    input_image: Option<String>,
}

/// One image or a batch, base64 (with or without padding, or as a `data:image/...;base64,` URL).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PredictJson {
    #[schema(content_encoding = "base64")]
    image: Option<String>,
    images: Option<Vec<String>>,
}

/// A `multipart/form-data` body: one image in each field named `file` (or `files`); other fields
/// are ignored.
#[derive(ToSchema)]
#[expect(
    dead_code,
    reason = "it describes the form, which is read field by field as it streams in"
)]
struct PredictForm {
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Prediction {
    pub label: String,
    pub class_id: usize,
    pub probability: f32,
    pub top_k: Vec<Scored>,
    /// With `?input_image=true`: the image resized to the model's input, a PNG data URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_image: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Timing {
    /// Reading the body, decoding and preprocessing.
    pub preprocess_ms: f64,
    /// Queueing for and running the model.
    pub inference_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PredictResponse {
    pub model: ModelRef,
    pub predictions: Vec<Prediction>,
    pub timing: Timing,
}

const DEFAULT_TOP_K: usize = 5;

fn parse_top_k(raw: Option<&str>, classes: usize) -> Result<usize, ApiError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_TOP_K.min(classes));
    };
    match raw.trim().parse::<usize>() {
        Ok(0) => Err(ApiError::unprocessable("top_k must be at least 1")),
        // Asking for more classes than exist gives them all.
        Ok(k) => Ok(k.min(classes)),
        Err(_) => Err(ApiError::unprocessable(format!(
            "top_k must be a positive integer, got {raw:?}"
        ))),
    }
}

fn base64_engine() -> base64::engine::GeneralPurpose {
    base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    )
}

/// Decodes base64, with or without padding, tolerating a `data:image/...;base64,` prefix.
pub(super) fn decode_base64(text: &str, which: &str) -> Result<Vec<u8>, ApiError> {
    let payload = match text.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => text,
    };
    let compact: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64_engine()
        .decode(compact.as_bytes())
        .map_err(|e| ApiError::bad_request("bad_base64", format!("{which} is not valid base64: {e}")))
}

/// The images of a prediction request, by its Content-Type.
async fn images_from_request(req: Request, state: &Shared) -> Result<Vec<Bytes>, ApiError> {
    let media = media_type(&req);
    let images = match media.as_deref() {
        Some("multipart/form-data") => {
            let mut form = Multipart::from_request(req, &())
                .await
                .map_err(|e| ApiError::bad_request("bad_multipart", e.body_text()))?;
            let mut files = Vec::new();
            loop {
                let field = form.next_field().await.map_err(|e| multipart_error(&e, state))?;
                let Some(field) = field else { break };
                if field.name() == Some("file") || field.name() == Some("files") {
                    files.push(field.bytes().await.map_err(|e| multipart_error(&e, state))?);
                    if files.len() > state.limits.max_images {
                        return Err(too_many_images(state));
                    }
                }
            }
            if files.is_empty() {
                return Err(ApiError::unprocessable("the multipart form has no `file` field"));
            }
            files
        }
        Some(m) if m == "application/json" || m.ends_with("+json") => {
            let body = read_body(req, state).await?;
            let parsed: PredictJson = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request("bad_json", format!("the JSON body is invalid: {e}")))?;
            match (parsed.image, parsed.images) {
                (Some(one), None) => vec![Bytes::from(decode_base64(&one, "`image`")?)],
                (None, Some(many)) => {
                    if many.is_empty() {
                        return Err(ApiError::unprocessable("`images` is empty"));
                    }
                    if many.len() > state.limits.max_images {
                        return Err(too_many_images(state));
                    }
                    many.iter()
                        .enumerate()
                        .map(|(i, text)| decode_base64(text, &format!("`images[{i}]`")).map(Bytes::from))
                        .collect::<Result<_, _>>()?
                }
                (Some(_), Some(_)) => return Err(ApiError::unprocessable("give `image` or `images`, not both")),
                (None, None) => {
                    return Err(ApiError::unprocessable(
                        "the JSON body needs `image` (base64) or `images` (a list of base64)",
                    ));
                }
            }
        }
        Some(m) if m == "application/octet-stream" || m.starts_with("image/") => vec![read_body(req, state).await?],
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "Content-Type {other:?} is not accepted: send the image as image/* or application/octet-stream, multipart/form-data field `file`, or JSON {{\"image\": \"<base64>\"}}"
                ),
            ));
        }
        None => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request has no Content-Type: use image/*, application/octet-stream, multipart/form-data or application/json",
            ));
        }
    };
    Ok(images)
}

fn multipart_error(err: &axum::extract::multipart::MultipartError, state: &Shared) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(state.limits.max_body)
    } else {
        ApiError::bad_request(
            "bad_multipart",
            format!("reading the multipart form: {}", err.body_text()),
        )
    }
}

/// Classify one image or a batch
///
/// The image is the body (`image/*` or `application/octet-stream`), each `file` field of a
/// multipart form, or base64 in JSON (`image`, or `images` for a batch).
#[utoipa::path(
    post,
    path = "/v1/predict",
    params(PredictQuery),
    request_body(content(
        ("image/*"),
        ("application/octet-stream"),
        (PredictForm = "multipart/form-data"),
        (PredictJson = "application/json"),
    )),
    responses(
        (status = 200, description = "The most probable classes of each image, in the request's order", body = PredictResponse),
        (status = 400, description = "The body, its JSON, base64 or form, or an image is malformed", body = ErrorBody),
        (status = 413, description = "The body or an image's pixels are over the limit", body = ErrorBody),
        (status = 415, description = "A Content-Type or image format that is not accepted", body = ErrorBody),
        (status = 422, description = "A bad parameter, too many images, or none", body = ErrorBody),
    ),
)]
pub(super) async fn predict(
    State(state): State<Shared>,
    id: RequestId,
    req: Request,
) -> Result<Json<PredictResponse>, ApiError> {
    let start = Instant::now();
    let info = state.info();
    let query = Query::<PredictQuery>::try_from_uri(req.uri())
        .map_err(|e| ApiError::unprocessable(format!("bad query string: {}", e.body_text())))?;
    let k = parse_top_k(query.top_k.as_deref(), info.num_classes())?;
    let keep_input = parse_flag("input_image", query.input_image.as_deref())?;
    let images = images_from_request(req, &state).await?;
    let count = images.len();
    let (input, seen) = preprocess_images(&state, &id, images, keep_input).await?;
    let preprocessed = Instant::now();
    let logits = run_model(&state, &id, input, count).await?;
    let inferred = Instant::now();
    let mut seen = seen.iter().map(|image| png_data_url(image, &id));
    let predictions = logits
        .iter()
        .map(|l| {
            let top = top_k(l, &info.class_names, k);
            let best = top.first().cloned().unwrap_or(Scored {
                label: String::new(),
                class_id: 0,
                probability: 0.0,
            });
            Ok(Prediction {
                label: best.label,
                class_id: best.class_id,
                probability: best.probability,
                top_k: top,
                input_image: seen.next().transpose()?,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    let ms = crate::logging::millis;
    Ok(Json(PredictResponse {
        model: ModelRef {
            name: info.name.clone(),
            version: info.version.clone(),
        },
        predictions,
        timing: Timing {
            preprocess_ms: ms(preprocessed - start),
            inference_ms: ms(inferred - preprocessed),
            total_ms: ms(start.elapsed()),
        },
    }))
}

/// `true`/`1` or `false`/`0`; absent is false.
fn parse_flag(name: &str, raw: Option<&str>) -> Result<bool, ApiError> {
    match raw.map(str::trim) {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1" | "") => Ok(true),
        Some(other) => Err(ApiError::unprocessable(format!(
            "{name} must be true or false, got {other:?}"
        ))),
    }
}

/// The image the model saw, as a `data:image/png;base64,...` URL a page can show directly.
fn png_data_url(image: &RgbImage, id: &RequestId) -> Result<String, ApiError> {
    let mut png = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, ImageFormat::Png)
        .map_err(|e| ApiError::internal(id, format!("encoding the input image as PNG: {e}")))?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png.into_inner())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_defaults_clamps_and_rejects() {
        assert_eq!(parse_top_k(None, 10), Ok(5));
        assert_eq!(parse_top_k(None, 3), Ok(3));
        assert_eq!(parse_top_k(Some("20"), 10), Ok(10));
        assert_eq!(parse_top_k(Some("1"), 10), Ok(1));
        assert!(parse_top_k(Some("0"), 10).is_err());
        assert!(parse_top_k(Some("-1"), 10).is_err());
        assert!(parse_top_k(Some("x"), 10).is_err());
    }

    #[test]
    fn flags_are_true_false_or_an_error() {
        assert_eq!(parse_flag("f", None), Ok(false));
        assert_eq!(parse_flag("f", Some("0")), Ok(false));
        assert_eq!(parse_flag("f", Some("true")), Ok(true));
        assert_eq!(parse_flag("f", Some("1")), Ok(true));
        assert!(parse_flag("f", Some("yes")).is_err());
    }

    #[test]
    fn base64_with_or_without_padding_and_data_url() -> Result<(), ApiError> {
        assert_eq!(decode_base64("aGk=", "x")?, b"hi");
        assert_eq!(decode_base64("aGk", "x")?, b"hi");
        assert_eq!(decode_base64("data:image/png;base64,aGk=", "x")?, b"hi");
        assert_eq!(decode_base64("aG\nk=", "x")?, b"hi");
        assert_eq!(decode_base64("a$b", "x").map_err(|e| e.code), Err("bad_base64"));
        Ok(())
    }
}
