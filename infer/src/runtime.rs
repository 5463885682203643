//! Finding and loading the ONNX Runtime shared library (`ort` is built with `load-dynamic`).
//!
//! Order: `ORT_DYLIB_PATH` at run time; `libonnxruntime.so` beside the executable (the Lambda zip
//! holds `bootstrap` + `libonnxruntime.so`); the path baked in at build time by `.cargo/config.toml`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

/// The variable with which ONNX Runtime's telemetry is turned off (read when the library starts).
pub const TELEMETRY_VARIABLE: &str = "ORT_DISABLE_TELEMETRY";

/// Turns ONNX Runtime's telemetry off unless [`TELEMETRY_VARIABLE`] is already set. Since 1.31
/// the official Linux builds send usage events to Microsoft and keep a device id and an event
/// database under `~/.cache/Microsoft/DeveloperTools` (seen here: 0.8 MB after a day of tests).
/// An inference service should not phone home by default, and on Lambda the home directory is
/// read-only and egress may be closed. Setting the variable to `0` keeps ONNX Runtime's default.
///
/// # Safety
/// Sets an environment variable: call it before any other thread exists.
pub unsafe fn disable_telemetry_by_default() {
    if std::env::var_os(TELEMETRY_VARIABLE).is_none() {
        // SAFETY: the caller guarantees no other thread reads the environment meanwhile.
        unsafe { std::env::set_var(TELEMETRY_VARIABLE, "1") };
    }
}

/// The library file name next to the executable.
pub const DYLIB_NAME: &str = "libonnxruntime.so";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found: {path} does not exist (from {origin}); set ORT_DYLIB_PATH to libonnxruntime.so"
    )]
    Missing { path: PathBuf, origin: &'static str },
    #[error(
        "no ONNX Runtime library: ORT_DYLIB_PATH is unset, there is no {DYLIB_NAME} beside the executable, and none was baked in at build time"
    )]
    NotConfigured,
    #[error("loading ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
}

/// Where the ONNX Runtime library is, by the documented order.
pub fn locate_dylib() -> Result<PathBuf, RuntimeError> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return existing(PathBuf::from(path), "the ORT_DYLIB_PATH environment variable");
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        let beside = dir.join(DYLIB_NAME);
        if beside.is_file() {
            return Ok(beside);
        }
    }
    match option_env!("ORT_DYLIB_PATH") {
        Some(baked) => {
            let path = PathBuf::from(baked);
            // Cargo gives `relative = true` config paths as absolute ones.
            existing(path, "the path baked in at build time")
        }
        None => Err(RuntimeError::NotConfigured),
    }
}

fn existing(path: PathBuf, origin: &'static str) -> Result<PathBuf, RuntimeError> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(RuntimeError::Missing { path, origin })
    }
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static Environment, RuntimeError> {
    let result = ENVIRONMENT.get_or_init(|| {
        let path = locate_dylib().map_err(|e| e.to_string())?;
        let builder =
            ort::init_from(&path).map_err(|e| format!("loading ONNX Runtime from {}: {e}", path.display()))?;
        builder
            .with_name("infer")
            .build()
            .map_err(|e| format!("creating the ONNX Runtime environment from {}: {e}", path.display()))
    });
    match result {
        Ok(env) => Ok(env),
        Err(reason) => Err(RuntimeError::Load {
            path: locate_dylib().unwrap_or_default(),
            reason: reason.clone(),
        }),
    }
}
