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
        let s = strength.clamp(0.0, 1.0);
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
            shift_x: sym(rng, self.width_shift * s) * SIDE as f32,
            shift_y: sym(rng, self.height_shift * s) * SIDE as f32,
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
}
