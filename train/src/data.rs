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

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// Side of the square images.
pub const IMAGE_SIZE: i64 = 32;
const PIXELS: usize = (IMAGE_SIZE * IMAGE_SIZE * 3) as usize;
const RECORD: usize = PIXELS + 1;
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
const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "jfif"];

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
    pub fn class_counts(&self, num_classes: i64) -> Vec<i64> {
        let counts = self.labels.bincount::<Tensor>(None, num_classes);
        Vec::<i64>::try_from(&counts).unwrap_or_default()
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

/// Where files come from: a directory on disk, or the regular files of a `.tar.gz` held in memory.
enum Tree {
    Dir(PathBuf),
    Archive {
        path: PathBuf,
        files: BTreeMap<String, Vec<u8>>,
    },
}

impl Tree {
    fn display(&self, rel: &str) -> PathBuf {
        match self {
            Tree::Dir(root) => root.join(rel),
            // `archive.tar.gz/train/cat/1.png` says which archive and which member.
            Tree::Archive { path, .. } => path.join(rel),
        }
    }

    fn is_file(&self, rel: &str) -> bool {
        match self {
            Tree::Dir(root) => root.join(rel).is_file(),
            Tree::Archive { files, .. } => files.contains_key(rel),
        }
    }

    fn is_dir(&self, rel: &str) -> bool {
        match self {
            Tree::Dir(root) => root.join(rel).is_dir(),
            Tree::Archive { files, .. } => {
                let prefix = format!("{}/", rel.trim_end_matches('/'));
                files
                    .range(prefix.clone()..)
                    .next()
                    .is_some_and(|(k, _)| k.starts_with(&prefix))
            }
        }
    }

    /// Names of the entries directly under `rel` (`""` = root): `(name, is_dir)`, sorted.
    fn list(&self, rel: &str) -> Result<Vec<(String, bool)>, DataError> {
        match self {
            Tree::Dir(root) => {
                let dir = root.join(rel);
                let io = |source| DataError::Io {
                    path: dir.clone(),
                    source,
                };
                let mut out = Vec::new();
                for entry in fs::read_dir(&dir).map_err(io)? {
                    let entry = entry.map_err(io)?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    // Follows symlinks, so a linked class directory counts as one.
                    let is_dir = entry.path().is_dir();
                    out.push((name, is_dir));
                }
                out.sort();
                Ok(out)
            }
            Tree::Archive { files, .. } => {
                let prefix = if rel.is_empty() {
                    String::new()
                } else {
                    format!("{}/", rel.trim_end_matches('/'))
                };
                let mut out: Vec<(String, bool)> = Vec::new();
                for key in files.keys().filter(|k| k.starts_with(&prefix)) {
                    let rest = &key[prefix.len()..];
                    let (name, is_dir) = match rest.split_once('/') {
                        Some((dir, _)) => (dir, true),
                        None => (rest, false),
                    };
                    if out.last().is_none_or(|(n, _)| n != name) {
                        out.push((name.to_owned(), is_dir));
                    }
                }
                Ok(out)
            }
        }
    }

    fn read(&self, rel: &str) -> Result<Vec<u8>, DataError> {
        match self {
            Tree::Dir(root) => {
                let path = root.join(rel);
                fs::read(&path).map_err(|source| DataError::Io { path, source })
            }
            Tree::Archive { files, .. } => files.get(rel).cloned().ok_or_else(|| DataError::Io {
                path: self.display(rel),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not in the archive"),
            }),
        }
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() { b.to_owned() } else { format!("{a}/{b}") }
}

/// Reads every regular file of a gzip-compressed tar archive into memory.
fn read_archive(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(io)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut files = BTreeMap::new();
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(|e| invalid(path, format!("corrupt archive: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(io)?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("./").to_owned();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(|e| {
            invalid(
                path.join(&name),
                format!("cannot read from the archive (truncated?): {e}"),
            )
        })?;
        files.insert(name, bytes);
    }
    Ok(files)
}

fn is_archive(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
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

fn load_binary(tree: &Tree, root: &str, stem: &str) -> Result<Dataset, DataError> {
    let meta_rel = join(root, "batches.meta.txt");
    let meta = tree.read(&meta_rel)?;
    let meta = String::from_utf8(meta).map_err(|_| invalid(tree.display(&meta_rel), "not UTF-8 text"))?;
    let class_names: Vec<String> = meta
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if class_names.len() < 2 || class_names.len() > 256 {
        return Err(invalid(
            tree.display(&meta_rel),
            format!(
                "names {} classes; expected between 2 and 256, one per line",
                class_names.len()
            ),
        ));
    }
    let read_records = |files: &[String]| -> Result<Split, DataError> {
        let mut labels = Vec::new();
        let mut pixels = Vec::new();
        for rel in files {
            let bytes = tree.read(rel)?;
            if bytes.is_empty() || bytes.len() % RECORD != 0 {
                return Err(invalid(
                    tree.display(rel),
                    format!(
                        "{} bytes is not a whole number of {RECORD}-byte records (truncated?)",
                        bytes.len()
                    ),
                ));
            }
            for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
                let label = record[0];
                if usize::from(label) >= class_names.len() {
                    return Err(invalid(
                        tree.display(rel),
                        format!(
                            "record {i} has label {label}, but {meta_rel} names only {} classes",
                            class_names.len()
                        ),
                    ));
                }
                labels.push(i64::from(label));
                pixels.extend_from_slice(&record[1..]);
            }
        }
        Ok(Split {
            images: Tensor::from_slice(&pixels).view([-1, 3, IMAGE_SIZE, IMAGE_SIZE]),
            labels: Tensor::from_slice(&labels),
        })
    };
    let train_files: Vec<String> = (1..=5).map(|i| join(root, &format!("data_batch_{i}.bin"))).collect();
    let train = read_records(&train_files)?;
    let test = read_records(&[join(root, "test_batch.bin")])?;
    let name = dataset_name(&class_names, &train, &test, stem);
    Ok(Dataset {
        name,
        layout: Layout::CifarBinary,
        class_names,
        train,
        test,
    })
}

fn load_image_folder(tree: &Tree, root: &str, stem: &str) -> Result<Dataset, DataError> {
    let train_rel = join(root, "train");
    let test_rel = join(root, "test");
    let class_names: Vec<String> = tree
        .list(&train_rel)?
        .into_iter()
        .filter(|(name, is_dir)| *is_dir && !name.starts_with('.'))
        .map(|(name, _)| name)
        .collect();
    if class_names.len() < 2 {
        return Err(invalid(
            tree.display(&train_rel),
            format!(
                "found {} class directories; need at least 2 (train/<class>/*.png)",
                class_names.len()
            ),
        ));
    }
    if !tree.is_dir(&test_rel) {
        return Err(DataError::Io {
            path: tree.display(&test_rel),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no test split (test/<class>/*)"),
        });
    }
    // Every test class must be a training class, or its labels would be meaningless.
    for (name, is_dir) in tree.list(&test_rel)? {
        if is_dir && !name.starts_with('.') && !class_names.contains(&name) {
            return Err(invalid(
                tree.display(&join(&test_rel, &name)),
                format!("class `{name}` is not among the training classes {class_names:?}"),
            ));
        }
    }
    let train = read_folder_split(tree, &train_rel, &class_names, true)?;
    let test = read_folder_split(tree, &test_rel, &class_names, false)?;
    let name = dataset_name(&class_names, &train, &test, stem);
    Ok(Dataset {
        name,
        layout: Layout::ImageFolder,
        class_names,
        train,
        test,
    })
}

fn read_folder_split(
    tree: &Tree,
    split_rel: &str,
    class_names: &[String],
    every_class: bool,
) -> Result<Split, DataError> {
    let mut files: Vec<(String, i64)> = Vec::new();
    for (label, class) in class_names.iter().enumerate() {
        let class_rel = join(split_rel, class);
        if !tree.is_dir(&class_rel) {
            if every_class {
                return Err(invalid(tree.display(&class_rel), "class directory is missing"));
            }
            continue;
        }
        let before = files.len();
        for (name, is_dir) in tree.list(&class_rel)? {
            if name.starts_with('.') {
                continue;
            }
            let rel = join(&class_rel, &name);
            let ext = Path::new(&name)
                .extension()
                .map(|e| e.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            if is_dir || !IMAGE_EXTENSIONS.contains(&ext.as_str()) {
                return Err(invalid(
                    tree.display(&rel),
                    format!("not an image file (expected one of {IMAGE_EXTENSIONS:?})"),
                ));
            }
            files.push((rel, label as i64));
        }
        if every_class && files.len() == before {
            return Err(invalid(tree.display(&class_rel), "class directory holds no images"));
        }
    }
    if files.is_empty() {
        return Err(invalid(tree.display(split_rel), "no images"));
    }
    let decoded: Vec<Vec<u8>> = files
        .par_iter()
        .map(|(rel, _)| decode_image(tree, rel))
        .collect::<Result<_, _>>()?;
    let mut hwc = Vec::with_capacity(decoded.len() * PIXELS);
    for img in &decoded {
        hwc.extend_from_slice(img);
    }
    let labels: Vec<i64> = files.iter().map(|(_, l)| *l).collect();
    // Decoders give interleaved RGB; one permute turns the whole split into planes.
    let images = Tensor::from_slice(&hwc)
        .view([-1, IMAGE_SIZE, IMAGE_SIZE, 3])
        .permute([0, 3, 1, 2])
        .contiguous();
    Ok(Split {
        images,
        labels: Tensor::from_slice(&labels),
    })
}

fn decode_image(tree: &Tree, rel: &str) -> Result<Vec<u8>, DataError> {
    let bytes = tree.read(rel)?;
    let img = image::load_from_memory(&bytes).map_err(|e| {
        invalid(
            tree.display(rel),
            format!("cannot decode image (truncated or corrupt?): {e}"),
        )
    })?;
    if img.width() != IMAGE_SIZE as u32 || img.height() != IMAGE_SIZE as u32 {
        return Err(invalid(
            tree.display(rel),
            format!(
                "image is {}x{}, expected {IMAGE_SIZE}x{IMAGE_SIZE}",
                img.width(),
                img.height()
            ),
        ));
    }
    Ok(img.to_rgb8().into_raw())
}

/// Per-channel mean and standard deviation of a split's pixels scaled to `[0, 1]`.
pub fn channel_stats(split: &Split) -> ([f32; 3], [f32; 3]) {
    let n = split.len();
    let mut sum = Tensor::zeros([3], (Kind::Double, Device::Cpu));
    let mut sq = Tensor::zeros([3], (Kind::Double, Device::Cpu));
    // In chunks: the whole training split as doubles would be 1.2 GB.
    let chunk = 4096;
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let x = split.images.narrow(0, start, len).to_kind(Kind::Double) / 255.0;
        sum += x.sum_dim_intlist(&[0i64, 2, 3][..], false, Kind::Double);
        sq += (&x * &x).sum_dim_intlist(&[0i64, 2, 3][..], false, Kind::Double);
        start += len;
    }
    let count = (n * IMAGE_SIZE * IMAGE_SIZE).max(1) as f64;
    let mean = &sum / count;
    let var = (&sq / count - &mean * &mean).clamp_min(1e-12);
    let to3 = |t: &Tensor| -> [f32; 3] {
        let v = Vec::<f64>::try_from(t).unwrap_or_else(|_| vec![0.0; 3]);
        [v[0] as f32, v[1] as f32, v[2] as f32]
    };
    (to3(&mean), to3(&var.sqrt()))
}

/// Scaling to `[0, 1]` and `(x - mean) / std` for a `u8` batch, as one multiply-add.
#[derive(Debug)]
pub struct Normalizer {
    scale: Tensor,
    shift: Tensor,
}

impl Normalizer {
    pub fn new(mean: [f32; 3], std: [f32; 3], device: Device) -> Self {
        let scale: Vec<f32> = std.iter().map(|s| 1.0 / (255.0 * s)).collect();
        let shift: Vec<f32> = mean.iter().zip(std).map(|(m, s)| -m / s).collect();
        Self {
            scale: Tensor::from_slice(&scale).view([1, 3, 1, 1]).to_device(device),
            shift: Tensor::from_slice(&shift).view([1, 3, 1, 1]).to_device(device),
        }
    }

    /// `u8 [B, 3, H, W]` to normalised `f32`.
    pub fn apply(&self, images: &Tensor) -> Tensor {
        images.to_kind(Kind::Float) * &self.scale + &self.shift
    }
}

/// Random crop after zero-padding by `pad`, and a horizontal flip with probability 1/2, for
/// every image of a `[B, C, H, W]` batch at once: one gather with per-image row and column
/// indices (the flip reverses the column indices). Draws from libtorch's generator.
pub fn random_crop_flip(images: &Tensor, pad: i64) -> Tensor {
    let size = images.size();
    let (b, c, h, w) = (size[0], size[1], size[2], size[3]);
    let device = images.device();
    let opts = (Kind::Int64, device);
    let padded = images.constant_pad_nd([pad, pad, pad, pad]);
    let dy = Tensor::randint(2 * pad + 1, [b, 1], opts);
    let dx = Tensor::randint(2 * pad + 1, [b, 1], opts);
    let flip = Tensor::randint(2, [b, 1], opts).to_kind(Kind::Bool);
    let rows = dy + Tensor::arange(h, opts).view([1, h]);
    let cols_fwd = Tensor::arange(w, opts).view([1, w]);
    let cols = cols_fwd.where_self(&flip.logical_not(), &cols_fwd.flip([1])) + dx;
    let bi = Tensor::arange(b, opts).view([b, 1, 1, 1]);
    let ci = Tensor::arange(c, opts).view([1, c, 1, 1]);
    padded.index(&[
        Some(bi),
        Some(ci),
        Some(rows.view([b, 1, h, 1])),
        Some(cols.view([b, 1, 1, w])),
    ])
}

/// The batches of one pass over `n` examples, as index tensors on `device` (where the split's
/// images are): shuffled (from that device's libtorch generator) or in order.
/// Training passes never end with a batch of one, which BatchNorm cannot train on: such a last
/// image is left out of that epoch (it is in a different place in the next shuffle).
pub fn batch_indices(n: i64, batch_size: i64, shuffle: bool, training: bool, device: Device) -> Vec<Tensor> {
    let order = if shuffle {
        Tensor::randperm(n, (Kind::Int64, device))
    } else {
        Tensor::arange(n, (Kind::Int64, device))
    };
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let len = batch_size.min(n - start);
        if training && len < 2 {
            break;
        }
        out.push(order.narrow(0, start, len));
        start += len;
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
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
        assert_eq!(ds.train.class_counts(3), [4, 4, 4]);
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
        bytes[RECORD] = 7;
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

    #[test]
    fn crop_and_flip_are_shifts_and_mirrors_of_the_input() -> TestResult {
        tch::manual_seed(3);
        let b = 64;
        // Distinct values everywhere, so every output pixel tells where it came from.
        let x = Tensor::arange(b * 3 * 8 * 8, (Kind::Int64, Device::Cpu)).view([b, 3, 8, 8]) + 1;
        let y = random_crop_flip(&x, 2);
        assert_eq!(y.size(), x.size());
        let (mut flipped, mut shifted) = (0, 0);
        for n in 0..b {
            let (xi, yi) = (x.get(n), y.get(n));
            // Find the offset and flip that map x to y on the pixels that stay inside.
            let mut found = false;
            for flip in [false, true] {
                let src = if flip { xi.flip([2]) } else { xi.shallow_clone() };
                for dy in -2i64..=2 {
                    for dx in -2i64..=2 {
                        let padded = src.constant_pad_nd([2, 2, 2, 2]);
                        let cand = padded
                            .narrow(1, 2 + dy, 8)
                            .narrow(2, 2 + if flip { -dx } else { dx }, 8);
                        if cand.equal(&yi) {
                            found = true;
                            flipped += i32::from(flip);
                            shifted += i32::from(dx != 0 || dy != 0);
                        }
                    }
                }
            }
            assert!(found, "image {n} is not a crop/flip of its input");
        }
        // Both happen, and neither always (probability of failure ~ 2^-60).
        assert!(flipped > 10 && flipped < 54, "{flipped} flips");
        assert!(shifted > 40, "{shifted} shifts");
        Ok(())
    }

    #[test]
    fn training_batches_never_end_with_one_image() {
        for n in [2, 5, 9, 10, 129] {
            for bs in [2, 4, 8, 128] {
                let batches = batch_indices(n, bs, true, true, Device::Cpu);
                assert!(batches.iter().all(|b| b.size()[0] >= 2), "n={n} bs={bs}");
                let seen: i64 = batches.iter().map(|b| b.size()[0]).sum();
                assert!(seen >= n - 1);
                let eval: i64 = batch_indices(n, bs, false, false, Device::Cpu)
                    .iter()
                    .map(|b| b.size()[0])
                    .sum();
                assert_eq!(eval, n);
            }
        }
    }

    #[test]
    fn stats_and_normalisation_agree() {
        let images = Tensor::randint(256, [10, 3, 32, 32], (Kind::Uint8, Device::Cpu));
        let split = Split {
            labels: Tensor::zeros([10], (Kind::Int64, Device::Cpu)),
            images,
        };
        let (mean, std) = channel_stats(&split);
        let x = Normalizer::new(mean, std, Device::Cpu).apply(&split.images);
        let m = Vec::<f64>::try_from(x.mean_dim(&[0i64, 2, 3][..], false, Kind::Double)).unwrap_or_default();
        let s = Vec::<f64>::try_from(x.std_dim(&[0i64, 2, 3][..], false, false)).unwrap_or_default();
        for c in 0..3 {
            assert!(m[c].abs() < 1e-4, "{m:?}");
            assert!((s[c] - 1.0).abs() < 1e-3, "{s:?}");
        }
    }
}
