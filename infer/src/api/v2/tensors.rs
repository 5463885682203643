//! Input tensors of the Open Inference Protocol: FP32 from JSON numbers or little-endian bytes,
//! and `BYTES` (encoded images) from base64 JSON strings or the binary extension's
//! length-prefixed elements.

use axum::body::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::v1::decode_base64;
use crate::api::{ApiError, Shared, too_many_images};
use crate::model::ModelInfo;

#[derive(Debug, Deserialize)]
pub(super) struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    pub data: Option<Value>,
}

pub(super) fn fp32_input(
    state: &Shared,
    info: &ModelInfo,
    tensor: &InputTensor,
    raw: Option<Bytes>,
) -> Result<(Vec<f32>, usize), ApiError> {
    if tensor.datatype != "FP32" {
        return Err(ApiError::unprocessable(format!(
            "input {:?} takes FP32, not {:?}",
            tensor.name, tensor.datatype
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
        return Err(too_many_images(state));
    }
    let len = n * info.image_len();
    let data = match (raw, &tensor.data) {
        (Some(raw), _) => {
            if raw.len() != len * 4 {
                return Err(ApiError::unprocessable(format!(
                    "{} bytes of binary data; shape {:?} needs {} (FP32, little-endian)",
                    raw.len(),
                    tensor.shape,
                    len * 4
                )));
            }
            let data: Vec<f32> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some(bad) = data.iter().find(|v| !v.is_finite()) {
                return Err(ApiError::unprocessable(format!(
                    "the binary data holds {bad}, not a finite FP32"
                )));
            }
            data
        }
        (None, Some(value)) => {
            let mut data = Vec::with_capacity(len);
            flatten_numbers(value, &mut data, len)?;
            data
        }
        (None, None) => {
            return Err(ApiError::unprocessable(format!(
                "input {:?} has neither `data` nor `binary_data_size`",
                tensor.name
            )));
        }
    };
    if data.len() != len {
        return Err(ApiError::unprocessable(format!(
            "`data` has {} elements; shape {:?} needs {len}",
            data.len(),
            tensor.shape
        )));
    }
    Ok((data, n))
}

/// The encoded images of a `BYTES` input: length-prefixed in binary data, base64 strings in JSON
/// (raw image bytes are not valid JSON text).
pub(super) fn bytes_input(state: &Shared, tensor: &InputTensor, raw: Option<Bytes>) -> Result<Vec<Bytes>, ApiError> {
    if tensor.datatype != "BYTES" {
        return Err(ApiError::unprocessable(format!(
            "input {:?} takes BYTES (encoded images), not {:?}",
            tensor.name, tensor.datatype
        )));
    }
    let n = match tensor.shape.as_slice() {
        [n] | [n, 1] if *n >= 1 => *n as usize,
        _ => {
            return Err(ApiError::unprocessable(format!(
                "shape {:?} does not match [N] or [N, 1] with N >= 1",
                tensor.shape
            )));
        }
    };
    if n > state.limits.max_images {
        return Err(too_many_images(state));
    }
    let images = match (raw, &tensor.data) {
        (Some(raw), _) => split_bytes_elements(&raw)?,
        (None, Some(value)) => {
            let mut texts = Vec::new();
            flatten_strings(value, &mut texts)?;
            texts
                .iter()
                .enumerate()
                .map(|(i, text)| decode_base64(text, &format!("`data[{i}]`")).map(Bytes::from))
                .collect::<Result<_, _>>()?
        }
        (None, None) => {
            return Err(ApiError::unprocessable(format!(
                "input {:?} has neither `data` nor `binary_data_size`",
                tensor.name
            )));
        }
    };
    if images.len() != n {
        return Err(ApiError::unprocessable(format!(
            "input {:?} holds {} images; shape {:?} says {n}",
            tensor.name,
            images.len(),
            tensor.shape
        )));
    }
    Ok(images)
}

/// The binary form of a `BYTES` tensor: each element a little-endian u32 length, then its bytes.
fn split_bytes_elements(raw: &Bytes) -> Result<Vec<Bytes>, ApiError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let len = raw
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "bad_binary",
                    format!("BYTES element {} is cut inside its length", out.len()),
                )
            })?;
        at += 4;
        if at + len > raw.len() {
            return Err(ApiError::bad_request(
                "bad_binary",
                format!(
                    "BYTES element {} says {len} bytes, but only {} remain",
                    out.len(),
                    raw.len() - at
                ),
            ));
        }
        out.push(raw.slice(at..at + len));
        at += len;
    }
    Ok(out)
}

pub(super) fn bytes_elements_binary<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend((item.len() as u32).to_le_bytes());
        out.extend(item);
    }
    out
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
            kind(other)
        ))),
    }
}

fn flatten_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) -> Result<(), ApiError> {
    match value {
        Value::Array(items) => items.iter().try_for_each(|item| flatten_strings(item, out)),
        Value::String(s) => {
            out.push(s);
            Ok(())
        }
        other => Err(ApiError::unprocessable(format!(
            "`data` holds {}, expected base64 strings of encoded images",
            kind(other)
        ))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_elements_round_trip_and_cuts_are_errors() -> Result<(), ApiError> {
        let items: [&[u8]; 3] = [b"jpeg", b"", b"png!"];
        let raw = Bytes::from(bytes_elements_binary(items));
        let back = split_bytes_elements(&raw)?;
        assert_eq!(back.iter().map(|b| &b[..]).collect::<Vec<_>>(), items);
        assert_eq!(
            split_bytes_elements(&raw.slice(..raw.len() - 1)).map_err(|e| e.code),
            Err("bad_binary")
        );
        assert_eq!(
            split_bytes_elements(&raw.slice(..2)).map_err(|e| e.code),
            Err("bad_binary")
        );
        Ok(())
    }
}
