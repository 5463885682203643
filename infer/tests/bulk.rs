//! Classifying a whole S3 prefix or folder, against a real S3-compatible server (moto) holding
//! a few hundred images made here, some broken objects and a non-image:
//!
//! - `infer predict s3://bucket/prefix/` checked record by record against `infer predict FILE...`
//!   on the same bytes, then resumed after an interrupted write, then to and from an S3 output;
//! - `infer predict FOLDER` to stdout;
//! - resuming: records with an error and objects overwritten since (another ETag) are done again,
//!   the rest skipped; SIGTERM to a run writing to S3 leaves the object complete; a part refused
//!   mid-run aborts the multipart upload;
//! - folders with file names that are not UTF-8, and with a symbolic link loop;
//! - `infer predict FILE...` through the same pipeline: one record per file, bad files included;
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

/// `infer predict ARGS`, pointed at `moto` when given.
fn predict(moto: Option<&Moto>, args: &[&str]) -> Command {
    let mut command = Command::new(infer_bin());
    command.arg("predict").args(args).env_remove("AWS_PROFILE");
    for (k, v) in moto.map(Moto::aws_env).unwrap_or_default() {
        command.env(k, v);
    }
    command
}

/// `infer predict ARGS`, which must succeed.
fn infer(moto: Option<&Moto>, args: &[&str]) -> Result<Output> {
    let output = predict(moto, args).output()?;
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
        let name = Path::new(p["key"].as_str().context("key")?)
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
    // everything done but the broken objects, which are tried again.
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
    assert_eq!(counts.get("skipped"), Some(&320), "{counts:?}");
    assert_eq!(counts.get("redone"), Some(&4), "{counts:?}");
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

/// A record as a run that met a transient S3 failure wrote it.
fn failed_record(key: &str, etag: &str) -> String {
    json!({"key": key, "etag": etag, "label": null, "class_id": null, "probability": null, "top_k": null,
           "error": format!("reading s3://resume/{key}: dispatch failure: timed out")})
    .to_string()
}

#[test]
fn resume_retries_failed_and_changed_objects_and_skips_the_rest() -> Result<()> {
    let moto = Moto::start()?;
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    let model_arg = model.display().to_string();
    moto.create_bucket("resume")?;
    let mut etags = HashMap::new();
    for i in 0..40 {
        let key = format!("in/{}", image(i).0);
        etags.insert(key.clone(), moto.put(&format!("resume/{key}"), &image(i).1)?);
    }
    let out = dir.path().join("out.jsonl");
    let out_arg = out.display().to_string();
    let args = ["s3://resume/in/", "--model", &model_arg, "--top-k", "1", "-o", &out_arg];
    infer(Some(&moto), &args)?;
    let first = records(&std::fs::read_to_string(&out)?)?;
    assert_eq!(first.len(), 40);

    // Images 0..5 failed to download in that run; images 10..15 are overwritten since, with a
    // colour of another class.
    let failed: Vec<String> = (0..5).map(|i| format!("in/{}", image(i).0)).collect();
    let changed: Vec<usize> = (10..15).collect();
    let text: Vec<String> = std::fs::read_to_string(&out)?
        .lines()
        .map(|line| {
            let key = serde_json::from_str::<Value>(line).map(|r| r["key"].as_str().unwrap_or_default().to_owned());
            match key {
                Ok(key) if failed.contains(&key) => failed_record(&key, &etags[&key]),
                _ => line.to_owned(),
            }
        })
        .collect();
    std::fs::write(&out, text.join("\n") + "\n")?;
    for &i in &changed {
        let key = format!("in/{}", image(i).0);
        let bytes = solid(colour(i + 1), 16, 16, ImageFormat::Png);
        etags.insert(key.clone(), moto.put(&format!("resume/{key}"), &bytes)?);
    }

    let counts = summary(&infer(Some(&moto), &args)?)?;
    assert_eq!(counts.get("listed"), Some(&40), "{counts:?}");
    assert_eq!(counts.get("skipped"), Some(&30), "{counts:?}");
    assert_eq!(counts.get("redone"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("classified"), Some(&10), "{counts:?}");
    let second = records(&std::fs::read_to_string(&out)?)?;
    assert_eq!(second.len(), 40, "one record per key");
    for i in 0..40 {
        let key = format!("in/{}", image(i).0);
        let record = &second[&key];
        assert!(record["error"].is_null(), "{key}: {record}");
        assert_eq!(record["etag"].as_str(), Some(etags[&key].as_str()), "{key}");
        let rgb = if changed.contains(&i) { colour(i + 1) } else { colour(i) };
        assert_eq!(
            record["label"],
            LABELS[argmax(&expected_probabilities(rgb))],
            "{key}: {record}"
        );
        if !changed.contains(&i) && !failed.contains(&key) {
            assert_eq!(record, &first[&key], "{key}: a skipped record is kept as it was");
        }
    }

    // With --retry-failed false an error record stays.
    let key = format!("in/{}", image(20).0);
    let mut text = std::fs::read_to_string(&out)?;
    text.push_str(&(failed_record(&key, &etags[&key]) + "\n"));
    std::fs::write(&out, &text)?;
    let mut keep = args.to_vec();
    keep.extend(["--retry-failed", "false"]);
    let counts = summary(&infer(Some(&moto), &keep)?)?;
    assert_eq!(counts.get("skipped"), Some(&40), "{counts:?}");
    assert_eq!(std::fs::read_to_string(&out)?, text);
    let counts = summary(&infer(Some(&moto), &args)?)?;
    assert_eq!(counts.get("redone"), Some(&1), "{counts:?}");
    let third = records(&std::fs::read_to_string(&out)?)?;
    assert!(third[&key]["error"].is_null(), "{}", third[&key]);
    Ok(())
}

/// `count` small PNGs at `prefix/0000.png`, ... in moto.
fn put_pngs(moto: &Moto, prefix: &str, count: usize) -> Result<()> {
    for i in 0..count {
        moto.put(
            &format!("{prefix}/{i:04}.png"),
            &solid(colour(i), 8, 8, ImageFormat::Png),
        )?;
    }
    Ok(())
}

/// Records of objects since deleted (`gone/...`), at least `bytes` of them: an earlier output
/// that a resumed run keeps. The text and the number of records.
fn gone_records(bytes: usize) -> (String, usize) {
    let mut earlier = String::new();
    let mut n = 0;
    while earlier.len() < bytes {
        let record = json!({"key": format!("gone/{n:06}.png"), "etag": "\"0\"", "label": "red", "class_id": 0,
                            "probability": 0.9, "top_k": [{"label": "red", "class_id": 0, "probability": 0.9}], "error": null});
        earlier.push_str(&format!("{record}\n"));
        n += 1;
    }
    (earlier, n)
}

#[test]
fn sigterm_mid_run_leaves_a_complete_s3_object_with_every_record_so_far() -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    use std::time::Instant;

    let moto = Moto::start()?;
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    let model_arg = model.display().to_string();
    moto.create_bucket("term")?;
    let count = 400;
    put_pngs(&moto, "term/in", count)?;
    // An earlier output of objects since deleted, larger than one part of the upload: kept, and
    // the new records after it.
    let (earlier, n) = gone_records(infer::bulk::output::PART_BYTES + (1 << 20));
    moto.put("term/out/run.jsonl", earlier.as_bytes())?;

    let args = [
        "s3://term/in/",
        "--model",
        &model_arg,
        "--top-k",
        "1",
        "-o",
        "s3://term/out/run.jsonl",
        "--concurrency",
        "1",
        "--max-batch",
        "1",
    ];
    let mut child = predict(Some(&moto), &args)
        .env("RUST_LOG", "info,infer=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // Signalled once a few records are written (or, from a binary that does not log them,
    // a while after the listing).
    let mut log = Vec::new();
    let mut listed_at = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let Ok(line) = seen.recv_timeout(Duration::from_millis(50)) else {
            if listed_at.is_some_and(|t: Instant| t.elapsed() > Duration::from_secs(3)) {
                break;
            }
            continue;
        };
        if line.contains(" listed") || line.contains("listed=") {
            listed_at = Some(Instant::now());
        }
        log.push(line);
        if log.iter().filter(|l| l.contains("recorded")).count() >= 5 {
            break;
        }
    }
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    ensure!(term.success(), "kill -TERM failed");
    let status = child.wait()?;
    log.extend(seen.iter());
    let log = log.join("\n");
    assert_eq!(status.signal(), None, "killed by the signal: {log}");
    assert!(!status.success() && log.contains("interrupted"), "{status}: {log}");

    let object = String::from_utf8(moto.get("term/out/run.jsonl")?)?;
    assert!(object.starts_with(&earlier), "the earlier records were not kept first");
    let kept = records(&object)?;
    let new: Vec<&String> = kept.keys().filter(|k| k.starts_with("in/")).collect();
    assert_eq!(kept.len() - new.len(), n, "earlier records");
    let recorded: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("recorded"))
        .filter_map(|l| l.split("key=").nth(1)?.split_whitespace().next())
        .collect();
    assert!(
        recorded.len() >= 5 && new.len() >= recorded.len(),
        "{} new records for {recorded:?}",
        new.len()
    );
    for key in &recorded {
        assert!(
            kept.contains_key(*key),
            "{key} was recorded before SIGTERM but is not in the object"
        );
    }
    assert!(new.len() < count, "the run ended before the signal");
    let uploads = String::from_utf8(moto.get("term?uploads")?)?;
    assert!(
        !uploads.contains("<UploadId>"),
        "a multipart upload was left open: {uploads}"
    );

    // The re-run reads the object back and does the rest.
    let counts = summary(&infer(Some(&moto), &args)?)?;
    assert_eq!(counts.get("listed"), Some(&count), "{counts:?}");
    assert_eq!(counts.get("skipped"), Some(&new.len()), "{counts:?}");
    let whole = records(&String::from_utf8(moto.get("term/out/run.jsonl")?)?)?;
    assert_eq!(whole.len(), n + count);
    Ok(())
}

