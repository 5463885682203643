//! The Lambda deployment package: `infer` cross-built with `cargo lambda`, zipped with the
//! ONNX Runtime library beside it (and optionally the model), then opened again and checked
//! the way Lambda will use it: the right architecture, an executable `bootstrap`, the real
//! `libonnxruntime.so`, a glibc no newer than `provided.al2023`'s, and sizes within the limits.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use zip::write::SimpleFileOptions;

use crate::elf;
use crate::env::{Env, run_step};
use onnx::checksum;

use crate::paths;

/// The names Lambda (and `infer`) expect at the root of the zip: `/var/task/<name>` at run time.
pub const BOOTSTRAP: &str = "bootstrap";
pub const LIBRARY: &str = "libonnxruntime.so";
pub const MODEL: &str = "model.onnx";
/// `sha256sum` output for the model, which `infer` checks before loading it.
pub const MODEL_SHA256: &str = "model.onnx.sha256";

/// `provided.al2023` ships glibc 2.34: a binary that needs a newer symbol version fails to load.
pub const MAX_GLIBC: (u32, u32) = (2, 34);

/// The symbol every ONNX Runtime build exports and `ort` looks up first.
const ORT_ENTRY_POINT: &str = "OrtGetApiBase";

/// Lambda's size limits for a zip package.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The zip itself, when uploaded directly through the Lambda API.
    pub zipped: u64,
    /// Everything unpacked (function and layers together).
    pub unzipped: u64,
}

/// The quotas as Lambda enforces them: 50 MiB and 250 MiB (262,144,000 bytes).
pub const LAMBDA_LIMITS: Limits = Limits {
    zipped: 50 * 1024 * 1024,
    unzipped: 250 * 1024 * 1024,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// Graviton: about 20% cheaper per GB-second than x86_64.
    Arm64,
    #[value(name = "x86_64", alias = "x86-64")]
    X86_64,
}

impl Arch {
    /// Lambda's name for it (`Architectures` in the template).
    pub fn lambda_name(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::X86_64 => "x86_64",
        }
    }

    fn cargo_lambda_flag(self) -> &'static str {
        match self {
            Arch::Arm64 => "--arm64",
            Arch::X86_64 => "--x86-64",
        }
    }

    /// The folder of `.native/onnxruntime` holding this architecture's library.
    fn ort_dir(self) -> &'static str {
        match self {
            Arch::Arm64 => "aarch64",
            Arch::X86_64 => "x86_64",
        }
    }

    /// `e_machine` in the ELF header.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Arm64 => elf::EM_AARCH64,
            Arch::X86_64 => elf::EM_X86_64,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.lambda_name())
    }
}

/// The files that go into the zip.
#[derive(Debug, Clone)]
pub struct Parts {
    pub bootstrap: PathBuf,
    pub library: PathBuf,
    pub model: Option<PathBuf>,
}

/// One member of a zip, as found by [`inspect`].
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub size: u64,
    pub compressed: u64,
}

/// What [`inspect`] found in a zip that passed every check.
#[derive(Debug, Clone)]
pub struct Report {
    pub zip_size: u64,
    pub members: Vec<Member>,
    /// The newest glibc symbol version any ELF member needs, if it needs glibc at all.
    pub glibc: Option<(u32, u32)>,
}

impl Report {
    pub fn unzipped(&self) -> u64 {
        self.members.iter().map(|m| m.size).sum()
    }

    /// Fails, naming the limit and what to do, when the package is too big for Lambda.
    pub fn check_limits(&self, limits: Limits) -> Result<()> {
        ensure!(
            self.zip_size <= limits.zipped,
            "the zip is {} but Lambda takes at most {} for a direct upload: export the model with \
             --fp16, or leave it out of the zip (no --model) and load it from S3 (ModelKey)",
            mib(self.zip_size),
            mib(limits.zipped)
        );
        ensure!(
            self.unzipped() <= limits.unzipped,
            "the package unzips to {} but Lambda takes at most {} unzipped: export the model with \
             --fp16, or load it from S3 (ModelKey), or use the container image (up to 10 GB)",
            mib(self.unzipped()),
            mib(limits.unzipped)
        );
        Ok(())
    }

