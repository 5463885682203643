//! Training runs end to end on tiny synthetic data: exact resume, NaN stop, refusal to clobber
//! a run, and the `train` binary's commands (fit, eval, summary, bench, kill and resume).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tch::Device;
use train::checkpoint::{self, TrainingState};
use train::fit::{self, FitError, RunSettings};
use train::metrics::read_metrics;
use train::options::FitOptions;
use train::scaler::ScalerState;
use train::trainer::Trainer;

type Error = Box<dyn std::error::Error>;
type TestResult = Result<(), Error>;

/// `train/<class>/*.png`, `test/<class>/*.png`: each class a noisy colour, so a tiny model can
/// learn something and the loss moves.
fn write_data(root: &Path, per_class: (usize, usize)) -> TestResult {
    let classes = ["red", "green", "blue"];
    let mut seed = 12345u32;
    let mut noise = || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        (seed >> 16) as u8 % 64
    };
    for (split, n) in [("train", per_class.0), ("test", per_class.1)] {
        for (c, class) in classes.iter().enumerate() {
            let dir = root.join(split).join(class);
            fs::create_dir_all(&dir)?;
            for i in 0..n {
                let img = image::RgbImage::from_fn(32, 32, |_, _| {
                    let mut p = [noise(), noise(), noise()];
                    p[c] = p[c].saturating_add(160);
                    image::Rgb(p)
                });
                img.save(dir.join(format!("{i:03}.png")))?;
            }
        }
    }
    Ok(())
}

/// Two OpenMP threads on two cores shared with parallel tests spin in barriers for seconds
/// per step; one thread keeps the tests fast (and determinism does not depend on it).
fn single_thread() {
    tch::set_num_threads(1);
}

fn options() -> FitOptions {
    FitOptions {
        epochs: 3,
        batch_size: 8,
        lr: 0.05,
        width: 4,
        seed: 7,
        ..FitOptions::default()
    }
}

fn settings(data: &Path, out: &Path) -> RunSettings {
    RunSettings {
        data: data.to_owned(),
        out: out.to_owned(),
        device: Device::Cpu,
        resume: false,
        channels_last: false,
        amp: false,
        progress: false,
        export: false,
        stop_after: None,
    }
}

fn assert_same_state(a: &Path, b: &Path) -> TestResult {
    let (a, b) = (checkpoint::read(a)?, checkpoint::read(b)?);
    assert_eq!(a.info, b.info);
    assert_eq!(a.weights.len(), b.weights.len());
    for (name, t) in &a.weights {
        assert!(t.equal(&b.weights[name]), "weights of `{name}` differ");
    }
    let (sa, sb) = (a.training.ok_or("no state")?, b.training.ok_or("no state")?);
    assert!(!sa.momentum.is_empty());
    for (name, t) in &sa.momentum {
        assert!(t.equal(&sb.momentum[name]), "momentum of `{name}` differs");
    }
    Ok(())
}

/// `(epoch, train loss, test loss)` per line.
fn metric_values(path: &Path) -> Result<Vec<(u32, f64, f64)>, Error> {
    Ok(read_metrics(path, u32::MAX)?
        .into_iter()
        .map(|m| (m.epoch, m.train_loss, m.test_loss))
        .collect())
}

