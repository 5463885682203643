//! Files that a run replaces whole (the checkpoint, `metrics.jsonl`): written to a temporary file
//! beside the target, synced, renamed over it (`NamedTempFile::persist`), and the directory
//! synced, so a kill at any moment leaves either the previous file or the new one, never a torn
//! one.
//!
//! The temporary file has one fixed name per target, `.<name>.tmp`: a kill in mid-write leaves at
//! most one leftover per file (a checkpoint's is a full copy of the weights), and the next start
//! of the run removes it ([`remove_leftovers`]). Earlier versions named it by process id
//! (`.<name>.tmp<pid>`); those are removed too.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// How replacing a file failed: in our own file handling, or in the caller's writer.
#[derive(Debug)]
pub enum ReplaceError<E> {
    Io(io::Error),
    Write(E),
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> io::Result<&std::ffi::OsStr> {
    path.file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))
}

/// `.<name>.tmp` beside `path`: where [`replace`] writes before the rename.
pub fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let mut name = OsString::from(".");
    name.push(file_name(path)?);
    name.push(".tmp");
    Ok(dir_of(path).join(name))
}

/// Replaces `path` with what `write` puts into a fresh file, atomically (see the module docs).
pub fn replace<E>(path: &Path, write: impl FnOnce(&mut File) -> Result<(), E>) -> Result<(), ReplaceError<E>> {
    stage(path, write)?.commit().map_err(ReplaceError::Io)
}

/// A new content for a file, written and synced to its temporary file but not yet in place:
/// [`Staged::commit`] renames it over the target, dropping it removes it. Lets a caller that
/// replaces several files write all of them before the first rename.
#[derive(Debug)]
pub struct Staged {
    file: tempfile::NamedTempFile,
    path: PathBuf,
}

/// Writes what `write` puts into a fresh file to `path`'s temporary file and syncs it; `path`
/// itself is untouched until [`Staged::commit`].
pub fn stage<E>(path: &Path, write: impl FnOnce(&mut File) -> Result<(), E>) -> Result<Staged, ReplaceError<E>> {
    let dir = dir_of(path);
    let tmp = temp_path(path).map_err(ReplaceError::Io)?;
    // Only a writer of this file uses the name; what is there is a killed writer's leftover.
    remove_if_present(&tmp).map_err(ReplaceError::Io)?;
    let tmp_name = file_name(&tmp).map_err(ReplaceError::Io)?.to_owned();
    let mut builder = tempfile::Builder::new();
    builder.prefix(&tmp_name).suffix("").rand_bytes(0);
    // The mode File::create uses (the umask still applies), not tempfile's private 0600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut file = builder.tempfile_in(&dir).map_err(ReplaceError::Io)?;
    // From here on, dropping `file` on an error removes the temporary file.
    write(file.as_file_mut()).map_err(ReplaceError::Write)?;
    file.as_file().sync_all().map_err(ReplaceError::Io)?;
    Ok(Staged {
        file,
        path: path.to_owned(),
    })
}

impl Staged {
    /// Renames the synced temporary file over the target and syncs the directory; on an error
    /// the temporary file is removed and the target is as it was.
    pub fn commit(self) -> io::Result<()> {
        let dir = dir_of(&self.path);
        self.file.persist(&self.path).map_err(|e| e.error)?;
        // The rename itself is durable only once the directory entry is.
        File::open(&dir).and_then(|d| d.sync_all())
    }
}

fn remove_if_present(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the temporary files that a killed writer of `path` left beside it (this version's
/// `.<name>.tmp` and earlier versions' `.<name>.tmp<pid>`); returns what it removed.
pub fn remove_leftovers(path: &Path) -> io::Result<Vec<PathBuf>> {
    let tmp = temp_path(path)?;
    let Some(tmp_name) = tmp.file_name().and_then(|n| n.to_str()) else {
        // A non-UTF-8 name: only this version's exact name can be matched.
        return Ok(if remove_if_present(&tmp)? {
            vec![tmp]
        } else {
            Vec::new()
        });
    };
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir_of(path)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(tmp_name)) else {
            continue;
        };
        if rest.bytes().all(|b| b.is_ascii_digit()) && remove_if_present(&entry.path())? {
            removed.push(entry.path());
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Path) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        Ok(names)
    }

    #[test]
    fn replace_writes_the_new_content_and_leaves_no_temporary_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f.txt");
        fs::write(&path, "old")?;
        // A killed writer's leftover is no obstacle: it is replaced, then renamed away.
        fs::write(temp_path(&path)?, "torn")?;
        replace(&path, |f| f.write_all(b"new")).map_err(|e| format!("{e:?}"))?;
        assert_eq!(fs::read_to_string(&path)?, "new");
        assert_eq!(names(dir.path())?, ["f.txt"]);

        // A failing writer leaves the old file and no temporary file.
        let failed = replace(&path, |f| {
            f.write_all(b"half")?;
            Err::<(), io::Error>(io::Error::other("disk full"))
        });
        assert!(matches!(failed, Err(ReplaceError::Write(_))), "{failed:?}");
        assert_eq!(fs::read_to_string(&path)?, "new");
        assert_eq!(names(dir.path())?, ["f.txt"]);
        Ok(())
    }

    #[test]
    fn leftovers_of_this_and_earlier_versions_are_removed_and_nothing_else() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("checkpoint.pt");
        for name in [
            "checkpoint.pt",
            ".checkpoint.pt.tmp",
            ".checkpoint.pt.tmp4242",
            ".checkpoint.pt.tmp.keep",
            ".other.pt.tmp",
        ] {
            fs::write(dir.path().join(name), name)?;
        }
        let removed = remove_leftovers(&path)?;
        assert_eq!(
            removed,
            [
                dir.path().join(".checkpoint.pt.tmp"),
                dir.path().join(".checkpoint.pt.tmp4242")
            ]
        );
        assert_eq!(
            names(dir.path())?,
            [".checkpoint.pt.tmp.keep", ".other.pt.tmp", "checkpoint.pt"]
        );
        assert!(remove_leftovers(&dir.path().join("absent").join("x"))?.is_empty());
        Ok(())
    }
}
