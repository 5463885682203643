//! The exporter against the real runtimes: a random-weight network is exported, loaded by ONNX
//! Runtime through `ort`, and its logits compared with libtorch's eval-mode forward; the
//! metadata is read back through ONNX Runtime's own metadata API; the graph's structure is pinned
//! by a snapshot; wrong inputs give errors that name what is wrong.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use train::checkpoint::{self, CheckpointInfo};
use train::export::{
    self, BatchNormMode, ExportError, ExportOptions, GraphOptions, INPUT, OUTPUT, build_model, export_model,
};
use train::model::{ResNet18, ResNetConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const FLOAT: (Kind, Device) = (Kind::Float, Device::Cpu);

/// ONNX Runtime allows one environment per process; the tests share it.
fn environment() -> Result<&'static Environment, String> {
    static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let dylib = std::env::var("ORT_DYLIB_PATH").map_err(|_| "ORT_DYLIB_PATH is not set".to_owned())?;
        ort::init_from(&dylib)
            .map_err(|e| format!("loading {dylib}: {e}"))?
            .with_name("export-tests")
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn session(bytes: &[u8]) -> Result<Session, Box<dyn std::error::Error>> {
    Ok(Session::builder(environment()?)?.commit_from_memory(bytes)?)
}

/// A network with random weights and random BatchNorm statistics and affine parameters, so that
/// folding and the BatchNormalization nodes have real work to do (fresh BatchNorm is identity).
///
/// Every third channel has a running variance near 1e-3, of which BatchNorm's epsilon (1e-5) is
/// 1%: a wrong epsilon moves those channels' outputs by up to a few percent, far beyond the
/// parity tolerance, where over variances near 1 it would move them by 1e-5. Their `gamma` is
/// scaled down by about the same sqrt(1e-3) so that their outputs stay near unit size.
fn random_model(width: i64, classes: i64, seed: i64) -> Result<(VarStore, ResNet18), Box<dyn std::error::Error>> {
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    let model = ResNet18::new(
        &vs.root(),
        ResNetConfig {
            width,
            num_classes: classes,
        },
    )?;
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            let n = t.size()[0];
            let small = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3).eq(0);
            let fill = if name.ends_with("bn.running_mean") {
                Tensor::randn([n], FLOAT) * 0.2
            } else if name.ends_with("bn.running_var") {
                let near_one = Tensor::rand([n], FLOAT) + 0.5;
                ((Tensor::rand([n], FLOAT) + 0.5) * 1e-3).where_self(&small, &near_one)
            } else if name.ends_with("bn.weight") {
                let gamma = Tensor::rand([n], FLOAT) + 0.5;
                (&gamma * 0.03).where_self(&small, &gamma)
            } else if name.ends_with("bn.bias") {
                Tensor::randn([n], FLOAT) * 0.2
            } else {
                continue;
            };
            t.copy_(&fill);
        }
    });
    Ok((vs, model))
}

fn metadata(model: &ResNet18) -> onnx::ModelMetadata {
    let mut info = CheckpointInfo::untrained(model.config);
    info.class_names = (0..model.config.num_classes).map(|i| format!("label {i}")).collect();
    export::metadata_for(&info)
}

/// Logits from libtorch (eval mode) and from ONNX Runtime for the same batch.
fn both_logits(
    model: &ResNet18,
    bytes: &[u8],
    batch: &Tensor,
) -> Result<(Vec<f32>, Vec<f32>), Box<dyn std::error::Error>> {
    let expected = Vec::<f32>::try_from(model.forward_checked(batch, false)?.flatten(0, -1))?;
    let shape: Vec<usize> = batch.size().iter().map(|&d| d as usize).collect();
    let pixels = Vec::<f32>::try_from(batch.flatten(0, -1))?;
    let mut session = session(bytes)?;
    let outputs = session.run(ort::inputs![INPUT => OrtTensor::from_array((shape, pixels))?])?;
    let (out_shape, got) = outputs[OUTPUT].try_extract_tensor::<f32>()?;
    let classes = model.config.num_classes;
    assert_eq!(
        out_shape.iter().copied().collect::<Vec<_>>(),
        [batch.size()[0], classes]
    );
    Ok((expected, got.to_vec()))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks(classes)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |best, (i, &v)| if v > best.1 { (i, v) } else { best },
                )
                .0
        })
        .collect()
}

