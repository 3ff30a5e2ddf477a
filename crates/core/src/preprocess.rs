//! The one preprocessing function. The trainer's canvas evaluation and the
//! server both call it, so the image a model is judged on in the report is
//! built exactly the way a served request is.
//!
//! Any image becomes a 28x28 MNIST-format tensor the way MNIST itself was
//! made: ink bright on dark, cropped to the ink, the longer side scaled to
//! 20 px with antialiasing, then placed so its centre of mass sits at the
//! centre of the 28x28 field.

use std::io::Cursor;

use image::{ImageBuffer, ImageFormat, ImageReader, Luma, imageops};

/// Side of the model's input image.
pub const SIDE: usize = 28;
/// Number of pixels in the model's input image.
pub const PIXELS: usize = SIDE * SIDE;
/// MNIST fits each digit's longer side into this many pixels.
const BOX: f32 = 20.0;
/// Ink below this fraction of full contrast does not count towards the
/// bounding box, so paper grain and JPEG noise do not widen the crop.
const BBOX_THRESHOLD: f32 = 0.25;
/// Ink below this fraction is cleared to background.
const NOISE_FLOOR: f32 = 0.10;
/// A blob of ink smaller than this share of the largest blob is a speck
/// (sensor noise, a JPEG artefact, a shadow at a photo's edge), and does not
/// stretch the crop unless it lies next to the digit.
const SPECK_SHARE: f32 = 0.02;
/// How near the digit's box, as a share of its longer side, a speck still
/// counts as part of it (a broken-off stroke end).
const SPECK_REACH: f32 = 0.1;
/// Images whose ink and background differ by less than this (of 255) are
/// treated as blank.
const MIN_CONTRAST: f32 = 40.0;

/// The encoded formats we decode; the `image` crate is built with only these.
pub const ACCEPTED_FORMATS: &str = "PNG, JPEG, BMP, GIF, WebP or PNM (PBM/PGM/PPM/PAM)";

/// A 28x28 image in MNIST form, values in [0, 1], row-major.
pub type MnistImage = [f32; PIXELS];

/// Bounds on what a caller may make the server decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_image_bytes: usize,
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_image_bytes: 8 << 20,
            max_pixels: 16_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PreprocessError {
    #[error("image is empty (0 bytes); send the encoded bytes of a {ACCEPTED_FORMATS} file")]
    EmptyImage,
    #[error("image is {size} bytes, over the limit of {max} bytes")]
    TooManyBytes { size: usize, max: usize },
    #[error("image format not recognised; accepted formats: {ACCEPTED_FORMATS}")]
    UnknownFormat,
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {max} pixels")]
    TooManyPixels {
        width: u64,
        height: u64,
        pixels: u64,
        max: u64,
    },
    #[error("cannot decode the {format} image: {reason}")]
    Decode { format: String, reason: String },
    #[error("pixels must be at least 1x1, got {width}x{height}")]
    ZeroSize { width: u64, height: u64 },
    #[error(
        "pixels: width x height is {width}x{height} = {expected} but data has {got} bytes; send one byte per pixel, row-major"
    )]
    PixelCountMismatch {
        width: u64,
        height: u64,
        expected: u64,
        got: usize,
    },
    #[error("mnist input must be exactly {PIXELS} values (28x28, one per pixel), got {got}")]
    MnistSize { got: usize },
    #[error(
        "mnist floats must be exactly {} bytes (784 little-endian f32), got {got}",
        PIXELS * 4
    )]
    MnistFloatBytes { got: usize },
    #[error("pixel {index} is not a finite number; MNIST-form floats must be in [0, 1]")]
    NotFinite { index: usize },
    #[error(
        "pixel {index} is {value}; MNIST-form floats must be in [0, 1] (0 = background, 1 = ink)"
    )]
    OutOfRange { index: usize, value: f32 },
    #[error(
        "image is blank: no ink stands out from the background (contrast {contrast} of 255, at least {MIN_CONTRAST} needed); send an image with a visible digit"
    )]
    Blank { contrast: u32 },
}

/// Scales an image that is already in MNIST form to the model's [0, 1] range.
/// The trainer feeds MNIST through this, and the server's `mnist` input too.
pub fn normalize_mnist(bytes: &[u8]) -> Result<MnistImage, PreprocessError> {
    if bytes.len() != PIXELS {
        return Err(PreprocessError::MnistSize { got: bytes.len() });
    }
    let mut out = [0f32; PIXELS];
    for (o, &b) in out.iter_mut().zip(bytes) {
        *o = f32::from(b) / 255.0;
    }
    Ok(out)
}

/// 784 floats already in MNIST form, checked to be finite.
pub fn check_mnist_floats(values: &[f32]) -> Result<MnistImage, PreprocessError> {
    if values.len() != PIXELS {
        return Err(PreprocessError::MnistSize { got: values.len() });
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(PreprocessError::NotFinite { index: i });
    }
    // The model never saw anything outside [0, 1]; its answer there is noise.
    if let Some(i) = values.iter().position(|v| !(0.0..=1.0).contains(v)) {
        return Err(PreprocessError::OutOfRange {
            index: i,
            value: values[i],
        });
    }
    let mut out = [0f32; PIXELS];
    out.copy_from_slice(values);
    Ok(out)
}

