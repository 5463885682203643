//! The official CIFAR binary layout: `data_batch_{1..5}.bin`, `test_batch.bin` and
//! `batches.meta.txt`.

use tch::Tensor;

use super::tree::{Tree, join};
use super::{DataError, Dataset, IMAGE_SIZE, Layout, PIXELS, Split, dataset_name, invalid};

/// One label byte, then the red, green and blue planes.
pub(super) const RECORD: usize = PIXELS + 1;

pub(super) fn load_binary(tree: &Tree, root: &str, stem: &str) -> Result<Dataset, DataError> {
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
