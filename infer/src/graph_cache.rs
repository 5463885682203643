//! ONNX Runtime's optimised graph, kept on disk so that later starts skip graph optimisation.
//!
//! Optimising the width-64 ResNet-18 is a large part of a cold start, and while it runs the
//! original and the re-laid-out weights sit in memory side by side, which sets the peak RSS.
//! ONNX Runtime can save the graph it optimised; loading that with optimisation off gives the
//! same session without either cost.
//!
//! An entry is a directory: the optimised graph (`graph.onnx`) and its weights in a file of their
//! own (`weights.bin`), which ONNX Runtime maps into memory instead of parsing them out of the
//! protobuf, with bit-identical outputs. The start-up times and memory with and without the cache
//! are in `infer/BENCHMARKS.md` ("Start-up and memory").
//!
//! The saved graph is only valid for the model, the ONNX Runtime build and the CPU it was made
//! on (the NCHWc layout bakes in the vector width), so all three are in the entry's name: a
//! change of any of them is a miss, never a wrong graph. Entries are written into a temporary
//! directory and renamed, so a crash mid-write leaves no half entry; an entry that does not load
//! is removed and rebuilt. The cache is an optimisation only: any failure to read or write it is
//! logged and start-up goes on the slow way.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The graph inside an entry directory.
pub const GRAPH_FILE: &str = "graph.onnx";
/// The weights inside an entry directory, named by the graph (a relative path).
pub const WEIGHTS_FILE: &str = "weights.bin";

/// How long before its digest note a file must have last been modified for the note to be
/// trusted without hashing the file ([`GraphCache::is_settled`]); FAT's 2 s is the coarsest
/// timestamp in use.
pub const SETTLED: std::time::Duration = std::time::Duration::from_secs(3);

/// A directory of optimised graphs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphCache {
    dir: PathBuf,
}

/// What start-up did about the optimised graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    /// No cache configured: the graph was optimised in memory.
    Off,
    /// Loaded the saved graph; no optimisation at start-up.
    Hit,
    /// Optimised now and saved for the next start.
    Stored,
    /// Optimised now; the cache could not be written (logged).
    Unwritable,
}

impl GraphCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$XDG_CACHE_HOME/infer`, else `$HOME/.cache/infer`; `None` without either.
    pub fn default_dir() -> Option<PathBuf> {
        let nonempty = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        nonempty("XDG_CACHE_HOME")
            .or_else(|| nonempty("HOME").map(|home| home.join(".cache")))
            .map(|base| base.join("infer"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry (a directory) for a model with this sha256 under this ONNX Runtime build and CPU.
    pub fn entry(&self, model_sha256: &str, runtime_build: &str) -> PathBuf {
        let mut env = Sha256::new();
        env.update(runtime_build.as_bytes());
        env.update(std::env::consts::ARCH.as_bytes());
        env.update(cpu_features().as_bytes());
        let env = hex::encode(env.finalize());
        let model = model_sha256.get(..16).unwrap_or(model_sha256);
        self.dir.join(format!("{model}-{}.optimized", &env[..12]))
    }

    /// The graph file of `entry`; the entry is stored when this exists.
    pub fn graph(entry: &Path) -> PathBuf {
        entry.join(GRAPH_FILE)
    }

    /// Moves a temporary entry filled by ONNX Runtime into place. `false` (and the temporary
    /// entry removed) when it has no graph or cannot be moved.
    pub fn commit(&self, tmp: &Path, entry: &Path) -> bool {
        // A leftover without a graph (a crash while removing a bad entry) is in the way.
        if entry.exists() && !Self::graph(entry).is_file() {
            remove_entry(entry);
        }
        let moved = Self::graph(tmp).is_file() && std::fs::rename(tmp, entry).is_ok();
        if moved {
            // Older builds kept a single-file entry under this name: without this, a cache
            // directory shared with such a build would hold both forever.
            remove_entry(&entry.with_extension("optimized.onnx"));
        } else {
            remove_entry(tmp);
        }
        moved
    }

    /// The sha256 that `path` had when it was last hashed, if its size, modification time and
    /// inode are unchanged since. Only a guess that lets hashing overlap loading: the caller
    /// still hashes the file and uses the guess only when the two agree.
    pub fn remembered_digest(&self, path: &Path) -> Option<String> {
        let text = std::fs::read_to_string(self.digest_note(path)?).ok()?;
        let digest = text.trim();
        (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then(|| digest.to_owned())
    }

    /// Whether the note for `path` can stand in for hashing it: the file's identity (inode,
    /// size, modification and change times) is unchanged since it was hashed in full, and it
    /// was last modified at least [`SETTLED`] before the note was written. The second part is
    /// git's "racily clean" rule: on a file system with coarse timestamps, a rewrite in the same
    /// tick as the hashed write would leave the identity as it was.
    pub fn is_settled(&self, path: &Path) -> bool {
        let note = self.digest_note(path).and_then(|n| std::fs::metadata(n).ok());
        let file = std::fs::metadata(path).ok();
        match (
            note.and_then(|n| n.modified().ok()),
            file.and_then(|f| f.modified().ok()),
        ) {
            (Some(noted), Some(modified)) => noted.duration_since(modified).is_ok_and(|d| d >= SETTLED),
            _ => false,
        }
    }

    /// Notes `sha256` as the digest of `path` as it is now (best effort, like all of the cache).
    pub fn remember_digest(&self, path: &Path, sha256: &str) {
        let Some(note) = self.digest_note(path) else { return };
        let written = note.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
            let tmp = note.with_extension(format!("{}.tmp", std::process::id()));
            std::fs::write(&tmp, sha256)?;
            std::fs::rename(&tmp, &note)
        });
        if let Err(e) = written {
            tracing::debug!(note = %note.display(), "could not note the model's digest: {e}");
        }
    }

    /// `digests/<hash of the file's path and identity>`: changes whenever the file may have.
    fn digest_note(&self, path: &Path) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let path = std::fs::canonicalize(path).ok()?;
        let meta = std::fs::metadata(&path).ok()?;
        let mut id = Sha256::new();
        id.update(path.as_os_str().as_encoded_bytes());
        for n in [meta.dev(), meta.ino(), meta.size()] {
            id.update(n.to_le_bytes());
        }
        for n in [meta.mtime(), meta.mtime_nsec(), meta.ctime(), meta.ctime_nsec()] {
            id.update(n.to_le_bytes());
        }
        Some(self.dir.join("digests").join(&hex::encode(id.finalize())[..32]))
    }

    /// A fresh, empty temporary entry directory beside `entry`, for [`GraphCache::commit`];
    /// creating it proves the cache is writable.
    pub fn temporary(&self, entry: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let name = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        remove_entry(&tmp);
        std::fs::create_dir(&tmp)?;
        Ok(tmp)
    }
}

