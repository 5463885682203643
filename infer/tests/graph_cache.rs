//! The optimised-graph cache over real ONNX Runtime sessions of the tiny colour classifier: the
//! first start stores the graph, the next loads it, both answer exactly as an uncached session;
//! a broken entry is rebuilt, an unwritable directory only costs speed, another model never
//! gets this model's graph, and a model that fails its checksum is refused even when cached.

use std::path::Path;

use anyhow::{Result, ensure};
use infer::graph_cache::{CacheOutcome, GraphCache};
use infer::host::{StartError, load_classifier};
use infer::model::{Classifier, LoadOptions, Overrides};
use infer::source::{ModelSource, SourceError};
use infer::testing::{TinyModel, write_with_sidecar};
use onnx::checksum::ChecksumError;

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn cached(dir: &Path) -> LoadOptions {
    LoadOptions {
        cache: Some(GraphCache::new(dir)),
        ..LoadOptions::uncached(1)
    }
}

fn load(model: &Path, options: &LoadOptions) -> Result<std::sync::Arc<Classifier>, StartError> {
    let source = ModelSource::File(model.to_owned());
    runtime()
        .map_err(|e| StartError::Task(e.to_string()))?
        .block_on(load_classifier(&source, &Overrides::default(), options))
}

/// Logits for a few fixed inputs, to compare sessions bit for bit.
fn logits(classifier: &Classifier) -> Result<Vec<Vec<f32>>> {
    let n = 4;
    let len = classifier.info().image_len();
    let input = (0..n * len).map(|i| ((i * 7919) % 255) as f32 / 64.0 - 2.0).collect();
    Ok(classifier.run(input, n)?)
}

/// What the top of the cache directory holds: entries and anything temporary left behind (the
/// `digests/` notes have their own subdirectory).
fn entries(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() != "digests" {
            found.push(entry.path());
        }
    }
    Ok(found)
}

/// A model whose weights are not the identity, so that a wrong graph would answer differently.
fn skewed() -> TinyModel {
    let mut model = TinyModel::rgb(8);
    model.weights = vec![[1.0, -2.0, 0.5], [0.3, 3.0, -1.0], [-0.7, 0.2, 2.5]];
    model.bias = vec![0.1, -0.2, 0.3];
    model
}

#[test]
fn the_first_start_stores_the_graph_and_the_next_loads_it_with_the_same_answers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = dir.path().join("cache");
    let model = write_with_sidecar(dir.path(), "m.onnx", &skewed().build())?;

    let uncached = load(&model, &LoadOptions::uncached(1))?;
    assert_eq!(uncached.cache_outcome(), CacheOutcome::Off);
    let first = load(&model, &cached(&cache))?;
    assert_eq!(first.cache_outcome(), CacheOutcome::Stored);
    let stored = entries(&cache)?;
    assert_eq!(stored.len(), 1, "one entry and no temporary files left: {stored:?}");
    // The first start notes the file's digest, so the next one hashes it beside the graph load.
    let sha = first.info().sha256.clone();
    assert_eq!(GraphCache::new(&cache).remembered_digest(&model), Some(sha.clone()));
    let second = load(&model, &cached(&cache))?;
    assert_eq!(second.cache_outcome(), CacheOutcome::Hit);

    let want = logits(&uncached)?;
    assert_eq!(logits(&first)?, want);
    assert_eq!(logits(&second)?, want);
    // What the API reports comes from the model, not from the cache entry.
    assert_eq!(second.info().version, uncached.info().version);
    assert_eq!(second.info().class_names, uncached.info().class_names);
    assert_eq!(second.info().metadata, uncached.info().metadata);

    // A note whose entry has gone (cache cleaned by hand) only means optimising again.
    std::fs::remove_dir_all(&stored[0])?;
    let third = load(&model, &cached(&cache))?;
    assert_eq!(third.cache_outcome(), CacheOutcome::Stored);
    assert_eq!(logits(&third)?, want);
    assert_eq!(GraphCache::new(&cache).remembered_digest(&model), Some(sha));
    Ok(())
}

#[test]
fn a_broken_entry_is_replaced_and_start_up_goes_on() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = dir.path().join("cache");
    let model = write_with_sidecar(dir.path(), "m.onnx", &skewed().build())?;
    let want = logits(&*load(&model, &cached(&cache))?)?;
    let [entry] = entries(&cache)?
        .try_into()
        .map_err(|e| anyhow::anyhow!("entries {e:?}"))?;

    let graph = GraphCache::graph(&entry);
    std::fs::write(&graph, b"not an onnx graph")?;
    let rebuilt = load(&model, &cached(&cache))?;
    assert_eq!(rebuilt.cache_outcome(), CacheOutcome::Stored);
    assert_eq!(logits(&rebuilt)?, want);
    ensure!(std::fs::metadata(&graph)?.len() > 100, "the entry was rewritten");
    assert_eq!(load(&model, &cached(&cache))?.cache_outcome(), CacheOutcome::Hit);
    Ok(())
}

