//! `scratch edges`: Sobel/Laplacian edges of a photo by the scratch conv and by libtorch.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use image::{GrayImage, RgbImage, imageops};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use scratch::{Conv2dParams, edges, fast};

use crate::torch;

/// Height of the label band above the panels, in pixels.
const LABEL_H: u32 = 28;
/// DejaVu Sans Mono (Bitstream Vera licence, see assets/): embedded so labels render the same
/// on any machine, with no system fonts or fontconfig.
const FONT: &[u8] = include_bytes!("../../../assets/DejaVuSansMono.ttf");

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The photo to edge-detect (any format the `image` crate reads: JPEG, PNG, ...).
    image: PathBuf,
    /// Where to write the panel PNG.
    #[arg(short, long, default_value = "edges.png")]
    output: PathBuf,
    /// Width of each of the three panels; larger photos are scaled down for display only.
    #[arg(long, default_value_t = 640)]
    panel_width: u32,
}

pub fn run(args: &Args) -> Result<()> {
    anyhow::ensure!(args.panel_width > 0, "--panel-width must be at least 1");
    let photo = image::open(&args.image).with_context(|| format!("reading image {}", args.image.display()))?;
    let luma = photo.to_luma8();
    let (w, h) = luma.dimensions();
    let x = edges::luma_tensor(w as usize, h as usize, luma.as_raw())?;
    let bank = edges::filter_bank();
    let params = Conv2dParams::default().padding(1);

    let ours = fast::conv2d(&x, &bank, None, &params)?;
    let theirs = {
        let _no_grad = tch::no_grad_guard();
        torch::from_tch(&torch::conv2d(
            &torch::to_tch(&x),
            &torch::to_tch(&bank),
            None,
            &params,
        )?)?
    };
    let diff = ours.max_abs_diff(&theirs)?;

    let gray = |t| GrayImage::from_raw(w, h, edges::magnitude_image(t)).ok_or_else(|| anyhow!("edge image size"));
    let panels = [
        photo.to_rgb8(),
        image::DynamicImage::from(gray(&ours)?).to_rgb8(),
        image::DynamicImage::from(gray(&theirs)?).to_rgb8(),
    ];
    let labels = [
        format!("photo {w}x{h}"),
        format!("scratch conv ({})", fast::Kernel::best().name()),
        format!("libtorch conv2d (max|diff| {diff:.1e})"),
    ];
    let canvas = compose(&panels, &labels, args.panel_width)?;
    canvas
        .save(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;

    println!("filters: {}", edges::FILTER_NAMES.join(", "));
    println!("max abs diff: {diff:e}");
    println!(
        "wrote {} ({}x{})",
        args.output.display(),
        canvas.width(),
        canvas.height()
    );
    Ok(())
}

/// Three panels side by side under a band of labels.
fn compose(panels: &[RgbImage; 3], labels: &[String; 3], panel_width: u32) -> Result<RgbImage> {
    let (w, h) = panels[0].dimensions();
    let pw = w.min(panel_width);
    let ph = (u64::from(h) * u64::from(pw) / u64::from(w)).max(1) as u32;
    let mut canvas = RgbImage::new(3 * pw, ph + LABEL_H);
    for (i, panel) in panels.iter().enumerate() {
        let scaled = if pw == w {
            panel.clone()
        } else {
            imageops::resize(panel, pw, ph, imageops::FilterType::Triangle)
        };
        imageops::replace(&mut canvas, &scaled, i64::from(i as u32 * pw), i64::from(LABEL_H));
    }

    register_font("dejavu-mono", FontStyle::Normal, FONT).map_err(|_| anyhow!("the embedded font does not parse"))?;
    let (cw, ch) = canvas.dimensions();
    {
        let root = BitMapBackend::with_buffer(&mut canvas, (cw, ch)).into_drawing_area();
        root.draw(&Rectangle::new(
            [(0, 0), (cw as i32, LABEL_H as i32 - 1)],
            RGBColor(32, 32, 32).filled(),
        ))
        .map_err(|e| anyhow!("drawing the label band: {e}"))?;
        let style = ("dejavu-mono", 16).into_font().color(&WHITE);
        for (i, label) in labels.iter().enumerate() {
            let x = i as i32 * pw as i32;
            root.draw(&Text::new(label.as_str(), (x + 8, 5), style.clone()))
                .map_err(|e| anyhow!("drawing label {label:?}: {e}"))?;
            if i > 0 {
                root.draw(&PathElement::new([(x, 0), (x, ch as i32)], WHITE))
                    .map_err(|e| anyhow!("drawing a panel border: {e}"))?;
            }
        }
        root.present().map_err(|e| anyhow!("finishing the panel: {e}"))?;
    }
    Ok(canvas)
}