/// 784 little-endian f32 (4 bytes each) already in MNIST form, checked like
/// `check_mnist_floats`; decoded straight from the request's buffer.
pub fn mnist_floats_le(bytes: &[u8]) -> Result<MnistImage, PreprocessError> {
    if bytes.len() != PIXELS * 4 {
        return Err(PreprocessError::MnistFloatBytes { got: bytes.len() });
    }
    let mut out = [0f32; PIXELS];
    for (i, (o, b)) in out.iter_mut().zip(bytes.chunks_exact(4)).enumerate() {
        let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if !v.is_finite() {
            return Err(PreprocessError::NotFinite { index: i });
        }
        if !(0.0..=1.0).contains(&v) {
            return Err(PreprocessError::OutOfRange { index: i, value: v });
        }
        *o = v;
    }
    Ok(out)
}

/// Encoded image bytes to MNIST form.
pub fn preprocess_encoded(bytes: &[u8], limits: &Limits) -> Result<MnistImage, PreprocessError> {
    let (w, h, gray) = decode_gray(bytes, limits)?;
    preprocess_gray(w as usize, h as usize, &gray)
}

/// Raw 8-bit grayscale pixels (either polarity) to MNIST form.
pub fn preprocess_pixels(
    width: u64,
    height: u64,
    data: &[u8],
    limits: &Limits,
) -> Result<MnistImage, PreprocessError> {
    if width == 0 || height == 0 {
        return Err(PreprocessError::ZeroSize { width, height });
    }
    let pixels = width.saturating_mul(height);
    if pixels > limits.max_pixels {
        return Err(PreprocessError::TooManyPixels {
            width,
            height,
            pixels,
            max: limits.max_pixels,
        });
    }
    if pixels != data.len() as u64 {
        return Err(PreprocessError::PixelCountMismatch {
            width,
            height,
            expected: pixels,
            got: data.len(),
        });
    }
    preprocess_gray(width as usize, height as usize, data)
}

fn format_name(f: ImageFormat) -> Option<&'static str> {
    Some(match f {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Gif => "GIF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Pnm => "PNM",
        _ => return None,
    })
}

/// Decodes to 8-bit gray with alpha composited onto white. The size is read
/// from the header and checked before any pixel is decoded, so a small file
/// that claims a huge image costs nothing.
pub fn decode_gray(bytes: &[u8], limits: &Limits) -> Result<(u32, u32, Vec<u8>), PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::EmptyImage);
    }
    if bytes.len() > limits.max_image_bytes {
        return Err(PreprocessError::TooManyBytes {
            size: bytes.len(),
            max: limits.max_image_bytes,
        });
    }
    let format = image::guess_format(bytes).map_err(|_| PreprocessError::UnknownFormat)?;
    let name = format_name(format).ok_or(PreprocessError::UnknownFormat)?;
    if format == ImageFormat::Jpeg {
        // Photos: luma only, scaled down as far as the digit can afford.
        return crate::jpeg::decode_jpeg_gray(bytes, crate::jpeg::MIN_SIDE, limits.max_pixels);
    }
    let decode_err = |e: image::ImageError| PreprocessError::Decode {
        format: name.to_string(),
        reason: e.to_string(),
    };
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(decode_err)?;
    let pixels = u64::from(w) * u64::from(h);
    if w == 0 || h == 0 {
        return Err(PreprocessError::ZeroSize {
            width: w.into(),
            height: h.into(),
        });
    }
    if pixels > limits.max_pixels {
        return Err(PreprocessError::TooManyPixels {
            width: w.into(),
            height: h.into(),
            pixels,
            max: limits.max_pixels,
        });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut lim = image::Limits::default();
    lim.max_image_width = Some(w);
    lim.max_image_height = Some(h);
    // Room for the decoded image at up to 16 bytes per pixel (RGBA f32) plus
    // decoder state; a lying header cannot make the decoder allocate more.
    lim.max_alloc = Some(pixels * 16 + (16 << 20));
    reader.limits(lim);
    let img = reader.decode().map_err(decode_err)?;
    let la = img.into_luma_alpha8();
    let (w, h) = la.dimensions();
    let gray = la
        .pixels()
        .map(|p| {
            let [l, a] = p.0;
            let a = u32::from(a);
            ((u32::from(l) * a + 255 * (255 - a) + 127) / 255) as u8
        })
        .collect();
    Ok((w, h, gray))
}

