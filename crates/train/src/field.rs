//! Field rows: MNIST test digits re-rendered as the images real users send.
//!
//! Accuracy on MNIST says little about a scanned form, a tablet drawing or a
//! phone photo. Each [`FieldRow`] turns one MNIST test digit (28x28, ink
//! bright on black) into the encoded bytes of one such kind of image,
//! mimicking a real non-MNIST dataset where one exists (UCI optdigits, USPS,
//! Semeion). The evaluation sends those bytes through the server's own
//! preprocessing and model, so its number is the one that kind of user sees.
//!
//! Every transform is a pure function of (digit pixels, image index, seed).
//! It never sees the label, and the same inputs give byte-identical output.
//! The scan rows use no randomness at all; the others draw their parameters
//! (pen width, marker radius, lighting, placement, noise) from an RNG keyed
//! by (row, index, seed).

use std::f32::consts::TAU;
use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, GrayImage, ImageEncoder, ImageFormat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Side of an MNIST image.
pub const MNIST_SIDE: usize = 28;
/// Pixels in an MNIST image.
pub const MNIST_PIXELS: usize = MNIST_SIDE * MNIST_SIDE;

/// MNIST pixels at or above this are ink for the bounding box: 25%, the
/// server's own crop threshold, so faint antialiasing does not widen it.
const BOX_INK: u8 = 64;
/// Coverage at or above this is ink when binarising.
const HALF: f32 = 0.5;
/// Bilinear samples per axis averaged into one pixel of a small scan grid:
/// approximates the area a scanner cell integrates, for both the up- and
/// the down-scaling the scan rows need.
const SUPERSAMPLE: usize = 4;

/// Side of the drawing page of the pen and marker rows.
const PAGE: usize = 280;
/// The pen row thins the digit on a 112x112 grid, 4x MNIST: coarse enough
/// to be fast and leave few spurs, fine enough to keep loops open.
const THIN_SCALE: usize = 4;
/// Laplacian smoothing rounds for the pen's skeleton; two turn the grid's
/// staircase into a smooth curve and shorten stroke ends by about a pixel.
const SMOOTHING_ROUNDS: usize = 2;
/// The marker row binarises the digit at the page's resolution.
const PAGE_SCALE: usize = PAGE / MNIST_SIDE;

const PHOTO_W: usize = 640;
const PHOTO_H: usize = 480;
const PHOTO_JPEG_QUALITY: u8 = 50;
/// Paper brightness at the dark and the bright end of the lighting gradient.
const PAPER_RANGE: (f32, f32) = (150.0, 235.0);
/// Fraction of the brightness the vignette takes away at the corners.
const VIGNETTE: f32 = 0.12;
const NOISE_SIGMA: f32 = 6.0;
/// Least distance between the digit's centre and the frame's centre: the
/// row is about digits that are not in the middle of the picture.
const PHOTO_MIN_OFFSET: f32 = 60.0;
/// Gap kept between the digit's ink box and the frame's edge.
const PHOTO_MARGIN: f32 = 16.0;
/// Cap on the digit's ink box in the photo, so it always fits off-centre.
const PHOTO_MAX_BOX: f32 = 300.0;

/// One kind of field image. The discriminants key the per-row RNG, so
/// changing them changes every seeded row's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldRow {
    /// UCI optdigits' preprocessed form: 8x8 block counts, 17 grey levels.
    Scan8x8Grey17 = 0,
    /// USPS-like 16x16 grey.
    Scan16Grey = 1,
    /// Semeion-like 16x16 binary, but with the aspect ratio kept.
    Scan16Binary = 2,
    /// UCI optdigits' raw 32x32 bitmaps.
    Scan32Binary = 3,
    /// Semeion's 16x16 binary, stretched to fill the square.
    Stretched16Binary = 4,
    /// A thin pen or tablet stylus on a white page.
    ThinPen = 5,
    /// A thick marker on a white page.
    ThickMarker = 6,
    /// A phone photo of ink on unevenly lit paper.
    Photo = 7,
}

impl FieldRow {
    /// Every row, in report order.
    pub const ALL: [FieldRow; 8] = [
        FieldRow::Scan8x8Grey17,
        FieldRow::Scan16Grey,
        FieldRow::Scan16Binary,
        FieldRow::Scan32Binary,
        FieldRow::Stretched16Binary,
        FieldRow::ThinPen,
        FieldRow::ThickMarker,
        FieldRow::Photo,
    ];

    /// Every row, in report order.
    pub fn all() -> [FieldRow; 8] {
        Self::ALL
    }

    /// Short stable id, for report rows and command-line flags.
    pub fn name(&self) -> &'static str {
        match self {
            FieldRow::Scan8x8Grey17 => "scan-8x8-grey17",
            FieldRow::Scan16Grey => "scan-16-grey",
            FieldRow::Scan16Binary => "scan-16-binary",
            FieldRow::Scan32Binary => "scan-32-binary",
            FieldRow::Stretched16Binary => "stretched-16-binary",
            FieldRow::ThinPen => "thin-pen",
            FieldRow::ThickMarker => "thick-marker",
            FieldRow::Photo => "photo",
        }
    }

    /// The row whose [`name`](Self::name) is `name`.
    pub fn from_name(name: &str) -> Option<FieldRow> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// One line saying exactly what the row does.
    pub fn description(&self) -> &'static str {
        match self {
            FieldRow::Scan8x8Grey17 => {
                "UCI optdigits: ink box fitted (aspect kept, centred) into a 32x32 binary bitmap, \
                 4x4-block ink counts 0-16 as an 8x8 image of 17 levels (count*255/16), \
                 ink bright on black, PNG"
            }
            FieldRow::Scan16Grey => {
                "USPS: ink box fitted (aspect kept, centred) into a 16x16 grey image, \
                 ink bright on black, PNG"
            }
            FieldRow::Scan16Binary => {
                "Semeion with aspect kept: ink box fitted (centred) into 16x16, thresholded at 50% \
                 to 0/255, ink bright on black, PNG"
            }
            FieldRow::Scan32Binary => {
                "UCI optdigits raw bitmap: ink box fitted (aspect kept, centred) into 32x32, \
                 thresholded at 50% to 0/255, ink bright on black, PNG"
            }
            FieldRow::Stretched16Binary => {
                "Semeion: ink box stretched (aspect NOT kept) to fill 16x16, thresholded at 50% \
                 to 0/255, ink touching all four sides, ink bright on black, PNG"
            }
            FieldRow::ThinPen => {
                "Thin pen: Zhang-Suen skeleton of the digit drawn as an antialiased line 1-2 px \
                 wide (seeded), ink 0-40 on a white 280x280 page, PNG"
            }
            FieldRow::ThickMarker => {
                "Thick marker: digit upscaled to 280x280, binarised at 50%, dilated by a disc of \
                 radius 8-12 px (seeded), ink 0-40 on white, PNG"
            }
            FieldRow::Photo => {
                "Photo: digit 80-140 px tall (seeded) at a seeded off-centre spot of a 640x480 \
                 frame, paper 150-235 in a seeded-direction gradient with a vignette, \
                 ink 30-80, noise sigma 6, JPEG quality 50"
            }
        }
    }

    /// Whether the row draws from the seed; the scan rows do not, so their
    /// images depend on the digit alone.
    pub fn is_seeded(&self) -> bool {
        matches!(
            self,
            FieldRow::ThinPen | FieldRow::ThickMarker | FieldRow::Photo
        )
    }

    /// The format [`render`](Self::render) encodes to.
    pub fn format(&self) -> ImageFormat {
        match self {
            FieldRow::Photo => ImageFormat::Jpeg,
            _ => ImageFormat::Png,
        }
    }

    /// The encoded image bytes a user would send for MNIST digit `img`
    /// (784 bytes, white on black), image `index` of a run with `seed`.
    pub fn render(&self, img: &[u8; MNIST_PIXELS], index: usize, seed: u64) -> Vec<u8> {
        encode(&self.render_gray(img, index, seed), self.format())
    }

    /// The image [`render`](Self::render) encodes, before encoding.
    pub fn render_gray(&self, img: &[u8; MNIST_PIXELS], index: usize, seed: u64) -> GrayImage {
        match self {
            FieldRow::Scan8x8Grey17 => scan_8x8_grey17(img),
            FieldRow::Scan16Grey => grey_scan(img, 16),
            FieldRow::Scan16Binary => binary_scan(img, 16, true),
            FieldRow::Scan32Binary => binary_scan(img, 32, true),
            FieldRow::Stretched16Binary => binary_scan(img, 16, false),
            FieldRow::ThinPen => thin_pen(img, &mut self.rng(index, seed)),
            FieldRow::ThickMarker => thick_marker(img, &mut self.rng(index, seed)),
            FieldRow::Photo => photo(img, &mut self.rng(index, seed)),
        }
    }

    /// The RNG for one image of this row. The row is part of the key so that
    /// rows do not share draws: thin-pen's image 5 is unrelated to photo's.
    fn rng(&self, index: usize, seed: u64) -> StdRng {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&(index as u64).to_le_bytes());
        key[16] = *self as u8;
        StdRng::from_seed(key)
    }
}

