//! Augmentation equal to the reference's Keras ImageDataGenerator: random
//! rotation, shifts and zoom composed into one affine map about the image
//! centre, sampled bilinearly. No flips: a flipped 2 is not a 2.
//!
//! Keras builds `rotation · shift · zoom` and uses it to map each output
//! pixel to the input pixel it samples, so a zoom factor above 1 samples a
//! wider area and shrinks the digit. We do the same.

use rand::Rng;

use mnister_core::preprocess::{MnistImage, PIXELS, SIDE};

/// What to sample outside the source image.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Fill {
    /// Repeat the nearest edge pixel (Keras' default).
    Nearest,
    /// Black, MNIST's background.
    Constant,
}

/// Ranges for random augmentation; each is a trainer flag.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AugmentConfig {
    /// Rotation is uniform in ±this many degrees.
    pub rotation_deg: f32,
    /// Horizontal shift is uniform in ±this fraction of the width.
    pub width_shift: f32,
    /// Vertical shift is uniform in ±this fraction of the height.
    pub height_shift: f32,
    /// Zoom factors (x and y drawn independently, as Keras does) are uniform
    /// in [zoom_min, zoom_max]; above 1 shrinks the digit.
    pub zoom_min: f32,
    pub zoom_max: f32,
    pub fill: Fill,
}

impl AugmentConfig {
    /// The reference project's settings.
    pub const REFERENCE: AugmentConfig = AugmentConfig {
        rotation_deg: 50.0,
        width_shift: 0.3,
        height_shift: 0.2,
        zoom_min: 1.0,
        zoom_max: 1.5,
        fill: Fill::Nearest,
    };

    /// Draws one transform. `strength` in [0, 1] scales every range towards
    /// the identity, for schedules that ramp augmentation up or down.
    pub fn sample(&self, rng: &mut impl Rng, strength: f32) -> Affine {
        self.sample_with_shift(rng, strength, strength)
    }

    /// As [`sample`](Self::sample), with the shifts scaled apart: a schedule
    /// that calms rotation and zoom for the last epochs can keep large
    /// shifts, which the tensor robustness rows still ask of the model.
    /// Draws the same random numbers in the same order as `sample`.
    pub fn sample_with_shift(
        &self,
        rng: &mut impl Rng,
        strength: f32,
        shift_strength: f32,
    ) -> Affine {
        let s = strength.clamp(0.0, 1.0);
        let t = shift_strength.clamp(0.0, 1.0);
        let sym = |rng: &mut dyn rand::RngCore, r: f32| {
            if r > 0.0 {
                rng.random_range(-r..=r)
            } else {
                0.0
            }
        };
        let zlo = 1.0 + (self.zoom_min - 1.0) * s;
        let zhi = 1.0 + (self.zoom_max - 1.0) * s;
        let mut zoom = || {
            if zhi > zlo {
                rng.random_range(zlo..=zhi)
            } else {
                zlo
            }
        };
        let (zx, zy) = (zoom(), zoom());
        Affine {
            rotation_deg: sym(rng, self.rotation_deg * s),
            shift_x: sym(rng, self.width_shift * t) * SIDE as f32,
            shift_y: sym(rng, self.height_shift * t) * SIDE as f32,
            zoom_x: zx,
            zoom_y: zy,
        }
    }
}

/// One concrete transform.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    pub rotation_deg: f32,
    /// Pixels.
    pub shift_x: f32,
    pub shift_y: f32,
    pub zoom_x: f32,
    pub zoom_y: f32,
}

impl Affine {
    pub const IDENTITY: Affine = Affine {
        rotation_deg: 0.0,
        shift_x: 0.0,
        shift_y: 0.0,
        zoom_x: 1.0,
        zoom_y: 1.0,
    };

    pub fn rotation(deg: f32) -> Affine {
        Affine {
            rotation_deg: deg,
            ..Self::IDENTITY
        }
    }

    /// Uniform zoom; `factor` above 1 shrinks the digit (Keras semantics).
    pub fn zoom(factor: f32) -> Affine {
        Affine {
            zoom_x: factor,
            zoom_y: factor,
            ..Self::IDENTITY
        }
    }