/// Steps 3-7 of the MNIST recipe on an 8-bit grayscale image of either
/// polarity, with what real inputs need beyond MNIST's own scans: uneven
/// lighting flattened, hairline strokes widened, small scans enlarged
/// without blur, faint ink stretched to full contrast.
pub fn preprocess_gray(w: usize, h: usize, gray: &[u8]) -> Result<MnistImage, PreprocessError> {
    assert_eq!(gray.len(), w * h, "gray buffer must be w*h");

    // Polarity: MNIST is bright ink on a dark background. Ink covers less
    // than half of almost any digit image, so the median pixel is
    // background: a bright median means dark ink on paper. (The border alone
    // misleads when a digit is stretched to touch every edge.)
    let (lo, hi) = gray
        .iter()
        .fold((255u8, 0u8), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let median = percentile(gray, 0.5);
    let invert = u32::from(median) * 2 > u32::from(lo) + u32::from(hi);
    let value: Vec<u8> = if invert {
        gray.iter().map(|&v| 255 - v).collect()
    } else {
        gray.to_vec()
    };

    // Ink above the background: the background is flattened tile by tile
    // when it varies (a photo's lighting), else one level for the image.
    let ink = flatten_background(w, h, &value);
    let contrast = ink.iter().fold(0.0f32, |m, &v| m.max(v));
    if contrast < MIN_CONTRAST {
        return Err(PreprocessError::Blank {
            contrast: contrast.max(0.0).round() as u32,
        });
    }
    let norm = |v: f32| -> f32 {
        let n = (v / contrast).clamp(0.0, 1.0);
        if n < NOISE_FLOOR { 0.0 } else { n }
    };

    // Crop to the ink's bounding box, specks far from the digit left out.
    let mask: Vec<bool> = ink.iter().map(|&v| norm(v) >= BBOX_THRESHOLD).collect();
    let [x0, y0, x1, y1] = ink_box(w, h, &mask);
    let (cw, ch) = (x1 - x0 + 1, y1 - y0 + 1);
    let scale = BOX / cw.max(ch) as f32;

    // Hairlines (a thin pen on a big canvas) would shrink to faint
    // sub-pixel traces: widen strokes thinner than MNIST's at this scale.
    let crop: Vec<f32> = (y0..=y1)
        .flat_map(|y| ink[y * w + x0..=y * w + x1].iter().map(|&v| norm(v)))
        .collect();
    let widen = widen_radius(cw, ch, &crop, scale);
    let (pw, ph) = (cw + 2 * widen, ch + 2 * widen);
    let mut padded = ImageBuffer::<Luma<f32>, Vec<f32>>::new(pw as u32, ph as u32);
    for y in 0..ch {
        for x in 0..cw {
            padded.put_pixel(
                (x + widen) as u32,
                (y + widen) as u32,
                Luma([crop[y * cw + x]]),
            );
        }
    }
    if widen > 0 {
        padded = max_filter(&padded, widen);
    }

    // Longer side to 20 px, aspect kept. Shrinking uses the triangle
    // filter, whose widened support is the antialiasing MNIST had;
    // enlarging a small scan uses Lanczos, which keeps its strokes sharp
    // where the triangle filter smears them into a blur.
    let scale = BOX / pw.max(ph) as f32;
    let nw = ((pw as f32 * scale).round() as u32).clamp(1, BOX as u32);
    let nh = ((ph as f32 * scale).round() as u32).clamp(1, BOX as u32);
    let filter = if scale > 1.0 {
        imageops::FilterType::Lanczos3
    } else {
        imageops::FilterType::Triangle
    };
    let mut small = imageops::resize(&padded, nw, nh, filter);
    // Faint ink (a thin or light stroke, shrunk) to full contrast, as
    // MNIST's strokes are.
    let peak = small.pixels().fold(0.0f32, |m, p| m.max(p.0[0]));
    if peak <= 0.0 {
        return Err(PreprocessError::Blank { contrast: 0 });
    }
    for p in small.pixels_mut() {
        p.0[0] = (p.0[0] / peak).clamp(0.0, 1.0);
    }

    // Centre of mass to the centre of the 28x28 field: array index 14.0,
    // 14.0, where MNIST puts it (measured on MNIST train: 14.006, 13.997).
    let (mut mass, mut mx, mut my) = (0f32, 0f32, 0f32);
    for (x, y, p) in small.enumerate_pixels() {
        let v = p.0[0];
        mass += v;
        mx += v * x as f32;
        my += v * y as f32;
    }
    let centre = SIDE as f32 / 2.0;
    let ox = (centre - mx / mass).round() as i64;
    let oy = (centre - my / mass).round() as i64;
    let mut out = [0f32; PIXELS];
    for (x, y, p) in small.enumerate_pixels() {
        let tx = x as i64 + ox;
        let ty = y as i64 + oy;
        if (0..SIDE as i64).contains(&tx) && (0..SIDE as i64).contains(&ty) {
            out[ty as usize * SIDE + tx as usize] = p.0[0];
        }
    }
    Ok(out)
}

/// The bounding box `[x0, y0, x1, y1]` (inclusive) of the digit in an ink
/// mask: the 8-connected blobs of at least [`SPECK_SHARE`] of the largest
/// one, and any smaller blob within [`SPECK_REACH`] of their box. A photo's
/// noise or a dark corner would otherwise stretch the crop across the frame
/// and leave the digit a few pixels wide in it. The mask has ink somewhere.
fn ink_box(w: usize, h: usize, mask: &[bool]) -> [usize; 4] {
    // Flood fill; each blob as (pixels, box).
    let mut seen = vec![false; mask.len()];
    let mut blobs: Vec<(usize, [usize; 4])> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut n, mut b) = (0, [usize::MAX, usize::MAX, 0, 0]);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            n += 1;
            b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
            for ny in y.saturating_sub(1)..(y + 2).min(h) {
                for nx in x.saturating_sub(1)..(x + 2).min(w) {
                    let j = ny * w + nx;
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        blobs.push((n, b));
    }
    let largest = blobs.iter().map(|b| b.0).max().unwrap_or(0);
    let union = |a: [usize; 4], b: [usize; 4]| {
        [
            a[0].min(b[0]),
            a[1].min(b[1]),
            a[2].max(b[2]),
            a[3].max(b[3]),
        ]
    };
    let mut bbox = blobs
        .iter()
        .filter(|b| b.0 as f32 >= SPECK_SHARE * largest as f32)
        .fold([usize::MAX, usize::MAX, 0, 0], |acc, b| union(acc, b.1));
    let reach = (SPECK_REACH * (bbox[2] - bbox[0]).max(bbox[3] - bbox[1]) as f32).ceil() as usize;
    let near = [
        bbox[0].saturating_sub(reach),
        bbox[1].saturating_sub(reach),
        bbox[2] + reach,
        bbox[3] + reach,
    ];
    for (n, b) in &blobs {
        let inside = b[0] >= near[0] && b[1] >= near[1] && b[2] <= near[2] && b[3] <= near[3];
        if (*n as f32) < SPECK_SHARE * largest as f32 && inside {
            bbox = union(bbox, *b);
        }
    }
    bbox
}

/// The `q`-quantile of 8-bit values, from a histogram.
fn percentile(values: &[u8], q: f32) -> u8 {
    let mut hist = [0usize; 256];
    for &v in values {
        hist[v as usize] += 1;
    }
    let target = ((values.len() as f32 * q) as usize).min(values.len().saturating_sub(1));
    let mut seen = 0;
    for (v, &n) in hist.iter().enumerate() {
        seen += n;
        if seen > target {
            return v as u8;
        }
    }
    255
}

/// Images at least this large on the shorter side get a background map.
const FLATTEN_MIN_SIDE: usize = 64;
/// Tiles per shorter side of the background map.
const FLATTEN_TILES: usize = 8;
/// A tile's background is this quantile of its pixels: ink is the bright
/// minority after the polarity flip.
const TILE_BACKGROUND_QUANTILE: f32 = 0.3;
/// Below this spread (of the ink's range) the background counts as even,
/// and one level serves the whole image.
const EVEN_BACKGROUND: f32 = 0.08;

/// Ink above the background, per pixel. A small or evenly lit image has one
/// background level (its 30% quantile). A larger one with uneven light (a
/// photo of paper: bright by the window, dark in the corner) gets a
/// background map: a quantile per tile, median-filtered over the tile grid
/// so a tile full of ink does not count, and interpolated bilinearly.
fn flatten_background(w: usize, h: usize, value: &[u8]) -> Vec<f32> {
    let global = f32::from(percentile(value, TILE_BACKGROUND_QUANTILE));
    let even = || {
        value
            .iter()
            .map(|&v| (f32::from(v) - global).max(0.0))
            .collect()
    };
    if w.min(h) < FLATTEN_MIN_SIDE {
        return even();
    }
    let t = (w.min(h) / FLATTEN_TILES).max(8);
    let (gx, gy) = (w.div_ceil(t), h.div_ceil(t));
    let mut tiles = vec![0f32; gx * gy];
    let mut buf = Vec::with_capacity(t * t);
    for ty in 0..gy {
        for tx in 0..gx {
            buf.clear();
            for y in ty * t..((ty + 1) * t).min(h) {
                buf.extend_from_slice(&value[y * w + tx * t..y * w + ((tx + 1) * t).min(w)]);
            }
            tiles[ty * gx + tx] = f32::from(percentile(&buf, TILE_BACKGROUND_QUANTILE));
        }
    }
    // 3x3 median over the grid.
    let mut smooth = vec![0f32; gx * gy];
    for ty in 0..gy {
        for tx in 0..gx {
            let mut n: Vec<f32> = (ty.saturating_sub(1)..(ty + 2).min(gy))
                .flat_map(|y| (tx.saturating_sub(1)..(tx + 2).min(gx)).map(move |x| (x, y)))
                .map(|(x, y)| tiles[y * gx + x])
                .collect();
            n.sort_by(f32::total_cmp);
            smooth[ty * gx + tx] = n[n.len() / 2];
        }
    }
    let (bmin, bmax) = smooth
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let range = value.iter().map(|&v| f32::from(v)).fold(0.0f32, f32::max) - bmin;
    if bmax - bmin <= EVEN_BACKGROUND * range {
        return even();
    }
    // Bilinear between tile centres, with each column's weights worked out
    // once rather than per pixel: the same arithmetic as [`bilinear`], and
    // a third of a large photo's preprocessing time before.
    let tile = |i: usize| (i as f32 + 0.5) / t as f32 - 0.5;
    let columns: Vec<(usize, usize, f32)> = (0..w).map(|x| axis(tile(x), gx)).collect();
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        let (y0, y1, ay) = axis(tile(y), gy);
        let (r0, r1) = (
            &smooth[y0 * gx..(y0 + 1) * gx],
            &smooth[y1 * gx..(y1 + 1) * gx],
        );
        for (&v, &(x0, x1, ax)) in value[y * w..(y + 1) * w].iter().zip(&columns) {
            let top = r0[x0] * (1.0 - ax) + r0[x1] * ax;
            let bottom = r1[x0] * (1.0 - ax) + r1[x1] * ax;
            let background = top * (1.0 - ay) + bottom * ay;
            out.push((f32::from(v) - background).max(0.0));
        }
    }
    out
}

