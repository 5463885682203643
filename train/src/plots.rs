//! PNG charts of a run: the training curves and the confusion matrix. Text is drawn with an
//! embedded font (DejaVu Sans Mono, shared with `scratch`), so no system fonts are needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use crate::metrics::EpochMetrics;

const FONT: &[u8] = include_bytes!("../../scratch/assets/DejaVuSansMono.ttf");
const FAMILY: &str = "dejavu-mono";

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {reason}")]
pub struct PlotError {
    pub path: std::path::PathBuf,
    pub reason: String,
}

fn font_ready() -> Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err("the embedded font does not parse".into())
    }
}

fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// Loss (train and test) and accuracy (train and test) per epoch, side by side.
pub fn training_curves(path: &Path, history: &[EpochMetrics]) -> Result<(), PlotError> {
    font_ready().map_err(err(path))?;
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let (left, right) = root.split_horizontally(600);
    let epochs = history.iter().map(|m| m.epoch).max().unwrap_or(1).max(1) as f64;
    let loss_max = history
        .iter()
        .flat_map(|m| [m.train_loss, m.test_loss])
        .filter(|v| v.is_finite())
        .fold(0.1f64, f64::max)
        * 1.05;

    // A NaN or infinite figure (recorded as such in metrics.jsonl) is left out of its line.
    let series = |f: fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        history
            .iter()
            .map(|m| (m.epoch as f64, f(m)))
            .filter(|(_, v)| v.is_finite())
            .collect()
    };
    type Line<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);
    let panels: [(_, &str, f64, [Line<'_>; 2]); 2] = [
        (
            &left,
            "loss",
            loss_max,
            [
                ("train", series(|m| m.train_loss), BLUE),
                ("test", series(|m| m.test_loss), RED),
            ],
        ),
        (
            &right,
            "accuracy (%)",
            100.0,
            [
                ("train", series(|m| m.train_accuracy * 100.0), BLUE),
                ("test", series(|m| m.test_accuracy * 100.0), RED),
            ],
        ),
    ];
    for (area, title, y_max, lines) in panels {
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FAMILY, 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0f64..epochs, 0f64..y_max)
            .map_err(err(path))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 15))
            .draw()
            .map_err(err(path))?;
        for (label, points, colour) in lines {
            chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(err(path))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
            chart
                .draw_series(points.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
                .map_err(err(path))?;
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err(path))?;
    }
    root.present().map_err(err(path))
}

/// The confusion matrix as a heat map, rows true classes, columns predictions, with counts.
pub fn confusion_matrix(path: &Path, confusion: &[Vec<i64>], class_names: &[String]) -> Result<(), PlotError> {
    font_ready().map_err(err(path))?;
    let n = confusion.len();
    let cell = if n <= 12 { 56 } else { (700 / n.max(1)).max(8) } as u32;
    let label_w = 12 + 9 * class_names.iter().map(String::len).max().unwrap_or(4).min(24) as u32;
    let size = (label_w + cell * n as u32 + 30, label_w + cell * n as u32 + 60);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("confusion matrix (rows: true, columns: predicted)", (FAMILY, 16))
        .margin(10)
        .x_label_area_size(label_w)
        .y_label_area_size(label_w)
        .build_cartesian_2d(0.0..n as f64, 0.0..n as f64)
        .map_err(err(path))?;
    // Class names are drawn by hand at the cell centres: plotters' mesh puts labels on "nice"
    // values, which fell on the cell boundaries (n + 1 labels for n rows).
    let name = |i: usize| -> String {
        class_names
            .get(i)
            .map_or("?", String::as_str)
            .chars()
            .take(24)
            .collect()
    };
    let column_style = (FAMILY, 13)
        .into_font()
        .transform(FontTransform::Rotate90)
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let row_style = (FAMILY, 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Right, VPos::Center));
    for i in 0..n {
        let (x, bottom) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
        root.draw(&Text::new(name(i), (x, bottom + 6), column_style.clone()))
            .map_err(err(path))?;
        // Row 0 at the top: plotters' y axis grows upwards.
        let (left, y) = chart.backend_coord(&(0.0, (n - 1 - i) as f64 + 0.5));
        root.draw(&Text::new(name(i), (left - 6, y), row_style.clone()))
            .map_err(err(path))?;
    }
    let max_row = confusion
        .iter()
        .map(|r| r.iter().sum::<i64>())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    for (t, row) in confusion.iter().enumerate() {
        let y = (n - 1 - t) as f64;
        for (p, &count) in row.iter().enumerate() {
            let x = p as f64;
            let share = count as f64 / max_row;
            // White to dark blue by share of the largest class.
            let shade = |c: f64| (255.0 - share * (255.0 - c)) as u8;
            let colour = RGBColor(shade(20.0), shade(60.0), shade(160.0));
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x, y), (x + 1.0, y + 1.0)],
                    colour.filled(),
                )))
                .map_err(err(path))?;
            if cell >= 24 {
                let text_colour = if share > 0.5 { WHITE } else { BLACK };
                let style = (FAMILY, 13)
                    .into_font()
                    .color(&text_colour)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                chart
                    .draw_series(std::iter::once(Text::new(count.to_string(), (x + 0.5, y + 0.5), style)))
                    .map_err(err(path))?;
            }
        }
    }
    root.present().map_err(err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(epoch: u32) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss: 2.0 / f64::from(epoch),
            train_accuracy: 0.1 * f64::from(epoch),
            test_loss: 2.2 / f64::from(epoch),
            test_accuracy: 0.09 * f64::from(epoch),
            lr: 0.1,
            images_per_second: 100.0,
            epoch_seconds: 1.0,
            elapsed_seconds: f64::from(epoch),
        }
    }

    /// The PNG decodes, has the requested size and is not blank; text glyphs add dark pixels.
    #[test]
    fn charts_are_real_pngs_with_text() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let curves = dir.path().join("curves.png");
        training_curves(&curves, &(1..=5).map(metrics).collect::<Vec<_>>())?;
        let img = image::open(&curves)?.to_rgb8();
        assert_eq!(img.dimensions(), (1200, 480));
        let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 80)).count();
        assert!(dark > 2000, "{dark} dark pixels: axes and labels missing?");

        let cm = dir.path().join("cm.png");
        let names: Vec<String> = ["cat", "dog", "frog"].map(String::from).to_vec();
        confusion_matrix(&cm, &[vec![5, 1, 0], vec![2, 3, 1], vec![0, 0, 6]], &names)?;
        let img = image::open(&cm)?.to_rgb8();
        let blue = img
            .pixels()
            .filter(|p| i32::from(p.0[2]) > i32::from(p.0[0]) + 60)
            .count();
        assert!(blue > 1000, "{blue} blue pixels: no heat map?");

        // Without data the curves still draw (an empty run), and a bad path is an error.
        training_curves(&dir.path().join("empty.png"), &[])?;
        let bad = dir.path().join("missing-dir").join("x.png");
        let msg = training_curves(&bad, &[metrics(1)]).err().ok_or("drew")?.to_string();
        assert!(msg.contains("x.png"), "{msg}");
        Ok(())
    }
}
