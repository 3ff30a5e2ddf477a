//! JPEG straight to an 8-bit grey image, at a reduced scale.
//!
//! A phone photo is 12 MP; the digit in it ends up 20 px tall. Decoding it
//! to RGBA, then grey, then cropping spent 300 ms of server time, most of it
//! on pixels nobody needed. Entropy (Huffman) decoding is most of a JPEG's
//! cost and no decoder can skip it, so scaling in the DCT domain saves only
//! the IDCT and colour conversion. zune-jpeg decoding the luma plane alone
//! (chroma is entropy-decoded but never transformed, upsampled or
//! converted) beat a 1/8 DCT-scaled decode here, so this decodes Y and then
//! box-averages it down by the factor a scaled decode would use: the mean of
//! an 8x8 block is exactly what a 1/8 DCT decode computes.
//!
//! At 1/8 (12 MP photos) the block means are the luma DC coefficients, and
//! `dc` reads them without any IDCT or full-size buffer for the files it
//! handles (baseline YCbCr and greyscale, what cameras write).

pub mod dc;

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::preprocess::PreprocessError;

/// The scale denominators, largest first, as libjpeg offers them.
const DENOMS: [u32; 4] = [8, 4, 2, 1];

/// A photo is scaled down only as far as its shorter side stays this long:
/// a digit that fills a fifth of the frame still has 50 px, enough for the
/// 20 px MNIST box with antialiasing to spare.
pub const MIN_SIDE: u32 = 256;

/// The largest `d` in {8, 4, 2, 1} whose `ceil(w/d) x ceil(h/d)` keeps the
/// shorter side at least `min_side` (1 when even the full image is smaller).
pub fn choose_denom(w: u32, h: u32, min_side: u32) -> u32 {
    DENOMS
        .into_iter()
        .find(|&d| w.div_ceil(d).min(h.div_ceil(d)) >= min_side)
        .unwrap_or(1)
}

fn decode_error(e: impl std::fmt::Debug) -> PreprocessError {
    PreprocessError::Decode {
        format: "JPEG".into(),
        reason: format!("{e:?}"),
    }
}

