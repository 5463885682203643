//! Classifying a whole S3 prefix or folder, against a real S3-compatible server (moto) holding
//! a few hundred images made here, some broken objects and a non-image:
//!
//! - `infer predict s3://bucket/prefix/` checked record by record against `infer predict FILE...`
//!   on the same bytes, then resumed after an interrupted write, then to and from an S3 output;
//! - `infer predict FOLDER` to stdout;
//! - the Step Functions Distributed Map worker, driven with a Map batch event through
//!   `cargo lambda invoke`, beside an HTTP event to the same function.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{expected_probabilities, infer_bin, solid};
use image::ImageFormat;
use infer::testing::lambda::{LambdaWatch, api_gateway_v2_event};
use infer::testing::moto::Moto;
use infer::testing::{TinyModel, write_with_sidecar};
use serde_json::{Value, json};

/// A colour whose strongest channel is clear, so that JPEG's loss cannot change the class.
fn colour(i: usize) -> [u8; 3] {
    let mut state = (i as u64 + 1).wrapping_mul(6_364_136_223_846_793_005);
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as u8
    };
    let mut rgb = [next() / 3, next() / 3, next() / 3];
    rgb[i % 3] = 170 + next() / 3;
    rgb
}

/// Image `i`: a solid colour in one of three formats, 8 to 40 pixels a side.
fn image(i: usize) -> (String, Vec<u8>) {
    let (format, ext) = [
        (ImageFormat::Png, "png"),
        (ImageFormat::Jpeg, "jpg"),
        (ImageFormat::Bmp, "bmp"),
    ][i % 3];
    let side = 8 + (i as u32 * 7) % 33;
    (format!("img-{i:04}.{ext}"), solid(colour(i), side, side, format))
}

fn argmax(p: &[f32]) -> usize {
    (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0)
}

const LABELS: [&str; 3] = ["red", "green", "blue"];

/// The broken objects: truncated, empty, a JPEG header and noise, and one text file.
fn broken() -> Vec<(&'static str, Vec<u8>)> {
    let png = solid([200, 10, 10], 32, 32, ImageFormat::Png);
    let mut garbage = vec![0xFF, 0xD8, 0xFF, 0xE0];
    garbage.extend((0..500_u32).map(|i| (i * 37 % 251) as u8));
    vec![
        ("broken/truncated.png", png[..png.len() / 2].to_vec()),
        ("broken/empty.jpg", Vec::new()),
        ("broken/garbage.jpg", garbage),
        ("notes.txt", b"these are not the images you are looking for\n".to_vec()),
    ]
}

fn infer(moto: Option<&Moto>, args: &[&str]) -> Result<Output> {
    let mut command = Command::new(infer_bin());
    command.arg("predict").args(args).env_remove("AWS_PROFILE");
    for (k, v) in moto.map(Moto::aws_env).unwrap_or_default() {
        command.env(k, v);
    }
    let output = command.output()?;
    ensure!(
        output.status.success(),
        "infer predict {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// The records of a JSON Lines text, by key; every line must be a record, each key once.
fn records(text: &str) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let record: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line:?}"))?;
        let key = record["key"].as_str().context("no key")?.to_owned();
        ensure!(out.insert(key.clone(), record).is_none(), "{key} recorded twice");
    }
    Ok(out)
}

/// `N listed, N skipped ...` from the summary on stderr.
fn summary(output: &Output) -> Result<HashMap<String, usize>> {
    let err = String::from_utf8_lossy(&output.stderr);
    let line = err
        .lines()
        .find(|l| l.contains(" listed, "))
        .with_context(|| format!("no summary in {err}"))?;
    let mut counts = HashMap::new();
    let words: Vec<&str> = line.split([' ', ',', ':']).filter(|w| !w.is_empty()).collect();
    for pair in words.windows(2) {
        if let Ok(n) = pair[0].parse::<usize>() {
            counts.insert(pair[1].to_owned(), n);
        }
    }
    Ok(counts)
}

/// Each image's top-3 from the one-shot `infer predict FILE... --json`, the oracle.
fn single_predictions(model: &Path, files: &[std::path::PathBuf]) -> Result<HashMap<String, Value>> {
    let mut args = vec!["--model".to_owned(), model.display().to_string(), "--json".into()];
    args.extend(["--top-k".into(), "3".into()]);
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let doc: Value = serde_json::from_slice(&infer(None, &args)?.stdout)?;
    let mut out = HashMap::new();
    for p in doc["predictions"].as_array().context("predictions")? {
        let name = Path::new(p["image"].as_str().context("image")?)
            .file_name()
            .context("file name")?
            .to_string_lossy()
            .into_owned();
        out.insert(name, p["top_k"].clone());
    }
    Ok(out)
}

