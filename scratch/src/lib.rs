//! Pure-Rust 2-D convolution (work in progress).