/// JPEG bytes to (width, height, grey), scaled by the largest denominator
/// that keeps the shorter side at least `min_side`. The size comes from the
/// header and is checked against `max_pixels` before any pixel is decoded.
///
/// Grey is the JPEG's own luma (BT.601 Y) for greyscale and YCbCr files;
/// RGB, CMYK and YCCK files have no Y plane and are converted from RGB with
/// the same weights (that rare path holds a full-size RGB buffer). Corrupt
/// or truncated data is an error, never a grey-filled guess.
pub fn decode_jpeg_gray(
    bytes: &[u8],
    min_side: u32,
    max_pixels: u64,
) -> Result<(u32, u32, Vec<u8>), PreprocessError> {
    let opts = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(u16::MAX as usize)
        .set_max_height(u16::MAX as usize);
    let mut dec = JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
    dec.decode_headers().map_err(decode_error)?;
    let (w, h) = dec
        .dimensions()
        .ok_or_else(|| decode_error("the header has no frame"))?;
    let (w, h) = (w as u32, h as u32);
    if w == 0 || h == 0 {
        return Err(PreprocessError::ZeroSize {
            width: w.into(),
            height: h.into(),
        });
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(PreprocessError::TooManyPixels {
            width: w.into(),
            height: h.into(),
            pixels,
            max: max_pixels,
        });
    }
    let d = choose_denom(w, h, min_side);
    // Where the DC reader refuses a file (stricter than zune on restart
    // numbering and a few code-table corners), the general path decides:
    // a file that decodes is never lost to the fast path.
    if d == 8
        && let Ok(Some(out)) = dc::decode_dc(bytes, max_pixels)
    {
        return Ok(out);
    }
    let input = dec
        .input_colorspace()
        .ok_or_else(|| decode_error("the header has no colour space"))?;
    let luma = matches!(input, ColorSpace::Luma | ColorSpace::YCbCr);
    let out_cs = if luma {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    dec.set_options(dec.options().jpeg_set_out_colorspace(out_cs));
    let n = dec
        .output_buffer_size()
        .ok_or_else(|| decode_error("the header has no frame"))?;
    let expected = pixels as usize * out_cs.num_components();
    if n != expected {
        return Err(decode_error(format!(
            "unsupported layout: {input:?} decodes to {n} bytes, expected {expected}"
        )));
    }
    let mut buf = vec![0u8; n];
    dec.decode_into(&mut buf).map_err(decode_error)?;
    let full = if luma {
        buf
    } else {
        buf.chunks_exact(3)
            .map(|p| luma601(p[0], p[1], p[2]))
            .collect()
    };
    if d == 1 {
        return Ok((w, h, full));
    }
    let (ow, oh, out) = box_downscale(w as usize, h as usize, &full, d as usize);
    Ok((ow as u32, oh as u32, out))
}

/// BT.601 luma, JPEG's Y, of an RGB pixel.
fn luma601(r: u8, g: u8, b: u8) -> u8 {
    ((19595 * u32::from(r) + 38470 * u32::from(g) + 7471 * u32::from(b) + 32768) >> 16) as u8
}

/// The mean of each `d x d` block, `ceil(w/d) x ceil(h/d)` of them; blocks
/// at the right and bottom edges average the pixels they have. Rows are
/// summed into a u16 line first (at most 8 x 255), then columns by `d`.
pub fn box_downscale(w: usize, h: usize, src: &[u8], d: usize) -> (usize, usize, Vec<u8>) {
    assert!(src.len() == w * h && (1..=8).contains(&d));
    let (ow, oh) = (w.div_ceil(d), h.div_ceil(d));
    let mut out = Vec::with_capacity(ow * oh);
    let mut line = vec![0u16; w];
    let full_cols = w / d;
    for y0 in (0..h).step_by(d) {
        let rows = d.min(h - y0);
        line.fill(0);
        for row in src[y0 * w..(y0 + rows) * w].chunks_exact(w) {
            for (a, &v) in line.iter_mut().zip(row) {
                *a += u16::from(v);
            }
        }
        let n = (rows * d) as u32;
        out.extend(line.chunks_exact(d).map(|c| {
            let s: u32 = c.iter().map(|&v| u32::from(v)).sum();
            ((s + n / 2) / n) as u8
        }));
        if full_cols < ow {
            let tail = &line[full_cols * d..];
            let n = (rows * tail.len()) as u32;
            let s: u32 = tail.iter().map(|&v| u32::from(v)).sum();
            out.push(((s + n / 2) / n) as u8);
        }
    }
    (ow, oh, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::{ExtendedColorType, GrayImage, Luma};

    const RGB: &[u8] = include_bytes!("../../../tests/data/jpeg/photo-rgb.jpg");
    const GRAY: &[u8] = include_bytes!("../../../tests/data/jpeg/photo-gray.jpg");
    const PROGRESSIVE: &[u8] = include_bytes!("../../../tests/data/jpeg/photo-progressive.jpg");
    const CMYK: &[u8] = include_bytes!("../../../tests/data/jpeg/photo-cmyk.jpg");

    fn encode_gray(img: &GrayImage) -> Vec<u8> {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 95)
            .encode(
                img.as_raw(),
                img.width(),
                img.height(),
                ExtendedColorType::L8,
            )
            .unwrap();
        out
    }

    fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(&x, &y)| f64::from(x.abs_diff(y)))
            .sum::<f64>()
            / a.len() as f64
    }

    #[test]
    fn the_denominator_keeps_the_shorter_side() {
        assert_eq!(choose_denom(4000, 3000, 256), 8);
        assert_eq!(choose_denom(1920, 1080, 256), 4);
        assert_eq!(choose_denom(1280, 960, 256), 2);
        assert_eq!(choose_denom(640, 480, 256), 1);
        assert_eq!(choose_denom(100, 100, 256), 1);
        assert_eq!(choose_denom(4000, 3000, u32::MAX), 1);
    }

    #[test]
    fn a_scaled_decode_is_the_block_mean_of_the_full_decode() {
        // A smooth gradient with a dark bar, 2048x1100: decoded at 1/4.
        let img = GrayImage::from_fn(2048, 1100, |x, y| {
            let bar = (900..1100).contains(&x) && (200..900).contains(&y);
            Luma([if bar {
                20
            } else {
                (120 + x / 20 + y / 30) as u8
            }])
        });
        let bytes = encode_gray(&img);
        let (w, h, full) = decode_jpeg_gray(&bytes, u32::MAX, u64::MAX).unwrap();
        assert_eq!((w, h), (2048, 1100));
        let (sw, sh, scaled) = decode_jpeg_gray(&bytes, 256, u64::MAX).unwrap();
        assert_eq!((sw, sh), (512, 275));
        let (_, _, expected) = box_downscale(2048, 1100, &full, 4);
        assert!(mean_abs_diff(&scaled, &expected) < 0.01);
        // And it still shows the bar: dark at its centre, light beside it.
        assert!(scaled[(550 / 4) * 512 + 1000 / 4] < 40);
        assert!(scaled[(550 / 4) * 512 + 700 / 4] > 120);
    }

    #[test]
    fn colour_grey_progressive_and_cmyk_files_give_the_same_picture() {
        let (w, h, base) = decode_jpeg_gray(RGB, u32::MAX, u64::MAX).unwrap();
        assert_eq!((w, h), (200, 150));
        for (name, bytes) in [("gray", GRAY), ("progressive", PROGRESSIVE), ("cmyk", CMYK)] {
            let (w2, h2, other) = decode_jpeg_gray(bytes, u32::MAX, u64::MAX).unwrap();
            assert_eq!((w2, h2), (w, h), "{name}");
            let d = mean_abs_diff(&base, &other);
            assert!(d < 6.0, "{name}: mean difference {d}");
        }
    }

    #[test]
    fn too_many_pixels_is_refused_from_the_header() {
        let e = decode_jpeg_gray(RGB, u32::MAX, 200 * 150 - 1).unwrap_err();
        assert!(
            matches!(e, PreprocessError::TooManyPixels { pixels: 30000, .. }),
            "{e}"
        );
    }

    #[test]
    fn truncated_and_corrupt_files_are_errors_not_guesses() {
        for bytes in [RGB, PROGRESSIVE, CMYK] {
            let e = decode_jpeg_gray(&bytes[..bytes.len() / 2], u32::MAX, u64::MAX).unwrap_err();
            assert!(matches!(e, PreprocessError::Decode { .. }), "{e}");
        }
        // Flipped bytes anywhere: an answer or an error, never a panic.
        for at in (2..RGB.len()).step_by(97) {
            let mut b = RGB.to_vec();
            b[at] ^= 0x5a;
            let _ = decode_jpeg_gray(&b, u32::MAX, u64::MAX);
        }
    }

    #[test]
    fn box_downscale_averages_whole_and_edge_blocks() {
        // 5x3, d = 2: blocks 2x2, 2x2, 1x2 on the first row of blocks, then
        // 2x1, 2x1, 1x1.
        let src: Vec<u8> = (0..15).map(|v| v * 10).collect();
        let (w, h, out) = box_downscale(5, 3, &src, 2);
        assert_eq!((w, h), (3, 2));
        assert_eq!(out, vec![30, 50, 65, 105, 125, 140]);
    }
}
