//! ResNet-18 on libtorch: model, data, training, ONNX export (work in progress).