    pub fn shift(dx: f32, dy: f32) -> Affine {
        Affine {
            shift_x: dx,
            shift_y: dy,
            ..Self::IDENTITY
        }
    }

    /// Applies the transform to a 28x28 image with bilinear interpolation.
    pub fn warp(&self, src: &MnistImage, fill: Fill) -> MnistImage {
        let (s, c) = self.rotation_deg.to_radians().sin_cos();
        let centre = (SIDE as f32 - 1.0) / 2.0;
        let mut out = [0f32; PIXELS];
        for oy in 0..SIDE {
            for ox in 0..SIDE {
                // Output -> input: zoom, then shift, then rotate, about the centre.
                let px = (ox as f32 - centre) * self.zoom_x + self.shift_x;
                let py = (oy as f32 - centre) * self.zoom_y + self.shift_y;
                let ix = c * px - s * py + centre;
                let iy = s * px + c * py + centre;
                out[oy * SIDE + ox] = bilinear(src, ix, iy, fill);
            }
        }
        out
    }
}

fn bilinear(src: &MnistImage, x: f32, y: f32, fill: Fill) -> f32 {
    let max = (SIDE - 1) as f32;
    let (x, y) = match fill {
        Fill::Nearest => (x.clamp(0.0, max), y.clamp(0.0, max)),
        Fill::Constant => {
            if x <= -1.0 || y <= -1.0 || x >= SIDE as f32 || y >= SIDE as f32 {
                return 0.0;
            }
            (x, y)
        }
    };
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let px = |xi: f32, yi: f32| -> f32 {
        if xi < 0.0 || yi < 0.0 || xi > max || yi > max {
            0.0
        } else {
            src[yi as usize * SIDE + xi as usize]
        }
    };
    let top = px(x0, y0) * (1.0 - fx) + px(x0 + 1.0, y0) * fx;
    let bottom = px(x0, y0 + 1.0) * (1.0 - fx) + px(x0 + 1.0, y0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Where field inputs differ from MNIST after the serving preprocessing
/// has removed position and size: stroke width, resolution (a scan's 8 to
/// 32 px), binarisation, aspect stretch, blur and noise. `degrade` renders
/// one such version of a digit and sends it through the server's own
/// `preprocess_gray`, so the model trains on what serving hands it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FieldAugment {
    /// Share of the training images degraded this way.
    pub prob: f32,
    /// Share whose 28x28 strokes are thinned or thickened instead.
    #[serde(default)]
    pub stroke_prob: f32,
    /// Of the degraded images at 32 px and up, the share photographed on
    /// unevenly lit paper.
    #[serde(default)]
    pub photo_prob: f32,
}

/// The working canvas: 4x MNIST, fine enough for hairlines and markers.
const CANVAS: usize = SIDE * 4;

impl FieldAugment {
    /// `img` degraded like a field input (share `prob`), or with its
    /// strokes thinned or thickened (share `stroke_prob`), or as it is.
    pub fn apply(&self, img: &MnistImage, rng: &mut impl Rng) -> MnistImage {
        let roll = rng.random::<f32>();
        if roll < self.prob {
            self.degrade(img, rng).unwrap_or(*img)
        } else if roll < self.prob + self.stroke_prob {
            crate::robustness::morph(img, rng.random_range(0..3) == 0)
        } else {
            *img
        }
    }

    /// A degraded copy of `img` (28x28, 0..1, ink bright) after the serving
    /// preprocessing, or None when the degradation left nothing the server
    /// would read (the caller keeps the original).
    pub fn degrade(&self, img: &MnistImage, rng: &mut impl Rng) -> Option<MnistImage> {
        // 1. Up to the canvas, bilinear.
        let mut c = upscale(img, CANVAS);
        // 2. Stroke width: a hairline (erode), a marker (dilate), or as is.
        let r: i32 = match rng.random_range(0..10) {
            0..=2 => -rng.random_range(1..=3),
            3..=5 => rng.random_range(1..=7),
            _ => 0,
        };
        if r != 0 {
            let t = rng.random_range(0.3..0.6);
            for v in c.iter_mut() {
                *v = if *v >= t { 1.0 } else { 0.0 };
            }
            c = morph_square(&c, CANVAS, CANVAS, r.unsigned_abs() as usize, r > 0);
        }
        // 3. Aspect: the ink stretched to fill a square (Semeion's scans),
        // or one axis squeezed.
        let (mut w, mut h) = (CANVAS, CANVAS);
        let aspect = rng.random::<f32>();
        if aspect < 0.15 {
            c = fill_square(&c, CANVAS);
        } else if aspect < 0.35 {
            let k = rng.random_range(0.55..1.0);
            if rng.random::<bool>() {
                w = ((CANVAS as f32) * k) as usize;
            } else {
                h = ((CANVAS as f32) * k) as usize;
            }
            c = resize(&c, CANVAS, CANVAS, w, h);
        }
        // 4. Resolution: a scan at 8 to 32 px, grey, binary or 17 levels.
        if rng.random::<f32>() < 0.5 {
            let side = [8usize, 10, 12, 14, 16, 16, 20, 24, 28, 32][rng.random_range(0..10)];
            let (sw, sh) = if w >= h {
                (side, (side * h / w).max(1))
            } else {
                ((side * w / h).max(1), side)
            };
            c = resize(&c, w, h, sw, sh);
            (w, h) = (sw, sh);
            // Binary scans come at 12 px and up; an 8 px scan keeps grey.
            match rng.random_range(0..3) {
                0 if side >= 12 => {
                    let t = rng.random_range(0.3..0.6);
                    c.iter_mut()
                        .for_each(|v| *v = if *v >= t { 1.0 } else { 0.0 });
                }
                1 => c.iter_mut().for_each(|v| *v = (*v * 16.0).round() / 16.0),
                _ => {}
            }
        }
        // 5. A photo of paper, when asked for (`photo_prob`): the digit
        // somewhere in a frame 2-3x its size, under light that falls off
        // across the page, with sensor noise and a lens's softness.
        if w.min(h) >= 32 && rng.random::<f32>() < self.photo_prob {
            return photo_of(&c, w, h, rng);
        }
        // 6. Blur and noise, then either polarity, as 8-bit grey.
        if w.min(h) >= 16 && rng.random::<f32>() < 0.3 {
            c = blur3(&c, w, h);
        }
        let noise = if rng.random::<f32>() < 0.3 {
            rng.random_range(0.0..0.06)
        } else {
            0.0
        };
        let dark_on_light = rng.random::<bool>();
        let gray: Vec<u8> = c
            .iter()
            .map(|&v| {
                let n = if noise > 0.0 {
                    rng.random_range(-noise..noise)
                } else {
                    0.0
                };
                let v = ((v + n).clamp(0.0, 1.0) * 255.0).round() as u8;
                if dark_on_light { 255 - v } else { v }
            })
            .collect();
        mnister_core::preprocess::preprocess_gray(w, h, &gray).ok()
    }
}

/// Ink `c` (`w` x `h`, 0..1) photographed on paper: dark ink (30-80) on a
/// frame 2-3x larger lit from a random side (paper 150-235), off-centre,
/// Gaussian-ish noise of sigma about 6, a 3x3 blur; then the serving
/// preprocessing. Unlike the photo field row it has no JPEG step and other
/// sizes, so that row stays an independent check.
fn photo_of(c: &[f32], w: usize, h: usize, rng: &mut impl Rng) -> Option<MnistImage> {
    let k = rng.random_range(2.0..3.0f32);
    let (fw, fh) = ((w as f32 * k) as usize, (h as f32 * k) as usize);
    let (ox, oy) = (rng.random_range(0..=fw - w), rng.random_range(0..=fh - h));
    let (dark, bright) = (
        rng.random_range(150.0..190.0f32),
        rng.random_range(200.0..235.0f32),
    );
    let angle = rng.random_range(0.0..std::f32::consts::TAU);
    let (dx, dy) = (angle.cos(), angle.sin());
    let ink = rng.random_range(30.0..80.0f32);
    let mut frame = vec![0f32; fw * fh];
    for y in 0..fh {
        for x in 0..fw {
            // Lighting: a ramp across the frame in a random direction.
            let t = ((x as f32 / fw as f32 - 0.5) * dx + (y as f32 / fh as f32 - 0.5) * dy + 0.71)
                / 1.42;
            let paper = dark + (bright - dark) * t.clamp(0.0, 1.0);
            let a = if (ox..ox + w).contains(&x) && (oy..oy + h).contains(&y) {
                c[(y - oy) * w + (x - ox)]
            } else {
                0.0
            };
            // Sum of three uniforms: roughly Gaussian, sigma about 6.
            let n: f32 = (0..3).map(|_| rng.random_range(-6.0..6.0f32)).sum();
            frame[y * fw + x] = (paper * (1.0 - a) + ink * a + n) / 255.0;
        }
    }
    let frame = blur3(&frame, fw, fh);
    let gray: Vec<u8> = frame
        .iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    mnister_core::preprocess::preprocess_gray(fw, fh, &gray).ok()
}

/// The ink's bounding box of a `side` x `side` image, resampled to fill
/// the whole square, aspect ratio not kept.
fn fill_square(src: &[f32], side: usize) -> Vec<f32> {
    let (mut x0, mut y0, mut x1, mut y1) = (side, side, 0, 0);
    for (i, _) in src.iter().enumerate().filter(|(_, v)| **v >= 0.25) {
        let (x, y) = (i % side, i / side);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    if x0 > x1 || y0 > y1 {
        return src.to_vec();
    }
    let (cw, ch) = (x1 - x0 + 1, y1 - y0 + 1);
    let crop: Vec<f32> = (y0..=y1)
        .flat_map(|y| src[y * side + x0..=y * side + x1].iter().copied())
        .collect();
    resize(&crop, cw, ch, side, side)
}

/// Outlier exposure (Hendrycks et al., 2019): a share of each batch is
/// inputs that are not a digit, trained towards the uniform distribution,
/// so that the model answers them with low confidence and the reject
/// option catches them. The outliers are drawn here from MNIST's training
/// digits and random curves, by generators apart from the report's
/// non-digit sets (`nondigit.rs`), and, with `--outlier-fonts`, from
/// letters of fonts other than the report's DejaVu, so that its letter set
/// stays a held-out check.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct OutlierExposure {
    /// Outliers per digit in a batch (0.125: 16 for a batch of 128).
    pub share: f32,
    /// Weight of their loss against the digits' cross-entropy.
    pub weight: f32,
    /// Fonts whose letters (digit-like ones left out) are a third of the
    /// outliers; none: pairs and curves only.
    #[serde(skip)]
    pub fonts: Option<&'static [ab_glyph::FontVec]>,
}

impl PartialEq for OutlierExposure {
    fn eq(&self, other: &Self) -> bool {
        self.share == other.share
            && self.weight == other.weight
            && self.fonts.map(<[_]>::len) == other.fonts.map(<[_]>::len)
    }
}

/// Loads the letter fonts for outlier exposure. Refuses DejaVu: the
/// report's letter set is drawn from it, and a model taught those glyphs
/// would pass that check by having seen it.
pub fn load_outlier_fonts(paths: &[std::path::PathBuf]) -> Result<Vec<ab_glyph::FontVec>, String> {
    paths
        .iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase());
            if name.as_deref().is_some_and(|n| n.contains("dejavu")) {
                return Err(format!(
                    "--outlier-fonts: {} is a DejaVu font; the report's held-out letters are drawn from DejaVu, so train on another family (e.g. Liberation)",
                    p.display()
                ));
            }
            let bytes = std::fs::read(p)
                .map_err(|e| format!("--outlier-fonts: reading {}: {e}", p.display()))?;
            ab_glyph::FontVec::try_from_vec(bytes)
                .map_err(|e| format!("--outlier-fonts: {} is not a TrueType/OpenType font: {e}", p.display()))
        })
        .collect()
}

