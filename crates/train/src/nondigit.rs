//! Inputs that are not a digit, for measuring what the reject option
//! catches: letters rendered from the DejaVu fonts (sans, serif, mono;
//! upright and oblique), random strokes, noise just above the contrast
//! floor, and two digits side by side. Each is an image a user might send,
//! encoded as PNG, and goes through the server's preprocessing like any
//! request. Seeded, like the field rows.

use ab_glyph::{Font, FontRef, PxScale, point};
use image::{GrayImage, Luma};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Letters that look like digits (O 0, I l 1, S 5, Z 2, B 8, G 6, q g 9):
/// reported apart, never counted as misses.
pub const DIGIT_LIKE: &str = "OoIlSZBGqgzsb";

/// Every letter rendered, A-Z and a-z.
pub fn letters() -> Vec<char> {
    ('A'..='Z').chain('a'..='z').collect()
}

/// One kind of non-digit input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonDigit {
    /// Letters that do not look like a digit.
    Letters,
    /// Letters that do (`DIGIT_LIKE`), apart.
    DigitLikeLetters,
    /// One to three random pen strokes.
    Strokes,
    /// Paper with grain and a few specks, just above the contrast floor.
    Noise,
    /// Two MNIST digits side by side in one image.
    TwoDigits,
}

impl NonDigit {
    pub const ALL: [NonDigit; 5] = [
        NonDigit::Letters,
        NonDigit::DigitLikeLetters,
        NonDigit::Strokes,
        NonDigit::Noise,
        NonDigit::TwoDigits,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            NonDigit::Letters => "letters",
            NonDigit::DigitLikeLetters => "digit-like letters (O o I l S Z B G q g z s b)",
            NonDigit::Strokes => "random strokes",
            NonDigit::Noise => "noise above the contrast floor",
            NonDigit::TwoDigits => "two digits side by side",
        }
    }
}

fn fonts() -> Vec<FontRef<'static>> {
    [
        dejavu::sans::regular(),
        dejavu::sans::oblique(),
        dejavu::sans::bold(),
        dejavu::serif::regular(),
        dejavu::sans_mono::regular(),
    ]
    .into_iter()
    .map(|b| FontRef::try_from_slice(b).expect("a DejaVu font"))
    .collect()
}

/// A letter in dark ink on a white 280x280 page: font, size and place drawn
/// from the seed.
pub fn letter(c: char, index: usize, seed: u64) -> GrayImage {
    let fonts = fonts();
    let mut rng = StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let font = &fonts[rng.random_range(0..fonts.len())];
    draw_letter(font, c, &mut rng)
}

/// `c` from `font` in dark ink on a white 280x280 page, its size and place
/// drawn from `rng`. Shared by the report's letters (DejaVu) and the
/// trainer's letter outliers (other fonts, `--outlier-fonts`).
pub fn draw_letter(font: &impl Font, c: char, rng: &mut impl Rng) -> GrayImage {
    let size = rng.random_range(120.0..220.0);
    let mut page = GrayImage::from_pixel(280, 280, Luma([255]));
    let glyph = font
        .glyph_id(c)
        .with_scale_and_position(PxScale::from(size), point(0.0, 0.0));
    if let Some(outline) = font.outline_glyph(glyph) {
        let b = outline.px_bounds();
        let (w, h) = (b.width(), b.height());
        let ox = rng.random_range(10.0..(270.0 - w).max(11.0)) - b.min.x;
        let oy = rng.random_range(10.0..(270.0 - h).max(11.0)) - b.min.y;
        outline.draw(|x, y, cov| {
            let (px, py) = (x as f32 + b.min.x + ox, y as f32 + b.min.y + oy);
            if (0.0..280.0).contains(&px) && (0.0..280.0).contains(&py) {
                let v = (255.0 * (1.0 - cov)) as u8;
                let p = page.get_pixel_mut(px as u32, py as u32);
                p.0[0] = p.0[0].min(v);
            }
        });
    }
    page
}

/// The letters that do not look like a digit: the only ones a model may be
/// taught to refuse, since refusing an "O" would teach it to refuse a 0.
pub fn non_digit_like_letters() -> Vec<char> {
    letters()
        .into_iter()
        .filter(|c| !DIGIT_LIKE.contains(*c))
        .collect()
}