/// 100 classes: a 1.2 KB weight matrix, over the size from which weights get their own file.
fn wide() -> TinyModel {
    let classes = 100;
    TinyModel {
        class_names: (0..classes).map(|i| format!("c{i}")).collect(),
        weights: (0..classes)
            .map(|i| [i as f32 / 25.0 - 2.0, (i % 7) as f32 - 3.0, 1.5])
            .collect(),
        bias: (0..classes).map(|i| (i % 5) as f32 * 0.1).collect(),
        ..TinyModel::rgb(8)
    }
}

#[test]
fn large_weights_live_beside_the_graph_and_a_damaged_weights_file_is_rebuilt() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = dir.path().join("cache");
    let model = write_with_sidecar(dir.path(), "wide.onnx", &wide().build())?;
    let want = logits(&*load(&model, &LoadOptions::uncached(1))?)?;
    assert_eq!(logits(&*load(&model, &cached(&cache))?)?, want);
    let [entry] = entries(&cache)?
        .try_into()
        .map_err(|e| anyhow::anyhow!("entries {e:?}"))?;
    let weights = entry.join(infer::graph_cache::WEIGHTS_FILE);
    ensure!(
        std::fs::metadata(&weights)?.len() >= 1200,
        "the weight matrix is in {}",
        weights.display()
    );
    let hit = load(&model, &cached(&cache))?;
    assert_eq!(hit.cache_outcome(), CacheOutcome::Hit);
    assert_eq!(logits(&hit)?, want);
    drop(hit);

    // Cut short (a disk that filled up): the graph no longer loads, so it is made again.
    let full = std::fs::read(&weights)?;
    std::fs::write(&weights, &full[..full.len() / 2])?;
    let rebuilt = load(&model, &cached(&cache))?;
    assert_eq!(rebuilt.cache_outcome(), CacheOutcome::Stored);
    assert_eq!(logits(&rebuilt)?, want);
    assert_eq!(std::fs::read(&weights)?, full);
    Ok(())
}

#[test]
fn an_unwritable_cache_directory_only_costs_speed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = write_with_sidecar(dir.path(), "m.onnx", &skewed().build())?;
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x")?;
    let classifier = load(&model, &cached(&not_a_dir.join("cache")))?;
    assert_eq!(classifier.cache_outcome(), CacheOutcome::Unwritable);
    assert_eq!(
        logits(&classifier)?,
        logits(&*load(&model, &LoadOptions::uncached(1))?)?
    );
    Ok(())
}

#[test]
fn another_model_never_gets_this_models_graph() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = dir.path().join("cache");
    let a = write_with_sidecar(dir.path(), "a.onnx", &skewed().build())?;
    let b = write_with_sidecar(dir.path(), "b.onnx", &TinyModel::rgb(8).build())?;
    load(&a, &cached(&cache))?;
    // Same file name, new weights: keyed by content, not by path.
    let replaced = write_with_sidecar(dir.path(), "a.onnx", &TinyModel::rgb(8).build())?;
    let from_b = load(&b, &cached(&cache))?;
    assert_eq!(from_b.cache_outcome(), CacheOutcome::Stored);
    assert_eq!(logits(&from_b)?, logits(&*load(&b, &LoadOptions::uncached(1))?)?);
    assert_eq!(load(&replaced, &cached(&cache))?.cache_outcome(), CacheOutcome::Hit);
    assert_eq!(entries(&cache)?.len(), 2);
    Ok(())
}

#[test]
fn a_model_that_fails_its_checksum_is_refused_even_when_its_graph_is_cached() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = dir.path().join("cache");
    let model = write_with_sidecar(dir.path(), "m.onnx", &skewed().build())?;
    load(&model, &cached(&cache))?;
    let sidecar = onnx::checksum::sidecar_path(&model);
    std::fs::write(&sidecar, format!("{}  m.onnx\n", "0".repeat(64)))?;
    match load(&model, &cached(&cache)) {
        Err(StartError::Source(SourceError::Checksum(ChecksumError::Mismatch { model: named, .. }))) => {
            assert!(named.ends_with("m.onnx"), "{named}");
        }
        other => anyhow::bail!("expected a checksum mismatch, got {other:?}"),
    }
    Ok(())
}

#[test]
fn models_given_as_bytes_use_the_cache_too() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bytes = skewed().build();
    let load = || {
        Classifier::load_with_options(
            bytes.clone(),
            None,
            "m",
            "s3://bucket/m.onnx",
            &Overrides::default(),
            &cached(dir.path()),
        )
    };
    let first = load()?;
    let second = load()?;
    assert_eq!(first.cache_outcome(), CacheOutcome::Stored);
    assert_eq!(second.cache_outcome(), CacheOutcome::Hit);
    assert_eq!(logits(&first)?, logits(&second)?);
    Ok(())
}

