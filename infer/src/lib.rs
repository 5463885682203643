//! Serving the ONNX model over HTTP on Lambda and as a server (work in progress).
