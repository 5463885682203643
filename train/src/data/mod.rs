//! CIFAR-style data sets: the official binary release and an image-folder layout, read from a
//! directory or straight from a `.tar.gz`, decoded once into one contiguous `u8` tensor per split.
//!
//! Layouts (detected, in this order):
//! - **CIFAR binary**: `data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin` and
//!   `batches.meta.txt` (class names, one per line), directly in the root or in a single
//!   sub-directory such as `cifar-10-batches-bin/`. Each record is one label byte, then 3,072
//!   bytes: the red, green and blue 32x32 planes.
//! - **Image folder**: `train/<class>/*.{png,jpg,...}` and `test/<class>/*`, again in the root or
//!   one sub-directory. Labels are the class directories of `train/` in sorted order; every image
//!   must be 32x32.
//!
//! Class names always come from the data. Any missing, truncated or mislabelled file is an error
//! naming the file and what is wrong with it.

mod augment;
mod batch;
mod binary;
mod folder;
mod stats;
mod tree;

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

pub use augment::random_crop_flip;
pub use batch::batch_indices;
use binary::load_binary;
use folder::load_image_folder;
pub use stats::{Normalizer, channel_stats};
use tree::{Tree, is_archive, join, read_archive};

/// Side of the square images.
pub const IMAGE_SIZE: i64 = 32;
/// Bytes of one image's pixels.
const PIXELS: usize = (IMAGE_SIZE * IMAGE_SIZE * 3) as usize;
/// CIFAR-10's class names in label order, used only to recognise (and name) that data set.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{path}: no CIFAR data found (expected data_batch_1.bin .. data_batch_5.bin, test_batch.bin and \
         batches.meta.txt, or train/<class>/*.png|jpg and test/<class>/*), in it or in one sub-directory"
    )]
    UnknownLayout { path: PathBuf },
    #[error("cannot compute the channel statistics: {0}")]
    Stats(String),
}

fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> DataError {
    DataError::Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}

/// One split: images `[N, 3, 32, 32]` as `u8` (RGB planes) and labels `[N]` as `i64`, on the CPU.
#[derive(Debug)]
pub struct Split {
    pub images: Tensor,
    pub labels: Tensor,
}

impl Split {
    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reproducible random subset of `n` images (all of them if `n` is not smaller).
    pub fn subset(&self, n: i64, seed: i64) -> Split {
        if n >= self.len() {
            return Split {
                images: self.images.shallow_clone(),
                labels: self.labels.shallow_clone(),
            };
        }
        tch::manual_seed(seed);
        let idx = Tensor::randperm(self.len(), (Kind::Int64, Device::Cpu)).narrow(0, 0, n);
        Split {
            images: self.images.index_select(0, &idx),
            labels: self.labels.index_select(0, &idx),
        }
    }

    /// Images per class, in label order.
    pub fn class_counts(&self, num_classes: i64) -> Result<Vec<i64>, tch::TchError> {
        Vec::<i64>::try_from(&self.labels.bincount::<Tensor>(None, num_classes))
    }
}

/// Which layout a data set was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    CifarBinary,
    ImageFolder,
}

#[derive(Debug)]
pub struct Dataset {
    /// `"CIFAR-10"` when the data is recognisably CIFAR-10, else the directory or archive name.
    pub name: String,
    pub layout: Layout,
    pub class_names: Vec<String>,
    pub train: Split,
    pub test: Split,
}

impl Dataset {
    pub fn num_classes(&self) -> i64 {
        self.class_names.len() as i64
    }
}

/// Loads a data set from a directory or a `.tar.gz` of one, in either layout.
pub fn load(path: &Path) -> Result<Dataset, DataError> {
    let tree = if is_archive(path) {
        Tree::Archive {
            path: path.to_owned(),
            files: read_archive(path)?,
        }
    } else {
        if !path.is_dir() {
            let source = if path.exists() {
                std::io::Error::other("not a directory or a .tar.gz archive")
            } else {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory")
            };
            return Err(DataError::Io {
                path: path.to_owned(),
                source,
            });
        }
        Tree::Dir(path.to_owned())
    };
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let stem = stem.trim_end_matches(".tar.gz").trim_end_matches(".tgz").to_owned();

    // The root itself, then each sub-directory (the official archive nests one level).
    let mut candidates = vec![String::new()];
    candidates.extend(
        tree.list("")?
            .into_iter()
            .filter(|(name, is_dir)| *is_dir && !name.starts_with('.'))
            .map(|(name, _)| name),
    );
    for root in &candidates {
        if tree.is_file(&join(root, "data_batch_1.bin")) {
            return load_binary(&tree, root, &stem);
        }
    }
    for root in &candidates {
        if tree.is_dir(&join(root, "train")) {
            return load_image_folder(&tree, root, &stem);
        }
    }
    Err(DataError::UnknownLayout { path: path.to_owned() })
}

fn dataset_name(class_names: &[String], train: &Split, test: &Split, fallback: &str) -> String {
    let cifar = class_names.iter().map(String::as_str).eq(CIFAR10_CLASSES);
    if cifar && train.len() == 50_000 && test.len() == 10_000 {
        "CIFAR-10".to_owned()
    } else {
        fallback.to_owned()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A solid-colour 32x32 image whose colour encodes (class, index), so tests can check labels.
    pub(crate) fn pixel(class: usize, i: usize) -> [u8; 3] {
        [(class * 40) as u8, (i * 7 % 256) as u8, 200]
    }

    /// Writes `train/<class>/<i>.png` and `test/<class>/<i>.png` under `root`.
    pub(crate) fn write_image_folder(root: &Path, classes: &[&str], per_class: (usize, usize)) -> TestResult {
        for (split, n) in [("train", per_class.0), ("test", per_class.1)] {
            for (c, class) in classes.iter().enumerate() {
                let dir = root.join(split).join(class);
                fs::create_dir_all(&dir)?;
                for i in 0..n {
                    let img = image::RgbImage::from_pixel(32, 32, image::Rgb(pixel(c, i)));
                    img.save(dir.join(format!("{i:03}.png")))?;
                }
            }
        }
        Ok(())
    }

    /// Writes the official binary layout with `classes` and `per_file` records per batch file.
    pub(crate) fn write_binary(root: &Path, classes: &[&str], per_file: usize) -> TestResult {
        fs::create_dir_all(root)?;
        let mut meta = fs::File::create(root.join("batches.meta.txt"))?;
        for c in classes {
            writeln!(meta, "{c}")?;
        }
        writeln!(meta)?;
        let names: Vec<String> = (1..=5)
            .map(|i| format!("data_batch_{i}.bin"))
            .chain(["test_batch.bin".to_owned()])
            .collect();
        for name in names {
            let mut bytes = Vec::new();
            for i in 0..per_file {
                let class = i % classes.len();
                bytes.push(class as u8);
                for (ch, v) in pixel(class, i).iter().enumerate() {
                    // Distinct planes: the top-left pixel of each plane is marked, to catch
                    // plane/interleave mix-ups.
                    let mut plane = vec![*v; 1024];
                    plane[0] = ch as u8;
                    bytes.extend_from_slice(&plane);
                }
            }
            fs::write(root.join(name), bytes)?;
        }
        Ok(())
    }

    #[test]
    fn image_folder_labels_come_from_sorted_class_directories() -> TestResult {
        let dir = tempfile::tempdir()?;
        write_image_folder(dir.path(), &["zebra", "ant", "moth"], (4, 2))?;
        let ds = load(dir.path())?;
        assert_eq!(ds.layout, Layout::ImageFolder);
        assert_eq!(ds.class_names, ["ant", "moth", "zebra"]);
        assert_eq!(ds.train.images.size(), [12, 3, 32, 32]);
        assert_eq!(ds.train.images.kind(), Kind::Uint8);
        assert_eq!(ds.test.len(), 6);
        assert_eq!(ds.train.class_counts(3)?, [4, 4, 4]);
        // The writer numbered zebra, ant, moth as 0, 1, 2 (red = 40 * that); sorted they are labels 2, 0, 1.
        let labels = Vec::<i64>::try_from(&ds.train.labels)?;
        for (n, label) in labels.iter().enumerate() {
            let red = ds.train.images.int64_value(&[n as i64, 0, 5, 5]);
            let writer_class = [1, 2, 0][*label as usize];
            assert_eq!(red, (writer_class * 40) as i64);
            assert_eq!(ds.train.images.int64_value(&[n as i64, 2, 5, 5]), 200, "blue plane");
        }
        Ok(())
    }

    #[test]
    fn binary_layout_reads_planes_and_names_from_meta() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("cifar-10-batches-bin");
        write_binary(&root, &["cat", "dog"], 6)?;
        let ds = load(dir.path())?;
        assert_eq!(ds.layout, Layout::CifarBinary);
        assert_eq!(ds.class_names, ["cat", "dog"]);
        assert_eq!(ds.train.len(), 30);
        assert_eq!(ds.test.len(), 6);
        let img = ds.train.images.get(3);
        assert_eq!(ds.train.labels.int64_value(&[3]), 1);
        for ch in 0..3 {
            assert_eq!(img.int64_value(&[ch, 0, 0]), ch, "plane {ch} marker");
            assert_eq!(img.int64_value(&[ch, 1, 1]), i64::from(pixel(1, 3)[ch as usize]));
        }
        Ok(())
    }

    #[test]
    fn tar_gz_reads_like_the_directory() -> TestResult {
        let dir = tempfile::tempdir()?;
        let src = dir.path().join("src");
        write_image_folder(&src.join("mini"), &["a", "b"], (3, 1))?;
        let archive = dir.path().join("mini.tar.gz");
        let gz = flate2::write::GzEncoder::new(fs::File::create(&archive)?, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.append_dir_all("mini", src.join("mini"))?;
        tar.into_inner()?.finish()?;
        let from_tar = load(&archive)?;
        let from_dir = load(&src)?;
        assert_eq!(from_tar.class_names, from_dir.class_names);
        assert_eq!(from_tar.name, "mini");
        assert!(from_tar.train.images.equal(&from_dir.train.images));
        assert!(from_tar.train.labels.equal(&from_dir.train.labels));
        assert!(from_tar.test.images.equal(&from_dir.test.images));
        Ok(())
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let bin = dir.path().join("bin");
        write_binary(&bin, &["cat", "dog"], 4)?;
        let truncated = bin.join("data_batch_3.bin");
        let bytes = fs::read(&truncated)?;
        fs::write(&truncated, &bytes[..bytes.len() - 10])?;
        let msg = load(&bin).err().ok_or("loaded")?.to_string();
        assert!(msg.contains("data_batch_3.bin") && msg.contains("truncated"), "{msg}");

        write_binary(&bin, &["cat", "dog"], 4)?;
        let mut bytes = fs::read(bin.join("test_batch.bin"))?;
        bytes[binary::RECORD] = 7;
        fs::write(bin.join("test_batch.bin"), bytes)?;
        let msg = load(&bin).err().ok_or("loaded")?.to_string();
        assert!(
            msg.contains("test_batch.bin") && msg.contains("record 1 has label 7"),
            "{msg}"
        );

        write_binary(&bin, &["cat", "dog"], 4)?;
        fs::remove_file(bin.join("data_batch_5.bin"))?;
        let msg = load(&bin).err().ok_or("loaded")?.to_string();
        assert!(msg.contains("data_batch_5.bin"), "{msg}");

        let folder = dir.path().join("folder");
        write_image_folder(&folder, &["a", "b"], (2, 1))?;
        fs::write(folder.join("train/b/001.png"), b"\x89PNG not really")?;
        let msg = load(&folder).err().ok_or("loaded")?.to_string();
        assert!(msg.contains("001.png") && msg.contains("decode"), "{msg}");

        write_image_folder(&folder, &["a", "b"], (2, 1))?;
        image::RgbImage::new(40, 30).save(folder.join("train/a/big.png"))?;
        let msg = load(&folder).err().ok_or("loaded")?.to_string();
        assert!(msg.contains("big.png") && msg.contains("40x30"), "{msg}");
        fs::remove_file(folder.join("train/a/big.png"))?;

        fs::create_dir_all(folder.join("test/c"))?;
        let msg = load(&folder).err().ok_or("loaded")?.to_string();
        assert!(
            msg.contains("test/c") && msg.contains("not among the training classes"),
            "{msg}"
        );

        let msg = load(&dir.path().join("absent")).err().ok_or("loaded")?.to_string();
        assert!(msg.contains("absent"), "{msg}");
        Ok(())
    }
}