#[test]
fn fp32_logits_match_libtorch_at_width_4_and_8_in_both_batchnorm_modes() -> TestResult {
    for (width, seed) in [(4, 1), (8, 2)] {
        let (_vs, model) = random_model(width, 10, seed)?;
        // Batch 1 and 7: the batch dimension is symbolic.
        for batch in [1, 7] {
            let x = Tensor::randn([batch, 3, 32, 32], FLOAT);
            for mode in [BatchNormMode::Fold, BatchNormMode::Nodes] {
                let opts = GraphOptions {
                    batch_norm: mode,
                    ..GraphOptions::default()
                };
                let bytes = export_model(&model, &metadata(&model), &opts)?;
                let (expected, got) = both_logits(&model, &bytes, &x)?;
                let diff = max_abs_diff(&expected, &got);
                assert!(
                    diff <= 1e-4,
                    "width {width}, batch {batch}, {mode:?}: max |tch - ort| = {diff:e}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn fp16_weights_keep_the_argmax_on_256_images_and_halve_the_file() -> TestResult {
    let (_vs, model) = random_model(8, 10, 3)?;
    let meta = metadata(&model);
    let fp32 = export_model(&model, &meta, &GraphOptions::default())?;
    let fp16_opts = GraphOptions {
        fp16: true,
        ..GraphOptions::default()
    };
    let fp16 = export_model(&model, &meta, &fp16_opts)?;
    let x = Tensor::randn([256, 3, 32, 32], FLOAT);
    let (expected, got) = both_logits(&model, &fp16, &x)?;
    let (want, have) = (argmax_rows(&expected, 10), argmax_rows(&got, 10));
    let agree = want.iter().zip(&have).filter(|(a, b)| a == b).count();
    assert!(agree * 100 >= 99 * 256, "argmax agrees on {agree}/256");
    // Not bit-identical to float32 either: the weights really were rounded.
    assert!(max_abs_diff(&expected, &got) > 0.0);
    let ratio = fp16.len() as f64 / fp32.len() as f64;
    assert!((0.45..0.6).contains(&ratio), "fp16 file is {ratio:.3} of the fp32 one");
    Ok(())
}

#[test]
fn standard_width_64_matches_at_batch_2() -> TestResult {
    let (_vs, model) = random_model(64, 10, 4)?;
    let meta = metadata(&model);
    let x = Tensor::randn([2, 3, 32, 32], FLOAT);
    let bytes = export_model(&model, &meta, &GraphOptions::default())?;
    let (expected, got) = both_logits(&model, &bytes, &x)?;
    let diff = max_abs_diff(&expected, &got);
    assert!(diff <= 1e-4, "width 64 fp32: max |tch - ort| = {diff:e}");

    let fp16_opts = GraphOptions {
        fp16: true,
        ..GraphOptions::default()
    };
    let bytes = export_model(&model, &meta, &fp16_opts)?;
    let (expected, got) = both_logits(&model, &bytes, &x)?;
    assert_eq!(
        argmax_rows(&expected, 10),
        argmax_rows(&got, 10),
        "width 64 fp16 argmax"
    );
    Ok(())
}

/// Exports through `train export`'s entry point from a saved checkpoint.
fn export_saved(
    dir: &Path,
    info: &CheckpointInfo,
    fp16: bool,
) -> Result<export::ExportReport, Box<dyn std::error::Error>> {
    let (vs, _model) = random_model(info.config.width, info.config.num_classes, 5)?;
    let ckpt = dir.join("model.ckpt");
    checkpoint::save(&ckpt, &vs, info)?;
    Ok(export::export_checkpoint(&ExportOptions {
        checkpoint: ckpt,
        out: dir.join("out").join("model.onnx"),
        opset: 18,
        fp16,
    })?)
}

#[test]
fn metadata_round_trips_through_onnx_runtime() -> TestResult {
    let dir = tempfile::tempdir()?;
    let info = CheckpointInfo {
        config: ResNetConfig {
            width: 4,
            num_classes: 3,
        },
        class_names: vec!["airplane".into(), "café \"quoted\", with comma".into(), "truck".into()],
        mean: [0.25, 0.5, 0.75],
        std: [0.125, 0.25, 0.375],
        dataset: "CIFAR-3".into(),
        epochs: 7,
        test_accuracy: Some(0.8125),
    };
    let report = export_saved(dir.path(), &info, false)?;
    let bytes = std::fs::read(&report.path)?;
    assert_eq!(report.bytes, bytes.len() as u64);

    let session = session(&bytes)?;
    let meta = session.metadata()?;
    assert_eq!(meta.producer().as_deref(), Some(export::PRODUCER));
    let read = onnx::ModelMetadata::from_props(|k| meta.custom(k))?;
    assert_eq!(read.class_names, info.class_names);
    assert_eq!((read.input_height, read.input_width), (32, 32));
    assert_eq!(
        (read.channel_order, read.layout),
        (onnx::ChannelOrder::Rgb, onnx::Layout::Nchw)
    );
    assert_eq!((read.mean, read.std), (info.mean, info.std));
    assert_eq!((read.architecture.as_str(), read.width), (export::ARCHITECTURE, 4));
    assert_eq!(read.dataset, info.dataset);
    assert_eq!(read.test_accuracy, info.test_accuracy);
    assert_eq!(read.epochs, Some(7));
    assert_eq!(read.project_version, env!("CARGO_PKG_VERSION"));
    let head = std::process::Command::new("git").args(["rev-parse", "HEAD"]).output()?;
    if head.status.success() {
        let head = String::from_utf8(head.stdout)?.trim().to_owned();
        let commit = read.git_commit.clone().unwrap_or_default();
        assert!(
            commit == head || commit == format!("{head}-dirty"),
            "{commit} vs {head}"
        );
    }
    let at = read.exported_at.clone().unwrap_or_default();
    let now = export::provenance::now_rfc3339();
    assert!(
        at.len() == 20 && at.ends_with('Z') && at[..10] == now[..10],
        "{at} vs {now}"
    );

    // Nothing but the contract's keys.
    let keys: BTreeSet<String> = meta.custom_keys()?.into_iter().collect();
    let contract: BTreeSet<String> = read.to_props().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, contract);

    // The sidecar matches the file, and a modified file is refused.
    assert_eq!(onnx::checksum::verify(&report.path, &bytes)?, report.sha256);
    let sidecar = std::fs::read_to_string(&report.sidecar)?;
    assert_eq!(sidecar, format!("{}  model.onnx\n", report.sha256));
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert!(onnx::checksum::verify(&report.path, &tampered).is_err());
    let shown = report.to_string();
    assert!(shown.contains(&report.sha256) && shown.contains("nodes"), "{shown}");
    Ok(())
}

/// One line per node: op type, name and output shape (from `value_info`), weights left out.
fn structure(proto: &onnx::proto::ModelProto) -> String {
    let Some(graph) = &proto.graph else {
        return "no graph".into();
    };
    let shapes: Vec<(String, String)> = graph
        .value_info
        .iter()
        .chain(&graph.input)
        .chain(&graph.output)
        .map(|v| {
            let dims: Vec<String> = export::shape_of(v)
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect();
            (v.name.clone(), format!("[{}]", dims.join(", ")))
        })
        .collect();
    let shape = |name: &str| {
        shapes
            .iter()
            .find(|(n, _)| n == name)
            .map_or_else(|| "-".to_owned(), |(_, s)| s.clone())
    };
    let mut lines = vec![format!(
        "opset {:?}, ir {}, input {} {}",
        proto.opset_import.iter().map(|o| o.version).collect::<Vec<_>>(),
        proto.ir_version,
        INPUT,
        shape(INPUT)
    )];
    for node in &graph.node {
        let out = node.output.first().map(String::as_str).unwrap_or("");
        lines.push(format!("{:<18} {:<34} {}", node.op_type, node.name, shape(out)));
    }
    let types: BTreeSet<String> = graph
        .initializer
        .iter()
        .map(|t| format!("data_type {}", t.data_type))
        .collect();
    lines.push(format!(
        "{} initializers ({})",
        graph.initializer.len(),
        types.into_iter().collect::<Vec<_>>().join(", ")
    ));
    lines.join("\n")
}

#[test]
fn graph_structure_is_pinned() -> TestResult {
    let (_vs, model) = random_model(4, 10, 6)?;
    let meta = metadata(&model);
    insta::assert_snapshot!(
        "folded_fp32",
        structure(&build_model(&model, &meta, &GraphOptions::default())?)
    );
    let opts = GraphOptions {
        batch_norm: BatchNormMode::Nodes,
        fp16: true,
        opset: 21,
    };
    insta::assert_snapshot!("batchnorm_nodes_fp16", structure(&build_model(&model, &meta, &opts)?));
    Ok(())
}

#[test]
fn wrong_inputs_are_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("nope.ckpt");
    let err = export::export_checkpoint(&ExportOptions {
        checkpoint: missing.clone(),
        out: dir.path().join("m.onnx"),
        opset: 17,
        fp16: false,
    })
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("does not exist") && err.contains("nope.ckpt"), "{err}");

    // A checkpoint whose header claims width 8 over width-4 weights.
    let (vs, _) = random_model(4, 10, 7)?;
    let ckpt = dir.path().join("w.ckpt");
    let info = CheckpointInfo::untrained(ResNetConfig {
        width: 8,
        num_classes: 10,
    });
    checkpoint::save(&ckpt, &vs, &info)?;
    let err = export::export_checkpoint(&ExportOptions {
        checkpoint: ckpt,
        out: dir.path().join("w.onnx"),
        opset: 17,
        fp16: false,
    })
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("shape of `") && err.contains("w.ckpt"), "{err}");
    assert!(!dir.path().join("w.onnx").exists());

    // Metadata for another width or class count, an opset out of range, a bad std.
    let (_vs, model) = random_model(4, 10, 8)?;
    let mut meta = metadata(&model);
    meta.width = 8;
    let err = export_model(&model, &meta, &GraphOptions::default()).err();
    assert!(
        matches!(&err, Some(ExportError::Metadata(m)) if m.contains("width 8") && m.contains("width 4")),
        "{err:?}"
    );
    let mut meta = metadata(&model);
    meta.class_names.pop();
    let err = export_model(&model, &meta, &GraphOptions::default())
        .err()
        .map(|e| e.to_string());
    assert!(err.as_deref().unwrap_or("").contains("9 class names"), "{err:?}");
    let opts = GraphOptions {
        opset: 13,
        ..GraphOptions::default()
    };
    let err = export_model(&model, &metadata(&model), &opts)
        .err()
        .map(|e| e.to_string());
    assert!(err.as_deref().unwrap_or("").contains("opset 13"), "{err:?}");
    let mut meta = metadata(&model);
    meta.std[1] = 0.0;
    let err = export_model(&model, &meta, &GraphOptions::default())
        .err()
        .map(|e| e.to_string());
    assert!(err.as_deref().unwrap_or("").contains("`std`"), "{err:?}");

    // A NaN weight is refused by name rather than exported.
    let _poisoned = tch::no_grad(|| model.fc.ws.shallow_clone().get(0).get(0).fill_(f64::NAN));
    let err = export_model(&model, &metadata(&model), &GraphOptions::default()).err();
    assert!(
        matches!(&err, Some(ExportError::NonFinite(n)) if n == "fc.weight"),
        "{err:?}"
    );
    Ok(())
}