    pub fn print(&self, zip: &Path, limits: Limits) {
        println!("{}", zip.display());
        for m in &self.members {
            println!(
                "  {:<20} {:>10} ({} compressed)",
                m.name,
                mib(m.size),
                mib(m.compressed)
            );
        }
        println!(
            "  zip {} of {} allowed; unzipped {} of {} allowed",
            mib(self.zip_size),
            mib(limits.zipped),
            mib(self.unzipped()),
            mib(limits.unzipped)
        );
        if let Some((major, minor)) = self.glibc {
            println!(
                "  needs glibc {major}.{minor} (provided.al2023 has {}.{})",
                MAX_GLIBC.0, MAX_GLIBC.1
            );
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Writes the zip: fixed timestamps (the same inputs give the same bytes, so `sam deploy`
/// uploads nothing when nothing changed), and world-readable modes because Lambda runs the
/// function as a user that owns none of the files.
pub fn assemble(parts: &Parts, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = out.with_extension("zip.partial");
    let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut zip = zip::ZipWriter::new(io::BufWriter::new(file));
    let base = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .last_modified_time(zip::DateTime::default());
    let mut members = vec![
        (BOOTSTRAP, parts.bootstrap.as_path(), 0o755),
        (LIBRARY, &parts.library, 0o644),
    ];
    if let Some(model) = &parts.model {
        members.push((MODEL, model, 0o644));
    }
    for (name, source, mode) in members {
        // `fs::read` follows symlinks: `.native/onnxruntime/<arch>/libonnxruntime.so` is one.
        let bytes = fs::read(source).with_context(|| format!("reading {} for {name}", source.display()))?;
        zip.start_file(name, base.unix_permissions(mode))?;
        zip.write_all(&bytes)
            .with_context(|| format!("writing {name} into {}", tmp.display()))?;
    }
    if let Some(digest) = parts.model.as_deref().map(model_digest).transpose()?.flatten() {
        zip.start_file(MODEL_SHA256, base.unix_permissions(0o644))?;
        zip.write_all(format!("{digest}  {MODEL}\n").as_bytes())?;
    }
    zip.finish()?
        .into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("finishing {}", tmp.display()))?;
    fs::rename(&tmp, out).with_context(|| format!("moving {} into place", out.display()))?;
    Ok(())
}

/// Opens a package and checks it as Lambda will use it. `model` says whether `model.onnx` must
/// be there (bundled model) or must not (model from S3).
pub fn inspect(zip_path: &Path, arch: Arch, model: bool) -> Result<Report> {
    let zip_size = fs::metadata(zip_path)
        .with_context(|| format!("reading {}", zip_path.display()))?
        .len();
    let file = fs::File::open(zip_path).with_context(|| format!("opening {}", zip_path.display()))?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file))
        .with_context(|| format!("{} is not a readable zip", zip_path.display()))?;

    let mut found = BTreeMap::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let name = entry.name().to_owned();
        ensure!(!entry.is_dir(), "{}: unexpected folder {name}", zip_path.display());
        let mut bytes = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
        entry
            .read_to_end(&mut bytes)
            .with_context(|| format!("{}: reading {name}", zip_path.display()))?;
        let member = Member {
            name: name.clone(),
            size: entry.size(),
            compressed: entry.compressed_size(),
        };
        ensure!(
            found.insert(name.clone(), (member, entry.unix_mode(), bytes)).is_none(),
            "{}: {name} is in the zip twice",
            zip_path.display()
        );
    }

