//! The model's contract, stored in the ONNX file's `metadata_props`: everything the server needs
//! to serve a model correctly travels inside the file.
//!
//! Every value is a string (as ONNX requires); lists and per-channel numbers are JSON arrays.
//! Pixels are scaled to `[0, 1]` before `(x - mean) / std` ([`PixelNormalisation`], which both
//! sides compute with).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version of this key set; bumped when a key changes meaning.
pub const CONTRACT_VERSION: &str = "1";

pub mod keys {
    pub const CONTRACT_VERSION: &str = "contract_version";
    pub const CLASS_NAMES: &str = "class_names";
    pub const INPUT_HEIGHT: &str = "input_height";
    pub const INPUT_WIDTH: &str = "input_width";
    pub const CHANNEL_ORDER: &str = "channel_order";
    pub const LAYOUT: &str = "layout";
    pub const MEAN: &str = "mean";
    pub const STD: &str = "std";
    pub const ARCHITECTURE: &str = "architecture";
    pub const WIDTH: &str = "width";
    pub const DATASET: &str = "dataset";
    pub const TEST_ACCURACY: &str = "test_accuracy";
    pub const EPOCHS: &str = "epochs";
    pub const GIT_COMMIT: &str = "git_commit";
    pub const EXPORTED_AT: &str = "exported_at";
    pub const PROJECT_VERSION: &str = "project_version";
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetadataError {
    #[error("model metadata has no `{0}` entry")]
    Missing(&'static str),
    #[error("model metadata `{key}` = {value:?} is invalid: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// The order of the colour planes the model's input expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ChannelOrder {
    #[serde(rename = "RGB")]
    Rgb,
    #[serde(rename = "BGR")]
    Bgr,
}

/// The order of the input tensor's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Layout {
    /// `[N, C, H, W]`: one plane per channel (what `train export` writes).
    #[serde(rename = "NCHW")]
    Nchw,
    /// `[N, H, W, C]`: interleaved channels.
    #[serde(rename = "NHWC")]
    Nhwc,
}

/// Each contract value spelled as it is stored, in one table per type.
macro_rules! spelled {
    ($ty:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The value as the metadata stores it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim() {
                    $($text => Ok($ty::$variant),)+
                    _ => Err(format!("expected one of {:?}", [$($text),+])),
                }
            }
        }
    };
}

spelled!(ChannelOrder { Rgb = "RGB", Bgr = "BGR" });
spelled!(Layout { Nchw = "NCHW", Nhwc = "NHWC" });

/// What `train export` writes and `infer` reads back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelMetadata {
    /// Class names in label order (index = class id).
    pub class_names: Vec<String>,
    pub input_height: u32,
    pub input_width: u32,
    pub channel_order: ChannelOrder,
    pub layout: Layout,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// e.g. `"resnet18-cifar"`.
    pub architecture: String,
    /// Channels of the first stage (64 for the standard ResNet-18).
    pub width: u32,
    pub dataset: String,
    /// Top-1 accuracy on the test split, in `[0, 1]`, when the model was evaluated.
    pub test_accuracy: Option<f64>,
    pub epochs: Option<u32>,
    pub git_commit: Option<String>,
    /// RFC 3339 time of the export.
    pub exported_at: Option<String>,
    pub project_version: String,
}

