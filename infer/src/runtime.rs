//! Finding and loading the ONNX Runtime shared library (`ort` is built with `load-dynamic`).
//!
//! Order: `ORT_DYLIB_PATH` at run time; `libonnxruntime.so` beside the executable (the Lambda zip
//! holds `bootstrap` + `libonnxruntime.so`); the path baked in at build time by `.cargo/config.toml`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::logging::LogLevel;
use tracing::Level;

/// The variable with which ONNX Runtime's telemetry is turned off (read when the library starts).
pub const TELEMETRY_VARIABLE: &str = "ORT_DISABLE_TELEMETRY";

/// Turns ONNX Runtime's telemetry off unless [`TELEMETRY_VARIABLE`] is already set. Since 1.31
/// the official Linux builds send usage events to Microsoft and keep a device id and an event
/// database under `~/.cache/Microsoft/DeveloperTools`.
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

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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

/// The first attempt's outcome, kept: the library is loaded once per process, and a failure
/// is reported the same way (with its own type) to every caller.
static ENVIRONMENT: OnceLock<Result<Environment, RuntimeError>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment() -> Result<&'static Environment, RuntimeError> {
    ENVIRONMENT
        .get_or_init(|| load(locate_dylib()?))
        .as_ref()
        .map_err(Clone::clone)
}

fn load(path: PathBuf) -> Result<Environment, RuntimeError> {
    let failed = |stage: &str, e: &dyn std::fmt::Display| RuntimeError::Load {
        path: path.clone(),
        reason: format!("{stage}: {e}"),
    };
    ort::init_from(&path)
        .map_err(|e| failed("opening the library", &e))?
        .with_name("infer")
        .with_logger(std::sync::Arc::new(log))
        .build()
        .map_err(|e| failed("creating the environment", &e))
}

/// ONNX Runtime's warning, on storing an optimised graph, that the graph may hold optimisations
/// for this hardware only. The graph cache's key holds the runtime's build, the architecture and
/// the CPU's features ([`crate::graph_cache::GraphCache::entry`]), so a stored graph is loaded
/// only where it could have been made: nothing to act on, so it is logged at DEBUG.
const HARDWARE_SPECIFIC: &str = "may contain hardware specific optimizations";

/// The level one of ONNX Runtime's messages is logged at: its own, but for what needs no action.
fn level_of(level: LogLevel, message: &str) -> Level {
    match level {
        LogLevel::Warning if message.contains(HARDWARE_SPECIFIC) => Level::DEBUG,
        LogLevel::Verbose => Level::TRACE,
        LogLevel::Info => Level::INFO,
        LogLevel::Warning => Level::WARN,
        LogLevel::Error | LogLevel::Fatal => Level::ERROR,
    }
}

/// ONNX Runtime's log, as `tracing` events under the target `ort::logging` (as `ort`'s own
/// logger writes them, so that `RUST_LOG=ort=...` still selects them).
fn log(level: LogLevel, _category: &str, _id: &str, location: &str, message: &str) {
    match level_of(level, message) {
        Level::TRACE => tracing::trace!(target: "ort::logging", location, "{message}"),
        Level::DEBUG => tracing::debug!(target: "ort::logging", location, "{message}"),
        Level::INFO => tracing::info!(target: "ort::logging", location, "{message}"),
        Level::WARN => tracing::warn!(target: "ort::logging", location, "{message}"),
        _ => tracing::error!(target: "ort::logging", location, "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_hardware_specific_graph_warning_is_lowered() {
        let stored = "Serializing optimized model with Graph Optimization level greater than ORT_ENABLE_EXTENDED and the NchwcTransformer enabled. The generated model may contain hardware specific optimizations, and should only be used in the same environment the model was optimized in.";
        assert_eq!(level_of(LogLevel::Warning, stored), Level::DEBUG);
        assert_eq!(level_of(LogLevel::Warning, "Some nodes were not assigned"), Level::WARN);
        assert_eq!(level_of(LogLevel::Error, stored), Level::ERROR);
        assert_eq!(level_of(LogLevel::Info, "graph optimizations"), Level::INFO);
    }

    /// Marks the child process of the test below.
    const CHILD: &str = "INFER_RUNTIME_TEST_CHILD";
    const NOWHERE: &str = "/nonexistent/libonnxruntime.so";

    /// In a child process (the environment is loaded once per process) whose ORT_DYLIB_PATH
    /// names no file: every caller gets the typed error, which names the path once.
    #[test]
    fn a_missing_library_reaches_every_caller_as_missing() -> Result<(), Box<dyn std::error::Error>> {
        if std::env::var_os(CHILD).is_some() {
            let first = environment().err();
            assert_eq!(first, environment().err(), "the same error every time");
            assert_eq!(
                first,
                Some(RuntimeError::Missing {
                    path: PathBuf::from(NOWHERE),
                    origin: "the ORT_DYLIB_PATH environment variable",
                })
            );
            let text = first.map(|e| e.to_string()).unwrap_or_default();
            assert_eq!(text.matches(NOWHERE).count(), 1, "{text}");
            return Ok(());
        }
        let out = std::process::Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                "runtime::tests::a_missing_library_reaches_every_caller_as_missing",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env("ORT_DYLIB_PATH", NOWHERE)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}