    let mut expected = vec![BOOTSTRAP, LIBRARY];
    if model {
        expected.push(MODEL);
    }
    let names: Vec<&str> = found.keys().map(String::as_str).collect();
    for name in &expected {
        ensure!(
            found.contains_key(*name),
            "{}: no {name} in the zip (it holds {names:?})",
            zip_path.display()
        );
    }
    if model && found.contains_key(MODEL_SHA256) {
        expected.push(MODEL_SHA256);
    }
    for name in &names {
        ensure!(
            expected.contains(name),
            "{}: unexpected member {name} (expected exactly {expected:?})",
            zip_path.display()
        );
    }

    let mut glibc = None;
    for (name, (_, mode, bytes)) in &found {
        // Lambda's user owns none of the files: "other" needs read (and execute for bootstrap).
        let need = if name == BOOTSTRAP { 0o005 } else { 0o004 };
        let mode = mode.with_context(|| format!("{name} carries no Unix mode; Lambda would not run it"))?;
        ensure!(
            mode & need == need,
            "{name} has mode {:o}; Lambda needs it {} by others",
            mode & 0o777,
            if name == BOOTSTRAP {
                "readable and executable"
            } else {
                "readable"
            }
        );
        let kind = match name.as_str() {
            BOOTSTRAP => Some(elf::Kind::Executable),
            LIBRARY => Some(elf::Kind::SharedLibrary),
            _ => None,
        };
        if name == MODEL_SHA256 {
            checksum::check(
                checksum::sha256_hex(&found[MODEL].2),
                &String::from_utf8_lossy(bytes),
                MODEL,
                name,
            )
            .with_context(|| format!("{name} does not match {MODEL}"))?;
        } else if let Some(kind) = kind {
            let info = elf::Elf::parse(bytes).with_context(|| format!("{name} is not a usable ELF file"))?;
            info.expect(kind, arch.elf_machine())
                .with_context(|| format!("{name} is not a valid {arch} {kind}"))?;
            if name == LIBRARY {
                ensure!(
                    info.exports(ORT_ENTRY_POINT)?,
                    "{name} does not export {ORT_ENTRY_POINT}: it is not ONNX Runtime"
                );
            }
            let needs = info.max_glibc()?;
            if let Some(v) = needs {
                ensure!(
                    v <= MAX_GLIBC,
                    "{name} needs glibc {}.{} but provided.al2023 has {}.{}",
                    v.0,
                    v.1,
                    MAX_GLIBC.0,
                    MAX_GLIBC.1
                );
            }
            glibc = glibc.max(needs);
        } else {
            // ONNX's ModelProto starts with field 1, `ir_version` (a varint: tag byte 0x08).
            ensure!(
                bytes.first() == Some(&0x08),
                "{name} does not look like an ONNX model (no ir_version field first)"
            );
        }
    }

    Ok(Report {
        zip_size,
        members: found.into_values().map(|(m, _, _)| m).collect(),
        glibc,
    })
}

/// Checks the model against `<model>.sha256` when that exists, and returns the digest then.
pub fn model_digest(model: &Path) -> Result<Option<String>> {
    if !checksum::sidecar_path(model).exists() {
        return Ok(None);
    }
    let digest = checksum::sha256_file(model)?;
    checksum::check_file(model, &digest)?;
    Ok(Some(digest))
}

/// Where `cargo xtask package` writes the zip.
pub fn default_output(arch: Arch) -> PathBuf {
    paths::repo_root().join(format!("target/lambda/infer-{}.zip", arch.lambda_name()))
}