/// A successful record agrees with the single prediction of the same bytes.
fn check_record(key: &str, record: &Value, single: &Value, rgb: [u8; 3]) -> Result<()> {
    ensure!(record["error"].is_null(), "{key}: {record}");
    let top = record["top_k"].as_array().context("top_k")?;
    let want = single.as_array().context("single top_k")?;
    ensure!(top.len() == 3 && want.len() == 3, "{key}: {record}");
    for (got, want) in top.iter().zip(want) {
        ensure!(
            got["label"] == want["label"] && got["class_id"] == want["class_id"],
            "{key}: {got} vs {want}"
        );
        let (g, w) = (got["probability"].as_f64(), want["probability"].as_f64());
        ensure!(
            matches!((g, w), (Some(g), Some(w)) if (g - w).abs() < 1e-5),
            "{key}: {got} vs {want}"
        );
    }
    ensure!(record["label"] == top[0]["label"], "{key}: {record}");
    ensure!(record["class_id"] == top[0]["class_id"], "{key}: {record}");
    ensure!(record["probability"] == top[0]["probability"], "{key}: {record}");
    // And both are right: the strongest channel, computed without the server.
    ensure!(
        record["label"] == LABELS[argmax(&expected_probabilities(rgb))],
        "{key}: {record} for {rgb:?}"
    );
    Ok(())
}