impl std::fmt::Display for FieldRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn encode(img: &GrayImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    let (w, h) = img.dimensions();
    let res = match format {
        ImageFormat::Jpeg => JpegEncoder::new_with_quality(
            Cursor::new(&mut out),
            PHOTO_JPEG_QUALITY,
        )
        .write_image(img.as_raw(), w, h, ExtendedColorType::L8),
        _ => PngEncoder::new(Cursor::new(&mut out)).write_image(
            img.as_raw(),
            w,
            h,
            ExtendedColorType::L8,
        ),
    };
    res.expect("encoding a non-empty 8-bit grey image into memory cannot fail");
    out
}

fn gray(w: usize, h: usize, pixels: Vec<u8>) -> GrayImage {
    GrayImage::from_raw(w as u32, h as u32, pixels).expect("buffer is w*h")
}

/// Coverage in [0, 1] to 8-bit, ink drawn with `ink` on paper of `paper`.
fn paint(cov: &[f32], paper: f32, ink: f32) -> Vec<u8> {
    cov.iter()
        .map(|&c| (paper + c * (ink - paper)).round().clamp(0.0, 255.0) as u8)
        .collect()
}

// ---------------------------------------------------------------- sampling

/// Bounding box of an MNIST digit's ink, inclusive, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InkBox {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
}

impl InkBox {
    /// The box of the pixels at or above `threshold`; `None` for a blank image.
    fn of(img: &[u8; MNIST_PIXELS], threshold: u8) -> Option<InkBox> {
        let mut b: Option<InkBox> = None;
        for (i, _) in img.iter().enumerate().filter(|(_, v)| **v >= threshold) {
            let (x, y) = (i % MNIST_SIDE, i / MNIST_SIDE);
            b = Some(match b {
                None => InkBox {
                    x0: x,
                    y0: y,
                    x1: x,
                    y1: y,
                },
                Some(b) => InkBox {
                    x0: b.x0.min(x),
                    y0: b.y0.min(y),
                    x1: b.x1.max(x),
                    y1: b.y1.max(y),
                },
            });
        }
        b
    }

    fn width(&self) -> usize {
        self.x1 - self.x0 + 1
    }

    fn height(&self) -> usize {
        self.y1 - self.y0 + 1
    }
}

/// Bilinear sample of an MNIST digit, in [0, 1], at a point in pixel-centre
/// coordinates (pixel (0, 0) is centred on (0.0, 0.0)). Outside the 28x28
/// field is background, which is what MNIST's black margin already is.
fn bilinear(img: &[u8; MNIST_PIXELS], x: f32, y: f32) -> f32 {
    let (fx, fy) = (x.floor(), y.floor());
    let (ax, ay) = (x - fx, y - fy);
    let (ix, iy) = (fx as i64, fy as i64);
    let px = |dx: i64, dy: i64| -> f32 {
        let (cx, cy) = (ix + dx, iy + dy);
        let side = 0..MNIST_SIDE as i64;
        if side.contains(&cx) && side.contains(&cy) {
            f32::from(img[cy as usize * MNIST_SIDE + cx as usize]) / 255.0
        } else {
            0.0
        }
    };
    let top = px(0, 0) + ax * (px(1, 0) - px(0, 0));
    let bottom = px(0, 1) + ax * (px(1, 1) - px(0, 1));
    top + ay * (bottom - top)
}

/// Resamples the ink box `b` of `img` into an `n`x`n` grid of ink coverage.
/// With `keep_aspect` the longer side fills the grid and the box is centred;
/// without it the box is stretched over the whole grid.
fn fit_box(img: &[u8; MNIST_PIXELS], b: InkBox, n: usize, keep_aspect: bool) -> Vec<f32> {
    let (bw, bh) = (b.width() as f32, b.height() as f32);
    let (tw, th) = if keep_aspect {
        let s = n as f32 / bw.max(bh);
        let side = |v: f32| ((v * s).round() as usize).clamp(1, n);
        (side(bw), side(bh))
    } else {
        (n, n)
    };
    let (ox, oy) = ((n - tw) / 2, (n - th) / 2);
    // MNIST pixels per output pixel along each axis.
    let (sx, sy) = (bw / tw as f32, bh / th as f32);
    let ss = SUPERSAMPLE as f32;
    let mut out = vec![0.0; n * n];
    for ty in 0..th {
        for tx in 0..tw {
            let mut acc = 0.0;
            for j in 0..SUPERSAMPLE {
                // Pixel k spans [k, k+1); bilinear wants pixel centres, hence -0.5.
                let v = b.y0 as f32 + (ty as f32 + (j as f32 + 0.5) / ss) * sy - 0.5;
                for i in 0..SUPERSAMPLE {
                    let u = b.x0 as f32 + (tx as f32 + (i as f32 + 0.5) / ss) * sx - 0.5;
                    acc += bilinear(img, u, v);
                }
            }
            out[(oy + ty) * n + ox + tx] = acc / (ss * ss);
        }
    }
    out
}

fn binarise(cov: &[f32]) -> Vec<u8> {
    cov.iter()
        .map(|&c| if c >= HALF { 255 } else { 0 })
        .collect()
}

