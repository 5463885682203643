//! Input tensors of the Open Inference Protocol: FP32 from JSON numbers or little-endian bytes,
//! and `BYTES` (encoded images) from base64 JSON strings or the binary extension's
//! length-prefixed elements.
//!
//! The JSON is read straight into what the model needs: `data` into one flat `Vec<f32>` (or the
//! strings of a `BYTES` tensor), `parameters` into scalars, never into a `serde_json::Value` tree,
//! which costs tens of bytes per number. A JSON number takes at least two bytes of the body
//! (`0,`) and is kept in four, so a request's parsed tensors stay within a small multiple of the
//! body limit (the server test `a_v2_body_of_zeros_keeps_peak_memory_bounded` measures it), and
//! no more numbers are kept than the largest request may carry ([`with_number_cap`]): the rest
//! are only counted.
//! Problems with the elements are noted while reading and reported after it, against the shape
//! and datatype the tensor declares, wherever in the object those come.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use axum::body::Bytes;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use utoipa::ToSchema;

use crate::api::v1::decode_base64;
use crate::api::{ApiError, Shared, too_many_images};
use crate::model::ModelInfo;

/// The model's `FP32` input, `[N, 3, H, W]`, or encoded images, `BYTES` `[N]`.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    #[schema(example = "FP32")]
    pub datatype: String,
    /// `binary_data_size` (integer): the tensor's bytes follow the JSON instead of `data`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Parameters,
    /// Row-major numbers, flat or nested as the shape; for `BYTES`, base64 strings.
    #[schema(value_type = Option<Vec<Value>>)]
    pub data: Option<TensorData>,
}

/// A tensor's, an output's or the request's `parameters`.
pub(super) type Parameters = BTreeMap<String, Param>;

/// One parameter's value: a scalar, or only the kind of anything bigger (never kept).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Param {
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Text(String),
    Other(&'static str),
}

impl Param {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Self::Unsigned(n) => Some(*n),
            _ => None,
        }
    }
}

/// As JSON writes it, for messages.
impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Unsigned(n) => write!(f, "{n}"),
            Self::Signed(n) => write!(f, "{n}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Text(s) => write!(f, "{}", serde_json::Value::String(s.clone())),
            Self::Other(kind) => f.write_str(kind),
        }
    }
}

impl<'de> Deserialize<'de> for Param {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ParamVisitor;
        impl<'de> Visitor<'de> for ParamVisitor {
            type Value = Param;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a parameter value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Param, E> {
                Ok(Param::Bool(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Param, E> {
                Ok(Param::Unsigned(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Param, E> {
                Ok(Param::Signed(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Param, E> {
                Ok(Param::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Param, E> {
                Ok(Param::Text(v.to_owned()))
            }
            fn visit_unit<E>(self) -> Result<Param, E> {
                Ok(Param::Other("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Param, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Param::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Param, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Param::Other("an object"))
            }
        }
        deserializer.deserialize_any(ParamVisitor)
    }
}

thread_local! {
    /// The most numbers a `data` being read on this thread keeps ([`with_number_cap`]).
    static NUMBER_CAP: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Runs `parse` with every [`TensorData`] it reads keeping at most `cap` numbers. A thread-local
/// and not a `DeserializeSeed`: the cap would otherwise have to be threaded by hand through the
/// request's, the inputs' and the tensor's visitors, which derive does for us.
pub(super) fn with_number_cap<T>(cap: usize, parse: impl FnOnce() -> T) -> T {
    let before = NUMBER_CAP.replace(cap);
    let out = parse();
    NUMBER_CAP.set(before);
    out
}

/// A tensor's `data`, flat or nested (row-major), read flat: its numbers, its strings, and the
/// first problem met on the way.
#[derive(Debug, Default)]
pub(super) struct TensorData {
    numbers: Vec<f32>,
    /// Numbers read, kept or not.
    count: usize,
    cap: usize,
    strings: Vec<String>,
    /// The kind of the first element that is neither a number nor a string.
    other: Option<&'static str>,
    /// The first number that is not a finite FP32.
    not_finite: Option<String>,
}

impl TensorData {
    /// The FP32 elements, or what is wrong with them; `shape` says there are `len`.
    fn into_numbers(self, len: usize, shape: &[i64]) -> Result<Vec<f32>, ApiError> {
        let wrong = self.other.or((!self.strings.is_empty()).then_some("a string"));
        if let Some(kind) = wrong {
            return Err(ApiError::unprocessable(format!(
                "`data` holds {kind}, expected numbers"
            )));
        }
        if let Some(n) = self.not_finite {
            return Err(ApiError::unprocessable(format!(
                "`data` element {n} is not a finite FP32"
            )));
        }
        if self.count != len {
            return Err(ApiError::unprocessable(format!(
                "`data` has {} elements; shape {shape:?} needs {len}",
                self.count
            )));
        }
        Ok(self.numbers)
    }

    /// The base64 strings, or what is wrong with them.
    fn into_strings(self) -> Result<Vec<String>, ApiError> {
        let wrong = self
            .other
            .or((self.count > 0 || self.not_finite.is_some()).then_some("a number"));
        if let Some(kind) = wrong {
            return Err(ApiError::unprocessable(format!(
                "`data` holds {kind}, expected base64 strings of encoded images"
            )));
        }
        Ok(self.strings)
    }
}

impl<'de> Deserialize<'de> for TensorData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut data = TensorData {
            cap: NUMBER_CAP.get(),
            ..TensorData::default()
        };
        Flatten(&mut data).deserialize(deserializer)?;
        Ok(data)
    }
}

/// Reads one value of `data` (an element or a nested array) into the flat [`TensorData`].
struct Flatten<'a>(&'a mut TensorData);

impl Flatten<'_> {
    fn other(self, kind: &'static str) {
        self.0.other.get_or_insert(kind);
    }

    fn number(self, v: f64) {
        let x = v as f32;
        self.0.count += 1;
        if x.is_finite() {
            if self.0.numbers.len() < self.0.cap {
                self.0.numbers.push(x);
            }
        } else {
            self.0.not_finite.get_or_insert_with(|| v.to_string());
        }
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("numbers or strings, flat or in nested arrays")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.number(v as f64);
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.number(v as f64);
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.number(v);
        Ok(())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.strings.push(v.to_owned());
        Ok(())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<(), E> {
        self.0.strings.push(v);
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.other("a boolean");
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.other("null");
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.other("an object");
        Ok(())
    }
}

pub(super) fn fp32_input(
    state: &Shared,
    info: &ModelInfo,
    tensor: InputTensor,
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
    let data = match (raw, tensor.data) {
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
        (None, Some(data)) => data.into_numbers(len, &tensor.shape)?,
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
pub(super) fn bytes_input(state: &Shared, tensor: InputTensor, raw: Option<Bytes>) -> Result<Vec<Bytes>, ApiError> {
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
    let images = match (raw, tensor.data) {
        (Some(raw), _) => split_bytes_elements(&raw)?,
        (None, Some(data)) => {
            let texts = data.into_strings()?;
            if texts.len() != n {
                return Err(ApiError::unprocessable(format!(
                    "input {:?} holds {} images; shape {:?} says {n}",
                    tensor.name,
                    texts.len(),
                    tensor.shape
                )));
            }
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