impl ModelMetadata {
    /// The `(key, value)` pairs for `ModelProto.metadata_props`, in a stable order.
    pub fn to_props(&self) -> Vec<(String, String)> {
        let mut props = vec![
            (keys::CONTRACT_VERSION, CONTRACT_VERSION.to_owned()),
            (keys::CLASS_NAMES, json(&self.class_names)),
            (keys::INPUT_HEIGHT, self.input_height.to_string()),
            (keys::INPUT_WIDTH, self.input_width.to_string()),
            (keys::CHANNEL_ORDER, self.channel_order.to_string()),
            (keys::LAYOUT, self.layout.to_string()),
            (keys::MEAN, json(&self.mean)),
            (keys::STD, json(&self.std)),
            (keys::ARCHITECTURE, self.architecture.clone()),
            (keys::WIDTH, self.width.to_string()),
            (keys::DATASET, self.dataset.clone()),
            (keys::PROJECT_VERSION, self.project_version.clone()),
        ];
        if let Some(acc) = self.test_accuracy {
            props.push((keys::TEST_ACCURACY, acc.to_string()));
        }
        if let Some(epochs) = self.epochs {
            props.push((keys::EPOCHS, epochs.to_string()));
        }
        if let Some(commit) = &self.git_commit {
            props.push((keys::GIT_COMMIT, commit.clone()));
        }
        if let Some(at) = &self.exported_at {
            props.push((keys::EXPORTED_AT, at.clone()));
        }
        props.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Reads the contract back; `get` looks a key up (e.g. ort's `ModelMetadata::custom`).
    pub fn from_props(get: impl Fn(&str) -> Option<String>) -> Result<Self, MetadataError> {
        let required = |key: &'static str| get(key).ok_or(MetadataError::Missing(key));
        let version = required(keys::CONTRACT_VERSION)?;
        if version != CONTRACT_VERSION {
            return Err(invalid(
                keys::CONTRACT_VERSION,
                &version,
                format!("this build reads version {CONTRACT_VERSION}"),
            ));
        }
        let class_names: Vec<String> = parse_json(keys::CLASS_NAMES, &required(keys::CLASS_NAMES)?)?;
        if class_names.is_empty() {
            return Err(invalid(keys::CLASS_NAMES, "[]", "no classes".into()));
        }
        let std: [f32; 3] = parse_json(keys::STD, &required(keys::STD)?)?;
        if std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(invalid(
                keys::STD,
                &format!("{std:?}"),
                "every std must be positive".into(),
            ));
        }
        Ok(Self {
            class_names,
            input_height: parse(keys::INPUT_HEIGHT, &required(keys::INPUT_HEIGHT)?)?,
            input_width: parse(keys::INPUT_WIDTH, &required(keys::INPUT_WIDTH)?)?,
            channel_order: parse(keys::CHANNEL_ORDER, &required(keys::CHANNEL_ORDER)?)?,
            layout: parse(keys::LAYOUT, &required(keys::LAYOUT)?)?,
            mean: parse_json(keys::MEAN, &required(keys::MEAN)?)?,
            std,
            architecture: required(keys::ARCHITECTURE)?,
            width: parse(keys::WIDTH, &required(keys::WIDTH)?)?,
            dataset: required(keys::DATASET)?,
            test_accuracy: get(keys::TEST_ACCURACY)
                .map(|v| parse(keys::TEST_ACCURACY, &v))
                .transpose()?,
            epochs: get(keys::EPOCHS).map(|v| parse(keys::EPOCHS, &v)).transpose()?,
            git_commit: get(keys::GIT_COMMIT),
            exported_at: get(keys::EXPORTED_AT),
            project_version: required(keys::PROJECT_VERSION)?,
        })
    }
}

/// `(pixel / 255 - mean) / std` for 8-bit pixels, folded into one multiply-add per channel.
/// Training and serving both normalise through these coefficients, so a model sees the same
/// floats, to the bit, from `train`'s batches and from `infer`'s decoded images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelNormalisation {
    /// `1 / (255 std)` per channel.
    pub scale: [f32; 3],
    /// `-mean / std` per channel.
    pub shift: [f32; 3],
}

impl PixelNormalisation {
    pub fn new(mean: [f32; 3], std: [f32; 3]) -> Self {
        Self {
            scale: std::array::from_fn(|c| 1.0 / (255.0 * std[c])),
            shift: std::array::from_fn(|c| -mean[c] / std[c]),
        }
    }

    /// Interleaved RGB bytes (`r g b r g b ...`) to normalised channel planes: the first third of
    /// `out` gets the red values, then green, then blue. `out` holds `rgb.len()` floats; pixels
    /// beyond what both slices hold are not written.
    pub fn write_planes(&self, rgb: &[u8], out: &mut [f32]) {
        let plane = out.len() / 3;
        let (red, rest) = out.split_at_mut(plane);
        let (green, blue) = rest.split_at_mut(plane);
        let [sr, sg, sb] = self.scale;
        let [hr, hg, hb] = self.shift;
        for (((px, r), g), b) in rgb.chunks_exact(3).zip(red).zip(green).zip(blue) {
            *r = f32::from(px[0]) * sr + hr;
            *g = f32::from(px[1]) * sg + hg;
            *b = f32::from(px[2]) * sb + hb;
        }
    }
}

fn invalid(key: &'static str, value: &str, reason: String) -> MetadataError {
    MetadataError::Invalid {
        key,
        value: value.to_owned(),
        reason,
    }
}

fn parse<T: std::str::FromStr>(key: &'static str, value: &str) -> Result<T, MetadataError>
where
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e: T::Err| invalid(key, value, e.to_string()))
}