/// The digit bilinearly upscaled by `scale` and thresholded at 50%: the
/// smooth-edged binary shape a pen stroke would have at that resolution.
fn upsample_binary(img: &[u8; MNIST_PIXELS], scale: usize) -> Vec<bool> {
    let n = MNIST_SIDE * scale;
    let mut out = vec![false; n * n];
    // Bilinear is zero farther than one pixel from any ink, so only the box
    // of nonzero pixels, grown by one, needs sampling.
    let Some(b) = InkBox::of(img, 1) else {
        return out;
    };
    let s = scale as f32;
    let range = |lo: usize, hi: usize| {
        let a = ((lo as f32 - 0.5) * s - 0.5).floor().max(0.0) as usize;
        let z = (((hi as f32 + 1.5) * s - 0.5).ceil() as usize).min(n);
        a..z
    };
    // Source pixel and weight of each output column (and row): the same
    // for both axes, so computed once.
    let taps: Vec<(usize, f32)> = (0..n)
        .map(|x| {
            let u = (x as f32 + 0.5) / s - 0.5;
            // Shifted by one: index 0 is the background column at -1.
            ((u.floor() + 1.0) as usize, u - u.floor())
        })
        .collect();
    let source = |x: usize, y: usize| -> f32 {
        // Padded coordinates: (1, 1) is MNIST pixel (0, 0).
        if (1..=MNIST_SIDE).contains(&x) && (1..=MNIST_SIDE).contains(&y) {
            f32::from(img[(y - 1) * MNIST_SIDE + x - 1]) / 255.0
        } else {
            0.0
        }
    };
    // Separable: interpolate between two source rows once per output row,
    // then along it per output pixel.
    let mut line = [0.0f32; MNIST_SIDE + 2];
    for y in range(b.y0, b.y1) {
        let (iy, ay) = taps[y];
        for (x, l) in line.iter_mut().enumerate() {
            let (top, bottom) = (source(x, iy), source(x, iy + 1));
            *l = top + ay * (bottom - top);
        }
        for x in range(b.x0, b.x1) {
            let (ix, ax) = taps[x];
            let (left, right) = (line[ix], line[ix + 1]);
            out[y * n + x] = left + ax * (right - left) >= HALF;
        }
    }
    out
}

// ---------------------------------------------------------------- scan rows

fn grey_scan(img: &[u8; MNIST_PIXELS], n: usize) -> GrayImage {
    let Some(b) = InkBox::of(img, BOX_INK) else {
        return GrayImage::new(n as u32, n as u32);
    };
    let pixels = fit_box(img, b, n, true)
        .iter()
        .map(|&c| (c * 255.0).round() as u8)
        .collect();
    gray(n, n, pixels)
}

fn binary_scan(img: &[u8; MNIST_PIXELS], n: usize, keep_aspect: bool) -> GrayImage {
    let Some(b) = InkBox::of(img, BOX_INK) else {
        return GrayImage::new(n as u32, n as u32);
    };
    let cov = fit_box(img, b, n, keep_aspect);
    let mut bin = binarise(&cov);
    if !keep_aspect {
        keep_sides(&cov, &mut bin, n);
    }
    gray(n, n, bin)
}

/// Semeion stretches the ink box over the whole square, so its ink touches
/// all four sides. Thresholding can drop a faint outermost row or column
/// (the tip of a stroke); each side left empty gets back its strongest pixel.
fn keep_sides(cov: &[f32], bin: &mut [u8], n: usize) {
    let sides: [Vec<usize>; 4] = [
        (0..n).collect(),                          // top row
        (0..n).map(|x| (n - 1) * n + x).collect(), // bottom row
        (0..n).map(|y| y * n).collect(),           // left column
        (0..n).map(|y| y * n + n - 1).collect(),   // right column
    ];
    for side in sides {
        if side.iter().all(|&i| bin[i] == 0) {
            let best = side
                .into_iter()
                .max_by(|&a, &b| cov[a].total_cmp(&cov[b]))
                .expect("n >= 1");
            bin[best] = 255;
        }
    }
}

/// UCI optdigits: a 32x32 bitmap, then each non-overlapping 4x4 block's ink
/// count (0..=16) as one pixel.
fn scan_8x8_grey17(img: &[u8; MNIST_PIXELS]) -> GrayImage {
    const BITMAP: usize = 32;
    const BLOCK: usize = 4;
    const OUT: usize = BITMAP / BLOCK;
    let Some(b) = InkBox::of(img, BOX_INK) else {
        return GrayImage::new(OUT as u32, OUT as u32);
    };
    let bitmap = binarise(&fit_box(img, b, BITMAP, true));
    let mut pixels = vec![0u8; OUT * OUT];
    for (i, p) in pixels.iter_mut().enumerate() {
        let (bx, by) = (i % OUT * BLOCK, i / OUT * BLOCK);
        let count = (by..by + BLOCK)
            .flat_map(|y| (bx..bx + BLOCK).map(move |x| (x, y)))
            .filter(|&(x, y)| bitmap[y * BITMAP + x] != 0)
            .count();
        *p = level17(count);
    }
    gray(OUT, OUT, pixels)
}

/// Block count 0..=16 to 0..=255, rounded (half up).
fn level17(count: usize) -> u8 {
    ((count * 255 + 8) / 16) as u8
}

// ---------------------------------------------------------------- pen rows

fn thin_pen(img: &[u8; MNIST_PIXELS], rng: &mut StdRng) -> GrayImage {
    let width = rng.random_range(1.0f32..=2.0);
    let ink = rng.random_range(0.0f32..=40.0);
    let n = MNIST_SIDE * THIN_SCALE;
    let mut shape = upsample_binary(img, THIN_SCALE);
    zhang_suen(&mut shape, n, n);
    let mut skeleton = Skeleton::of(&shape, n, PAGE as f32 / n as f32);
    skeleton.smooth(SMOOTHING_ROUNDS);
    let mut cov = vec![0.0; PAGE * PAGE];
    skeleton.draw(&mut cov, PAGE, width);
    gray(PAGE, PAGE, paint(&cov, 255.0, ink))
}

/// Zhang–Suen thinning (CACM 27(3), 1984), in place: peels boundary pixels
/// in two alternating sub-iterations until nothing changes, leaving an
/// 8-connected skeleton one pixel wide. Outside the grid is background.
fn zhang_suen(bin: &mut [bool], w: usize, h: usize) {
    // Only ink can be deleted; keeping a list of it avoids rescanning the
    // empty page on every pass.
    let mut ink: Vec<usize> = (0..w * h).filter(|&i| bin[i]).collect();
    let mut doomed = Vec::new();
    loop {
        let mut changed = false;
        for first in [true, false] {
            doomed.clear();
            for &i in &ink {
                let (x, y) = ((i % w) as isize, (i / w) as isize);
                let at = |dx: isize, dy: isize| {
                    let (cx, cy) = (x + dx, y + dy);
                    cx >= 0
                        && cy >= 0
                        && (cx as usize) < w
                        && (cy as usize) < h
                        && bin[cy as usize * w + cx as usize]
                };
                // P2..P9: clockwise from north.
                let p = [
                    at(0, -1),
                    at(1, -1),
                    at(1, 0),
                    at(1, 1),
                    at(0, 1),
                    at(-1, 1),
                    at(-1, 0),
                    at(-1, -1),
                ];
                let neighbours = p.iter().filter(|&&v| v).count();
                let transitions = (0..8).filter(|&k| !p[k] && p[(k + 1) % 8]).count();
                let [p2, _, p4, _, p6, _, p8, _] = p;
                // The paper's P2*P4*P6 = 0 and P4*P6*P8 = 0 (first pass:
                // peel south-east boundaries), then P2*P4*P8 = 0 and
                // P2*P6*P8 = 0 (second pass: north-west).
                let keep_shape = if first {
                    !(p4 && p6 && (p2 || p8))
                } else {
                    !(p2 && p8 && (p4 || p6))
                };
                if (2..=6).contains(&neighbours) && transitions == 1 && keep_shape {
                    doomed.push(i);
                }
            }
            for &i in &doomed {
                bin[i] = false;
            }
            changed |= !doomed.is_empty();
            ink.retain(|&i| bin[i]);
        }
        if !changed {
            break;
        }
    }
}