/// `cargo xtask package`: cross-builds `infer`, assembles the zip, checks it and prints its sizes.
pub fn package(env: &Env, arch: Arch, model: Option<&Path>, out: &Path) -> Result<Report> {
    if let Some(model) = model {
        ensure!(model.is_file(), "--model {}: no such file", model.display());
        model_digest(model)?;
    }
    let started = Instant::now();
    // The workspace's release profile keeps line tables for local profiling; on Lambda they
    // only make the binary several times larger and slow every cold start's unzip (package
    // sizes: infra/README.md, step 1).
    let mut build = env.command("cargo");
    build
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    run_step(
        &format!("cargo lambda build ({arch})"),
        build.args([
            "lambda",
            "build",
            "--release",
            arch.cargo_lambda_flag(),
            "--package",
            "infer",
            "--bin",
            "infer",
            "--locked",
        ]),
    )?;
    let bootstrap = paths::repo_root().join("target/lambda/infer/bootstrap");
    ensure!(
        bootstrap.is_file(),
        "cargo lambda build succeeded but left no {}",
        bootstrap.display()
    );
    let parts = Parts {
        bootstrap,
        library: env.ort_dir.join(arch.ort_dir()).join(LIBRARY),
        model: model.map(Path::to_path_buf),
    };
    assemble(&parts, out)?;
    let report = inspect(out, arch, model.is_some())?;
    report.print(out, LAMBDA_LIMITS);
    report.check_limits(LAMBDA_LIMITS)?;
    if model.is_some() {
        println!("  deploy it with ModelPath=/var/task/{MODEL} (the template's parameter)");
    }
    eprintln!("xtask: packaged in {:.1?}", started.elapsed());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::elf_header;

    fn real_library(arch: &str) -> Result<PathBuf> {
        let lib = paths::native_link().join("onnxruntime").join(arch).join(LIBRARY);
        ensure!(lib.exists(), "{} is missing: run `cargo xtask setup`", lib.display());
        Ok(lib)
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Result<Self> {
            Ok(Fixture {
                dir: tempfile::tempdir()?,
            })
        }
        fn file(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
            let path = self.dir.path().join(name);
            fs::write(&path, bytes)?;
            Ok(path)
        }
        fn zip(&self, parts: &Parts) -> Result<PathBuf> {
            let out = self.dir.path().join("out/package.zip");
            assemble(parts, &out)?;
            Ok(out)
        }
        /// A zip written member by member, for layouts `assemble` would never produce.
        fn raw_zip(&self, members: &[(&str, &[u8], u32)]) -> Result<PathBuf> {
            let out = self.dir.path().join("raw.zip");
            let mut zip = zip::ZipWriter::new(fs::File::create(&out)?);
            for (name, bytes, mode) in members {
                zip.start_file(*name, SimpleFileOptions::default().unix_permissions(*mode))?;
                zip.write_all(bytes)?;
            }
            zip.finish()?;
            Ok(out)
        }
    }

    fn err_text(result: Result<Report>) -> String {
        match result {
            Ok(report) => panic!("expected a rejection, got {report:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_good_arm64_package_passes_and_reports_its_sizes() -> Result<()> {
        let fx = Fixture::new()?;
        let model = fx.file("m.onnx", &[0x08, 0x07, 0x12, 0x00])?;
        let parts = Parts {
            bootstrap: fx.file("bootstrap", &elf_header(elf::EM_AARCH64, 2))?,
            library: real_library("aarch64")?,
            model: Some(model),
        };
        let zip = fx.zip(&parts)?;
        let report = inspect(&zip, Arch::Arm64, true)?;
        let names: Vec<_> = report.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, [BOOTSTRAP, LIBRARY, MODEL]);
        let lib_size = fs::metadata(&parts.library)?.len();
        assert_eq!(report.members[1].size, lib_size, "the real file, not the symlink");
        assert!(report.zip_size < report.unzipped(), "members are compressed");
        // The wheel is manylinux_2_28: glibc at most 2.28 and at least 2.17.
        let glibc = report.glibc.context("libonnxruntime.so needs glibc")?;
        assert!(((2, 17)..=(2, 28)).contains(&glibc), "{glibc:?}");
        report.check_limits(LAMBDA_LIMITS)?;
        Ok(())
    }

    #[test]
    fn assembling_twice_gives_the_same_bytes() -> Result<()> {
        let fx = Fixture::new()?;
        let parts = Parts {
            bootstrap: fx.file("bootstrap", &elf_header(elf::EM_AARCH64, 2))?,
            library: fx.file("lib", &elf_header(elf::EM_AARCH64, 3))?,
            model: None,
        };
        let first = fs::read(fx.zip(&parts)?)?;
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = fs::read(fx.zip(&parts)?)?;
        assert_eq!(first, second);
        Ok(())
    }

    #[test]
    fn an_x86_64_bootstrap_in_an_arm64_package_is_rejected() -> Result<()> {
        let fx = Fixture::new()?;
        let zip = fx.zip(&Parts {
            bootstrap: fx.file("bootstrap", &elf_header(elf::EM_X86_64, 2))?,
            library: real_library("aarch64")?,
            model: None,
        })?;
        let err = err_text(inspect(&zip, Arch::Arm64, false));
        assert!(err.contains("bootstrap is not a valid arm64 executable"), "{err}");
        assert!(err.contains("built for x86_64, not aarch64"), "{err}");
        // The same zip is a fine x86_64 bootstrap, so only the library is wrong then.
        let err = err_text(inspect(&zip, Arch::X86_64, false));
        assert!(
            err.contains("libonnxruntime.so is not a valid x86_64 shared library"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn the_x86_64_library_in_an_arm64_package_is_rejected() -> Result<()> {
        let fx = Fixture::new()?;
        let zip = fx.zip(&Parts {
            bootstrap: fx.file("bootstrap", &elf_header(elf::EM_AARCH64, 2))?,
            library: real_library("x86_64")?,
            model: None,
        })?;
        let err = err_text(inspect(&zip, Arch::Arm64, false));
        assert!(
            err.contains("libonnxruntime.so is not a valid arm64 shared library"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn a_library_in_place_of_bootstrap_is_rejected() -> Result<()> {
        let fx = Fixture::new()?;
        let lib = real_library("aarch64")?;
        let zip = fx.zip(&Parts {
            bootstrap: lib.clone(),
            library: lib,
            model: None,
        })?;
        let err = err_text(inspect(&zip, Arch::Arm64, false));
        assert!(err.contains("it is a shared library, not an executable"), "{err}");
        Ok(())
    }

    #[test]
    fn a_shared_library_that_is_not_onnx_runtime_is_rejected() -> Result<()> {
        let fx = Fixture::new()?;
        let zip = fx.zip(&Parts {
            bootstrap: fx.file("bootstrap", &elf_header(elf::EM_AARCH64, 2))?,
            library: fx.file("lib", &elf_header(elf::EM_AARCH64, 3))?,
            model: None,
        })?;
        let err = err_text(inspect(&zip, Arch::Arm64, false));
        assert!(err.contains("does not export OrtGetApiBase"), "{err}");
        Ok(())
    }

    #[test]
    fn missing_extra_and_unreadable_members_are_rejected() -> Result<()> {
        let fx = Fixture::new()?;
        let boot = elf_header(elf::EM_AARCH64, 2);
        let lib = fs::read(real_library("aarch64")?)?;

        let zip = fx.raw_zip(&[(BOOTSTRAP, &boot, 0o755), (LIBRARY, &lib, 0o644)])?;
        let err = err_text(inspect(&zip, Arch::Arm64, true));
        assert!(err.contains("no model.onnx in the zip"), "{err}");

        let zip = fx.raw_zip(&[
            (BOOTSTRAP, &boot, 0o755),
            (LIBRARY, &lib, 0o644),
            (MODEL, &[8, 1], 0o644),
        ])?;
        let err = err_text(inspect(&zip, Arch::Arm64, false));
        assert!(err.contains("unexpected member model.onnx"), "{err}");

        let zip = fx.raw_zip(&[(BOOTSTRAP, &boot, 0o700), (LIBRARY, &lib, 0o644)])?;
        let err = err_text(inspect(&zip, Arch::Arm64, false));
        assert!(err.contains("bootstrap has mode 700"), "{err}");

        let zip = fx.raw_zip(&[
            (BOOTSTRAP, &boot, 0o755),
            (LIBRARY, &lib, 0o644),
            (MODEL, b"{json}", 0o644),
        ])?;
        let err = err_text(inspect(&zip, Arch::Arm64, true));
        assert!(err.contains("model.onnx does not look like an ONNX model"), "{err}");
        Ok(())
    }

    #[test]
    fn glibc_versions_parse_and_the_limit_is_al2023s() {
        assert_eq!(elf::parse_glibc("GLIBC_2.34"), Some((2, 34)));
        assert_eq!(elf::parse_glibc("GLIBC_2.2.5"), Some((2, 2)));
        assert_eq!(elf::parse_glibc("GLIBCXX_3.4"), None);
        assert_eq!(elf::parse_glibc("libc.so.6"), None);
        assert!(
            (2, 35) > MAX_GLIBC && (2, 9) < MAX_GLIBC,
            "compared as numbers, not text"
        );
    }

    #[test]
    fn sizes_over_the_limits_fail_with_the_way_out() -> Result<()> {
        let member = |name: &str, size| Member {
            name: name.into(),
            size,
            compressed: 30,
        };
        let report = Report {
            zip_size: 60,
            members: vec![member(BOOTSTRAP, 100), member(LIBRARY, 200)],
            glibc: None,
        };
        report.check_limits(Limits {
            zipped: 60,
            unzipped: 300,
        })?;
        let err = report
            .check_limits(Limits {
                zipped: 59,
                unzipped: 300,
            })
            .err()
            .context("zip over")?;
        assert!(
            format!("{err:#}").contains("direct upload") && format!("{err:#}").contains("--fp16"),
            "{err:#}"
        );
        let err = report
            .check_limits(Limits {
                zipped: 60,
                unzipped: 299,
            })
            .err()
            .context("unzipped over")?;
        assert!(
            format!("{err:#}").contains("unzipped") && format!("{err:#}").contains("S3"),
            "{err:#}"
        );
        Ok(())
    }

    #[test]
    fn a_model_digest_sidecar_is_enforced() -> Result<()> {
        let fx = Fixture::new()?;
        let model = fx.file("m.onnx", b"\x08\x07model")?;
        assert_eq!(model_digest(&model)?, None, "no sidecar: nothing to check");
        let digest = checksum::sha256_file(&model)?;
        fx.file("m.onnx.sha256", format!("{digest}  m.onnx\n").as_bytes())?;
        assert_eq!(model_digest(&model)?.as_deref(), Some(digest.as_str()));

        // The zip carries it renamed, and the inspection holds the model to it.
        let boot = fx.file("bootstrap", &elf_header(elf::EM_AARCH64, 2))?;
        let lib = real_library("aarch64")?;
        let zip = fx.zip(&Parts {
            bootstrap: boot.clone(),
            library: lib.clone(),
            model: Some(model.clone()),
        })?;
        let names: Vec<_> = inspect(&zip, Arch::Arm64, true)?
            .members
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, [BOOTSTRAP, LIBRARY, MODEL, MODEL_SHA256]);
        let (boot, lib) = (fs::read(boot)?, fs::read(lib)?);
        let stale = format!("{digest}  model.onnx\n");
        let zip = fx.raw_zip(&[
            (BOOTSTRAP, &boot, 0o755),
            (LIBRARY, &lib, 0o644),
            (MODEL, b"\x08\x07other", 0o644),
            (MODEL_SHA256, stale.as_bytes(), 0o644),
        ])?;
        let err = err_text(inspect(&zip, Arch::Arm64, true));
        assert!(err.contains("model.onnx.sha256 does not match model.onnx"), "{err}");

        fs::write(&model, b"\x08\x07tampered")?;
        let err = format!("{:#}", model_digest(&model).err().context("a changed model must fail")?);
        assert!(err.contains("m.onnx.sha256 says"), "{err}");
        Ok(())
    }
}