/// A sample position along an axis of `n` pixels, clamped to its edge
/// pixels: (pixel before, pixel after, weight of the one after).
fn axis(f: f32, n: usize) -> (usize, usize, f32) {
    let f = f.clamp(0.0, (n - 1) as f32);
    let i = f.floor() as usize;
    (i, (i + 1).min(n - 1), f - i as f32)
}

/// `src` (`w x h`) sampled bilinearly at (x, y) in pixel-centre
/// coordinates, clamped to the edge pixels.
pub fn bilinear(src: &[f32], w: usize, h: usize, x: f32, y: f32) -> f32 {
    let ((x0, x1, ax), (y0, y1, ay)) = (axis(x, w), axis(y, h));
    let top = src[y0 * w + x0] * (1.0 - ax) + src[y0 * w + x1] * ax;
    let bottom = src[y1 * w + x0] * (1.0 - ax) + src[y1 * w + x1] * ax;
    top * (1.0 - ay) + bottom * ay
}

/// MNIST's strokes are about 2.3 px wide in the 20 px box.
const MNIST_STROKE: f32 = 2.3;
/// Strokes thinner than this share of MNIST's, after scaling, are widened.
const THIN_STROKE: f32 = 0.6;

/// The estimated stroke width of a `cw x ch` crop (values 0..1), in crop
/// pixels: 2 x area / boundary of the ink (a stroke of width w and length
/// L has area wL and boundary about 2L). None for a crop without ink.
fn stroke_width(cw: usize, ch: usize, crop: &[f32]) -> Option<f32> {
    let ink = |x: usize, y: usize| crop[y * cw + x] >= 0.5;
    let (mut area, mut boundary) = (0usize, 0usize);
    for y in 0..ch {
        for x in 0..cw {
            if !ink(x, y) {
                continue;
            }
            area += 1;
            let edge = x == 0
                || y == 0
                || x + 1 == cw
                || y + 1 == ch
                || !ink(x - 1, y)
                || !ink(x + 1, y)
                || !ink(x, y - 1)
                || !ink(x, y + 1);
            boundary += usize::from(edge);
        }
    }
    (boundary > 0).then(|| 2.0 * area as f32 / boundary as f32)
}