type Point = [f32; 2];

/// A thinned digit as a graph: the skeleton pixels' centres, scaled to the
/// page, and links between 8-neighbours.
struct Skeleton {
    points: Vec<Point>,
    links: Vec<[usize; 2]>,
}

impl Skeleton {
    /// The graph of the skeleton pixels of the `n`x`n` grid `bin`. A
    /// diagonal link is left out where the pair is already joined through a
    /// shared 4-neighbour, so corners do not become small filled triangles.
    fn of(bin: &[bool], n: usize, scale: f32) -> Skeleton {
        let mut id = vec![usize::MAX; n * n];
        let mut points = Vec::new();
        for (i, _) in bin.iter().enumerate().filter(|(_, v)| **v) {
            id[i] = points.len();
            points.push([
                ((i % n) as f32 + 0.5) * scale,
                ((i / n) as f32 + 0.5) * scale,
            ]);
        }
        let at = |x: isize, y: isize| {
            let inside = x >= 0 && y >= 0 && (x as usize) < n && (y as usize) < n;
            inside
                .then(|| id[y as usize * n + x as usize])
                .filter(|&j| j != usize::MAX)
        };
        let mut links = Vec::new();
        for (i, _) in bin.iter().enumerate().filter(|(_, v)| **v) {
            let (x, y) = ((i % n) as isize, (i / n) as isize);
            // The forward half of the neighbourhood, so each pair is seen once.
            for (dx, dy) in [(1, 0), (0, 1), (1, 1), (-1, 1)] {
                let Some(j) = at(x + dx, y + dy) else {
                    continue;
                };
                let shortcut =
                    dx != 0 && dy != 0 && (at(x + dx, y).is_some() || at(x, y + dy).is_some());
                if !shortcut {
                    links.push([id[i], j]);
                }
            }
        }
        Skeleton { points, links }
    }

    /// Laplacian smoothing: each point moves to the mean of itself and its
    /// linked neighbours, `rounds` times. Skeleton pixels step by whole
    /// cells (2.5 page pixels), which drawn as they are make a staircase
    /// with a blob at every step; a pen's line is smooth.
    fn smooth(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let mut sum: Vec<[f32; 3]> = self.points.iter().map(|p| [p[0], p[1], 1.0]).collect();
            for &[a, b] in &self.links {
                let (pa, pb) = (self.points[a], self.points[b]);
                sum[a] = [sum[a][0] + pb[0], sum[a][1] + pb[1], sum[a][2] + 1.0];
                sum[b] = [sum[b][0] + pa[0], sum[b][1] + pa[1], sum[b][2] + 1.0];
            }
            self.points = sum.iter().map(|s| [s[0] / s[2], s[1] / s[2]]).collect();
        }
    }

    /// Draws every link as a line of `width`, and every unlinked point (a
    /// lone pixel: a dot in the digit) as a dot.
    fn draw(&self, cov: &mut [f32], n: usize, width: f32) {
        let mut linked = vec![false; self.points.len()];
        for &[a, b] in &self.links {
            draw_segment(cov, n, self.points[a], self.points[b], width);
            (linked[a], linked[b]) = (true, true);
        }
        for (&p, _) in self.points.iter().zip(&linked).filter(|(_, l)| !**l) {
            draw_segment(cov, n, p, p, width);
        }
    }
}