/// The text between `<tag>` and `</tag>` in an XML answer.
fn xml_text<'a>(xml: &'a str, tag: &str) -> Result<&'a str> {
    let start = xml
        .find(&format!("<{tag}>"))
        .with_context(|| format!("no <{tag}> in {xml}"))?
        + tag.len()
        + 2;
    let len = xml[start..].find(&format!("</{tag}>")).context("unclosed")?;
    Ok(&xml[start..start + len])
}

/// A user's inline policy allowing `actions` on every resource.
fn allow(moto: &Moto, user: &str, actions: &[&str]) -> Result<()> {
    let policy =
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]});
    moto.iam(&[
        ("Action", "PutUserPolicy"),
        ("UserName", user),
        ("PolicyName", "bulk"),
        ("PolicyDocument", &policy.to_string()),
    ])?;
    Ok(())
}

/// A part of the S3 output refused in the middle of a run (the writer loses `s3:PutObject`
/// once the run has listed; moto enforces IAM): the run fails naming the upload, the
/// multipart upload is aborted (none is left open), and the earlier object is as it was.
#[test]
fn a_part_refused_mid_run_aborts_the_upload_and_fails_the_run() -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let moto = Moto::start()?;
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    let model_arg = model.display().to_string();
    moto.create_bucket("part")?;
    let count = 600;
    put_pngs(&moto, "part/in", count)?;
    // Earlier records of objects since deleted: the resume sends the first part, and leaves
    // the next one a few hundred new records short of full, so that it is sent mid-run.
    let (earlier, _) = gone_records(2 * infer::bulk::output::PART_BYTES - (64 << 10));
    moto.put("part/out/run.jsonl", earlier.as_bytes())?;
    moto.iam(&[("Action", "CreateUser"), ("UserName", "bulk")])?;
    let writer = [
        "s3:GetObject",
        "s3:ListBucket",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
    ];
    allow(&moto, "bulk", &writer)?;
    let key = moto.iam(&[("Action", "CreateAccessKey"), ("UserName", "bulk")])?;
    let (id, secret) = (xml_text(&key, "AccessKeyId")?, xml_text(&key, "SecretAccessKey")?);
    moto.enforce_iam(true)?;

    let args = [
        "s3://part/in/",
        "--model",
        &model_arg,
        "--top-k",
        "1",
        "-o",
        "s3://part/out/run.jsonl",
        "--concurrency",
        "1",
        "--max-batch",
        "1",
    ];
    let mut child = predict(Some(&moto), &args)
        .env("AWS_ACCESS_KEY_ID", id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("RUST_LOG", "info,ort=warn,infer=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
    let mut log = String::new();
    while stderr.read_line(&mut log)? > 0 && !log.contains("listed") {}
    let listed = log.contains("listed");
    moto.enforce_iam(false)?;
    allow(
        &moto,
        "bulk",
        &["s3:GetObject", "s3:ListBucket", "s3:AbortMultipartUpload"],
    )?;
    moto.enforce_iam(true)?;
    std::io::Read::read_to_string(&mut stderr, &mut log)?;
    let status = child.wait()?;
    moto.enforce_iam(false)?;
    assert!(listed, "the run never listed: {log}");

    assert!(!status.success(), "{status}: {log}");
    assert!(
        log.contains("uploading a part of s3://part/out/run.jsonl") && log.contains("AccessDenied"),
        "{log}"
    );
    // Refused while classifying, not when the run completes the upload.
    let recorded = log.lines().filter(|l| l.contains("recorded")).count();
    assert!(recorded > 0 && recorded < count, "{recorded} of {count} recorded");
    let uploads = String::from_utf8(moto.get("part?uploads")?)?;
    assert!(
        !uploads.contains("<UploadId>"),
        "a multipart upload was left open: {uploads}"
    );
    assert!(
        moto.get("part/out/run.jsonl")? == earlier.as_bytes(),
        "the earlier object was changed"
    );
    Ok(())
}

/// `infer predict DIR --top-k 1` records by key.
fn folder_records(dir: &Path, model: &Path) -> Result<BTreeMap<String, Value>> {
    let run = infer(
        None,
        &[
            &dir.display().to_string(),
            "--model",
            &model.display().to_string(),
            "--top-k",
            "1",
        ],
    )?;
    records(&String::from_utf8(run.stdout)?)
}

#[test]
fn file_names_that_are_not_utf8_are_read_and_written_escaped() -> Result<()> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    let images = dir.path().join("images");
    std::fs::create_dir(&images)?;
    // Latin-1 names: two that differ only in a byte that is not UTF-8, and a UTF-8 one.
    let files: [(&[u8], [u8; 3], &str); 3] = [
        (b"caf\xe9.png", [230, 20, 20], "caf\\xe9.png"),
        (b"caf\xe8.png", [20, 20, 230], "caf\\xe8.png"),
        ("café.png".as_bytes(), [20, 230, 20], "café.png"),
    ];
    for (name, rgb, _) in &files {
        std::fs::write(
            images.join(OsStr::from_bytes(name)),
            solid(*rgb, 16, 16, ImageFormat::Png),
        )?;
    }
    let records = folder_records(&images, &model)?;
    assert_eq!(records.len(), 3, "{records:?}");
    for (_, rgb, key) in files {
        let record = records
            .get(key)
            .with_context(|| format!("no record for {key} in {records:?}"))?;
        assert!(record["error"].is_null(), "{record}");
        assert_eq!(
            record["label"],
            LABELS[argmax(&expected_probabilities(rgb))],
            "{record}"
        );
    }
    Ok(())
}