/// How far to widen the strokes of a crop so that, scaled by `scale`, they
/// come out about as wide as MNIST's: 0 for strokes that already do.
/// (Thinning marker strokes the same way was measured and did not help:
/// their loops are already filled.)
fn widen_radius(cw: usize, ch: usize, crop: &[f32], scale: f32) -> usize {
    match stroke_width(cw, ch, crop) {
        Some(width) if width * scale < THIN_STROKE * MNIST_STROKE => {
            ((MNIST_STROKE - width * scale) / 2.0 / scale)
                .round()
                .max(1.0) as usize
        }
        _ => 0,
    }
}

/// A separable square filter: `pick` over each (2r+1) window, rows then
/// columns; `init` is `pick`'s identity. `f32::max` dilates, `f32::min`
/// erodes (the trainer's stroke augmentation uses it too).
pub fn morph(
    src: &[f32],
    w: usize,
    h: usize,
    r: usize,
    pick: fn(f32, f32) -> f32,
    init: f32,
) -> Vec<f32> {
    let mut rows = vec![init; w * h];
    for y in 0..h {
        for x in 0..w {
            let (a, b) = (x.saturating_sub(r), (x + r + 1).min(w));
            rows[y * w + x] = src[y * w + a..y * w + b]
                .iter()
                .fold(init, |m, &v| pick(m, v));
        }
    }
    let mut out = vec![init; w * h];
    for y in 0..h {
        let (a, b) = (y.saturating_sub(r), (y + r + 1).min(h));
        for x in 0..w {
            out[y * w + x] = (a..b).fold(init, |m, yy| pick(m, rows[yy * w + x]));
        }
    }
    out
}

/// Grey dilation with a (2r+1) square.
fn max_filter(
    img: &ImageBuffer<Luma<f32>, Vec<f32>>,
    r: usize,
) -> ImageBuffer<Luma<f32>, Vec<f32>> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let out = morph(img.as_raw(), w, h, r, f32::max, 0.0);
    ImageBuffer::from_raw(w as u32, h as u32, out).expect("w*h values")
}