fn check_broken(records: &BTreeMap<String, Value>, prefix: &str) -> Result<()> {
    for (name, _) in broken() {
        let key = format!("{prefix}{name}");
        let record = records.get(&key).with_context(|| format!("no record for {key}"))?;
        ensure!(
            record["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{key}: {record}"
        );
        ensure!(
            record["label"].is_null() && record["top_k"].is_null(),
            "{key}: {record}"
        );
    }
    let text = &records[&format!("{prefix}notes.txt")]["error"];
    ensure!(
        text.as_str().is_some_and(|e| e.contains("not a recognised image")),
        "{text}"
    );
    Ok(())
}

#[test]
fn predict_classifies_an_s3_prefix_resumes_and_writes_to_s3() -> Result<()> {
    let moto = Moto::start()?;
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    let model_arg = model.display().to_string();
    let files = dir.path().join("files");
    std::fs::create_dir(&files)?;

    moto.create_bucket("images")?;
    let mut etags = HashMap::new();
    let mut colours = HashMap::new();
    let mut paths = Vec::new();
    for i in 0..300 {
        let (name, bytes) = image(i);
        let key = format!("batch/{}/{name}", ["a", "b"][i % 2]);
        etags.insert(key.clone(), moto.put(&format!("images/{key}"), &bytes)?);
        colours.insert(key, colour(i));
        let path = files.join(&name);
        std::fs::write(&path, &bytes)?;
        paths.push(path);
    }
    for (name, bytes) in broken() {
        moto.put(&format!("images/batch/{name}"), &bytes)?;
    }
    // Neither is classified: a "folder" marker, and an image outside the prefix.
    moto.put("images/batch/a/", b"")?;
    moto.put("images/elsewhere/x.png", &image(0).1)?;
    let single = single_predictions(&model, &paths)?;

    // The whole prefix.
    let out = dir.path().join("out.jsonl");
    let out_arg = out.display().to_string();
    let args = [
        "s3://images/batch/",
        "--model",
        &model_arg,
        "--top-k",
        "3",
        "--output",
        &out_arg,
        "--concurrency",
        "8",
    ];
    let run = infer(Some(&moto), &args)?;
    let counts = summary(&run)?;
    assert_eq!(counts.get("listed"), Some(&304), "{counts:?}");
    assert_eq!(counts.get("classified"), Some(&300), "{counts:?}");
    assert_eq!(counts.get("failed"), Some(&4), "{counts:?}");
    let text = std::fs::read_to_string(&out)?;
    let first = records(&text)?;
    assert_eq!(first.len(), 304);
    for (key, rgb) in &colours {
        let record = first.get(key).with_context(|| format!("no record for {key}"))?;
        let name = key.rsplit('/').next().unwrap_or_default();
        check_record(key, record, &single[name], *rgb)?;
        assert_eq!(record["etag"].as_str(), Some(etags[key].as_str()), "{key}");
    }
    check_broken(&first, "batch/")?;

    // Resume after a run that stopped mid-line: 100 whole records and half of the next survive.
    let lines: Vec<&str> = text.lines().collect();
    let kept = lines[..100].join("\n") + "\n";
    std::fs::write(&out, format!("{kept}{}", &lines[100][..lines[100].len() / 2]))?;
    for i in 300..320 {
        let (name, bytes) = image(i);
        let key = format!("batch/c/{name}");
        moto.put(&format!("images/{key}"), &bytes)?;
        colours.insert(key, colour(i));
    }
    let counts = summary(&infer(Some(&moto), &args)?)?;
    assert_eq!(counts.get("listed"), Some(&324), "{counts:?}");
    assert_eq!(counts.get("skipped"), Some(&100), "{counts:?}");
    assert_eq!(
        counts.get("classified").zip(counts.get("failed")).map(|(c, f)| c + f),
        Some(224)
    );
    let text = std::fs::read_to_string(&out)?;
    assert!(text.starts_with(&kept), "the records kept were rewritten");
    let resumed = records(&text)?;
    assert_eq!(resumed.len(), 324);
    for (key, rgb) in &colours {
        let record = resumed.get(key).with_context(|| format!("no record for {key}"))?;
        ensure!(
            record["label"] == LABELS[argmax(&expected_probabilities(*rgb))],
            "{key}: {record}"
        );
    }
    check_broken(&resumed, "batch/")?;

    // To an S3 object inside the prefix itself: it is not classified, and a second run finds
    // everything done.
    let s3_out = "s3://images/batch/results/run.jsonl";
    let s3_args = ["s3://images/batch/", "--model", &model_arg, "--output", s3_out];
    let counts = summary(&infer(Some(&moto), &s3_args)?)?;
    assert_eq!(counts.get("listed"), Some(&324), "{counts:?}");
    let uploaded = records(&String::from_utf8(moto.get("images/batch/results/run.jsonl")?)?)?;
    assert_eq!(
        uploaded.keys().collect::<HashSet<_>>(),
        resumed.keys().collect::<HashSet<_>>()
    );
    for (key, record) in &uploaded {
        // Five classes asked, three exist.
        if record["error"].is_null() {
            assert_eq!(record["top_k"].as_array().map(Vec::len), Some(3), "{key}");
            assert_eq!(record["label"], resumed[key]["label"], "{key}");
        }
    }
    let again = infer(Some(&moto), &s3_args)?;
    let counts = summary(&again)?;
    assert_eq!(counts.get("skipped"), Some(&324), "{counts:?}");
    assert_eq!(counts.get("classified"), Some(&0), "{counts:?}");
    let reuploaded = records(&String::from_utf8(moto.get("images/batch/results/run.jsonl")?)?)?;
    assert_eq!(reuploaded, uploaded);

    // A local folder, to stdout.
    let run = infer(
        None,
        &[&files.display().to_string(), "--model", &model_arg, "--top-k", "3"],
    )?;
    let local = records(&String::from_utf8(run.stdout)?)?;
    assert_eq!(local.len(), 300);
    for i in 0..300 {
        let (name, _) = image(i);
        let record = local.get(&name).with_context(|| format!("no record for {name}"))?;
        check_record(&name, record, &single[&name], colour(i))?;
        assert!(record["etag"].is_null());
    }
    Ok(())
}

#[test]
fn the_function_is_a_distributed_map_worker_beside_http() -> Result<()> {
    let moto = Moto::start()?;
    moto.create_bucket("maps")?;
    let mut items = Vec::new();
    let mut expected = Vec::new();
    for i in 0..12 {
        let (name, bytes) = image(i);
        let key = format!("in/{name}");
        let etag = moto.put(&format!("maps/{key}"), &bytes)?;
        items.push(json!({"Etag": etag, "Key": key, "LastModified": 1_795_000_000, "Size": bytes.len(), "StorageClass": "STANDARD"}));
        expected.push(Some(LABELS[argmax(&expected_probabilities(colour(i)))]));
    }
    for (name, bytes) in broken() {
        let key = format!("in/{name}");
        let etag = moto.put(&format!("maps/{key}"), &bytes)?;
        items.insert(3, json!({"Etag": etag, "Key": key, "LastModified": 1_795_000_000, "Size": bytes.len(), "StorageClass": "STANDARD"}));
        expected.insert(3, None);
    }
    // Listed, then deleted before its batch ran.
    items.push(json!({"Etag": "\"0\"", "Key": "in/ghost.png", "LastModified": 1_795_000_000, "Size": 100, "StorageClass": "STANDARD"}));
    expected.push(None);

    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    let watch = LambdaWatch::start_with_env(&model, &moto.aws_env())?;
    let patience = Duration::from_secs(600);
    let event = json!({"BatchInput": {"bucket": "maps", "top_k": 2}, "Items": items});
    let reply = watch.invoke(&event, patience)?;

    let results = reply["results"].as_array().context("results")?;
    assert_eq!(results.len(), items.len(), "{reply}");
    for ((record, item), want) in results.iter().zip(&items).zip(&expected) {
        assert_eq!(record["key"], item["Key"], "results come in item order");
        assert_eq!(record["etag"], item["Etag"]);
        match want {
            Some(label) => {
                assert_eq!(record["label"], *label, "{record}");
                assert_eq!(record["top_k"].as_array().map(Vec::len), Some(2), "{record}");
                assert!(record["error"].is_null(), "{record}");
            }
            None => assert!(record["error"].as_str().is_some_and(|e| !e.is_empty()), "{record}"),
        }
    }
    let ghost = results.last().map(|r| r["error"].to_string()).unwrap_or_default();
    assert!(
        ghost.contains("s3://maps/in/ghost.png") && ghost.contains("no such key"),
        "{ghost}"
    );
    assert_eq!(reply["classified"], 12, "{reply}");
    assert_eq!(reply["failed"], 5, "{reply}");

    // The same function still answers HTTP events.
    let png = solid([20, 20, 240], 32, 32, ImageFormat::Png);
    let reply = watch.invoke(&api_gateway_v2_event("/v1/predict", "", "image/png", &png)?, patience)?;
    assert_eq!(reply["statusCode"], 200, "{reply}");
    let body: Value = serde_json::from_str(reply["body"].as_str().context("body")?)?;
    assert_eq!(body["predictions"][0]["label"], "blue", "{body}");
    Ok(())
}