/// Sets `variable`'s first element (of its first channel, for a weight) to `value`.
fn set_first(vs: &VarStore, variable: &str, value: f64) -> TestResult {
    let vars = vs.variables();
    let t = vars.get(variable).ok_or_else(|| format!("no variable {variable}"))?;
    tch::no_grad(|| {
        let _ = t.shallow_clone().view([-1]).get(0).fill_(value);
    });
    Ok(())
}

#[test]
fn a_weight_that_folds_beyond_float16_is_refused_by_name() -> TestResult {
    let (vs, model) = random_model(4, 10, 9)?;
    // gamma / sqrt(var + eps) = 1e4 / sqrt(2e-5), about 2e6: the stem's first filter folds to
    // magnitudes around 1e5, finite in float32 and infinite in float16.
    set_first(&vs, "stem.bn.weight", 1e4)?;
    set_first(&vs, "stem.bn.running_var", 1e-5)?;
    let meta = metadata(&model);
    let fp32 = export_model(&model, &meta, &GraphOptions::default())?;
    let x = Tensor::randn([2, 3, 32, 32], FLOAT);
    let (expected, got) = both_logits(&model, &fp32, &x)?;
    assert!(got.iter().all(|v| v.is_finite()), "float32 logits {got:?}");
    let scale = expected.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    assert!(max_abs_diff(&expected, &got) <= 1e-4 * scale);

    let fp16 = GraphOptions {
        fp16: true,
        ..GraphOptions::default()
    };
    let err = export_model(&model, &meta, &fp16).err();
    assert!(
        matches!(&err, Some(ExportError::Fp16Range(n)) if n == "stem.weight"),
        "{err:?}"
    );
    let shown = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(shown.contains("`stem.weight`") && shown.contains("65504"), "{shown}");
    Ok(())
}