fn parse_json<T: DeserializeOwned>(key: &'static str, value: &str) -> Result<T, MetadataError> {
    serde_json::from_str(value).map_err(|e| invalid(key, value, e.to_string()))
}

/// JSON text of a list of strings or numbers, which always serialises.
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn sample() -> ModelMetadata {
        ModelMetadata {
            class_names: vec!["cat".into(), "dog \"quoted\"".into()],
            input_height: 32,
            input_width: 32,
            channel_order: ChannelOrder::Rgb,
            layout: Layout::Nchw,
            mean: [0.49, 0.48, 0.45],
            std: [0.25, 0.24, 0.26],
            architecture: "resnet18-cifar".into(),
            width: 16,
            dataset: "CIFAR-10".into(),
            test_accuracy: Some(0.9234),
            epochs: Some(40),
            git_commit: Some("abc123".into()),
            exported_at: Some("2026-11-25T18:00:00Z".into()),
            project_version: "0.1.0".into(),
        }
    }

    fn lookup(props: &[(String, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = props.iter().cloned().collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn round_trips_every_field() {
        let meta = sample();
        assert_eq!(ModelMetadata::from_props(lookup(&meta.to_props())), Ok(meta));
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let meta = ModelMetadata {
            test_accuracy: None,
            epochs: None,
            git_commit: None,
            exported_at: None,
            ..sample()
        };
        assert_eq!(ModelMetadata::from_props(lookup(&meta.to_props())), Ok(meta));
    }

    #[test]
    fn names_the_missing_or_bad_key() {
        let mut props = sample().to_props();
        props.retain(|(k, _)| k != keys::CLASS_NAMES);
        assert_eq!(
            ModelMetadata::from_props(lookup(&props)),
            Err(MetadataError::Missing(keys::CLASS_NAMES))
        );

        let err = read_with(keys::STD, "[0.2, 0.0, 0.2]").err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("`std`")), "{err:?}");
        assert!(matches!(
            read_with(keys::INPUT_WIDTH, "wide"),
            Err(MetadataError::Invalid {
                key: keys::INPUT_WIDTH,
                ..
            })
        ));
        let err = read_with(keys::LAYOUT, "CHWN").err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("`layout`") && e.contains("NHWC")),
            "{err:?}"
        );
    }

    /// [`sample`]'s contract with `key` set to `value`, read back.
    fn read_with(key: &str, value: &str) -> Result<ModelMetadata, MetadataError> {
        let mut props = sample().to_props();
        for (k, v) in &mut props {
            if k == key {
                *v = value.into();
            }
        }
        ModelMetadata::from_props(lookup(&props))
    }

    #[test]
    fn pixels_become_planes_of_the_normalised_values() {
        let norm = PixelNormalisation::new([0.5, 0.25, 0.0], [0.5, 0.25, 2.0]);
        let rgb = [0, 255, 51, 255, 0, 102];
        let mut out = [f32::NAN; 6];
        norm.write_planes(&rgb, &mut out);
        let expected: Vec<f32> = [(0, 0), (3, 0), (1, 1), (4, 1), (2, 2), (5, 2)]
            .iter()
            .map(|&(i, c)| (f32::from(rgb[i]) / 255.0 - [0.5, 0.25, 0.0][c]) / [0.5, 0.25, 2.0][c])
            .collect();
        for (got, want) in out.iter().zip(&expected) {
            assert!((got - want).abs() < 1e-6, "{out:?} vs {expected:?}");
        }
    }

    #[test]
    fn a_short_output_is_filled_as_far_as_it_goes() {
        let norm = PixelNormalisation::new([0.0; 3], [1.0; 3]);
        let mut out = [7.0f32; 4];
        norm.write_planes(&[255; 9], &mut out);
        assert_eq!(out, [1.0, 1.0, 1.0, 7.0]);
    }

    #[test]
    fn channel_order_and_layout_read_back_as_written() {
        let meta = ModelMetadata {
            channel_order: ChannelOrder::Bgr,
            layout: Layout::Nhwc,
            ..sample()
        };
        let props = meta.to_props();
        let value = |key: &str| props.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(
            (value(keys::CHANNEL_ORDER), value(keys::LAYOUT)),
            (Some("BGR"), Some("NHWC"))
        );
        assert_eq!(ModelMetadata::from_props(lookup(&props)), Ok(meta));
        assert_eq!(
            serde_json::to_value(ChannelOrder::Rgb).ok(),
            Some(serde_json::json!("RGB"))
        );
    }
}