/// MNIST form back to bytes, for showing callers what the model saw.
pub fn to_bytes(img: &MnistImage) -> Vec<u8> {
    img.iter().map(|&v| (v * 255.0).round() as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Rgba, RgbaImage};

    /// A "1"-like vertical bar and a horizontal foot, drawn with `ink` on `bg`.
    fn digit_canvas(w: u32, h: u32, ink: u8, bg: u8) -> GrayImage {
        let mut img = GrayImage::from_pixel(w, h, Luma([bg]));
        let (cx, t) = (w / 2, (w / 20).max(2));
        for y in h / 5..h * 4 / 5 {
            for x in cx - t..cx + t {
                img.put_pixel(x, y, Luma([ink]));
            }
        }
        for y in h * 4 / 5 - 2 * t..h * 4 / 5 {
            for x in cx - 4 * t..cx + 4 * t {
                img.put_pixel(x, y, Luma([ink]));
            }
        }
        img
    }

    fn png(img: &GrayImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    fn bbox(img: &MnistImage) -> (usize, usize, usize, usize) {
        let (mut x0, mut y0, mut x1, mut y1) = (SIDE, SIDE, 0, 0);
        for y in 0..SIDE {
            for x in 0..SIDE {
                if img[y * SIDE + x] > 0.0 {
                    x0 = x0.min(x);
                    x1 = x1.max(x);
                    y0 = y0.min(y);
                    y1 = y1.max(y);
                }
            }
        }
        (x0, y0, x1, y1)
    }

    fn assert_mnist_like(img: &MnistImage) {
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
        let (x0, y0, x1, y1) = bbox(img);
        let (bw, bh) = (x1 - x0 + 1, y1 - y0 + 1);
        // The longer side is 20 px and nothing was clipped off (a clipped
        // digit's box would be shorter).
        assert!(
            bw.max(bh) >= 19 && bw.max(bh) <= 21,
            "box {bw}x{bh} at {x0},{y0}"
        );
        // The centre of mass at array index 14, 14, as in MNIST.
        let mass: f32 = img.iter().sum();
        let cx: f32 = (0..PIXELS).map(|i| img[i] * (i % SIDE) as f32).sum::<f32>() / mass;
        let cy: f32 = (0..PIXELS).map(|i| img[i] * (i / SIDE) as f32).sum::<f32>() / mass;
        assert!(
            (cx - 14.0).abs() <= 0.75 && (cy - 14.0).abs() <= 0.75,
            "com {cx},{cy}"
        );
    }

    #[test]
    fn dark_ink_on_light_and_light_on_dark_give_the_same_result() {
        let lim = Limits::default();
        let a = preprocess_encoded(&png(&digit_canvas(200, 200, 20, 240)), &lim).unwrap();
        let b = preprocess_encoded(&png(&digit_canvas(200, 200, 240, 20)), &lim).unwrap();
        assert_mnist_like(&a);
        let diff: f32 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "polarity changed the result by {diff}");
    }

    #[test]
    fn digit_touching_the_edge() {
        let mut img = GrayImage::from_pixel(100, 100, Luma([255]));
        for y in 0..100 {
            for x in 0..12 {
                img.put_pixel(x, y, Luma([0]));
            }
        }
        for x in 0..60 {
            for y in 0..10 {
                img.put_pixel(x, y, Luma([0]));
            }
        }
        let out = preprocess_encoded(&png(&img), &Limits::default()).unwrap();
        assert_mnist_like(&out);
    }

    #[test]
    fn blank_images_are_an_error_not_a_prediction() {
        for v in [0u8, 128, 255] {
            let img = GrayImage::from_pixel(64, 64, Luma([v]));
            let e = preprocess_encoded(&png(&img), &Limits::default()).unwrap_err();
            assert!(matches!(e, PreprocessError::Blank { .. }), "{e}");
            assert!(e.to_string().contains("blank"));
        }
    }

    #[test]
    fn one_by_one_image_is_blank() {
        for v in [0u8, 255] {
            let e = preprocess_pixels(1, 1, &[v], &Limits::default()).unwrap_err();
            assert!(matches!(e, PreprocessError::Blank { .. }), "{e}");
        }
    }

    #[test]
    fn large_canvas_4000x3000() {
        let img = digit_canvas(4000, 3000, 0, 255);
        let out = preprocess_pixels(4000, 3000, img.as_raw(), &Limits::default()).unwrap();
        assert_mnist_like(&out);
    }

    #[test]
    fn transparent_png_composites_onto_white() {
        // Black strokes on a fully transparent background, as canvases export.
        let mut img = RgbaImage::from_pixel(120, 120, Rgba([0, 0, 0, 0]));
        for y in 20..100 {
            for x in 55..65 {
                img.put_pixel(x, y, Rgba([0, 0, 0, 255]));
            }
        }
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        let out = preprocess_encoded(&bytes, &Limits::default()).unwrap();
        let (x0, y0, x1, y1) = bbox(&out);
        assert_eq!(y1 - y0 + 1, 20);
        assert!(x1 - x0 < 4, "a thin bar stays thin: {x0}..{x1}");
    }

    #[test]
    fn size_and_format_errors() {
        let lim = Limits {
            max_image_bytes: 100,
            max_pixels: 1000,
        };
        assert_eq!(
            preprocess_encoded(&[], &lim),
            Err(PreprocessError::EmptyImage)
        );
        assert!(matches!(
            preprocess_encoded(&[1u8; 101], &lim),
            Err(PreprocessError::TooManyBytes { .. })
        ));
        assert_eq!(
            preprocess_encoded(&[7u8; 50], &lim),
            Err(PreprocessError::UnknownFormat)
        );
        assert!(matches!(
            preprocess_pixels(10, 10, &[0; 99], &lim),
            Err(PreprocessError::PixelCountMismatch { .. })
        ));
        assert!(matches!(
            preprocess_pixels(100, 100, &[0; 10000], &lim),
            Err(PreprocessError::TooManyPixels { .. })
        ));
        assert!(matches!(
            normalize_mnist(&[0; 783]),
            Err(PreprocessError::MnistSize { got: 783 })
        ));
        assert!(matches!(
            mnist_floats_le(&[0; 783 * 4]),
            Err(PreprocessError::MnistFloatBytes { got: 3132 })
        ));
        let mut le: Vec<u8> = (0..PIXELS)
            .flat_map(|i| (i as f32 / PIXELS as f32).to_le_bytes())
            .collect();
        let img = mnist_floats_le(&le).unwrap();
        assert_eq!(img[392], 0.5);
        le[8..12].copy_from_slice(&1.5f32.to_le_bytes());
        assert!(matches!(
            mnist_floats_le(&le),
            Err(PreprocessError::OutOfRange { index: 2, .. })
        ));
    }

    #[test]
    fn truncated_png_is_a_decode_error() {
        let bytes = png(&digit_canvas(64, 64, 0, 255));
        let e = preprocess_encoded(&bytes[..bytes.len() / 2], &Limits::default()).unwrap_err();
        assert!(matches!(e, PreprocessError::Decode { .. }), "{e}");
        assert!(e.to_string().contains("PNG"));
    }

    /// The "1" of `digit_canvas` drawn with a pen of width `pen` on a
    /// `side` x `side` page.
    fn pen_one(side: u32, pen: u32) -> GrayImage {
        let mut img = GrayImage::from_pixel(side, side, Luma([255]));
        let cx = side / 2;
        for y in side / 5..side * 4 / 5 {
            for x in cx..cx + pen {
                img.put_pixel(x, y, Luma([0]));
            }
        }
        for x in cx - side / 8..cx + side / 8 {
            for y in side * 4 / 5 - pen..side * 4 / 5 {
                img.put_pixel(x, y, Luma([0]));
            }
        }
        img
    }

    fn ink_mass(img: &MnistImage) -> f32 {
        img.iter().sum()
    }

    #[test]
    fn a_hairline_comes_out_as_wide_and_bright_as_a_pen_stroke() {
        let lim = Limits::default();
        let hair = preprocess_encoded(&png(&pen_one(280, 1)), &lim).unwrap();
        let pen = preprocess_encoded(&png(&pen_one(280, 24)), &lim).unwrap();
        assert_mnist_like(&hair);
        // Full contrast, and not a faint trace: MNIST strokes are 2-3 px.
        assert!(hair.iter().cloned().fold(0.0, f32::max) >= 0.99);
        let (h, p) = (ink_mass(&hair), ink_mass(&pen));
        assert!(h > 0.5 * p, "hairline mass {h} against pen mass {p}");
    }

    #[test]
    fn uneven_light_is_flattened_before_the_crop() {
        // Dark ink on paper lit from the left: 235 at one side, 120 at the
        // other, so the dark side is darker than a faint ink would be.
        let mut img = pen_one(400, 14);
        for (x, _, p) in img.enumerate_pixels_mut() {
            let light = 235.0 - 115.0 * x as f32 / 400.0;
            p.0[0] = if p.0[0] == 0 { 40 } else { light as u8 };
        }
        let out = preprocess_encoded(&png(&img), &Limits::default()).unwrap();
        assert_mnist_like(&out);
        // The crop is the digit, not the dark side of the page: the
        // result matches the same digit on even paper.
        let even = preprocess_encoded(&png(&pen_one(400, 14)), &Limits::default()).unwrap();
        let diff: f32 = out.iter().zip(&even).map(|(a, b)| (a - b).abs()).sum();
        assert!(diff < 0.2 * ink_mass(&even), "differs by {diff}");
    }

    #[test]
    fn specks_far_from_the_digit_do_not_stretch_the_crop() {
        // A photo's noise: a few dark dots in the corners of the page, as
        // dark as the ink. The crop is still the digit alone.
        let clean = digit_canvas(400, 300, 30, 220);
        let mut specked = clean.clone();
        for (x, y) in [(5, 5), (6, 5), (390, 8), (10, 290), (395, 295), (394, 295)] {
            specked.put_pixel(x, y, Luma([30]));
        }
        let lim = Limits::default();
        let a = preprocess_encoded(&png(&clean), &lim).unwrap();
        let b = preprocess_encoded(&png(&specked), &lim).unwrap();
        assert_mnist_like(&b);
        assert_eq!(a, b);
    }

    #[test]
    fn a_small_piece_next_to_the_digit_stays_in_the_crop() {
        // A broken-off stroke end: a small blob just past the digit's box
        // (within SPECK_REACH of it) still belongs to the digit, and a
        // large blob anywhere does.
        fn fill(mask: &mut [bool], x0: usize, y0: usize, x1: usize, y1: usize) {
            for y in y0..=y1 {
                for x in x0..=x1 {
                    mask[y * 100 + x] = true;
                }
            }
        }
        let mut mask = vec![false; 100 * 100];
        fill(&mut mask, 40, 20, 45, 70); // the digit: 306 px, box 40..45 x 20..70
        fill(&mut mask, 47, 72, 47, 73); // 2 px, 2 px beyond its box: kept
        fill(&mut mask, 90, 90, 90, 90); // 1 px far away: a speck
        assert_eq!(ink_box(100, 100, &mask), [40, 20, 47, 73]);
        fill(&mut mask, 2, 2, 8, 8); // 49 px far away: too large to be a speck
        assert_eq!(ink_box(100, 100, &mask), [2, 2, 47, 73]);
    }

    #[test]
    fn the_background_map_is_bilinear_between_tile_centres() {
        // Uneven light, noise and a dark stroke on a frame that does not
        // divide into whole tiles: every pixel's background is exactly
        // `bilinear` over the tile grid, the edges clamped.
        let (w, h) = (203usize, 131usize);
        let mut seed = 7u32;
        let value: Vec<u8> = (0..w * h)
            .map(|i| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let (x, y) = (i % w, i / w);
                let light = 40.0 + 90.0 * x as f32 / w as f32 + 30.0 * y as f32 / h as f32;
                let ink = if (x as i32 - 100).abs() < 4 {
                    120.0
                } else {
                    0.0
                };
                (light + ink + (seed >> 28) as f32).min(255.0) as u8
            })
            .collect();
        let out = flatten_background(w, h, &value);
        // The grid as flatten_background builds it, then per pixel.
        let t = (w.min(h) / FLATTEN_TILES).max(8);
        let (gx, gy) = (w.div_ceil(t), h.div_ceil(t));
        let tiles: Vec<f32> = (0..gx * gy)
            .map(|k| {
                let (tx, ty) = (k % gx, k / gx);
                let buf: Vec<u8> = (ty * t..((ty + 1) * t).min(h))
                    .flat_map(|y| value[y * w + tx * t..y * w + ((tx + 1) * t).min(w)].to_vec())
                    .collect();
                f32::from(percentile(&buf, TILE_BACKGROUND_QUANTILE))
            })
            .collect();
        let smooth: Vec<f32> = (0..gx * gy)
            .map(|k| {
                let (tx, ty) = (k % gx, k / gx);
                let mut n: Vec<f32> = (ty.saturating_sub(1)..(ty + 2).min(gy))
                    .flat_map(|y| (tx.saturating_sub(1)..(tx + 2).min(gx)).map(move |x| (x, y)))
                    .map(|(x, y)| tiles[y * gx + x])
                    .collect();
                n.sort_by(f32::total_cmp);
                n[n.len() / 2]
            })
            .collect();
        assert!(
            smooth.iter().any(|&v| v != smooth[0]),
            "the light must be uneven"
        );
        for y in 0..h {
            for x in 0..w {
                let fx = (x as f32 + 0.5) / t as f32 - 0.5;
                let fy = (y as f32 + 0.5) / t as f32 - 0.5;
                let want =
                    (f32::from(value[y * w + x]) - bilinear(&smooth, gx, gy, fx, fy)).max(0.0);
                assert_eq!(out[y * w + x].to_bits(), want.to_bits(), "pixel {x},{y}");
            }
        }
    }

    #[test]
    fn a_tiny_scan_is_enlarged_sharply() {
        // An 8x8 "1": two columns of ink. Enlarged to 20 px with Lanczos it
        // keeps a solid core instead of a smear.
        let mut img = GrayImage::new(8, 8);
        for y in 1..7 {
            for x in 3..5 {
                img.put_pixel(x, y, Luma([255]));
            }
        }
        let out = preprocess_encoded(&png(&img), &Limits::default()).unwrap();
        let solid = out.iter().filter(|&&v| v > 0.9).count();
        assert!(solid >= 40, "only {solid} pixels near full ink");
    }

    #[test]
    fn a_digit_that_fills_its_box_keeps_its_polarity() {
        // White ink on black that touches all four edges, as a scan
        // stretched to its box does: the border is all ink.
        let mut img = GrayImage::new(16, 16);
        for i in 0..16 {
            for t in 0..2 {
                img.put_pixel(i, t, Luma([255]));
                img.put_pixel(i, 15 - t, Luma([255]));
                img.put_pixel(t, i, Luma([255]));
                img.put_pixel(15 - t, i, Luma([255]));
            }
        }
        let out = preprocess_encoded(&png(&img), &Limits::default()).unwrap();
        // A ring: ink on the outside, none in the middle.
        assert!(out[14 * SIDE + 14] < 0.1 && out[14 * SIDE + 5] > 0.5);
    }
}