fn names(dir: &Path) -> Result<Vec<String>, std::io::Error> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

#[test]
fn a_failed_export_leaves_the_previous_model_and_sidecar_and_no_temporary_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("model.onnx");
    let sidecar = onnx::checksum::sidecar_path(&out);
    let (_va, a) = random_model(4, 10, 10)?;
    let (_vb, b) = random_model(4, 10, 11)?;
    let opts = GraphOptions::default();
    let first = export::export_to_file(&a, &metadata(&a), &out, &opts)?;
    let second = export::export_to_file(&b, &metadata(&b), &out, &opts)?;
    assert_ne!(first.sha256, second.sha256);
    let model = std::fs::read(&out)?;
    assert_eq!(onnx::checksum::verify(&out, &model)?, second.sha256);
    assert_eq!(names(dir.path())?, ["model.onnx", "model.onnx.sha256"]);

    // The sidecar cannot be renamed into place (a directory holds its name): the sidecar goes in
    // before the model, so the model is still the previous one.
    std::fs::remove_file(&sidecar)?;
    std::fs::create_dir(&sidecar)?;
    std::fs::write(sidecar.join("keep"), "")?;
    let err = export::export_to_file(&a, &metadata(&a), &out, &opts).err();
    assert!(
        matches!(&err, Some(ExportError::Write { path, .. }) if *path == sidecar),
        "{err:?}"
    );
    assert!(std::fs::read(&out)? == model, "the model was replaced");
    assert_eq!(names(dir.path())?, ["model.onnx", "model.onnx.sha256"]);
    std::fs::remove_dir_all(&sidecar)?;
    let restored = export::export_to_file(&b, &metadata(&b), &out, &opts)?;
    let model = std::fs::read(&out)?;

    // The sidecar cannot be staged (its temporary file's name is taken by a directory): the
    // model, already written to its own temporary file, is not put in place either.
    let blocker = dir.path().join(".model.onnx.sha256.tmp");
    std::fs::create_dir(&blocker)?;
    std::fs::write(blocker.join("keep"), "")?;
    let err = export::export_to_file(&a, &metadata(&a), &out, &opts).err();
    assert!(
        matches!(&err, Some(ExportError::Write { path, .. }) if *path == sidecar),
        "{err:?}"
    );
    assert!(std::fs::read(&out)? == model, "the model was replaced");
    assert_eq!(onnx::checksum::verify(&out, &model)?, restored.sha256);
    assert_eq!(
        names(dir.path())?,
        [".model.onnx.sha256.tmp", "model.onnx", "model.onnx.sha256"]
    );
    Ok(())
}

