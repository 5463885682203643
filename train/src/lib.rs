//! ResNet-18 from scratch on libtorch (`tch`, no `tch::vision`): the network, the CIFAR-10 data
//! layouts, training with checkpoints, and the project's own ONNX exporter.

pub mod checkpoint;
pub mod export;
pub mod model;
pub mod summary;
