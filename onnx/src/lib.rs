//! The ONNX file format as far as this project needs it, and the contract that travels inside
//! every exported model.
//!
//! - [`proto`]: `prost` structs for the ONNX protobuf messages, with field numbers from the ONNX
//!   specification (`onnx/onnx.proto`), written by hand so the build needs no `protoc`.
//! - [`checksum`]: the `model.onnx.sha256` sidecar written next to every export and checked by
//!   the server before loading.
//! - [`metadata`]: the `metadata_props` keys that `train export` writes and `infer` reads: class
//!   names, input size, normalisation (and [`PixelNormalisation`], the arithmetic of it),
//!   provenance.

pub mod checksum;
pub mod metadata;
pub mod proto;

pub use metadata::{ChannelOrder, Layout, MetadataError, ModelMetadata, PixelNormalisation};