/// `git ARGS` in `dir`, its trimmed standard output.
fn git(dir: &Path, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "git {args:?} in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The metadata contract of the model file at `path`.
fn metadata_of(path: &Path) -> Result<onnx::ModelMetadata, Box<dyn std::error::Error>> {
    let proto = onnx::proto::ModelProto::from_bytes(&std::fs::read(path)?)?;
    let props = proto.metadata_props;
    Ok(onnx::ModelMetadata::from_props(|k| {
        props.iter().find(|p| p.key == k).map(|p| p.value.clone())
    })?)
}

#[test]
fn the_recorded_commit_is_the_one_built_from_wherever_the_export_runs() -> TestResult {
    let dir = tempfile::tempdir()?;
    // The export runs inside another repository, which has a commit of its own.
    let other = dir.path().join("other");
    std::fs::create_dir(&other)?;
    git(&other, &["init", "-q"])?;
    git(
        &other,
        &[
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "commit.gpgsign=false",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "another project",
        ],
    )?;
    let other_head = git(&other, &["rev-parse", "HEAD"])?;

    let (vs, model) = random_model(4, 10, 12)?;
    let ckpt = dir.path().join("m.ckpt");
    checkpoint::save(&ckpt, &vs, &CheckpointInfo::untrained(model.config))?;
    let out = dir.path().join("m.onnx");
    let run = Command::new(env!("CARGO_BIN_EXE_train"))
        .current_dir(&other)
        .arg("export")
        .arg("--checkpoint")
        .arg(&ckpt)
        .arg("--out")
        .arg(&out)
        .output()?;
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let recorded = metadata_of(&out)?.git_commit;
    assert_ne!(recorded.as_deref(), Some(other_head.as_str()));
    // The checkout this test was built from (build.rs reran when its HEAD moved).
    match git(Path::new(env!("CARGO_MANIFEST_DIR")), &["rev-parse", "HEAD"]) {
        Ok(head) => {
            let recorded = recorded.unwrap_or_default();
            assert!(
                recorded == head || recorded == format!("{head}-dirty"),
                "recorded {recorded}, built from {head}"
            );
        }
        Err(_) => assert_eq!(recorded, None, "built outside a git checkout"),
    }
    Ok(())
}

/// Every graph the exporter can write: each opset it allows, float32 and float16 weights, folded
/// BatchNorm and BatchNormalization nodes.
fn every_variant() -> Vec<GraphOptions> {
    let mut variants = Vec::new();
    for opset in onnx::proto::OPSETS {
        for fp16 in [false, true] {
            for batch_norm in [BatchNormMode::Fold, BatchNormMode::Nodes] {
                variants.push(GraphOptions {
                    opset,
                    fp16,
                    batch_norm,
                });
            }
        }
    }
    variants
}

#[test]
fn every_variant_passes_the_onnx_checker_with_full_shape_inference() -> TestResult {
    let (_vs, model) = random_model(4, 10, 13)?;
    let meta = metadata(&model);
    let dir = tempfile::tempdir()?;
    let mut files = Vec::new();
    for opts in every_variant() {
        let name = format!(
            "opset{}-{}-{:?}.onnx",
            opts.opset,
            if opts.fp16 { "fp16" } else { "fp32" },
            opts.batch_norm
        );
        files.push(export::export_to_file(&model, &meta, &dir.path().join(name), &opts)?.path);
    }
    // The tools' venv that xtask installs for the tests holds the pinned `onnx` package.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".native/tools/bin/python");
    let run = Command::new(&python)
        .arg(root.join("scripts/check_onnx.py"))
        .args(&files)
        .output()
        .map_err(|e| {
            format!(
                "{}: {e} (`cargo xtask setup` installs the tools' venv)",
                python.display()
            )
        })?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "check_onnx.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for file in &files {
        let name = file.display().to_string();
        assert!(
            stdout.contains(&format!("{name}: valid")),
            "{name} not reported valid:\n{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "matches {}.sha256",
                file.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
            )),
            "{name}'s sidecar not checked:\n{stdout}"
        );
    }
    Ok(())
}