#[test]
fn a_symbolic_link_loop_is_listed_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("sub"))?;
    std::fs::write(images.join("top.png"), solid([230, 20, 20], 8, 8, ImageFormat::Png))?;
    std::fs::write(images.join("sub/low.png"), solid([20, 20, 230], 8, 8, ImageFormat::Png))?;
    std::os::unix::fs::symlink("..", images.join("sub/loop"))?;
    // A second way into `sub`, outside the loop.
    std::os::unix::fs::symlink("sub", images.join("zz-sub"))?;
    let records = folder_records(&images, &model)?;
    assert_eq!(
        records.keys().map(String::as_str).collect::<Vec<_>>(),
        ["sub/low.png", "top.png"],
        "{records:?}"
    );
    Ok(())
}

#[test]
fn predict_files_prints_a_record_for_each_and_exits_3_when_any_fails() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("red.png"), solid([230, 20, 20], 16, 16, ImageFormat::Png))?;
    std::fs::write(path("blue.jpg"), solid([20, 20, 230], 16, 16, ImageFormat::Jpeg))?;
    std::fs::write(path("notes.txt"), b"not an image")?;
    std::fs::write(path("large.bmp"), solid([20, 230, 20], 40, 40, ImageFormat::Bmp))?;
    let names = ["red.png", "notes.txt", "missing.png", "large.bmp", "blue.jpg"];
    let model_arg = model.display().to_string();
    let mut args = vec!["--model", &model_arg, "--top-k", "2", "--max-body-bytes", "4000"];
    let paths: Vec<String> = names.iter().map(|n| path(n)).collect();
    args.extend(paths.iter().map(String::as_str));

    let mut json_args = args.clone();
    json_args.push("--json");
    let out = predict(None, &json_args).output()?;
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout)?;
    let predictions = doc["predictions"].as_array().context("predictions")?;
    assert_eq!(predictions.len(), names.len(), "{doc}");
    for (record, path) in predictions.iter().zip(&paths) {
        assert_eq!(record["key"].as_str(), Some(path.as_str()), "in the order given");
        assert!(record["etag"].is_null(), "{record}");
    }
    for (i, label) in [(0, "red"), (4, "blue")] {
        let record = &predictions[i];
        assert!(record["error"].is_null(), "{record}");
        assert_eq!(record["label"], label, "{record}");
        assert_eq!(record["class_id"], record["top_k"][0]["class_id"], "{record}");
        assert_eq!(record["probability"], record["top_k"][0]["probability"], "{record}");
        assert_eq!(record["top_k"].as_array().map(Vec::len), Some(2), "{record}");
    }
    for (i, reason) in [
        (1, "not a recognised image"),
        (2, "missing.png"),
        (3, "over the limit of 4000 bytes"),
    ] {
        let record = &predictions[i];
        let error = record["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{record}");
        assert!(record["label"].is_null() && record["top_k"].is_null(), "{record}");
    }
    assert!(doc["model"]["version"].is_string(), "{doc}");

    let out = predict(None, &args).output()?;
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), names.len(), "{text}");
    assert!(lines[0].starts_with(&format!("{}: red (", paths[0])), "{text}");
    assert!(lines[2].starts_with(&format!("{}: error: ", paths[2])), "{text}");
    assert!(lines[4].starts_with(&format!("{}: blue (", paths[4])), "{text}");
    Ok(())
}