/// Removes an entry, or a temporary one, whatever state it is in (best effort).
pub fn remove_entry(entry: &Path) {
    let _ = std::fs::remove_dir_all(entry).or_else(|_| std::fs::remove_file(entry));
}

/// The instruction-set extensions that change which kernels and layouts ONNX Runtime picks.
fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut found = Vec::new();
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($f) {
                    found.push($f);
                }
            )*};
        }
        probe!(
            "avx",
            "avx2",
            "fma",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avxvnni",
            "f16c"
        );
        found.join(",")
    }
    #[cfg(target_arch = "aarch64")]
    {
        let mut found = Vec::new();
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if std::arch::is_aarch64_feature_detected!($f) {
                    found.push($f);
                }
            )*};
        }
        probe!("neon", "dotprod", "i8mm", "bf16", "fp16", "sve");
        found.join(",")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_differ_by_model_and_runtime_build() {
        let cache = GraphCache::new("/c");
        let a = cache.entry(&"a".repeat(64), "ORT 1.31.1 commit x");
        assert!(a.starts_with("/c"));
        assert_eq!(a, cache.entry(&"a".repeat(64), "ORT 1.31.1 commit x"));
        assert_ne!(a, cache.entry(&"b".repeat(64), "ORT 1.31.1 commit x"));
        assert_ne!(a, cache.entry(&"a".repeat(64), "ORT 1.32.0 commit y"));
    }

    #[test]
    fn temporary_entries_are_created_beside_the_entry_and_committed_only_with_a_graph() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let cache = GraphCache::new(dir.path().join("nested"));
        let entry = cache.entry(&"c".repeat(64), "build");
        let tmp = cache.temporary(&entry)?;
        assert!(tmp.is_dir());
        assert_eq!(tmp.parent(), entry.parent());
        assert_ne!(tmp, entry);
        assert!(!cache.commit(&tmp, &entry), "no graph written: nothing to commit");
        assert!(!tmp.exists() && !entry.exists());

        let tmp = cache.temporary(&entry)?;
        std::fs::write(GraphCache::graph(&tmp), b"graph")?;
        std::fs::write(tmp.join(WEIGHTS_FILE), b"weights")?;
        // A half-removed entry (no graph) in the way is replaced, and the same model's entry in
        // the old single-file layout goes.
        std::fs::create_dir(&entry)?;
        std::fs::write(entry.join(WEIGHTS_FILE), b"stale")?;
        let legacy = PathBuf::from(format!("{}.onnx", entry.display()));
        std::fs::write(&legacy, b"old layout")?;
        assert!(cache.commit(&tmp, &entry));
        assert!(!tmp.exists());
        assert!(!legacy.exists(), "{} removed", legacy.display());
        assert_eq!(std::fs::read(entry.join(WEIGHTS_FILE))?, b"weights");
        assert!(GraphCache::graph(&entry).is_file());
        Ok(())
    }

    #[test]
    fn a_remembered_digest_is_forgotten_when_the_file_changes() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let cache = GraphCache::new(dir.path().join("cache"));
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, b"one")?;
        assert_eq!(cache.remembered_digest(&model), None);
        let digest = "e".repeat(64);
        cache.remember_digest(&model, &digest);
        assert_eq!(cache.remembered_digest(&model), Some(digest));
        // A rewrite replaces the inode's times (and here the size): the note no longer applies.
        std::fs::write(&model, b"other")?;
        assert_eq!(cache.remembered_digest(&model), None);
        // A note that is not a digest is no guess.
        cache.remember_digest(&model, "not-a-digest");
        assert_eq!(cache.remembered_digest(&model), None);
        Ok(())
    }

    #[test]
    fn an_unwritable_directory_is_an_error_not_a_panic() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x")?;
        let cache = GraphCache::new(file.join("sub"));
        assert!(cache.temporary(&cache.entry(&"d".repeat(64), "b")).is_err());
        Ok(())
    }
}