#[test]
fn resumed_run_reaches_bitwise_the_same_weights() -> TestResult {
    single_thread();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // 30 training images in batches of 8: a short last batch in every epoch.
    write_data(&data, (10, 2))?;
    for channels_last in [false, true] {
        // Channels-last needs a width that is a multiple of 8 on a CPU.
        let opts = FitOptions {
            width: if channels_last { 8 } else { 4 },
            ..options()
        };
        let straight = dir.path().join(format!("straight-{channels_last}"));
        let mut s = settings(&data, &straight);
        s.channels_last = channels_last;
        let report = fit::fit(&s, &opts)?;
        assert_eq!(report.epochs, 3);
        assert_eq!(report.history.len(), 3);

        let interrupted = dir.path().join(format!("interrupted-{channels_last}"));
        let mut s = settings(&data, &interrupted);
        s.channels_last = channels_last;
        s.stop_after = Some(1);
        assert_eq!(fit::fit(&s, &opts)?.epochs, 1);
        s.stop_after = None;
        s.resume = true;
        assert_eq!(fit::fit(&s, &opts)?.epochs, 3);

        let (a, b) = (
            straight.join(fit::CHECKPOINT_FILE),
            interrupted.join(fit::CHECKPOINT_FILE),
        );
        assert_same_state(&a, &b)?;
        let (ma, mb) = (
            metric_values(&straight.join(fit::METRICS_FILE))?,
            metric_values(&interrupted.join(fit::METRICS_FILE))?,
        );
        assert_eq!(ma, mb);
        assert_eq!(ma.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(straight.join(fit::CURVES_FILE).is_file() && straight.join(fit::CONFUSION_FILE).is_file());
    }
    Ok(())
}

#[test]
fn nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint() -> TestResult {
    single_thread();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    write_data(&data, (4, 1))?;
    let run = dir.path().join("run");
    let mut s = settings(&data, &run);
    s.stop_after = Some(1);
    let opts = options();
    fit::fit(&s, &opts)?;

    // Poison the weights the resumed run starts from, as a diverging run would.
    let ckpt = run.join(fit::CHECKPOINT_FILE);
    let (vs, _model, info) = checkpoint::load_for_inference(&ckpt, Device::Cpu)?;
    let loaded = checkpoint::read(&ckpt)?;
    let state: TrainingState = loaded.training.ok_or("no state")?;
    let fc = vs.variables().get("fc.weight").ok_or("no fc.weight")?.shallow_clone();
    tch::no_grad(|| {
        let _ = fc.shallow_clone().fill_(f64::NAN);
    });
    checkpoint::save_training(&ckpt, &vs, &info, &state)?;
    let before = fs::read(&ckpt)?;

    s.stop_after = None;
    s.resume = true;
    let err = fit::fit(&s, &opts).err().ok_or("a NaN run finished")?;
    assert!(matches!(err, FitError::NonFinite { epoch: 2, step: 1, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("NaN") && msg.contains(fit::CHECKPOINT_FILE), "{msg}");
    assert_eq!(fs::read(&ckpt)?, before, "the last checkpoint was touched");
    assert_eq!(read_metrics(&run.join(fit::METRICS_FILE), u32::MAX)?.len(), 1);
    Ok(())
}

/// What `f` logs through `tracing` on this thread, as the `train` binary would print it.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = buffer.0.lock().map(|b| String::from_utf8_lossy(&b).into_owned());
    (out, text.unwrap_or_default())
}

/// One evaluation under float16 autocast can give a NaN loss: the run records it, says so, and
/// stays resumable (serde_json alone writes NaN as `null`, which it then refuses to read).
#[test]
fn a_nan_test_loss_is_recorded_and_the_run_still_resumes() -> TestResult {
    single_thread();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    write_data(&data, (4, 1))?;
    let run = dir.path().join("run");
    let mut s = settings(&data, &run);
    s.stop_after = Some(1);
    let opts = options();
    fit::fit(&s, &opts)?;

    let metrics = run.join(fit::METRICS_FILE);
    let mut history = read_metrics(&metrics, u32::MAX)?;
    history[0].test_loss = f64::NAN;
    history[0].lr = f64::INFINITY;
    train::metrics::write_metrics(&metrics, &history)?;

    s.stop_after = Some(2);
    s.resume = true;
    let (report, log) = logged(|| fit::fit(&s, &opts));
    let report = report?;
    assert_eq!(report.epochs, 2);
    let read = read_metrics(&metrics, u32::MAX)?;
    assert_eq!(read.iter().map(|m| m.epoch).collect::<Vec<_>>(), [1, 2]);
    assert!(read[0].test_loss.is_nan() && read[0].lr == f64::INFINITY, "{read:?}");
    assert!(read[1].test_loss.is_finite(), "{read:?}");
    let first: serde_json::Value = serde_json::from_str(fs::read_to_string(&metrics)?.lines().next().ok_or("empty")?)?;
    assert_eq!(
        serde_json::json!([first["test_loss"], first["lr"]]),
        serde_json::json!(["NaN", "inf"])
    );
    for says in ["epoch 1: test_loss is NaN", "epoch 1: lr is inf"] {
        assert!(log.contains(says), "no {says:?} in the log:\n{log}");
    }
    Ok(())
}

/// A kill in the middle of appending an epoch's metrics line leaves half a line (the epoch's
/// checkpoint is written after it, so it is not there either): the resume drops it and redoes
/// the epoch.
#[test]
fn a_metrics_line_cut_short_by_a_kill_is_dropped_by_the_resume() -> TestResult {
    single_thread();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    write_data(&data, (3, 1))?;
    let run = dir.path().join("run");
    let mut s = settings(&data, &run);
    s.stop_after = Some(1);
    fit::fit(&s, &options())?;
    let metrics = run.join(fit::METRICS_FILE);
    let mut f = fs::OpenOptions::new().append(true).open(&metrics)?;
    std::io::Write::write_all(&mut f, br#"{"epoch":2,"train_loss":1.0"#)?;
    drop(f);
    s.stop_after = Some(2);
    s.resume = true;
    fit::fit(&s, &options())?;
    let epochs: Vec<u32> = read_metrics(&metrics, u32::MAX)?.iter().map(|m| m.epoch).collect();
    assert_eq!(epochs, [1, 2]);
    // A broken line that is not the last one is an error naming the file and the line.
    let text = fs::read_to_string(&metrics)?;
    fs::write(&metrics, format!("{{\"epoch\":1,\n{text}"))?;
    let msg = read_metrics(&metrics, u32::MAX).err().ok_or("read")?.to_string();
    assert!(msg.contains(fit::METRICS_FILE) && msg.contains("line 1"), "{msg}");
    Ok(())
}

/// A kill while a checkpoint or the metrics are being written leaves their temporary file; the
/// next start of the run removes it, and nothing else is left in the run directory.
#[test]
fn temporary_files_of_a_killed_run_are_removed_by_the_next_start() -> TestResult {
    single_thread();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    write_data(&data, (3, 1))?;
    let run = dir.path().join("run");
    // Killed while writing its first checkpoint: no checkpoint yet, a fresh start follows.
    fs::create_dir_all(&run)?;
    fs::write(run.join(".checkpoint.pt.tmp"), b"a torn copy of the weights")?;
    let mut s = settings(&data, &run);
    s.stop_after = Some(1);
    fit::fit(&s, &options())?;
    let expected = [
        fit::CHECKPOINT_FILE,
        fit::METRICS_FILE,
        fit::CONFUSION_FILE,
        fit::CURVES_FILE,
    ];
    let listing = |dir: &Path| -> Result<Vec<String>, Error> {
        let mut names: Vec<String> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        Ok(names)
    };
    let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(listing(&run)?, want);

    // Killed later, by this version (one fixed name) and by earlier ones (named by pid).
    for leftover in [".checkpoint.pt.tmp", ".checkpoint.pt.tmp31337", ".metrics.jsonl.tmp"] {
        fs::write(run.join(leftover), b"left by a kill")?;
    }
    s.stop_after = Some(2);
    s.resume = true;
    fit::fit(&s, &options())?;
    assert_eq!(listing(&run)?, want);
    assert_eq!(checkpoint::read(&run.join(fit::CHECKPOINT_FILE))?.info.epochs, 2);
    Ok(())
}

/// The float16 loss scaler's state is part of the checkpoint: a mixed-precision resume starts
/// from the scale and count the run had, not from 65,536. Loss scaling runs on the CPU too
/// (libtorch's AMP kernels), without autocast.
#[test]
fn the_loss_scaler_state_is_checkpointed_and_restored_exactly() -> TestResult {
    single_thread();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ckpt.pt");
    let opts = options();
    let config = train::model::ResNetConfig {
        width: 4,
        num_classes: 3,
    };
    // A run 1,998 good steps into an interval at scale 1024: three more steps double it.
    let start = ScalerState {
        scale: 1024.0,
        growth_tracker: 1998,
    };
    tch::manual_seed(5);
    let mut a = Trainer::new(config, Device::Cpu, false, false, &opts)?.with_loss_scaling(start);
    let x = tch::Tensor::randn([4, 3, 32, 32], (tch::Kind::Float, Device::Cpu));
    let y = tch::Tensor::from_slice(&[0i64, 1, 2, 1]);
    for _ in 0..3 {
        a.step(&x, &y, 0.01)?;
    }
    let reached = ScalerState {
        scale: 2048.0,
        growth_tracker: 1,
    };
    assert_eq!(a.scaler_state()?, Some(reached));
    let info = checkpoint::CheckpointInfo::untrained(config);
    checkpoint::save_training(&path, &a.vs, &info, &a.training_state(7, serde_json::json!({}))?)?;

    let loaded = checkpoint::read(&path)?;
    assert_eq!(loaded.training.as_ref().and_then(|t| t.scaler), Some(reached));
    tch::manual_seed(6);
    let mut b = Trainer::new(config, Device::Cpu, false, false, &opts)?.with_loss_scaling(ScalerState::default());
    b.restore(&loaded)?;
    assert_eq!(b.scaler_state()?, Some(reached));
    // And the next step is the same step.
    a.step(&x, &y, 0.01)?;
    b.step(&x, &y, 0.01)?;
    assert_eq!(a.scaler_state()?, b.scaler_state()?);
    for (name, t) in a.vs.variables() {
        assert!(
            t.equal(&b.vs.variables()[&name]),
            "`{name}` differs after the resumed step"
        );
    }
    Ok(())
}

#[test]
fn runs_are_not_clobbered_and_resume_keeps_its_options() -> TestResult {
    single_thread();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    write_data(&data, (3, 1))?;
    let run = dir.path().join("run");
    let mut s = settings(&data, &run);
    s.resume = true;
    let msg = fit::fit(&s, &options()).err().ok_or("resumed nothing")?.to_string();
    assert!(msg.contains("nothing to resume"), "{msg}");

    s.resume = false;
    s.stop_after = Some(1);
    fit::fit(&s, &options())?;
    let msg = fit::fit(&s, &options()).err().ok_or("clobbered")?.to_string();
    assert!(msg.contains("--resume"), "{msg}");

    s.resume = true;
    let changed = FitOptions { lr: 0.5, ..options() };
    let msg = fit::fit(&s, &changed)
        .err()
        .ok_or("resumed with another lr")?
        .to_string();
    assert!(msg.contains("lr: run has 0.05, given 0.5"), "{msg}");
    assert_eq!(fit::stored_options(&run.join(fit::CHECKPOINT_FILE))?, options());

    let bad = FitOptions {
        batch_size: 1,
        ..options()
    };
    let msg = fit::fit(&settings(&data, &dir.path().join("b1")), &bad)
        .err()
        .ok_or("batch 1")?
        .to_string();
    assert!(msg.contains("--batch-size"), "{msg}");
    Ok(())
}

fn train_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_train"))
}

fn run_ok(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd.output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(stdout)
}

#[test]
fn cli_fit_eval_summary_bench_and_kill_then_resume() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    write_data(&data, (6, 2))?;
    let run = dir.path().join("run");
    let p = |p: &PathBuf| p.display().to_string();
    let common = [
        "--width",
        "4",
        "--batch-size",
        "8",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
    ];

    run_ok(
        train_bin()
            .args(["fit", "--data", &p(&data), "--out", &p(&run), "--epochs", "2"])
            .args(common),
    )?;
    for file in [
        fit::CHECKPOINT_FILE,
        fit::METRICS_FILE,
        fit::CURVES_FILE,
        fit::CONFUSION_FILE,
        fit::ONNX_FILE,
        "model.onnx.sha256",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let metrics = read_metrics(&run.join(fit::METRICS_FILE), u32::MAX)?;
    assert_eq!(metrics.len(), 2);
    // What scripts and plots read from each line: its keys and their JSON types, pinned.
    let text = std::fs::read_to_string(run.join(fit::METRICS_FILE))?;
    let first: serde_json::Value = serde_json::from_str(text.lines().next().ok_or("no metrics line")?)?;
    let keys: Vec<String> = first
        .as_object()
        .ok_or("a metrics line is not an object")?
        .iter()
        .map(|(key, value)| {
            let kind = match value {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "bool",
                serde_json::Value::Number(_) => "number",
                serde_json::Value::String(_) => "string",
                serde_json::Value::Array(_) => "array",
                serde_json::Value::Object(_) => "object",
            };
            format!("{key}: {kind}")
        })
        .collect();
    insta::assert_snapshot!("metrics_line_keys", keys.join("\n"));

    let ckpt = run.join(fit::CHECKPOINT_FILE);
    let out = run_ok(train_bin().args([
        "eval",
        "--checkpoint",
        &p(&ckpt),
        "--data",
        &p(&data),
        "--json",
        "--threads",
        "1",
    ]))?;
    let eval: serde_json::Value = serde_json::from_str(&out)?;
    let acc = eval["accuracy"].as_f64().ok_or("no accuracy")?;
    assert!(
        (acc - metrics[1].test_accuracy).abs() < 1e-9,
        "{acc} vs {}",
        metrics[1].test_accuracy
    );
    assert_eq!(eval["class_names"], serde_json::json!(["blue", "green", "red"]));
    assert_eq!(eval["confusion"].as_array().map(Vec::len), Some(3));

    let out = run_ok(train_bin().args(["summary", "--width", "64"]))?;
    assert!(out.contains("total trainable parameters: 11,173,962"), "{out}");
    assert!(out.contains("(2, 3, 32, 32) -> (2, 10)"), "{out}");

    let out = run_ok(train_bin().args([
        "bench",
        "--width",
        "4",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--json",
    ]))?;
    // The flags reach the benchmark (the report names what ran); its figures are BENCHMARKS.md's.
    let bench: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        serde_json::json!([
            bench["width"],
            bench["batch_size"],
            bench["steps"],
            bench["warmup"],
            bench["device"]
        ]),
        serde_json::json!([4, 4, 2, 1, "cpu"]),
        "{out}"
    );

    // A run killed (SIGKILL) at an arbitrary moment leaves a loadable checkpoint to resume from.
    let killed = dir.path().join("killed");
    let mut child = train_bin()
        .args([
            "fit",
            "--data",
            &p(&data),
            "--out",
            &p(&killed),
            "--epochs",
            "6",
            "--no-export",
        ])
        .args(common)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let ckpt = killed.join(fit::CHECKPOINT_FILE);
    let start = Instant::now();
    while !ckpt.exists() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(37));
    child.kill()?;
    child.wait()?;
    // A kill in mid-write may leave a temporary file, but never a torn checkpoint.
    checkpoint::read(&ckpt)?;
    run_ok(train_bin().args([
        "fit",
        "--data",
        &p(&data),
        "--out",
        &p(&killed),
        "--resume",
        "--no-export",
        "--threads",
        "1",
    ]))?;
    assert_eq!(checkpoint::read(&ckpt)?.info.epochs, 6);
    let epochs: Vec<u32> = read_metrics(&killed.join(fit::METRICS_FILE), u32::MAX)?
        .iter()
        .map(|m| m.epoch)
        .collect();
    assert_eq!(epochs, [1, 2, 3, 4, 5, 6]);
    let leftovers: Vec<_> = fs::read_dir(&killed)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}