#[test]
fn a_wrong_remembered_digest_never_serves_the_other_models_graph() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = dir.path().join("cache");
    let a_bytes = skewed().build();
    let b_bytes = TinyModel::rgb(8).build();
    let a = write_with_sidecar(dir.path(), "a.onnx", &a_bytes)?;
    let b = write_with_sidecar(dir.path(), "b.onnx", &b_bytes)?;
    let want = logits(&*load(&a, &cached(&cache))?)?;
    load(&b, &cached(&cache))?;

    // As if a.onnx had held b's weights when it was last hashed.
    let graphs = GraphCache::new(&cache);
    graphs.remember_digest(&a, &onnx::checksum::sha256_hex(&b_bytes));
    let again = load(&a, &cached(&cache))?;
    assert_eq!(again.cache_outcome(), CacheOutcome::Hit);
    assert_eq!(logits(&again)?, want);
    assert_eq!(again.info().sha256, onnx::checksum::sha256_hex(&a_bytes));
    assert_eq!(graphs.remembered_digest(&a), Some(onnx::checksum::sha256_hex(&a_bytes)));
    Ok(())
}

/// Backdates `path`'s modification time, as for a model file copied in well before the start.
fn backdate(path: &Path, by: std::time::Duration) -> Result<std::time::SystemTime> {
    let when = std::time::SystemTime::now() - by;
    std::fs::File::options().write(true).open(path)?.set_modified(when)?;
    Ok(when)
}

#[test]
fn a_settled_file_is_not_hashed_again_but_its_sidecar_still_is() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = dir.path().join("cache");
    let (a_bytes, b_bytes) = (skewed().build(), TinyModel::rgb(8).build());
    let a = write_with_sidecar(dir.path(), "a.onnx", &a_bytes)?;
    let b = write_with_sidecar(dir.path(), "b.onnx", &b_bytes)?;
    backdate(&a, std::time::Duration::from_secs(60))?;
    let want_a = logits(&*load(&a, &cached(&cache))?)?;
    let want_b = logits(&*load(&b, &cached(&cache))?)?;
    let graphs = GraphCache::new(&cache);
    assert!(graphs.is_settled(&a), "modified a minute before its note");
    assert!(!graphs.is_settled(&b), "modified in the same moment as its note");
    let again = load(&a, &cached(&cache))?;
    assert_eq!(again.cache_outcome(), CacheOutcome::Hit);
    assert_eq!(logits(&again)?, want_a);

    // The note is believed without reading the file: the cache directory is trusted as its
    // graphs are (a note naming b's digest gets b's graph, once no sidecar contradicts it),
    // which is how this test can tell.
    let sidecar = onnx::checksum::sidecar_path(&a);
    let kept = std::fs::read(&sidecar)?;
    std::fs::remove_file(&sidecar)?;
    graphs.remember_digest(&a, &onnx::checksum::sha256_hex(&b_bytes));
    assert_eq!(logits(&*load(&a, &cached(&cache))?)?, want_b);
    std::fs::write(&sidecar, kept)?;
    match load(&a, &cached(&cache)) {
        Err(StartError::Source(SourceError::Checksum(ChecksumError::Mismatch { .. }))) => {}
        other => anyhow::bail!("the sidecar contradicts the note: expected a mismatch, got {other:?}"),
    }
    // For a file that is not settled, the same note is checked against a full hash.
    graphs.remember_digest(&b, &onnx::checksum::sha256_hex(&a_bytes));
    assert_eq!(logits(&*load(&b, &cached(&cache))?)?, want_b);

    // With the right note, a settled file whose sidecar disagrees is refused all the same.
    graphs.remember_digest(&a, &onnx::checksum::sha256_hex(&a_bytes));
    assert_eq!(logits(&*load(&a, &cached(&cache))?)?, want_a);
    std::fs::write(&sidecar, format!("{}  a.onnx\n", "0".repeat(64)))?;
    match load(&a, &cached(&cache)) {
        Err(StartError::Source(SourceError::Checksum(ChecksumError::Mismatch { .. }))) => Ok(()),
        other => anyhow::bail!("expected a checksum mismatch, got {other:?}"),
    }
}

#[test]
fn a_settled_file_rewritten_in_place_is_hashed_again_even_with_its_old_modification_time() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cache = dir.path().join("cache");
    let (a_bytes, b_bytes) = (skewed().build(), TinyModel::rgb(8).build());
    ensure!(a_bytes.len() == b_bytes.len(), "same size, so only the times can tell");
    let model = write_with_sidecar(dir.path(), "m.onnx", &a_bytes)?;
    let old = backdate(&model, std::time::Duration::from_secs(60))?;
    load(&model, &cached(&cache))?;
    assert!(GraphCache::new(&cache).is_settled(&model));

    // Same inode, same size, and the modification time put back: only the change time moved.
    std::fs::write(&model, &b_bytes)?;
    std::fs::write(
        onnx::checksum::sidecar_path(&model),
        format!("{}  m.onnx\n", onnx::checksum::sha256_hex(&b_bytes)),
    )?;
    std::fs::File::options().write(true).open(&model)?.set_modified(old)?;
    let reloaded = load(&model, &cached(&cache))?;
    assert_eq!(reloaded.info().sha256, onnx::checksum::sha256_hex(&b_bytes));
    assert_eq!(logits(&reloaded)?, logits(&*load(&model, &LoadOptions::uncached(1))?)?);
    Ok(())
}