/// Max-composites a line of `width` from `a` to `b` (round caps) onto `cov`:
/// coverage falls off linearly over the pixel at the line's edge, the light
/// antialiasing of a tablet's ink renderer.
fn draw_segment(cov: &mut [f32], n: usize, a: Point, b: Point, width: f32) {
    let r = width / 2.0;
    let reach = r + 1.0;
    let lo = |p: f32, q: f32| (p.min(q) - reach).floor().max(0.0) as usize;
    let hi = |p: f32, q: f32| ((p.max(q) + reach).ceil() as usize).min(n);
    let d = [b[0] - a[0], b[1] - a[1]];
    let len2 = d[0] * d[0] + d[1] * d[1];
    for y in lo(a[1], b[1])..hi(a[1], b[1]) {
        for x in lo(a[0], b[0])..hi(a[0], b[0]) {
            let p = [x as f32 + 0.5 - a[0], y as f32 + 0.5 - a[1]];
            let t = if len2 > 0.0 {
                ((p[0] * d[0] + p[1] * d[1]) / len2).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let dist = (p[0] - t * d[0]).hypot(p[1] - t * d[1]);
            let c = (r + 0.5 - dist).clamp(0.0, 1.0);
            let px = &mut cov[y * n + x];
            *px = px.max(c);
        }
    }
}

fn thick_marker(img: &[u8; MNIST_PIXELS], rng: &mut StdRng) -> GrayImage {
    let radius = rng.random_range(8.0f32..=12.0);
    let ink = rng.random_range(0.0f32..=40.0);
    let shape = upsample_binary(img, PAGE_SCALE);
    let cov = dilate(&shape, PAGE, radius);
    gray(PAGE, PAGE, paint(&cov, 255.0, ink))
}

/// Coverage of `bin` dilated by a disc of `radius`: a pixel is ink when its
/// centre is within `radius` of an ink pixel's centre, with a one-pixel
/// linear falloff at the edge for antialiasing. Uses an exact Euclidean
/// distance transform over the ink's box grown by the radius; nothing
/// farther out can be reached.
fn dilate(bin: &[bool], n: usize, radius: f32) -> Vec<f32> {
    let mut cov = vec![0.0; n * n];
    let (mut x0, mut y0, mut x1, mut y1) = (n, n, 0, 0);
    for (i, _) in bin.iter().enumerate().filter(|(_, v)| **v) {
        let (x, y) = (i % n, i / n);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    if x0 > x1 {
        return cov;
    }
    let grow = radius.ceil() as usize + 1;
    let (x0, y0) = (x0.saturating_sub(grow), y0.saturating_sub(grow));
    let (x1, y1) = ((x1 + grow).min(n - 1), (y1 + grow).min(n - 1));
    let (w, h) = (x1 - x0 + 1, y1 - y0 + 1);
    let mut d2: Vec<f64> = (0..w * h)
        .map(|i| {
            if bin[(y0 + i / w) * n + x0 + i % w] {
                0.0
            } else {
                FAR
            }
        })
        .collect();
    squared_edt(&mut d2, w, h);
    let reach2 = f64::from(radius + 0.5).powi(2);
    for (i, &d) in d2.iter().enumerate() {
        // Most of the region is beyond the pen's reach: skip its sqrt.
        if d < reach2 {
            let c = (radius + 0.5 - d.sqrt() as f32).clamp(0.0, 1.0);
            cov[(y0 + i / w) * n + x0 + i % w] = c;
        }
    }
    cov
}

/// Squared distance standing for "no ink": larger than any real one, small
/// enough that f64 arithmetic on it stays exact to well under a pixel.
const FAR: f64 = 1e12;

/// Squared Euclidean distance transform in place (Felzenszwalb and
/// Huttenlocher, 2012): `f` holds 0 on ink and [`FAR`] elsewhere and ends
/// holding each pixel's squared distance to the nearest ink. Exact and
/// linear in the pixel count: a 1-D lower-envelope pass per column, then
/// per row.
fn squared_edt(f: &mut [f64], w: usize, h: usize) {
    let m = w.max(h);
    let (mut line, mut out) = (vec![0.0; m], vec![0.0; m]);
    let (mut v, mut z) = (vec![0usize; m], vec![0.0; m + 1]);
    for x in 0..w {
        for y in 0..h {
            line[y] = f[y * w + x];
        }
        edt_1d(&line[..h], &mut out[..h], &mut v, &mut z);
        for y in 0..h {
            f[y * w + x] = out[y];
        }
    }
    for row in f.chunks_exact_mut(w) {
        line[..w].copy_from_slice(row);
        edt_1d(&line[..w], &mut out[..w], &mut v, &mut z);
        row.copy_from_slice(&out[..w]);
    }
}

/// One line of [`squared_edt`]: `d[q] = min_p (q - p)^2 + f[p]`, via the
/// lower envelope of the parabolas rooted at each `p`.
fn edt_1d(f: &[f64], d: &mut [f64], v: &mut [usize], z: &mut [f64]) {
    // Where the parabolas rooted at p and q cross.
    let cut = |p: usize, q: usize| {
        let (pf, qf) = (p as f64, q as f64);
        ((f[q] + qf * qf) - (f[p] + pf * pf)) / (2.0 * (qf - pf))
    };
    let mut k = 0;
    v[0] = 0;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    for q in 1..f.len() {
        let mut s = cut(v[k], q);
        // z[0] is -inf and s is finite, so this stops at k = 0 at the latest.
        while s <= z[k] {
            k -= 1;
            s = cut(v[k], q);
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    k = 0;
    for (q, dq) in d.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let p = v[k];
        *dq = (q as f64 - p as f64).powi(2) + f[p];
    }
}

// ---------------------------------------------------------------- photo row

/// Where and how the photo row draws one digit, drawn from its RNG.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PhotoLayout {
    /// Frame pixels per MNIST pixel.
    scale: f32,
    /// Frame position of the MNIST field's top-left corner.
    origin: Point,
    /// Frame position of the centre of the digit's ink box.
    centre: Point,
    /// Direction in which the lighting brightens, radians.
    light: f32,
    /// Ink brightness.
    ink: f32,
}

impl PhotoLayout {
    fn draw(b: Option<InkBox>, rng: &mut StdRng) -> PhotoLayout {
        let height = rng.random_range(80.0f32..=140.0);
        let light = rng.random_range(0.0..TAU);
        let ink = rng.random_range(30.0f32..=80.0);
        let (bw, bh) = b.map_or((20.0, 20.0), |b| (b.width() as f32, b.height() as f32));
        let scale = (height / bh).min(PHOTO_MAX_BOX / bw.max(bh));
        let (half_w, half_h) = (bw * scale / 2.0, bh * scale / 2.0);
        let (fw, fh) = (PHOTO_W as f32, PHOTO_H as f32);
        let xs = (PHOTO_MARGIN + half_w)..=(fw - PHOTO_MARGIN - half_w);
        let ys = (PHOTO_MARGIN + half_h)..=(fh - PHOTO_MARGIN - half_h);
        let off_centre = |c: Point| (c[0] - fw / 2.0).hypot(c[1] - fh / 2.0) >= PHOTO_MIN_OFFSET;
        // Rejection keeps the spot uniform over the allowed region; the
        // region is most of the frame, so the fallback (the left edge) is
        // for determinism's sake only.
        let centre = (0..1000)
            .map(|_| [rng.random_range(xs.clone()), rng.random_range(ys.clone())])
            .find(|&c| off_centre(c))
            .unwrap_or([*xs.start(), fh / 2.0]);
        let (bx, by) = b.map_or((4.0, 4.0), |b| (b.x0 as f32, b.y0 as f32));
        let origin = [
            centre[0] - half_w - bx * scale,
            centre[1] - half_h - by * scale,
        ];
        PhotoLayout {
            scale,
            origin,
            centre,
            light,
            ink,
        }
    }
}

fn photo(img: &[u8; MNIST_PIXELS], rng: &mut StdRng) -> GrayImage {
    let layout = PhotoLayout::draw(InkBox::of(img, BOX_INK), rng);
    let (fw, fh) = (PHOTO_W as f32, PHOTO_H as f32);
    let (cos, sin) = (layout.light.cos(), layout.light.sin());
    // The gradient's span across the frame along the light's direction, so
    // the darkest and brightest corners get exactly the ends of the range.
    let span = fw * cos.abs() + fh * sin.abs();
    let corner2 = (fw * fw + fh * fh) / 4.0;
    let (lo, hi) = PAPER_RANGE;
    // Frame pixels the digit can touch: bilinear reaches one MNIST pixel
    // beyond the field.
    let s = layout.scale;
    let reach = |o: f32, n: usize| {
        let a = (o - s).floor().max(0.0) as usize;
        let z = ((o + (MNIST_SIDE as f32 + 1.0) * s).ceil().max(0.0) as usize).min(n);
        a..z
    };
    let (xs, ys) = (
        reach(layout.origin[0], PHOTO_W),
        reach(layout.origin[1], PHOTO_H),
    );
    let mut pixels = Vec::with_capacity(PHOTO_W * PHOTO_H);
    for y in 0..PHOTO_H {
        let dy = y as f32 + 0.5 - fh / 2.0;
        let v = (y as f32 + 0.5 - layout.origin[1]) / s - 0.5;
        for x in 0..PHOTO_W {
            let dx = x as f32 + 0.5 - fw / 2.0;
            let t = (dx * cos + dy * sin) / span + 0.5;
            let paper = (lo + (hi - lo) * t) * (1.0 - VIGNETTE * (dx * dx + dy * dy) / corner2);
            let c = if xs.contains(&x) && ys.contains(&y) {
                bilinear(img, (x as f32 + 0.5 - layout.origin[0]) / s - 0.5, v)
            } else {
                0.0
            };
            pixels.push(paper + c * (layout.ink - paper));
        }
    }
    // Sensor noise, two samples per Box–Muller draw.
    for pair in pixels.chunks_mut(2) {
        let r = NOISE_SIGMA * (-2.0 * (1.0 - rng.random::<f32>()).ln()).sqrt();
        let (sn, cs) = (TAU * rng.random::<f32>()).sin_cos();
        for (p, n) in pair.iter_mut().zip([r * cs, r * sn]) {
            *p += n;
        }
    }
    let bytes = pixels
        .into_iter()
        .map(|p| p.round().clamp(0.0, 255.0) as u8)
        .collect();
    gray(PHOTO_W, PHOTO_H, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageReader;

    /// An antialiased ring, a "0": centre (14, 14), radius 7, stroke 2.5 px.
    fn ring() -> [u8; MNIST_PIXELS] {
        let mut img = [0u8; MNIST_PIXELS];
        for (i, p) in img.iter_mut().enumerate() {
            let (x, y) = ((i % MNIST_SIDE) as f32, (i / MNIST_SIDE) as f32);
            let mut hits = 0;
            for j in 0..4 {
                for k in 0..4 {
                    let (sx, sy) = (x + (k as f32 + 0.5) / 4.0, y + (j as f32 + 0.5) / 4.0);
                    let r = (sx - 14.0).hypot(sy - 14.0);
                    hits += usize::from((r - 7.0).abs() <= 1.25);
                }
            }
            *p = (hits * 255 / 16) as u8;
        }
        img
    }

    /// A vertical bar, a "1": 3 px wide (x 13..16), 20 px tall (y 4..24).
    fn bar() -> [u8; MNIST_PIXELS] {
        filled(13..16, 4..24)
    }

    fn filled(xs: std::ops::Range<usize>, ys: std::ops::Range<usize>) -> [u8; MNIST_PIXELS] {
        let mut img = [0u8; MNIST_PIXELS];
        for y in ys {
            for x in xs.clone() {
                img[y * MNIST_SIDE + x] = 255;
            }
        }
        img
    }

    /// A thin antialiased diagonal stroke, a "/": its ends are faint.
    fn slash() -> [u8; MNIST_PIXELS] {
        let mut img = [0u8; MNIST_PIXELS];
        for (i, p) in img.iter_mut().enumerate() {
            let (x, y) = ((i % MNIST_SIDE) as f32 + 0.5, (i / MNIST_SIDE) as f32 + 0.5);
            // Distance to the line x + y = 28, for y in 5..23.
            let d = (x + y - 28.0).abs() / 2f32.sqrt();
            if (5.0..23.0).contains(&y) {
                *p = ((1.5 - d).clamp(0.0, 1.0) * 255.0) as u8;
            }
        }
        img
    }

    fn digits() -> [[u8; MNIST_PIXELS]; 3] {
        [ring(), bar(), slash()]
    }

    fn decode(bytes: &[u8]) -> GrayImage {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .unwrap()
            .decode()
            .unwrap()
            .into_luma8()
    }

    /// Ink box (x0, y0, x1, y1) of the pixels for which `is_ink` holds.
    fn ink_box(img: &GrayImage, is_ink: impl Fn(u8) -> bool) -> (u32, u32, u32, u32) {
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
        for (x, y, p) in img.enumerate_pixels() {
            if is_ink(p.0[0]) {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
        }
        assert!(x0 <= x1, "no ink at all");
        (x0, y0, x1, y1)
    }

    /// Number of connected components of the pixels for which `is_ink`
    /// holds, 8- or 4-connected.
    fn components(img: &GrayImage, is_ink: impl Fn(u8) -> bool, eight: bool) -> usize {
        let (w, h) = (img.width() as i64, img.height() as i64);
        let mut seen = vec![false; (w * h) as usize];
        let mut count = 0;
        for start in 0..(w * h) {
            if seen[start as usize] || !is_ink(img.as_raw()[start as usize]) {
                continue;
            }
            count += 1;
            let mut stack = vec![start];
            seen[start as usize] = true;
            while let Some(i) = stack.pop() {
                let (x, y) = (i % w, i / w);
                for dy in -1..=1i64 {
                    for dx in -1..=1i64 {
                        if !eight && dx != 0 && dy != 0 {
                            continue;
                        }
                        let (nx, ny) = (x + dx, y + dy);
                        if nx < 0 || ny < 0 || nx >= w || ny >= h {
                            continue;
                        }
                        let j = (ny * w + nx) as usize;
                        if !seen[j] && is_ink(img.as_raw()[j]) {
                            seen[j] = true;
                            stack.push(j as i64);
                        }
                    }
                }
            }
        }
        count
    }

    /// Length of the run of `is_ink` pixels through (x, y), horizontally
    /// and vertically.
    fn runs(img: &GrayImage, x: u32, y: u32, is_ink: impl Fn(u8) -> bool) -> (u32, u32) {
        let ink = |x: i64, y: i64| {
            x >= 0
                && y >= 0
                && x < img.width() as i64
                && y < img.height() as i64
                && is_ink(img.get_pixel(x as u32, y as u32).0[0])
        };
        let run = |dx: i64, dy: i64| {
            let mut n = 0;
            while ink(x as i64 + dx * (n + 1), y as i64 + dy * (n + 1)) {
                n += 1;
            }
            n as u32
        };
        (1 + run(1, 0) + run(-1, 0), 1 + run(0, 1) + run(0, -1))
    }

    fn dark(v: u8) -> bool {
        v < 128
    }

    fn bright(v: u8) -> bool {
        v >= 128
    }

    // ------------------------------------------------------------ all rows

    #[test]
    fn every_row_is_deterministic() {
        for row in FieldRow::all() {
            for img in digits() {
                assert_eq!(row.render(&img, 7, 42), row.render(&img, 7, 42), "{row}");
            }
        }
    }

    #[test]
    fn seed_and_index_change_seeded_rows_only() {
        let img = ring();
        for row in FieldRow::all() {
            let base = row.render(&img, 3, 1);
            let other_seed = row.render(&img, 3, 2);
            let other_index = row.render(&img, 4, 1);
            if row.is_seeded() {
                assert_ne!(base, other_seed, "{row}: seed ignored");
                assert_ne!(base, other_index, "{row}: index ignored");
            } else {
                assert_eq!(
                    base, other_seed,
                    "{row}: a scan must depend on the digit only"
                );
                assert_eq!(
                    base, other_index,
                    "{row}: a scan must depend on the digit only"
                );
            }
        }
    }

    #[test]
    fn names_are_unique_stable_ids_and_descriptions_one_line() {
        let mut names: Vec<_> = FieldRow::all().iter().map(|r| r.name()).collect();
        for (row, name) in FieldRow::all().iter().zip(&names) {
            assert_eq!(FieldRow::from_name(name), Some(*row));
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            );
            let d = row.description();
            assert!(
                !d.is_empty() && !d.contains('\n') && !d.contains("  "),
                "{d:?}"
            );
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 8);
        assert_eq!(FieldRow::from_name("nope"), None);
    }

    #[test]
    fn render_is_render_gray_encoded() {
        for row in FieldRow::all() {
            let img = ring();
            let bytes = row.render(&img, 0, 9);
            assert_eq!(image::guess_format(&bytes).unwrap(), row.format(), "{row}");
            let raw = row.render_gray(&img, 0, 9);
            let back = decode(&bytes);
            assert_eq!(back.dimensions(), raw.dimensions(), "{row}");
            if row.format() == ImageFormat::Png {
                assert_eq!(back, raw, "{row}: PNG is lossless");
            }
        }
    }

    #[test]
    fn blank_digit_gives_a_blank_image_not_a_panic() {
        for row in FieldRow::all() {
            let out = decode(&row.render(&[0; MNIST_PIXELS], 0, 0));
            let (lo, hi) = out
                .pixels()
                .fold((255, 0), |(lo, hi), p| (p.0[0].min(lo), p.0[0].max(hi)));
            // Photo keeps its lit paper and noise; nothing else has any variation.
            if row != FieldRow::Photo {
                assert_eq!(lo, hi, "{row}");
            }
        }
    }

    // ------------------------------------------------------------ scans

    #[test]
    fn scan_8x8_uses_only_the_17_levels() {
        let levels: Vec<u8> = (0..=16)
            .map(|k| (k as f32 * 255.0 / 16.0).round() as u8)
            .collect();
        assert_eq!(levels, (0..=16).map(level17).collect::<Vec<_>>());
        for img in digits() {
            let out = FieldRow::Scan8x8Grey17.render_gray(&img, 0, 0);
            assert_eq!(out.dimensions(), (8, 8));
            assert!(out.pixels().all(|p| levels.contains(&p.0[0])));
            // Ink bright: the ring's corners are background.
            assert_eq!(out.get_pixel(0, 0).0[0], 0);
        }
    }

    #[test]
    fn scan_8x8_counts_ink_per_block() {
        // A 10x20 block becomes 16x32 at x 8..24: blocks 2..6 full, others empty.
        let out = FieldRow::Scan8x8Grey17.render_gray(&filled(9..19, 4..24), 0, 0);
        for (x, y, p) in out.enumerate_pixels() {
            let want = if (2..6).contains(&x) { 255 } else { 0 };
            assert_eq!(p.0[0], want, "block ({x}, {y})");
        }
        // The 3x20 bar becomes 5x32 (4.8 rounded) at x 13..18: block 3 holds
        // 3 columns (12 of 16 pixels), block 4 holds 2 (8 of 16).
        let out = FieldRow::Scan8x8Grey17.render_gray(&bar(), 0, 0);
        for (x, y, p) in out.enumerate_pixels() {
            let want = match x {
                3 => level17(12),
                4 => level17(8),
                _ => 0,
            };
            assert_eq!(p.0[0], want, "block ({x}, {y})");
        }
        assert_eq!((level17(12), level17(8)), (191, 128));
    }

    #[test]
    fn binary_scans_are_binary_and_sized() {
        for (row, side) in [
            (FieldRow::Scan16Binary, 16),
            (FieldRow::Scan32Binary, 32),
            (FieldRow::Stretched16Binary, 16),
        ] {
            for img in digits() {
                let out = row.render_gray(&img, 0, 0);
                assert_eq!(out.dimensions(), (side, side), "{row}");
                assert!(out.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255), "{row}");
                assert!(out.pixels().any(|p| p.0[0] == 255), "{row}: no ink");
            }
        }
    }

    #[test]
    fn grey_scan_is_16x16_grey_with_bright_ink() {
        let out = FieldRow::Scan16Grey.render_gray(&ring(), 0, 0);
        assert_eq!(out.dimensions(), (16, 16));
        assert!(
            out.pixels().any(|p| (30..225).contains(&p.0[0])),
            "no grey levels"
        );
        assert_eq!(out.get_pixel(0, 0).0[0], 0, "background is black");
        assert!(out.pixels().any(|p| p.0[0] > 200), "ink is bright");
    }

    #[test]
    fn stretched_ink_touches_all_four_sides() {
        // A bar whose box reaches up to a faint (~30%) pixel: the stretched
        // top row is well under half ink, and must still be kept.
        let mut faint_tip = filled(6..22, 20..23);
        faint_tip[8 * MNIST_SIDE + 6] = 80;
        for img in digits().into_iter().chain([faint_tip]) {
            let out = FieldRow::Stretched16Binary.render_gray(&img, 0, 0);
            assert_eq!(ink_box(&out, bright), (0, 0, 15, 15));
        }
        // The bar is 3 px wide: stretched, it fills the square.
        let out = FieldRow::Stretched16Binary.render_gray(&bar(), 0, 0);
        assert!(out.pixels().all(|p| p.0[0] == 255));
    }

    #[test]
    fn aspect_kept_scans_keep_a_bar_tall_thin_and_centred() {
        for (row, side, max_width) in [
            (FieldRow::Scan16Grey, 16, 3),
            (FieldRow::Scan16Binary, 16, 3),
            (FieldRow::Scan32Binary, 32, 5),
            (FieldRow::Scan8x8Grey17, 8, 2),
        ] {
            let out = row.render_gray(&bar(), 0, 0);
            let (x0, y0, x1, y1) = ink_box(&out, |v| v > 0);
            assert_eq!(
                (y0, y1),
                (0, side - 1),
                "{row}: the long side fills the grid"
            );
            assert!(x1 - x0 < max_width, "{row}: width {}", x1 - x0 + 1);
            let mid = f64::from(x0 + x1 + 1) / 2.0;
            assert!((mid - f64::from(side) / 2.0).abs() <= 1.0, "{row}: centred");
        }
        // The ring is round and stays round.
        let out = FieldRow::Scan32Binary.render_gray(&ring(), 0, 0);
        let (x0, y0, x1, y1) = ink_box(&out, bright);
        assert_eq!((x1 - x0, y1 - y0), (31, 31));
    }

    // ------------------------------------------------------------ pens

    #[test]
    fn zhang_suen_thins_a_thick_bar_to_a_line() {
        let (w, h) = (20, 40);
        let mut bin = vec![false; w * h];
        for y in 5..35 {
            for x in 6..15 {
                bin[y * w + x] = true;
            }
        }
        zhang_suen(&mut bin, w, h);
        let rows: Vec<usize> = (0..h)
            .map(|y| (0..w).filter(|&x| bin[y * w + x]).count())
            .collect();
        assert!(rows.iter().all(|&n| n <= 2), "{rows:?}");
        assert!(rows.iter().filter(|&&n| n > 0).count() >= 20, "{rows:?}");
    }

    #[test]
    fn thin_pen_strokes_are_thin() {
        for img in digits() {
            let solid = upsample_binary(&img, PAGE_SCALE)
                .iter()
                .filter(|&&b| b)
                .count();
            for seed in 0..6 {
                let out = FieldRow::ThinPen.render_gray(&img, 0, seed);
                assert_eq!(out.dimensions(), (280, 280));
                let mut area = 0;
                for (x, y, p) in out.enumerate_pixels() {
                    if dark(p.0[0]) {
                        area += 1;
                        let (h, v) = runs(&out, x, y, dark);
                        assert!(h.min(v) <= 3, "seed {seed}: stroke {h}x{v} at ({x}, {y})");
                    }
                }
                assert!(
                    area * 6 < solid,
                    "seed {seed}: ink {area} px vs solid {solid} px"
                );
            }
        }
    }

    #[test]
    fn thin_pen_keeps_a_ring_one_closed_loop() {
        // A 1 px antialiased line dips to half coverage where it passes
        // between pixel centres, so "drawn" here is any visible ink (a
        // quarter of full darkness); ink is 8-connected, paper 4-connected.
        let drawn = |v: u8| v < 192;
        for seed in 0..6 {
            let out = FieldRow::ThinPen.render_gray(&ring(), 0, seed);
            assert_eq!(
                components(&out, drawn, true),
                1,
                "seed {seed}: ink broke up"
            );
            // The paper: the outside and the hole.
            assert_eq!(
                components(&out, |v| !drawn(v), false),
                2,
                "seed {seed}: loop not closed"
            );
            let bar = FieldRow::ThinPen.render_gray(&bar(), 0, seed);
            assert_eq!(components(&bar, drawn, true), 1, "seed {seed}");
        }
    }

    #[test]
    fn pen_rows_draw_dark_ink_on_a_white_page() {
        for row in [FieldRow::ThinPen, FieldRow::ThickMarker] {
            let out = row.render_gray(&ring(), 0, 3);
            for i in 0..280 {
                for (x, y) in [(i, 0), (i, 279), (0, i), (279, i)] {
                    assert_eq!(out.get_pixel(x, y).0[0], 255, "{row}");
                }
            }
            assert!(out.pixels().any(|p| p.0[0] <= 40), "{row}");
        }
    }

    #[test]
    fn thick_marker_strokes_are_thick() {
        let mut widths = Vec::new();
        for seed in 0..8 {
            let out = FieldRow::ThickMarker.render_gray(&bar(), 0, seed);
            // The bar is 30 px wide on the page; the disc adds its radius
            // (8-12) on each side.
            let (w, _) = runs(&out, 140, 140, dark);
            assert!((30 + 16..=30 + 25).contains(&w), "seed {seed}: width {w}");
            widths.push(w);
        }
        assert!(
            widths.iter().any(|&w| w != widths[0]),
            "radius not seeded: {widths:?}"
        );
        // The ring's stroke (2.5 px, 25 on the page) thickens the same way.
        let out = FieldRow::ThickMarker.render_gray(&ring(), 0, 0);
        let (_, v) = runs(&out, 140, 70 - 5, dark);
        assert!(v >= 16 + 20, "ring stroke {v}");
    }

    #[test]
    fn upsampling_matches_bilinear_sampling() {
        for img in digits() {
            for scale in [THIN_SCALE, PAGE_SCALE] {
                let n = MNIST_SIDE * scale;
                let up = upsample_binary(&img, scale);
                let s = scale as f32;
                for (i, &got) in up.iter().enumerate() {
                    let (x, y) = ((i % n) as f32, (i / n) as f32);
                    let v = bilinear(&img, (x + 0.5) / s - 0.5, (y + 0.5) / s - 0.5);
                    // Rounding may differ exactly at the threshold.
                    if (v - HALF).abs() > 1e-4 {
                        assert_eq!(got, v >= HALF, "scale {scale}, pixel ({x}, {y}): {v}");
                    }
                }
            }
        }
    }

    #[test]
    fn distance_transform_is_exact() {
        let (w, h) = (23, 17);
        let ink: Vec<bool> = (0..w * h).map(|i| (i * 7919 + i / 3) % 31 == 0).collect();
        let mut d2: Vec<f64> = ink.iter().map(|&b| if b { 0.0 } else { FAR }).collect();
        squared_edt(&mut d2, w, h);
        for (i, &got) in d2.iter().enumerate() {
            let (x, y) = ((i % w) as f64, (i / w) as f64);
            let want = (0..w * h)
                .filter(|&j| ink[j])
                .map(|j| ((j % w) as f64 - x).powi(2) + ((j / w) as f64 - y).powi(2))
                .fold(f64::INFINITY, f64::min);
            assert_eq!(got, want, "pixel {i}");
        }
    }

    // ------------------------------------------------------------ photo

    fn mean(img: &GrayImage, x0: u32, y0: u32, side: u32) -> f64 {
        let mut sum = 0.0;
        for y in y0..y0 + side {
            for x in x0..x0 + side {
                sum += f64::from(img.get_pixel(x, y).0[0]);
            }
        }
        sum / f64::from(side * side)
    }

    #[test]
    fn photo_is_a_dark_on_light_jpeg_on_uneven_paper() {
        for seed in 0..4 {
            let bytes = FieldRow::Photo.render(&ring(), 0, seed);
            assert_eq!(image::guess_format(&bytes).unwrap(), ImageFormat::Jpeg);
            let out = decode(&bytes);
            assert_eq!(out.dimensions(), (640, 480));
            let corners =
                [(0, 0), (624, 0), (0, 464), (624, 464)].map(|(x, y)| mean(&out, x, y, 16));
            let (lo, hi) = corners
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &c| (lo.min(c), hi.max(c)));
            assert!(hi - lo > 30.0, "seed {seed}: corners {corners:?}");
            assert!(lo > 120.0, "seed {seed}: paper is light: {corners:?}");
            assert!(
                out.pixels().any(|p| p.0[0] < 90),
                "seed {seed}: ink is dark"
            );
        }
    }

    #[test]
    fn photo_places_the_digit_off_centre_by_seed() {
        let img = ring();
        let mut centres = Vec::new();
        for seed in 0..6 {
            let planned =
                PhotoLayout::draw(InkBox::of(&img, BOX_INK), &mut FieldRow::Photo.rng(0, seed));
            let out = decode(&FieldRow::Photo.render(&img, 0, seed));
            // The ring is symmetric, so its ink centroid is its box centre.
            let (mut n, mut sx, mut sy) = (0.0, 0.0, 0.0);
            for (x, y, p) in out.enumerate_pixels() {
                if p.0[0] < 100 {
                    (n, sx, sy) = (n + 1.0, sx + x as f32 + 0.5, sy + y as f32 + 0.5);
                }
            }
            let found = [sx / n, sy / n];
            let err = (found[0] - planned.centre[0]).hypot(found[1] - planned.centre[1]);
            assert!(
                err < 3.0,
                "seed {seed}: ink at {found:?}, planned {:?}",
                planned.centre
            );
            let off = (found[0] - 320.0).hypot(found[1] - 240.0);
            assert!(
                off > PHOTO_MIN_OFFSET - 3.0,
                "seed {seed}: {off} px from the centre"
            );
            centres.push(found);
        }
        for (i, a) in centres.iter().enumerate() {
            for b in &centres[i + 1..] {
                assert!((a[0] - b[0]).hypot(a[1] - b[1]) > 1.0, "{centres:?}");
            }
        }
    }

    #[test]
    fn photo_layout_is_always_off_centre_and_inside_the_frame() {
        let b = InkBox::of(&bar(), BOX_INK);
        let (bw, bh) = (3.0, 20.0);
        for seed in 0..500 {
            let l = PhotoLayout::draw(b, &mut FieldRow::Photo.rng(0, seed));
            let [cx, cy] = l.centre;
            assert!(
                (cx - 320.0).hypot(cy - 240.0) >= PHOTO_MIN_OFFSET,
                "seed {seed}: {l:?}"
            );
            let (hw, hh) = (bw * l.scale / 2.0, bh * l.scale / 2.0);
            assert!(
                cx - hw >= PHOTO_MARGIN && cx + hw <= 640.0 - PHOTO_MARGIN,
                "{l:?}"
            );
            assert!(
                cy - hh >= PHOTO_MARGIN && cy + hh <= 480.0 - PHOTO_MARGIN,
                "{l:?}"
            );
            assert!((80.0..=140.0).contains(&(bh * l.scale)), "{l:?}");
            assert!((30.0..=80.0).contains(&l.ink), "{l:?}");
        }
    }

    #[test]
    fn photo_digit_is_80_to_140_px_tall() {
        let mut heights = Vec::new();
        for seed in 0..8 {
            let out = FieldRow::Photo.render_gray(&bar(), 0, seed);
            let (_, y0, _, y1) = ink_box(&out, |v| v < 100);
            let h = y1 - y0 + 1;
            assert!((76..=144).contains(&h), "seed {seed}: {h} px");
            heights.push(h);
        }
        assert!(
            heights.iter().max().unwrap() - heights.iter().min().unwrap() > 10,
            "{heights:?}"
        );
    }
}