/// One to three random strokes (polylines of 2-5 points) with a 6-14 px pen.
pub fn strokes(index: usize, seed: u64) -> GrayImage {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5757 ^ (index as u64) << 20);
    let mut page = GrayImage::from_pixel(280, 280, Luma([255]));
    let pen = rng.random_range(6.0..14.0f32);
    for _ in 0..rng.random_range(1..=3) {
        let pts: Vec<(f32, f32)> = (0..rng.random_range(2..=5))
            .map(|_| (rng.random_range(20.0..260.0), rng.random_range(20.0..260.0)))
            .collect();
        for w in pts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let len = ((b.0 - a.0).hypot(b.1 - a.1)).max(1.0);
            for k in 0..=(len as usize * 2) {
                let t = k as f32 / (len * 2.0);
                let (cx, cy) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
                let r = pen / 2.0;
                for y in (cy - r) as i32..=(cy + r) as i32 {
                    for x in (cx - r) as i32..=(cx + r) as i32 {
                        if (0..280).contains(&x)
                            && (0..280).contains(&y)
                            && (x as f32 - cx).hypot(y as f32 - cy) <= r
                        {
                            page.put_pixel(x as u32, y as u32, Luma([20]));
                        }
                    }
                }
            }
        }
    }
    page
}

/// Paper grain (noise of +-25) and a few small specks, contrast about 60:
/// above the server's blank-image floor (40), with no digit in it.
pub fn noise(index: usize, seed: u64) -> GrayImage {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4e4f ^ (index as u64) << 24);
    let mut page = GrayImage::from_fn(280, 280, |_, _| Luma([rng.random_range(205..=255u8)]));
    for _ in 0..rng.random_range(3..12) {
        let (x, y) = (rng.random_range(5..275), rng.random_range(5..275));
        for dy in 0..3 {
            for dx in 0..3 {
                page.put_pixel(x + dx - 1, y + dy - 1, Luma([rng.random_range(150..190u8)]));
            }
        }
    }
    page
}

/// Two MNIST digits (784 bytes each, white on black) side by side, 56x28.
pub fn two_digits(a: &[u8], b: &[u8]) -> GrayImage {
    GrayImage::from_fn(56, 28, |x, y| {
        let (d, x) = if x < 28 { (a, x) } else { (b, x - 28) };
        Luma([d[(y * 28 + x) as usize]])
    })
}

/// What the reject option catches of one kind of non-digit input.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NonDigitRow {
    pub set: String,
    pub images: usize,
    /// Refused by the preprocessing (blank): never answered.
    pub refused: usize,
    /// For each threshold of the risk–coverage table: the share not
    /// answered as a digit (refused, or below the threshold).
    pub caught: Vec<f64>,
}

/// The images of one kind, as (PNG bytes), `n` of them (letters: every
/// letter of the kind, cycling).
pub fn render(kind: NonDigit, n: usize, seed: u64, digits: &[[u8; 784]]) -> Vec<Vec<u8>> {
    let png = |img: GrayImage| {
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("PNG encoding to memory");
        out
    };
    let pick: Vec<char> = match kind {
        NonDigit::Letters => letters()
            .into_iter()
            .filter(|c| !DIGIT_LIKE.contains(*c))
            .collect(),
        NonDigit::DigitLikeLetters => DIGIT_LIKE.chars().collect(),
        _ => Vec::new(),
    };
    (0..n)
        .map(|i| match kind {
            NonDigit::Letters | NonDigit::DigitLikeLetters => {
                png(letter(pick[i % pick.len()], i, seed))
            }
            NonDigit::Strokes => png(strokes(i, seed)),
            NonDigit::Noise => png(noise(i, seed)),
            NonDigit::TwoDigits => {
                let k = digits.len();
                png(two_digits(&digits[(2 * i) % k], &digits[(2 * i + 1) % k]))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ink(img: &GrayImage) -> usize {
        img.pixels().filter(|p| p.0[0] < 128).count()
    }

    #[test]
    fn letters_are_drawn_dark_on_white_and_seeded() {
        for c in ['A', 'x', 'Q'] {
            let a = letter(c, 3, 1);
            assert!(ink(&a) > 300, "{c}: {} ink pixels", ink(&a));
            assert_eq!(a.get_pixel(0, 0).0[0], 255);
            assert_eq!(a, letter(c, 3, 1));
        }
        assert_ne!(letter('A', 3, 1), letter('A', 4, 1));
    }

    #[test]
    fn digit_like_letters_are_a_subset_of_the_letters() {
        assert!(DIGIT_LIKE.chars().all(|c| letters().contains(&c)));
        assert_eq!(letters().len(), 52);
    }

    #[test]
    fn strokes_have_ink_and_noise_has_only_low_contrast() {
        assert!(ink(&strokes(0, 1)) > 200);
        let n = noise(0, 1);
        let lo = n.pixels().map(|p| p.0[0]).min().unwrap();
        assert!((150..205).contains(&lo), "{lo}");
        assert_eq!(ink(&n), 0);
    }

    #[test]
    fn two_digits_sit_side_by_side() {
        let a = vec![255u8; 784];
        let b = vec![0u8; 784];
        let img = two_digits(&a, &b);
        assert_eq!(img.dimensions(), (56, 28));
        assert_eq!(img.get_pixel(10, 10).0[0], 255);
        assert_eq!(img.get_pixel(40, 10).0[0], 0);
    }
}