#[test]
fn predict_files_honours_max_side() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    let wide = dir.path().join("wide.png").display().to_string();
    std::fs::write(&wide, solid([230, 20, 20], 64, 16, ImageFormat::Png))?;
    let model_arg = model.display().to_string();
    let run = |extra: &[&str]| -> Result<(Option<i32>, Value)> {
        let mut args = vec!["--model", &model_arg, "--json", &wide];
        args.extend(extra);
        let out = predict(None, &args).output()?;
        let doc: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("no JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
        Ok((out.status.code(), doc["predictions"][0].clone()))
    };
    let (status, record) = run(&["--max-side", "32"])?;
    assert_eq!(status, Some(3), "{record}");
    let error = record["error"].as_str().unwrap_or_default();
    assert!(error.contains("64") && error.contains("32"), "{record}");
    let (status, record) = run(&[])?;
    assert_eq!(status, Some(0), "{record}");
    assert_eq!(record["label"], "red", "{record}");
    Ok(())
}

/// An S3 output key longer than a file name may be (nothing of it becomes a local file name).
#[test]
fn an_s3_output_with_a_long_key_is_written() -> Result<()> {
    let moto = Moto::start()?;
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "tiny.onnx", &TinyModel::rgb(32).build())?;
    moto.create_bucket("long")?;
    for i in 0..3 {
        moto.put(&format!("long/in/{}", image(i).0), &image(i).1)?;
    }
    let key = format!("out/{}.jsonl", "k".repeat(400));
    let output = format!("s3://long/{key}");
    let args = ["s3://long/in/", "--model", &model.display().to_string(), "-o", &output];
    infer(Some(&moto), &args)?;
    let written = records(&String::from_utf8(moto.get(&format!("long/{key}"))?)?)?;
    assert_eq!(written.len(), 3, "{written:?}");
    Ok(())
}
