//! The level of libtorch's own C++ log lines and warnings (c10's, not `tracing`'s).
//!
//! tch 0.24's `autocast` calls `at::autocast::is_enabled` and `set_enabled`, which libtorch 2.11
//! deprecates with a warning on *every* call: a mixed-precision run on a GPU printed three lines
//! per step, which buried a long run's own output. libtorch reads
//! `TORCH_CPP_LOG_LEVEL` only when Python initialises it, so this sets c10's level itself.

/// c10's levels, as `TORCH_CPP_LOG_LEVEL` spells them.
const LEVELS: [&str; 4] = ["INFO", "WARNING", "ERROR", "FATAL"];

unsafe extern "C" {
    /// c10's minimum level for log lines and warnings (0 INFO .. 3 FATAL), a plain C global
    /// in libc10 that every message is checked against when it is emitted.
    static mut FLAGS_caffe2_log_level: i32;
}

/// `INFO`, `WARNING`, `ERROR`, `FATAL` (any case) or `0`-`3`.
pub fn parse_level(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (0..LEVELS.len() as i32).contains(&n).then_some(n);
    }
    LEVELS.iter().position(|l| l.eq_ignore_ascii_case(s)).map(|i| i as i32)
}

/// Sets libtorch's level: `TORCH_CPP_LOG_LEVEL` when it is set (an invalid value is reported
/// and ignored), else `default`.
pub fn set_level_from_env_or(default: i32) {
    let level = match std::env::var("TORCH_CPP_LOG_LEVEL") {
        Ok(v) => parse_level(&v).unwrap_or_else(|| {
            tracing::warn!("TORCH_CPP_LOG_LEVEL={v:?} is not one of {LEVELS:?} or 0-3; ignored");
            default
        }),
        Err(_) => default,
    };
    set_level(level);
}

/// Sets libtorch's level (0 INFO .. 3 FATAL).
pub fn set_level(level: i32) {
    // SAFETY: a 4-byte integer that libtorch only reads; written before any training thread
    // starts (a torn read is impossible for an aligned i32 on the platforms libtorch supports).
    unsafe { std::ptr::addr_of_mut!(FLAGS_caffe2_log_level).write(level.clamp(0, 3)) }
}

/// The current level.
pub fn level() -> i32 {
    // SAFETY: as in `set_level`.
    unsafe { std::ptr::addr_of!(FLAGS_caffe2_log_level).read() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn levels_parse_by_name_or_number() {
        assert_eq!(parse_level("error"), Some(2));
        assert_eq!(parse_level(" WARNING "), Some(1));
        assert_eq!(parse_level("3"), Some(3));
        assert_eq!(parse_level("4"), None);
        assert_eq!(parse_level("loud"), None);
    }

    /// Names the level for the child process of the test below, and marks it as the child.
    const PROBE: &str = "TORCH_LOG_PROBE";

    /// Resizes a non-empty `out` tensor, which libtorch 2.11 warns about (once per process,
    /// hence a child process per level), at `level`.
    fn emit_a_libtorch_warning(level: &str) {
        set_level(parse_level(level).unwrap_or(1));
        let a = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let out = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let _ = a.add_out(&out, &a);
    }

    #[test]
    fn the_level_decides_whether_libtorch_warnings_print() -> Result<(), Box<dyn std::error::Error>> {
        // The child: this test re-run by itself (below) with the level to try.
        if let Ok(level) = std::env::var(PROBE) {
            emit_a_libtorch_warning(&level);
            return Ok(());
        }
        let exe = std::env::current_exe()?;
        let stderr_at = |level: &str| -> Result<String, Box<dyn std::error::Error>> {
            let out = Command::new(&exe)
                .args([
                    "--exact",
                    "torch_log::tests::the_level_decides_whether_libtorch_warnings_print",
                    "--nocapture",
                ])
                .env(PROBE, level)
                .output()?;
            assert!(
                out.status.success(),
                "{level}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("1 passed"), "the child ran the probe: {stdout}");
            Ok(String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let marker = "was resized";
        assert!(stderr_at("WARNING")?.contains(marker), "a warning prints at WARNING");
        assert!(!stderr_at("ERROR")?.contains(marker), "and not at ERROR");
        set_level(2);
        assert_eq!(level(), 2);
        set_level(1);
        Ok(())
    }
}