#[test]
fn every_variant_runs_in_onnx_runtime_as_libtorch_computes() -> TestResult {
    let (_vs, model) = random_model(4, 10, 14)?;
    let meta = metadata(&model);
    let x = Tensor::randn([3, 3, 32, 32], FLOAT);
    for opts in every_variant() {
        let bytes = export_model(&model, &meta, &opts)?;
        let (expected, got) = both_logits(&model, &bytes, &x)?;
        let diff = max_abs_diff(&expected, &got);
        // float16 storage rounds each weight by up to 2^-11 of itself; over the network's 21
        // layers that moves these logits (up to about 11) by about 6e-4 of their size, more for
        // some draws (the tests share libtorch's generator, so their draws interleave).
        let largest = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let tolerance = if opts.fp16 { 4e-3 * largest } else { 1e-4 };
        assert!(
            diff <= tolerance,
            "{opts:?}: max |tch - ort| = {diff:e}, over {tolerance:e} (largest logit {largest})"
        );
    }
    Ok(())
}

/// `train ARGS`: its standard output on success, else an error with its standard error.
fn train_cli(args: &[&std::ffi::OsStr]) -> Result<String, Box<dyn std::error::Error>> {
    let out = Command::new(env!("CARGO_BIN_EXE_train")).args(args).output()?;
    if !out.status.success() {
        return Err(format!("train {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn train_export_init_writes_a_fresh_network_of_the_given_width() -> TestResult {
    let dir = tempfile::tempdir()?;
    let export_init = |seed: &str, out: &Path| {
        let args = ["export", "--init", "--width", "8", "--seed", seed, "--out"];
        let mut args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        args.push(out.as_os_str());
        train_cli(&args)
    };
    let out = dir.path().join("w8.onnx");
    let printed = export_init("3", &out)?;
    assert!(printed.contains("w8.onnx"), "{printed}");

    let bytes = std::fs::read(&out)?;
    onnx::checksum::verify(&out, &bytes)?;
    let meta = metadata_of(&out)?;
    assert_eq!(meta.width, 8);
    assert_eq!(meta.class_names, train::data::CIFAR10_CLASSES);
    let proto = onnx::proto::ModelProto::from_bytes(&bytes)?;
    let initializers = proto.graph.map(|g| g.initializer).unwrap_or_default();
    let dims = |name: &str| {
        initializers
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.dims.clone())
            .unwrap_or_default()
    };
    assert_eq!(dims("stem.weight"), [8, 3, 3, 3]);
    assert_eq!(dims("fc.weight"), [10, 64]);

    // ONNX Runtime runs it: `[N, 10]` finite logits that depend on the image.
    let mut session = session(&bytes)?;
    let x = Tensor::randn([2, 3, 32, 32], FLOAT);
    let pixels = Vec::<f32>::try_from(x.flatten(0, -1))?;
    let outputs = session.run(ort::inputs![INPUT => OrtTensor::from_array(([2usize, 3, 32, 32], pixels))?])?;
    let (shape, logits) = outputs[OUTPUT].try_extract_tensor::<f32>()?;
    assert_eq!(shape.iter().copied().collect::<Vec<_>>(), [2, 10]);
    assert!(logits.iter().all(|v| v.is_finite()), "{logits:?}");
    assert!(max_abs_diff(&logits[..10], &logits[10..]) > 0.0, "{logits:?}");

    // The seed decides the weights.
    let weights = |path: &Path| -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
        let proto = onnx::proto::ModelProto::from_bytes(&std::fs::read(path)?)?;
        Ok(proto
            .graph
            .map(|g| g.initializer)
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.raw_data)
            .collect())
    };
    let again = dir.path().join("again.onnx");
    export_init("3", &again)?;
    assert_eq!(weights(&again)?, weights(&out)?);
    let other = dir.path().join("other.onnx");
    export_init("4", &other)?;
    assert_ne!(weights(&other)?, weights(&out)?);

    // A checkpoint and --init are one or the other; --width describes the --init network.
    let ckpt = dir.path().join("m.ckpt");
    let both = ["export", "--init", "--checkpoint"].map(std::ffi::OsStr::new);
    let err = train_cli(&[both[0], both[1], both[2], ckpt.as_os_str()])
        .err()
        .map(|e| e.to_string());
    assert!(err.as_deref().unwrap_or("").contains("cannot be used with"), "{err:?}");
    let err = train_cli(&["export", "--checkpoint", "m.ckpt", "--width", "8"].map(std::ffi::OsStr::new))
        .err()
        .map(|e| e.to_string());
    assert!(err.as_deref().unwrap_or("").contains("cannot be used with"), "{err:?}");
    Ok(())
}