impl OutlierExposure {
    /// One outlier after the serving preprocessing: two training digits
    /// side by side at a random gap and height, or a few random curves
    /// (`pick` gives a training digit), or with fonts a letter; None when
    /// the preprocessing would refuse it.
    pub fn render(
        &self,
        rng: &mut impl Rng,
        mut pick: impl FnMut(&mut dyn rand::RngCore) -> MnistImage,
    ) -> Option<MnistImage> {
        if let Some(fonts) = self.fonts.filter(|f| !f.is_empty())
            && rng.random_range(0..3) == 0
        {
            let letters = crate::nondigit::non_digit_like_letters();
            let c = letters[rng.random_range(0..letters.len())];
            let font = &fonts[rng.random_range(0..fonts.len())];
            let mut page = crate::nondigit::draw_letter(font, c, rng);
            if rng.random::<bool>() {
                image::imageops::invert(&mut page);
            }
            let (w, h) = page.dimensions();
            return mnister_core::preprocess::preprocess_gray(
                w as usize,
                h as usize,
                page.as_raw(),
            )
            .ok();
        }
        let (w, h, ink) = if rng.random::<bool>() {
            let (a, b) = (pick(&mut *rng), pick(&mut *rng));
            let gap = rng.random_range(0..8usize);
            let dy = rng.random_range(-4i32..=4);
            let (w, h) = (2 * SIDE + gap, SIDE + 8);
            let mut c = vec![0f32; w * h];
            for y in 0..SIDE {
                for x in 0..SIDE {
                    c[(y + 4) * w + x] = a[y * SIDE + x];
                    let yb = (y as i32 + 4 + dy) as usize;
                    let v = &mut c[yb * w + SIDE + gap + x];
                    *v = v.max(b[y * SIDE + x]);
                }
            }
            (w, h, c)
        } else {
            let mut c = vec![0f32; CANVAS * CANVAS];
            let pen = rng.random_range(2.0..9.0f32);
            for _ in 0..rng.random_range(2..=6) {
                // A quadratic curve between two random points.
                let p: [(f32, f32); 3] = std::array::from_fn(|_| {
                    (rng.random_range(8.0..104.0), rng.random_range(8.0..104.0))
                });
                for k in 0..=200 {
                    let t = k as f32 / 200.0;
                    let u = 1.0 - t;
                    let x = u * u * p[0].0 + 2.0 * u * t * p[1].0 + t * t * p[2].0;
                    let y = u * u * p[0].1 + 2.0 * u * t * p[1].1 + t * t * p[2].1;
                    let r = pen / 2.0;
                    for yy in (y - r).max(0.0) as usize..=((y + r) as usize).min(CANVAS - 1) {
                        for xx in (x - r).max(0.0) as usize..=((x + r) as usize).min(CANVAS - 1) {
                            if (xx as f32 - x).hypot(yy as f32 - y) <= r {
                                c[yy * CANVAS + xx] = 1.0;
                            }
                        }
                    }
                }
            }
            (CANVAS, CANVAS, c)
        };
        let dark_on_light = rng.random::<bool>();
        let gray: Vec<u8> = ink
            .iter()
            .map(|&v| {
                let v = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                if dark_on_light { 255 - v } else { v }
            })
            .collect();
        mnister_core::preprocess::preprocess_gray(w, h, &gray).ok()
    }
}

