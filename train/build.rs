//! Gives binaries and test binaries an rpath to libtorch: torch-sys links it but sets none on the
//! final binary. Also the build script of `scratch` and `e2e` (their `package.build`).

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        let lib = std::fs::canonicalize(&lib).unwrap_or(lib);
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
