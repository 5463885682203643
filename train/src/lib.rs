//! ResNet-18 from scratch on libtorch (`tch`, no `tch::vision`): the network, the CIFAR-10 data
//! layouts, training with checkpoints, and the project's own ONNX exporter.

pub mod arch;
pub mod atomic_file;
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod download;
pub mod eval;
pub mod export;
pub mod fit;
pub mod layout;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod options;
pub mod plots;
pub mod scaler;
pub mod summary;
pub mod torch_log;
pub mod trainer;