fn upscale(img: &MnistImage, side: usize) -> Vec<f32> {
    resize(img, SIDE, SIDE, side, side)
}

/// Bilinear resampling (area-averaged when shrinking by sampling a 2x2
/// grid per output pixel), values stay in 0..1.
fn resize(src: &[f32], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f32> {
    let at = |x: f32, y: f32| mnister_core::preprocess::bilinear(src, sw, sh, x, y);
    let (kx, ky) = (sw as f32 / dw as f32, sh as f32 / dh as f32);
    let sub = if kx > 1.5 || ky > 1.5 { 4 } else { 1 };
    let mut out = Vec::with_capacity(dw * dh);
    for y in 0..dh {
        for x in 0..dw {
            let mut acc = 0.0;
            for j in 0..sub {
                for i in 0..sub {
                    let fx = (x as f32 + (i as f32 + 0.5) / sub as f32) * kx - 0.5;
                    let fy = (y as f32 + (j as f32 + 0.5) / sub as f32) * ky - 0.5;
                    acc += at(fx, fy);
                }
            }
            out.push(acc / (sub * sub) as f32);
        }
    }
    out
}

/// Binary dilation (or erosion) with a (2r+1) square.
fn morph_square(src: &[f32], w: usize, h: usize, r: usize, dilate: bool) -> Vec<f32> {
    use mnister_core::preprocess::morph;
    if dilate {
        morph(src, w, h, r, f32::max, 0.0)
    } else {
        morph(src, w, h, r, f32::min, 1.0)
    }
}

/// A 3x3 box blur.
fn blur3(src: &[f32], w: usize, h: usize) -> Vec<f32> {
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            let (mut s, mut n) = (0.0, 0.0);
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    s += src[yy * w + xx];
                    n += 1.0;
                }
            }
            out[y * w + x] = s / n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn blob(x: usize, y: usize) -> MnistImage {
        let mut img = [0f32; PIXELS];
        img[y * SIDE + x] = 1.0;
        img
    }

    fn com(img: &MnistImage) -> (f32, f32) {
        let m: f32 = img.iter().sum();
        let x = (0..PIXELS).map(|i| img[i] * (i % SIDE) as f32).sum::<f32>() / m;
        let y = (0..PIXELS).map(|i| img[i] * (i / SIDE) as f32).sum::<f32>() / m;
        (x, y)
    }

    #[test]
    fn identity_is_exact() {
        let img = blob(5, 9);
        assert_eq!(Affine::IDENTITY.warp(&img, Fill::Constant), img);
    }

    #[test]
    fn zoom_above_one_shrinks() {
        let mut img = [0f32; PIXELS];
        for x in 4..24 {
            img[14 * SIDE + x] = 1.0;
        }
        let out = Affine::zoom(2.0).warp(&img, Fill::Constant);
        let width = (0..SIDE).filter(|&x| out[14 * SIDE + x] > 0.1).count();
        assert!((9..=11).contains(&width), "width {width}");
    }

    #[test]
    fn rotation_by_90_moves_a_point_around_the_centre() {
        // A point right of centre ends up above or below it.
        let out = Affine::rotation(90.0).warp(&blob(20, 14), Fill::Constant);
        let (x, y) = com(&out);
        assert!((x - 13.5).abs() < 1.0 && (y - 13.5).abs() > 5.0, "{x},{y}");
    }

    #[test]
    fn shift_moves_content_by_whole_pixels() {
        let out = Affine::shift(3.0, -2.0).warp(&blob(10, 10), Fill::Constant);
        assert_eq!(com(&out), (7.0, 12.0));
    }

    #[test]
    fn samples_stay_in_range_and_strength_zero_is_identity() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cfg = AugmentConfig::REFERENCE;
        for _ in 0..1000 {
            let a = cfg.sample(&mut rng, 1.0);
            assert!(a.rotation_deg.abs() <= 50.0);
            assert!(a.shift_x.abs() <= 0.3 * 28.0 + 1e-4);
            assert!(a.shift_y.abs() <= 0.2 * 28.0 + 1e-4);
            assert!((1.0..=1.5).contains(&a.zoom_x) && (1.0..=1.5).contains(&a.zoom_y));
        }
        assert_eq!(cfg.sample(&mut rng, 0.0), Affine::IDENTITY);
    }

    #[test]
    fn shift_strength_scales_only_the_shifts() {
        let cfg = AugmentConfig::REFERENCE;
        let (mut a, mut b) = (
            rand::rngs::StdRng::seed_from_u64(7),
            rand::rngs::StdRng::seed_from_u64(7),
        );
        let mut widest = 0f32;
        for _ in 0..1000 {
            let calm = cfg.sample(&mut a, 0.3);
            let kept = cfg.sample_with_shift(&mut b, 0.3, 1.0);
            // Rotation and zoom come out the same: the draws stay in step.
            assert_eq!(calm.rotation_deg, kept.rotation_deg);
            assert_eq!((calm.zoom_x, calm.zoom_y), (kept.zoom_x, kept.zoom_y));
            assert!(calm.shift_x.abs() <= 0.3 * 0.3 * 28.0 + 1e-4);
            assert!(kept.shift_x.abs() <= 0.3 * 28.0 + 1e-4);
            assert!((kept.shift_x - calm.shift_x / 0.3).abs() < 1e-3);
            widest = widest.max(kept.shift_x.abs());
        }
        assert!(widest > 0.3 * 0.3 * 28.0 * 2.0, "{widest}");
        let mut c = rand::rngs::StdRng::seed_from_u64(7);
        let mut d = rand::rngs::StdRng::seed_from_u64(7);
        assert_eq!(
            cfg.sample(&mut c, 0.6),
            cfg.sample_with_shift(&mut d, 0.6, 0.6)
        );
    }

    fn bar() -> MnistImage {
        let mut img = [0f32; PIXELS];
        for y in 4..24 {
            for x in 12..15 {
                img[y * SIDE + x] = 1.0;
            }
        }
        img
    }

    #[test]
    fn field_degradation_yields_served_mnist_form() {
        let aug = FieldAugment {
            prob: 1.0,
            stroke_prob: 0.0,
            photo_prob: 0.5,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut kept = 0;
        for _ in 0..200 {
            if let Some(out) = aug.degrade(&bar(), &mut rng) {
                kept += 1;
                assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
                // Served form: the ink's centre of mass near index 14, 14.
                let m: f32 = out.iter().sum();
                let cy = (0..PIXELS).map(|i| out[i] * (i / SIDE) as f32).sum::<f32>() / m;
                assert!((cy - 14.0).abs() < 1.0, "{cy}");
            }
        }
        assert!(kept > 190, "only {kept} of 200 degraded bars were readable");
    }

    #[test]
    fn field_degradation_is_seeded() {
        let aug = FieldAugment {
            prob: 1.0,
            stroke_prob: 0.0,
            photo_prob: 0.5,
        };
        let run = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| aug.degrade(&bar(), &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn a_photo_of_the_digit_reads_back_as_the_digit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let big = upscale(&bar(), CANVAS);
        let plain = mnister_core::preprocess::preprocess_gray(
            CANVAS,
            CANVAS,
            &big.iter().map(|v| (v * 255.0) as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        for _ in 0..10 {
            let photo = photo_of(&big, CANVAS, CANVAS, &mut rng).expect("readable");
            // Lighting, noise and placement are undone: the same bar, give
            // or take its antialiased edges.
            let diff: f32 = photo.iter().zip(&plain).map(|(a, b)| (a - b).abs()).sum();
            let mass: f32 = plain.iter().sum();
            assert!(diff < 0.35 * mass, "differs by {diff} of {mass}");
        }
    }

    #[test]
    fn fill_square_stretches_the_ink_to_every_edge() {
        let big = upscale(&bar(), CANVAS);
        let out = fill_square(&big, CANVAS);
        let ink = |x: usize, y: usize| out[y * CANVAS + x] >= 0.25;
        // The bar was 3 px wide and 20 tall; now it touches all four sides,
        // and its sides run the whole height.
        let m = CANVAS / 2;
        assert!(ink(0, m) && ink(CANVAS - 1, m) && ink(m, 0) && ink(m, CANVAS - 1));
        assert!((8..CANVAS - 8).all(|y| ink(0, y) && ink(CANVAS - 1, y)));
    }

    #[test]
    fn erosion_thins_and_dilation_thickens() {
        let big = upscale(&bar(), CANVAS);
        let ink = |v: &[f32]| v.iter().filter(|&&x| x >= 0.5).count();
        let thick = morph_square(&big, CANVAS, CANVAS, 3, true);
        let thin = morph_square(&big, CANVAS, CANVAS, 3, false);
        assert!(ink(&thick) > ink(&big) && ink(&big) > ink(&thin) && ink(&thin) > 0);
    }
}

#[cfg(test)]
mod letter_outliers {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn dejavu_is_refused_as_an_outlier_font_and_junk_is_named() {
        let e = load_outlier_fonts(&["/x/DejaVuSans.ttf".into()]).unwrap_err();
        assert!(e.contains("DejaVu") && e.contains("Liberation"), "{e}");
        let junk =
            std::env::temp_dir().join(format!("mnister-not-a-font-{}.ttf", std::process::id()));
        std::fs::write(&junk, b"not a font").unwrap();
        let e = load_outlier_fonts(std::slice::from_ref(&junk)).unwrap_err();
        std::fs::remove_file(&junk).unwrap();
        assert!(e.contains("not a TrueType/OpenType font"), "{e}");
    }

    #[test]
    fn a_third_of_the_outliers_are_letters_when_fonts_are_given() {
        // DejaVu here only because it is the font at hand in a test; the
        // trainer refuses it (above).
        let font = ab_glyph::FontVec::try_from_vec(dejavu::sans::regular().to_vec()).unwrap();
        let fonts: &'static [ab_glyph::FontVec] = Box::leak(vec![font].into_boxed_slice());
        let blank = |_: &mut dyn rand::RngCore| [0f32; PIXELS];
        let count = |oe: OutlierExposure| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            // Two blank digits side by side are refused by the
            // preprocessing, so what renders is curves and letters.
            (0..600)
                .filter(|_| oe.render(&mut rng, blank).is_some())
                .count()
        };
        let plain = OutlierExposure {
            share: 0.1,
            weight: 0.5,
            fonts: None,
        };
        let with = OutlierExposure {
            fonts: Some(fonts),
            ..plain
        };
        let (a, b) = (count(plain), count(with));
        // Curves are half of 600 without fonts; with fonts a third are
        // letters and curves are half of the rest: 200 + 200.
        assert!((240..=360).contains(&a), "{a}");
        assert!((330..=470).contains(&b), "{b}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let page = crate::nondigit::draw_letter(&fonts[0], 'K', &mut rng);
        let ink = page.pixels().filter(|p| p.0[0] < 128).count();
        assert!(ink > 500, "a K in dark ink on the page: {ink} dark pixels");
        assert!(
            crate::nondigit::non_digit_like_letters()
                .iter()
                .all(|c| !crate::nondigit::DIGIT_LIKE.contains(*c))
        );
    }
}

#[cfg(test)]
mod preview {
    use super::*;
    use rand::SeedableRng;

    /// Writes degraded samples of the first test digits to
    /// $MNISTER_PREVIEW (a PNG grid), for a person to look at.
    #[test]
    #[ignore = "writes a picture for a person to look at"]
    fn field_degradation_preview() {
        let Ok(out) = std::env::var("MNISTER_PREVIEW") else {
            return;
        };
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/mnist");
        let ds = mnister_core::idx::load_mnist(&dir, mnister_core::idx::Split::Test).unwrap();
        let aug = FieldAugment {
            prob: 1.0,
            stroke_prob: 0.0,
            photo_prob: 0.3,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (cols, rows) = (12u32, 10u32);
        let mut grid = image::GrayImage::new(cols * 30, rows * 30);
        for r in 0..rows {
            let src =
                mnister_core::preprocess::normalize_mnist(ds.images.image(r as usize)).unwrap();
            for c in 0..cols {
                let img = if c == 0 {
                    Some(src)
                } else {
                    aug.degrade(&src, &mut rng)
                };
                let Some(img) = img else { continue };
                for (i, v) in img.iter().enumerate() {
                    let (x, y) = ((i % SIDE) as u32, (i / SIDE) as u32);
                    grid.put_pixel(c * 30 + x, r * 30 + y, image::Luma([(v * 255.0) as u8]));
                }
            }
        }
        grid.save(out).unwrap();
    }
}
