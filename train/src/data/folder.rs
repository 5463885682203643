//! The image-folder layout: `train/<class>/*` and `test/<class>/*`, every image 32x32.

use std::path::Path;

use rayon::prelude::*;
use tch::Tensor;

use super::tree::{Tree, join};
use super::{DataError, Dataset, IMAGE_SIZE, Layout, PIXELS, Split, dataset_name, invalid};

const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "jfif"];

pub(super) fn load_image_folder(tree: &Tree, root: &str, stem: &str) -> Result<Dataset, DataError> {
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
