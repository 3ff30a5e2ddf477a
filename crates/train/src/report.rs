//! The report's pictures, drawn with plotters. Text uses DejaVu Sans embedded
//! in the binary, so plots look the same on every machine.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::evaluate::{Misclassified, TestMetrics};
use crate::fit::EpochStats;
use mnister_core::preprocess::{MnistImage, SIDE};

pub const FONT: &str = "sans-serif";

/// One number picked out of an epoch's statistics.
type Metric = fn(&EpochStats) -> f64;

pub fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("embedded DejaVu Sans is a valid font"));
        plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold())
            .unwrap_or_else(|_| panic!("embedded DejaVu Sans Bold is a valid font"));
    });
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e:?}")
}

/// Accuracy and loss per epoch, train vs validation.
pub fn curves(path: &Path, history: &[EpochStats]) -> Result<()> {
    fonts();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(600);
    let n = history.len().max(1) as f64;
    let series =
        |f: Metric| -> Vec<(f64, f64)> { history.iter().map(|h| (h.epoch as f64, f(h))).collect() };
    let panels: [(&str, Metric, Metric); 2] = [
        ("accuracy", |h| h.train_accuracy, |h| h.val_accuracy),
        ("loss", |h| h.train_loss, |h| h.val_loss),
    ];
    for (area, (name, train, val)) in [&left, &right].into_iter().zip(panels) {
        let (t, v) = (series(train), series(val));
        let all = t.iter().chain(&v).map(|p| p.1);
        let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
        let pad = ((hi - lo) * 0.08).max(1e-3);
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{name} per epoch"), (FONT, 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0.5..n + 0.5, (lo - pad)..(hi + pad))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(name)
            .label_style((FONT, 14))
            .draw()
            .map_err(err)?;
        for (data, colour, label) in [(t, BLUE, "train (augmented)"), (v, RED, "validation")] {
            chart
                .draw_series(LineSeries::new(data.clone(), colour.stroke_width(2)))
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(data.iter().map(|p| Circle::new(*p, 3, colour.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .position(SeriesLabelPosition::MiddleRight)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

/// 10x10 heatmap with counts; rows are the true label, columns the prediction.
pub fn confusion(path: &Path, m: &TestMetrics) -> Result<()> {
    fonts();
    let cell = 56i32;
    let (ox, oy) = (90i32, 80i32);
    let size = (ox + cell * 10 + 30, oy + cell * 10 + 30);
    let root = BitMapBackend::new(path, (size.0 as u32, size.1 as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    root.draw(&Text::new(
        format!(
            "confusion matrix, {} test images, accuracy {:.2}%",
            m.images,
            m.accuracy * 100.0
        ),
        (10, 10),
        (FONT, 20).into_font(),
    ))
    .map_err(err)?;
    root.draw(&Text::new(
        "predicted →",
        (ox + cell * 4, oy - 45),
        (FONT, 16).into_font(),
    ))
    .map_err(err)?;
    root.draw(&Text::new("true ↓", (10, oy - 25), (FONT, 16).into_font()))
        .map_err(err)?;
    let max_off = (0..10)
        .flat_map(|r| (0..10).filter(move |&c| c != r).map(move |c| (r, c)))
        .map(|(r, c)| m.confusion[r][c])
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    for d in 0..10 {
        let t = (FONT, 18).into_font();
        root.draw(&Text::new(
            d.to_string(),
            (ox + d * cell + cell / 2 - 5, oy - 22),
            t.clone(),
        ))
        .map_err(err)?;
        root.draw(&Text::new(
            d.to_string(),
            (ox - 25, oy + d * cell + cell / 2 - 9),
            t,
        ))
        .map_err(err)?;
    }
    for r in 0..10 {
        for c in 0..10 {
            let v = m.confusion[r][c];
            let colour = if r == c {
                RGBColor(40, 120, 60)
            } else if v == 0 {
                RGBColor(245, 245, 245)
            } else {
                // Off-diagonal cells shade from pale to strong red by count.
                let k = (v as f64 / max_off).sqrt();
                RGBColor(255, (225.0 - 175.0 * k) as u8, (210.0 - 170.0 * k) as u8)
            };
            let (x, y) = (ox + c as i32 * cell, oy + r as i32 * cell);
            root.draw(&Rectangle::new(
                [(x, y), (x + cell - 2, y + cell - 2)],
                colour.filled(),
            ))
            .map_err(err)?;
            let text_colour = if r == c { WHITE } else { BLACK };
            let s = v.to_string();
            root.draw(&Text::new(
                s.clone(),
                (x + cell / 2 - 5 * s.len() as i32, y + cell / 2 - 9),
                (FONT, 16).into_font().color(&text_colour),
            ))
            .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

fn draw_digit<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    img: &MnistImage,
    x: i32,
    y: i32,
    scale: i32,
) -> Result<()> {
    for py in 0..SIDE {
        for px in 0..SIDE {
            let v = 255 - (img[py * SIDE + px].clamp(0.0, 1.0) * 255.0) as u8;
            let (x0, y0) = (x + px as i32 * scale, y + py as i32 * scale);
            area.draw(&Rectangle::new(
                [(x0, y0), (x0 + scale, y0 + scale)],
                RGBColor(v, v, v).filled(),
            ))
            .map_err(err)?;
        }
    }
    Ok(())
}

/// Every misclassified image of `set`: true label top-left (green),
/// prediction bottom-right (red).
pub fn errors(
    path: &Path,
    set: &str,
    errors: &[Misclassified],
    images: &[MnistImage],
) -> Result<()> {
    fonts();
    let (scale, pad, cols) = (3i32, 6i32, 12usize);
    let tile = 28 * scale + pad;
    let rows = errors.len().div_ceil(cols).max(1);
    let w = cols as i32 * tile + pad;
    let h = rows as i32 * tile + pad + 40;
    let root = BitMapBackend::new(path, (w as u32, h as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    root.draw(&Text::new(
        format!(
            "{} misclassified {set} images: true label top-left, prediction bottom-right",
            errors.len()
        ),
        (pad, 10),
        (FONT, 16).into_font(),
    ))
    .map_err(err)?;
    for (k, e) in errors.iter().enumerate() {
        let x = pad + (k % cols) as i32 * tile;
        let y = 40 + (k / cols) as i32 * tile;
        draw_digit(&root, &images[e.index], x, y, scale)?;
        root.draw(&Text::new(
            e.label.to_string(),
            (x + 3, y + 1),
            (FONT, 18)
                .into_font()
                .style(FontStyle::Bold)
                .color(&RGBColor(0, 150, 0)),
        ))
        .map_err(err)?;
        root.draw(&Text::new(
            e.predicted.to_string(),
            (x + 28 * scale - 14, y + 28 * scale - 21),
            (FONT, 18)
                .into_font()
                .style(FontStyle::Bold)
                .color(&RGBColor(210, 0, 0)),
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)
}

/// Originals (first column) beside augmented samples, one row per example.
pub fn augmentation(path: &Path, rows: &[(MnistImage, Vec<MnistImage>)]) -> Result<()> {
    fonts();
    let (scale, pad) = (3i32, 6i32);
    let tile = 28 * scale + pad;
    let cols = 1 + rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let w = cols as i32 * tile + pad + 20;
    let h = rows.len() as i32 * tile + pad + 40;
    let root = BitMapBackend::new(path, (w as u32, h as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    root.draw(&Text::new(
        "original | augmented samples (rotation, shift, zoom as configured)",
        (pad, 10),
        (FONT, 16).into_font(),
    ))
    .map_err(err)?;
    for (r, (orig, samples)) in rows.iter().enumerate() {
        let y = 40 + r as i32 * tile;
        draw_digit(&root, orig, pad, y, scale)?;
        for (c, s) in samples.iter().enumerate() {
            draw_digit(&root, s, pad + 20 + (c as i32 + 1) * tile, y, scale)?;
        }
    }
    root.present().map_err(err)
}
