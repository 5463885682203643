//! The portable micro-kernel must be vector code on the default target, not a call per
//! multiply-add: `f32::mul_add` without the `fma` target feature compiles to a call to `fmaf`,
//! which shows up in this very executable's symbols.

use anyhow::{Context, Result};
use object::{Object, ObjectSymbol};
use scratch::fast::{self, Kernel};
use scratch::{Conv2dParams, Tensor4, naive};

/// The software fused multiply-adds (`f32`, `f64`) that `mul_add` calls, by symbol name.
const FMA: [&str; 2] = ["fmaf", "fma"];

#[test]
fn portable_kernel_calls_no_fma_function() -> Result<()> {
    // Runs the portable kernel, so that it is linked into this executable, and checks it computes.
    let input = Tensor4::random([1, 5, 9, 40], 1);
    let weight = Tensor4::random([7, 5, 3, 3], 2);
    let bias = Tensor4::random([1, 1, 1, 7], 3).into_data();
    let params = Conv2dParams::default().padding(1);
    let portable = fast::conv2d_with_kernel(&input, &weight, Some(&bias), &params, Kernel::portable())?;
    let reference = naive::conv2d(&input, &weight, Some(&bias), &params)?;
    let diff = portable.max_abs_diff(&reference)?;
    assert!(diff <= 1e-5, "portable kernel differs from the naive loops by {diff}");

    let exe = std::env::current_exe().context("locating the test executable")?;
    let bytes = std::fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
    let file = object::File::parse(&*bytes).with_context(|| format!("parsing {}", exe.display()))?;
    // Rust's compiler-builtins defines `fmaf` inside the executable; the C library's is an
    // import. The linker drops unreferenced functions, so either one's presence means a call.
    let names: Vec<&str> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter_map(|s| s.name().ok())
        .collect();
    // Without a symbol table (a stripped executable) the check would pass vacuously.
    anyhow::ensure!(
        names.contains(&"main"),
        "{} has no symbol table to inspect",
        exe.display()
    );
    let fma: Vec<&&str> = names
        .iter()
        .filter(|name| FMA.contains(&name.split('@').next().unwrap_or(name)))
        .collect();
    assert!(
        fma.is_empty(),
        "{} links {fma:?}: a scalar call per multiply-add instead of vector code",
        exe.display()
    );
    Ok(())
}
