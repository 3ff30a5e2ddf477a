//! The "reads my own handwriting" measure: deterministic transformed copies
//! of the test set, each scored separately. Rotation, size, position and
//! stroke width are what differs most between MNIST's writers and a person
//! at a canvas or a phone camera; the canvas variant runs the server's own
//! preprocessing on an upscaled, blurred, dark-on-light rendering.

use image::{GrayImage, Luma, imageops};
use rayon::prelude::*;

use crate::augment::{Affine, Fill};
use mnister_core::preprocess::{MnistImage, PIXELS, SIDE, preprocess_gray};

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub enum Variant {
    Clean,
    /// Alternating +deg / −deg by image index.
    Rotate(f32),
    /// Digit scaled by this factor (< 1 makes it smaller).
    ZoomOut(f32),
    /// Shift by this many pixels, direction cycling through 8 compass points.
    Shift(f32),
    Thicker,
    Thinner,
    /// 280x280 dark-on-light, blurred, through the server's preprocessing.
    Canvas,
}

impl Variant {
    pub fn all() -> Vec<Variant> {
        vec![
            Variant::Clean,
            Variant::Rotate(15.0),
            Variant::Rotate(30.0),
            Variant::Rotate(45.0),
            Variant::ZoomOut(0.8),
            Variant::ZoomOut(0.65),
            Variant::ZoomOut(0.5),
            Variant::Shift(3.0),
            Variant::Shift(6.0),
            Variant::Thicker,
            Variant::Thinner,
            Variant::Canvas,
        ]
    }

    pub fn name(&self) -> String {
        match self {
            Variant::Clean => "clean (MNIST test)".into(),
            Variant::Rotate(d) => format!("rotate ±{d}°"),
            Variant::ZoomOut(z) => format!("zoom-out ×{z}"),
            Variant::Shift(p) => format!("shift {p} px"),
            Variant::Thicker => "thicker strokes (dilate 3x3)".into(),
            Variant::Thinner => "thinner strokes (erode, plus-shaped)".into(),
            Variant::Canvas => "canvas 280x280, blurred, dark on light, preprocessed".into(),
        }
    }

    /// The transformed image, or None when the server's preprocessing would
    /// refuse it (counted as wrong).
    pub fn apply(&self, i: usize, img: &MnistImage) -> Option<MnistImage> {
        Some(match *self {
            Variant::Clean => *img,
            Variant::Rotate(d) => {
                Affine::rotation(if i.is_multiple_of(2) { d } else { -d }).warp(img, Fill::Constant)
            }
            Variant::ZoomOut(z) => Affine::zoom(1.0 / z).warp(img, Fill::Constant),
            Variant::Shift(p) => {
                let a = (i % 8) as f32 * std::f32::consts::FRAC_PI_4;
                Affine::shift((a.cos() * p).round(), (a.sin() * p).round())
                    .warp(img, Fill::Constant)
            }
            Variant::Thicker => morph(img, true),
            Variant::Thinner => morph(img, false),
            Variant::Canvas => return canvas(img),
        })
    }
}

/// Grayscale dilation (3x3 max) or erosion (plus-shaped min).
pub(crate) fn morph(img: &MnistImage, dilate: bool) -> MnistImage {
    let mut out = [0f32; PIXELS];
    for y in 0..SIDE as i32 {
        for x in 0..SIDE as i32 {
            let mut v = if dilate { 0f32 } else { 1f32 };
            for (dx, dy) in [
                (-1, -1),
                (0, -1),
                (1, -1),
                (-1, 0),
                (0, 0),
                (1, 0),
                (-1, 1),
                (0, 1),
                (1, 1),
            ] {
                if !dilate && dx != 0 && dy != 0 {
                    continue;
                }
                let (sx, sy) = (x + dx, y + dy);
                let s = if (0..SIDE as i32).contains(&sx) && (0..SIDE as i32).contains(&sy) {
                    img[sy as usize * SIDE + sx as usize]
                } else {
                    0.0
                };
                v = if dilate { v.max(s) } else { v.min(s) };
            }
            out[y as usize * SIDE + x as usize] = v;
        }
    }
    out
}

/// Upscale to 280x280, blur, render dark ink on white, preprocess.
fn canvas(img: &MnistImage) -> Option<MnistImage> {
    let small = GrayImage::from_fn(SIDE as u32, SIDE as u32, |x, y| {
        Luma([(img[y as usize * SIDE + x as usize] * 255.0).round() as u8])
    });
    let big = imageops::resize(&small, 280, 280, imageops::FilterType::Triangle);
    let blurred = imageops::fast_blur(&big, 2.0);
    let inverted: Vec<u8> = blurred.as_raw().iter().map(|v| 255 - v).collect();
    preprocess_gray(280, 280, &inverted).ok()
}

/// Applies a variant to every image, in parallel.
pub fn transform(variant: Variant, images: &[MnistImage]) -> Vec<Option<MnistImage>> {
    images
        .par_iter()
        .enumerate()
        .map(|(i, img)| variant.apply(i, img))
        .collect()
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RobustnessRow {
    pub variant: String,
    pub accuracy: f64,
    /// Images the preprocessing refused (counted as errors).
    pub refused: usize,
}
