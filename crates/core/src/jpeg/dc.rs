//! The 1/8-scale luma plane of a baseline JPEG from its DC coefficients
//! alone.
//!
//! At scale 1/8 each output pixel is the mean of one 8x8 luma block, and
//! that mean is the block's DC coefficient: `DC * Q[0] / 8 + 128`, which is
//! also what libjpeg's 1/8 scaled IDCT computes. So for a 12 MP photo this
//! needs no IDCT, no chroma upsampling and no full-size luma buffer: only
//! the entropy decoding, which no decoder can skip because the bitstream
//! is sequential. Even there the AC coefficients' values are not needed,
//! only how many bits each takes, so one table lookup skips one or two AC
//! symbols, Huffman code and extra bits together.
//!
//! Handled: baseline and extended sequential Huffman frames (SOF0, SOF1)
//! with 8-bit samples, one component or three (YCbCr) in a single
//! interleaved scan, any sampling factors with luma at the maximum, 8- and
//! 16-bit quantisation tables, restart intervals. Anything else (progressive,
//! arithmetic coding, 12-bit, lossless, CMYK, RGB-coded colour, a baseline
//! file with one scan per component) is `Ok(None)`: the caller decodes it
//! the general way. Corrupt data is an error, as in the general path.
//!
//! Edge blocks differ slightly from a box average of the decoded pixels: a
//! block cut by the right or bottom edge still has 8x8 samples, the missing
//! ones made up by the encoder (libjpeg and the `image` crate repeat the
//! edge pixels), and its DC is their mean, where a box average takes the
//! mean of the pixels inside the image only. Clipping differs too: the
//! full decode clamps each pixel to 0..=255 before averaging, the DC path
//! clamps the mean. Elsewhere the two agree within a grey level or two
//! (IDCT rounding).

use crate::preprocess::PreprocessError;

/// DC codes up to this long are decoded by one lookup (DC tables have at
/// most 16 symbols, so their codes are short).
const DC_BITS: u32 = 9;
const DC_SIZE: usize = 1 << DC_BITS;

/// The AC skip table's index width: codes up to this long are skipped by
/// one lookup, two symbols at once when both fit. 2^11 entries of 4 bytes
/// keep two tables well inside L1; longer codes (rare) take `slow`.
const AC_BITS: u32 = 11;
const AC_SIZE: usize = 1 << AC_BITS;

/// The most blocks one MCU may hold (ITU-T T.81, B.2.3).
const MAX_BLOCKS_PER_MCU: usize = 10;

/// The dimensions and the DC plane, or `None` where this decoder does not
/// handle the file.
pub type DcPlane = Option<(u32, u32, Vec<u8>)>;

fn corrupt(reason: impl Into<String>) -> PreprocessError {
    PreprocessError::Decode {
        format: "JPEG".into(),
        reason: reason.into(),
    }
}

fn truncated() -> PreprocessError {
    corrupt("the entropy-coded data ends early (truncated or corrupt)")
}

/// `ceil(w/8) x ceil(h/8)` grey levels, each the DC coefficient of one luma
/// block: the mean of the block, as a 1/8 scaled decode gives it. The size
/// is checked against `max_pixels` before anything proportional to the
/// image is allocated.
pub fn decode_dc(bytes: &[u8], max_pixels: u64) -> Result<DcPlane, PreprocessError> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err(corrupt("no start-of-image marker"));
    }
    let mut hdr = Headers::default();
    let mut pos = 2;
    loop {
        // Markers start with 0xFF, and any number of 0xFF fill bytes may
        // come before one. Anything else between segments is not ours.
        if bytes.get(pos) != Some(&0xFF) {
            return if pos >= bytes.len() {
                Err(corrupt("the file ends before the image data"))
            } else {
                Ok(None)
            };
        }
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = bytes.get(pos) else {
            return Err(corrupt("the file ends before the image data"));
        };
        pos += 1;
        match marker {
            // Standalone markers have no length; a restart or another SOI
            // before the first scan is not a file this decoder knows.
            0x00 | 0x01 | 0xD0..=0xD8 => return Ok(None),
            0xD9 => return Err(corrupt("the file ends before the image data")),
            _ => {}
        }
        let len = match bytes.get(pos..pos + 2) {
            Some(&[a, b]) => usize::from(u16::from_be_bytes([a, b])),
            _ => return Err(corrupt("the file ends inside a marker segment")),
        };
        if len < 2 {
            return Err(corrupt(format!("marker 0xFF{marker:02X} has length {len}")));
        }
        let seg = bytes
            .get(pos + 2..pos + len)
            .ok_or_else(|| corrupt("the file ends inside a marker segment"))?;
        pos += len;
        match marker {
            0xC0 | 0xC1 => {
                if hdr.frame.is_some() {
                    return Err(corrupt("more than one frame header"));
                }
                match parse_frame(seg, max_pixels)? {
                    Some(frame) => hdr.frame = Some(frame),
                    None => return Ok(None),
                }
            }
            // Progressive, lossless, hierarchical, arithmetic-coded frames
            // and arithmetic conditioning tables.
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCF => return Ok(None),
            0xC4 => hdr.parse_dht(seg)?,
            0xDB => hdr.parse_dqt(seg)?,
            0xDD => match seg {
                &[a, b] => hdr.restart_interval = u16::from_be_bytes([a, b]),
                _ => return Err(corrupt("restart interval segment is not 2 bytes")),
            },
            0xEE if seg.starts_with(b"Adobe") && seg.len() >= 12 => {
                hdr.adobe_transform = Some(seg[11]);
            }
            0xDA => return hdr.decode_scan(seg, &bytes[pos..]),
            // APPn, COM and any other segment: not needed.
            _ => {}
        }
    }
}

#[derive(Clone, Copy)]
struct Component {
    id: u8,
    h: u8,
    v: u8,
    tq: u8,
}

struct Frame {
    width: u32,
    height: u32,
    comps: Vec<Component>,
}

/// What the segments before the scan said. Huffman tables are kept as
/// their DHT contents and given lookups only at the scan, for the ones it
/// uses: a file of many DHT segments then costs no more than its bytes.
#[derive(Default)]
struct Headers {
    frame: Option<Frame>,
    /// The first (DC) entry of each quantisation table.
    q0: [Option<u16>; 4],
    dc: [Option<Canonical>; 4],
    ac: [Option<Canonical>; 4],
    restart_interval: u16,
    adobe_transform: Option<u8>,
}

/// SOF0/SOF1. `None` for what this decoder leaves to the general one.
fn parse_frame(seg: &[u8], max_pixels: u64) -> Result<Option<Frame>, PreprocessError> {
    let &[precision, h1, h0, w1, w0, nf, ref rest @ ..] = seg else {
        return Err(corrupt("frame header too short"));
    };
    let nf = usize::from(nf);
    if rest.len() != 3 * nf {
        return Err(corrupt("frame header length does not match its components"));
    }
    let width = u32::from(u16::from_be_bytes([w1, w0]));
    let height = u32::from(u16::from_be_bytes([h1, h0]));
    if width == 0 || height == 0 {
        // A height of 0 means "given by a DNL marker later": not supported
        // by the general path either.
        return Err(PreprocessError::ZeroSize {
            width: width.into(),
            height: height.into(),
        });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(PreprocessError::TooManyPixels {
            width: width.into(),
            height: height.into(),
            pixels,
            max: max_pixels,
        });
    }
    if precision != 8 || !(nf == 1 || nf == 3) {
        return Ok(None);
    }
    let mut comps = Vec::with_capacity(nf);
    for c in rest.chunks_exact(3) {
        let (h, v, tq) = (c[1] >> 4, c[1] & 15, c[2]);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || tq > 3 {
            return Err(corrupt(
                "invalid sampling factor or table in the frame header",
            ));
        }
        if comps.iter().any(|p: &Component| p.id == c[0]) {
            return Err(corrupt("two frame components with the same id"));
        }
        comps.push(Component { id: c[0], h, v, tq });
    }
    Ok(Some(Frame {
        width,
        height,
        comps,
    }))
}

impl Headers {
    fn parse_dqt(&mut self, mut seg: &[u8]) -> Result<(), PreprocessError> {
        while let [pq_tq, rest @ ..] = seg {
            let (pq, tq) = (pq_tq >> 4, usize::from(pq_tq & 15));
            let n = match pq {
                0 => 64,
                1 => 128,
                _ => return Err(corrupt("quantisation table precision is not 8 or 16 bits")),
            };
            if tq > 3 || rest.len() < n {
                return Err(corrupt("invalid quantisation table"));
            }
            // Entry 0 is the DC one in zigzag order as in natural order.
            self.q0[tq] = Some(if pq == 0 {
                u16::from(rest[0])
            } else {
                u16::from_be_bytes([rest[0], rest[1]])
            });
            seg = &rest[n..];
        }
        Ok(())
    }

    fn parse_dht(&mut self, mut seg: &[u8]) -> Result<(), PreprocessError> {
        while let [tc_th, rest @ ..] = seg {
            let (tc, th) = (tc_th >> 4, usize::from(tc_th & 15));
            let Some((counts, rest)) = rest.split_first_chunk::<16>() else {
                return Err(corrupt("invalid Huffman table"));
            };
            if tc > 1 || th > 3 {
                return Err(corrupt("invalid Huffman table"));
            }
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            let values = rest
                .get(..total)
                .ok_or_else(|| corrupt("Huffman table longer than its segment"))?;
            let table = Canonical::new(counts, values, tc == 0)?;
            if tc == 0 {
                self.dc[th] = Some(table);
            } else {
                self.ac[th] = Some(table);
            }
            seg = &rest[total..];
        }
        Ok(())
    }

    /// The SOS segment and the entropy-coded data after it.
    fn decode_scan(&self, seg: &[u8], data: &[u8]) -> Result<DcPlane, PreprocessError> {
        let frame = self
            .frame
            .as_ref()
            .ok_or_else(|| corrupt("scan before the frame header"))?;
        let nf = frame.comps.len();
        let ids: Vec<u8> = frame.comps.iter().map(|c| c.id).collect();
        // RGB-coded colour has no luma plane: the general path converts it.
        if nf == 3 && (ids == b"RGB" || self.adobe_transform.is_some_and(|t| t != 1)) {
            return Ok(None);
        }
        let &[ns, ref rest @ ..] = seg else {
            return Err(corrupt("empty scan header"));
        };
        let ns = usize::from(ns);
        if rest.len() != 2 * ns + 3 {
            return Err(corrupt("scan header length does not match its components"));
        }
        let (sel, spectral) = rest.split_at(2 * ns);
        if spectral != [0, 63, 0] {
            return Ok(None);
        }
        // One scan per component (allowed in baseline, but not what
        // cameras write): left to the general path.
        if ns != nf {
            return Ok(None);
        }
        // (frame component, DC table id, AC table id), in scan order.
        let mut scan: Vec<(usize, usize, usize)> = Vec::with_capacity(ns);
        for s in sel.chunks_exact(2) {
            let fi = ids
                .iter()
                .position(|&id| id == s[0])
                .ok_or_else(|| corrupt("scan component not in the frame"))?;
            if scan.iter().any(|&(f, _, _)| f == fi) {
                return Err(corrupt("scan component listed twice"));
            }
            let (td, ta) = (usize::from(s[1] >> 4), usize::from(s[1] & 15));
            if self.dc.get(td).is_none_or(Option::is_none)
                || self.ac.get(ta).is_none_or(Option::is_none)
            {
                return Err(corrupt("scan uses an undefined Huffman table"));
            }
            scan.push((fi, td, ta));
        }
        let y = frame.comps[0];
        let q0 = self.q0[usize::from(y.tq)]
            .ok_or_else(|| corrupt("luma quantisation table not defined"))?;
        let hmax = frame.comps.iter().map(|c| c.h).max().unwrap_or(1);
        let vmax = frame.comps.iter().map(|c| c.v).max().unwrap_or(1);

        // MCU geometry in blocks, and each block's place among the MCU's
        // luma blocks (None for chroma). A single-component scan is not
        // interleaved: its MCU is one block whatever the sampling factors.
        let (ow, oh) = (frame.width.div_ceil(8), frame.height.div_ceil(8));
        let mut layout = Vec::new();
        let (mcu_w, mcu_h) = if ns == 1 {
            layout.push((0, Some((0, 0))));
            (1, 1)
        } else {
            // Luma below the maximum sampling would be a plane smaller
            // than the image.
            if (y.h, y.v) != (hmax, vmax) {
                return Ok(None);
            }
            for (si, &(fi, _, _)) in scan.iter().enumerate() {
                let c = frame.comps[fi];
                for by in 0..c.v {
                    for bx in 0..c.h {
                        layout.push((si, (fi == 0).then_some((u32::from(bx), u32::from(by)))));
                    }
                }
            }
            if layout.len() > MAX_BLOCKS_PER_MCU {
                return Ok(None);
            }
            (u32::from(hmax), u32::from(vmax))
        };
        let (mcus_x, mcus_y) = (ow.div_ceil(mcu_w), oh.div_ceil(mcu_h));

        // Lookups for the tables the scan uses, each built once.
        let mut dc_tables: [Option<DcTable>; 4] = Default::default();
        let mut ac_tables: [Option<AcTable>; 4] = Default::default();
        for &(_, td, ta) in &scan {
            if let (None, Some(spec)) = (&dc_tables[td], &self.dc[td]) {
                dc_tables[td] = Some(DcTable::new(spec));
            }
            if let (None, Some(spec)) = (&ac_tables[ta], &self.ac[ta]) {
                ac_tables[ta] = Some(AcTable::new(spec));
            }
        }
        let mut blocks = Vec::with_capacity(layout.len());
        for (si, luma) in layout {
            let (_, td, ta) = scan[si];
            let (Some(dc), Some(ac)) = (&dc_tables[td], &ac_tables[ta]) else {
                return Err(corrupt("scan uses an undefined Huffman table"));
            };
            blocks.push(Block { dc, ac, luma });
        }

        // The size was checked against max_pixels in parse_frame.
        let mut out = vec![0u8; ow as usize * oh as usize];
        let mut bits = Bits::new(data);
        let mut pred: i32 = 0;
        let mut todo = self.restart_interval;
        let mut next_rst = 0u8;
        for my in 0..mcus_y {
            for mx in 0..mcus_x {
                if self.restart_interval > 0 {
                    if todo == 0 {
                        bits.restart(next_rst)?;
                        next_rst = (next_rst + 1) & 7;
                        pred = 0;
                        todo = self.restart_interval;
                    }
                    todo -= 1;
                }
                for b in &blocks {
                    let Some((dx, dy)) = b.luma else {
                        b.dc.skip(&mut bits)?;
                        b.ac.skip(&mut bits)?;
                        continue;
                    };
                    // Deliberately wrapping: corrupt data may add up
                    // diffs without bound; the result is then garbage, not
                    // a panic.
                    pred = pred.wrapping_add(b.dc.diff(&mut bits)?);
                    b.ac.skip(&mut bits)?;
                    let (x, y) = (mx * mcu_w + dx, my * mcu_h + dy);
                    if x < ow
                        && y < oh
                        && let Some(o) = out.get_mut(y as usize * ow as usize + x as usize)
                    {
                        *o = level(pred, q0);
                    }
                }
            }
        }
        bits.check_not_overrun()?;
        Ok(Some((ow, oh, out)))
    }
}

/// One block of an MCU: its tables, and its place among the MCU's luma
/// blocks if it is a luma block.
struct Block<'t> {
    dc: &'t DcTable,
    ac: &'t AcTable,
    luma: Option<(u32, u32)>,
}

/// The block mean from the DC coefficient, `DC * Q0 / 8 + 128` rounded and
/// clamped, as libjpeg's 1/8 IDCT computes it. i64: no overflow for any
/// i32 coefficient.
fn level(dc: i32, q0: u16) -> u8 {
    (((i64::from(dc) * i64::from(q0) + 4) >> 3) + 128).clamp(0, 255) as u8
}

/// A Huffman table as DHT gives it, decoded code length by code length:
/// the reference the lookups are built from, and the fallback for codes
/// longer than they cover.
#[derive(Clone)]
struct Canonical {
    counts: [u8; 16],
    /// The largest code of each length (index = length), -1 for none.
    maxcode: [i32; 17],
    /// Added to a code of each length, its index in `values`.
    valoffset: [i32; 17],
    values: [u8; 256],
}

impl Canonical {
    /// Refuses a table whose codes overflow their lengths and DC symbols
    /// above 15, as libjpeg does.
    fn new(counts: &[u8; 16], values: &[u8], dc: bool) -> Result<Self, PreprocessError> {
        if values.len() > 256 {
            return Err(corrupt("Huffman table with more than 256 symbols"));
        }
        if dc && values.iter().any(|&s| s > 15) {
            return Err(corrupt("DC Huffman table with a size over 15"));
        }
        let mut t = Canonical {
            counts: *counts,
            maxcode: [-1; 17],
            valoffset: [0; 17],
            values: [0; 256],
        };
        t.values[..values.len()].copy_from_slice(values);
        let mut code: i32 = 0;
        let mut k: i32 = 0;
        for len in 1..=16 {
            let n = i32::from(counts[len - 1]);
            t.valoffset[len] = k - code;
            if n > 0 {
                code += n;
                k += n;
                t.maxcode[len] = code - 1;
                // The all-ones code of a length is reserved (T.81 C).
                if code >= 1 << len {
                    return Err(corrupt("Huffman table with too many codes"));
                }
            }
            code <<= 1;
        }
        Ok(t)
    }

    /// The first code in the top `width` bits of `window`: `(length,
    /// symbol)`, or `None` if no code that short matches.
    fn decode(&self, window: u32, width: u32) -> Option<(u32, u8)> {
        for len in 1..=width.min(16) {
            let code = (window >> (width - len)) as i32;
            if code <= self.maxcode[len as usize] {
                let i = usize::try_from(code + self.valoffset[len as usize]).ok()?;
                return self.values.get(i).map(|&s| (len, s));
            }
        }
        None
    }

    /// A code past the lookups: `(length, symbol)`, nothing consumed.
    #[cold]
    #[inline(never)]
    fn slow(&self, bits: &Bits) -> Result<(u32, u8), PreprocessError> {
        self.decode(bits.peek(16) as u32, 16)
            .ok_or_else(|| corrupt("invalid Huffman code"))
    }

    /// Every code up to `width` bits in `t`, a table indexed by the next
    /// `width` bits: `length | symbol << 8`, 0 where the code is longer.
    fn lookup(&self, width: u32, t: &mut [u16]) {
        let mut code: usize = 0;
        let mut k = 0;
        for len in 1..=width {
            let shift = width - len;
            for _ in 0..self.counts[len as usize - 1] {
                let e = len as u16 | u16::from(self.values[k & 255]) << 8;
                if let Some(span) = t.get_mut(code << shift..(code + 1) << shift) {
                    span.fill(e);
                }
                code += 1;
                k += 1;
            }
            code <<= 1;
        }
    }
}

/// A DC table: code length and size category by one lookup.
struct DcTable {
    /// Next DC_BITS bits: `length | size << 8`, 0 for a longer code.
    fast: [u16; DC_SIZE],
    canon: Canonical,
}

impl DcTable {
    fn new(spec: &Canonical) -> Self {
        let mut fast = [0; DC_SIZE];
        spec.lookup(DC_BITS, &mut fast);
        Self {
            fast,
            canon: spec.clone(),
        }
    }

    #[inline(always)]
    fn code(&self, bits: &Bits) -> Result<(u32, u32), PreprocessError> {
        match self.fast[bits.peek(DC_BITS) as usize] {
            0 => self.canon.slow(bits).map(|(len, s)| (len, u32::from(s))),
            e => Ok((u32::from(e & 0xFF), u32::from(e >> 8))),
        }
    }

    /// A luma DC difference.
    #[inline(always)]
    fn diff(&self, bits: &mut Bits) -> Result<i32, PreprocessError> {
        bits.ensure()?;
        let (len, size) = self.code(bits)?;
        bits.consume(len);
        if size == 0 {
            return Ok(0);
        }
        let v = bits.peek(size) as u32;
        bits.consume(size);
        Ok(extend(v, size))
    }

    /// A chroma DC difference, its value unused.
    #[inline(always)]
    fn skip(&self, bits: &mut Bits) -> Result<(), PreprocessError> {
        bits.ensure()?;
        let (len, size) = self.code(bits)?;
        bits.consume(len + size);
        Ok(())
    }
}

/// The extra bits of a coefficient of `size` bits as a signed value.
fn extend(v: u32, size: u32) -> i32 {
    if v < 1 << (size - 1) {
        v as i32 - (1 << size) + 1
    } else {
        v as i32
    }
}

/// An AC table for skipping: the values are not needed, only the bits each
/// symbol takes and how far it moves in the block.
struct AcTable {
    /// Next AC_BITS bits: one symbol, or two where both fit with their
    /// extra bits (the dependency chain of lookups is what limits the
    /// speed, so halving it counts). Packed as
    /// - bits 0..8: bits to consume for all of them,
    /// - bits 8..16: coefficients advanced, 64 where the block ends,
    /// - bits 16..24: bits to consume for the first alone,
    /// - bits 24..32: the first's advance, for a block that ends after it
    ///   (at coefficient 63 without an end-of-block code).
    ///
    /// 0 where the first code is longer than AC_BITS.
    skip: Box<[u32; AC_SIZE]>,
    canon: Canonical,
}

/// How far a symbol moves in the block: `run + 1`, 16 for ZRL (15 zeros
/// with size 0), 64 for end-of-block (any other size-0 symbol, as libjpeg
/// reads them). With its code and size: the bits it takes.
fn ac_step(len: u32, symbol: u8) -> (u32, u32) {
    let (run, size) = (u32::from(symbol >> 4), u32::from(symbol & 15));
    let advance = match (run, size) {
        (15, 0) => 16,
        (_, 0) => 64,
        _ => run + 1,
    };
    (len + size, advance)
}

impl AcTable {
    fn new(spec: &Canonical) -> Self {
        let mut single = vec![0; AC_SIZE];
        spec.lookup(AC_BITS, &mut single);
        let mut skip = Box::new([0; AC_SIZE]);
        for (i, (out, &e1)) in skip.iter_mut().zip(&single).enumerate() {
            if e1 == 0 {
                continue;
            }
            let (n1, a1) = ac_step(u32::from(e1 & 0xFF), (e1 >> 8) as u8);
            let (mut n, mut a) = (n1, a1);
            // A second symbol, if the first leaves room and does not
            // end the block, and the second fits whole in the rest.
            if a1 < 64 && n1 < AC_BITS {
                let e2 = single[(i << n1) & (AC_SIZE - 1)];
                if e2 != 0 {
                    let (n2, a2) = ac_step(u32::from(e2 & 0xFF), (e2 >> 8) as u8);
                    if n1 + n2 <= AC_BITS {
                        (n, a) = (n1 + n2, (a1 + a2).min(64));
                    }
                }
            }
            let first_advance = if a1 == 64 { 0 } else { a1 };
            *out = n | a << 8 | n1 << 16 | first_advance << 24;
        }
        Self {
            skip,
            canon: spec.clone(),
        }
    }

    /// The 63 AC coefficients of a block.
    #[inline(always)]
    fn skip(&self, bits: &mut Bits) -> Result<(), PreprocessError> {
        let mut k = 1;
        while k < 64 {
            bits.ensure()?;
            let e = match self.skip[bits.peek(AC_BITS) as usize] {
                0 => {
                    let (len, s) = self.canon.slow(bits)?;
                    let (n, a) = ac_step(len, s);
                    bits.consume(n);
                    k += a;
                    continue;
                }
                e => e,
            };
            // The block ends after the first symbol: the second is the
            // next block's.
            if k + (e >> 24) >= 64 {
                bits.consume(e >> 16 & 0xFF);
                break;
            }
            bits.consume(e & 0xFF);
            k += e >> 8 & 0xFF;
        }
        Ok(())
    }
}

/// The entropy-coded bits, most significant first, with byte stuffing
/// removed. Where the data ends (a marker or the end of the file) zero
/// bits follow, counted in `pad`, so that reading into them is caught
/// (`bits < pad`) rather than decoded.
struct Bits<'a> {
    data: &'a [u8],
    /// The next byte not yet in `buf`.
    pos: usize,
    /// Left-aligned: the next bit is bit 63.
    buf: u64,
    /// Valid bits at the top of `buf`, the padding zeros included.
    bits: u32,
    /// Padding zeros at the bottom of those.
    pad: u32,
    /// A marker (at `pos`) or the end of the file was reached.
    ended: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            buf: 0,
            bits: 0,
            pad: 0,
            ended: false,
        }
    }

    /// At least 32 bits buffered: enough for any code with its extra bits
    /// (16 + 15).
    #[inline(always)]
    fn ensure(&mut self) -> Result<(), PreprocessError> {
        if self.bits >= 32 {
            return Ok(());
        }
        // Eight bytes at once when none of them is 0xFF (no stuffing, no
        // marker): all whole bytes that fit are taken; the top bits of the
        // next one are ORed in too, harmlessly, as it is read again later
        // with the same value.
        if let Some(w) = self.data.get(self.pos..).and_then(|s| s.first_chunk::<8>()) {
            let w = u64::from_be_bytes(*w);
            let x = !w;
            let has_ff = x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080;
            if has_ff == 0 {
                self.buf |= w >> self.bits;
                self.pos += ((63 - self.bits) >> 3) as usize;
                self.bits |= 56;
                return Ok(());
            }
        }
        self.refill_slow()
    }

    /// Byte by byte, stuffing and markers handled; an error once the
    /// padding past the data has been read into.
    #[cold]
    #[inline(never)]
    fn refill_slow(&mut self) -> Result<(), PreprocessError> {
        self.check_not_overrun()?;
        while self.bits <= 56 {
            if !self.ended {
                match self.data.get(self.pos) {
                    None => self.ended = true,
                    Some(&0xFF) => {
                        // 0xFF 0x00 is a 0xFF data byte; further 0xFF are
                        // fill bytes before a marker, which ends the data.
                        let mut p = self.pos + 1;
                        while self.data.get(p) == Some(&0xFF) {
                            p += 1;
                        }
                        if self.data.get(p) == Some(&0) {
                            self.push(0xFF);
                            self.pos = p + 1;
                            continue;
                        }
                        self.ended = true;
                    }
                    Some(&b) => {
                        self.push(b);
                        self.pos += 1;
                        continue;
                    }
                }
            }
            self.bits += 8;
            self.pad += 8;
        }
        Ok(())
    }

    fn push(&mut self, b: u8) {
        self.buf |= u64::from(b) << (56 - self.bits);
        self.bits += 8;
    }

    fn check_not_overrun(&self) -> Result<(), PreprocessError> {
        if self.bits < self.pad {
            return Err(truncated());
        }
        Ok(())
    }

    /// The next `n` bits (1..=32), not consumed.
    #[inline(always)]
    fn peek(&self, n: u32) -> u64 {
        self.buf >> (64 - n)
    }

    /// `n` bits at most what `ensure` guaranteed.
    #[inline(always)]
    fn consume(&mut self, n: u32) {
        debug_assert!(n <= self.bits && n < 64);
        self.buf <<= n;
        self.bits -= n;
    }

    /// At a restart interval's end: the expected RSTn marker, then fresh
    /// data. Unused bytes before the marker are ignored (as libjpeg does,
    /// with a warning); a missing or misnumbered marker is an error.
    fn restart(&mut self, n: u8) -> Result<(), PreprocessError> {
        self.check_not_overrun()?;
        let d = self.data;
        let mut p = self.pos;
        loop {
            match d.get(p) {
                None => return Err(corrupt("restart marker missing")),
                Some(&0xFF) => {
                    while d.get(p) == Some(&0xFF) {
                        p += 1;
                    }
                    match d.get(p) {
                        Some(&0) => p += 1,
                        Some(&m) if m == 0xD0 + n => break,
                        _ => return Err(corrupt("restart marker missing")),
                    }
                }
                Some(_) => p += 1,
            }
        }
        *self = Self::new(d);
        self.pos = p + 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The `dc-*.jpg` files were written by libjpeg-turbo 2.1.5's cjpeg from
    //! a 203x157 photo made by `scripts/bench-photos.py`'s `photo()` (seed
    //! 203) with a black top-left corner and a white bottom-right patch
    //! added, so that some blocks clamp: `-quality 90 -sample 2x2 -restart
    //! 7B` (420-restart), `-quality 90 -sample 2x1 -optimize`
    //! (422-optimized), `-quality 85 -sample 1x2,1x1,1x1` (440), `-quality
    //! 85 -sample 4x1 -restart 1` (411-restart-rows), `-grayscale -quality
    //! 90 -sample 2x2 -restart 5B` (gray-sampled-restart), `-quality 85
    //! -rgb` (rgb-transform), `-quality 85 -scans` with one full-spectrum
    //! scan per component (multiscan), `-quality 75 -arithmetic`.
    use super::*;
    use crate::jpeg::{box_downscale, decode_jpeg_gray};
    use image::ExtendedColorType;
    use image::codecs::jpeg::JpegEncoder;

    macro_rules! data {
        ($name:literal) => {
            (
                $name,
                include_bytes!(concat!("../../../../tests/data/jpeg/", $name)).as_slice(),
            )
        };
    }

    /// Files this decoder handles.
    const HANDLED: [(&str, &[u8]); 7] = [
        data!("dc-420-restart.jpg"),
        data!("dc-422-optimized.jpg"),
        data!("dc-440.jpg"),
        data!("dc-411-restart-rows.jpg"),
        data!("dc-gray-sampled-restart.jpg"),
        data!("photo-rgb.jpg"),
        data!("photo-gray.jpg"),
    ];

    /// Files left to the general decoder.
    const NOT_HANDLED: [(&str, &[u8]); 5] = [
        data!("photo-progressive.jpg"),
        data!("photo-cmyk.jpg"),
        data!("dc-rgb-transform.jpg"),
        data!("dc-multiscan.jpg"),
        data!("dc-arithmetic.jpg"),
    ];

    /// A deterministic photo-like picture: a lit gradient, a dark stroke,
    /// noise, and saturated corners.
    fn picture(w: u32, h: u32, channels: usize) -> Vec<u8> {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut out = Vec::with_capacity(w as usize * h as usize * channels);
        for y in 0..h {
            for x in 0..w {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let noise = (seed % 21) as i32 - 10;
                let stroke = (x as i32 - 2 * y as i32 / 3 - w as i32 / 4).abs() < 4;
                let base = if x < 10 && y < 10 {
                    0
                } else if x + 12 >= w && y + 12 >= h {
                    255
                } else if stroke {
                    30 + noise
                } else {
                    150 + (60 * x / w.max(1)) as i32 + (30 * y / h.max(1)) as i32 + noise
                };
                for c in 0..channels {
                    out.push((base - 12 * c as i32).clamp(0, 255) as u8);
                }
            }
        }
        out
    }

    fn encode(w: u32, h: u32, colour: bool, quality: u8) -> Vec<u8> {
        let (channels, ty) = if colour {
            (3, ExtendedColorType::Rgb8)
        } else {
            (1, ExtendedColorType::L8)
        };
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, quality)
            .encode(&picture(w, h, channels), w, h, ty)
            .unwrap();
        out
    }

    /// The general path's answer at 1/8: full luma, box-averaged.
    fn reference(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let (w, h, full) = decode_jpeg_gray(bytes, u32::MAX, u64::MAX).unwrap();
        let (ow, oh, out) = box_downscale(w as usize, h as usize, &full, 8);
        (ow as u32, oh as u32, out)
    }

    /// The DC plane against the reference: small mean difference, and
    /// within 2 grey levels on inner blocks whose mean is not near a clamp.
    fn assert_matches_reference(name: &str, bytes: &[u8]) {
        let (w, h, dc) = decode_dc(bytes, u64::MAX)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: not handled"));
        let (rw, rh, reference) = reference(bytes);
        assert_eq!((w, h), (rw, rh), "{name}");
        let diffs: Vec<u32> = dc
            .iter()
            .zip(&reference)
            .map(|(&a, &b)| u32::from(a.abs_diff(b)))
            .collect();
        let mean = f64::from(diffs.iter().sum::<u32>()) / diffs.len() as f64;
        assert!(mean < 0.6, "{name}: mean difference {mean}");
        let (pw, ph) = (reference_size(bytes).0 % 8, reference_size(bytes).1 % 8);
        for (i, &d) in diffs.iter().enumerate() {
            let (x, y) = (i as u32 % w, i as u32 / w);
            let edge = (pw != 0 && x == w - 1) || (ph != 0 && y == h - 1);
            let clamped = !(8..=247).contains(&reference[i]);
            assert!(
                d <= 2 || edge || clamped,
                "{name}: block ({x}, {y}) differs by {d}: {} against {}",
                dc[i],
                reference[i]
            );
        }
    }

    fn reference_size(bytes: &[u8]) -> (u32, u32) {
        let (w, h, _) = decode_jpeg_gray(bytes, u32::MAX, u64::MAX).unwrap();
        (w, h)
    }

    /// The header segments up to and including SOS, as (marker, payload),
    /// given to `f` to change, then written back before the unchanged
    /// entropy-coded data.
    fn rewrite(bytes: &[u8], f: impl FnOnce(&mut Vec<(u8, Vec<u8>)>)) -> Vec<u8> {
        let mut segs = Vec::new();
        let mut pos = 2;
        loop {
            assert_eq!(bytes[pos], 0xFF);
            let m = bytes[pos + 1];
            let len = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
            segs.push((m, bytes[pos + 4..pos + 2 + len].to_vec()));
            pos += 2 + len;
            if m == 0xDA {
                break;
            }
        }
        f(&mut segs);
        let mut out = vec![0xFF, 0xD8];
        for (m, p) in segs {
            out.extend([0xFF, m]);
            out.extend(u16::try_from(p.len() + 2).unwrap().to_be_bytes());
            out.extend(p);
        }
        out.extend(&bytes[pos..]);
        out
    }

    #[test]
    fn the_dc_plane_is_the_block_mean_of_the_full_decode() {
        for (w, h) in [(203, 157), (64, 48), (1, 1), (9, 17), (250, 8), (33, 300)] {
            for colour in [false, true] {
                // The image crate writes greyscale and 4:4:4 colour. At
                // quality 100 blocks end at coefficient 63 with no EOB,
                // and long codes take the slow path.
                for quality in [90, 100] {
                    let bytes = encode(w, h, colour, quality);
                    let name = format!("{w}x{h} colour={colour} q{quality}");
                    assert_matches_reference(&name, &bytes);
                }
            }
        }
        for (name, bytes) in HANDLED {
            assert_matches_reference(name, bytes);
        }
    }

    #[test]
    fn the_dc_of_a_block_is_its_exact_mean() {
        // Flat blocks: every pixel is the mean, whatever the IDCT.
        let (w, h) = (40, 24);
        let flat: Vec<u8> = (0..w * h)
            .map(|i| (((i % w) / 8 * 40 + (i / w) / 8 * 10) % 256) as u8)
            .collect();
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 100)
            .encode(&flat, w as u32, h as u32, ExtendedColorType::L8)
            .unwrap();
        let (ow, oh, dc) = decode_dc(&bytes, u64::MAX).unwrap().unwrap();
        assert_eq!((ow, oh), (5, 3));
        let (_, _, expected) = box_downscale(w, h, &flat, 8);
        assert_eq!(dc, expected);
    }

    #[test]
    fn the_scaled_decode_takes_the_dc_path() {
        for (name, bytes) in HANDLED {
            // choose_denom(203, 157, 16) = 8.
            let got = decode_jpeg_gray(bytes, 16, u64::MAX).unwrap();
            let dc = decode_dc(bytes, u64::MAX).unwrap().unwrap();
            assert_eq!(got, dc, "{name}");
        }
        // A file it does not handle goes the general way.
        let (_, bytes) = NOT_HANDLED[0];
        assert_eq!(
            decode_jpeg_gray(bytes, 16, u64::MAX).unwrap(),
            reference(bytes)
        );
    }

    #[test]
    fn other_kinds_of_jpeg_are_left_to_the_general_decoder() {
        for (name, bytes) in NOT_HANDLED {
            assert_eq!(decode_dc(bytes, u64::MAX), Ok(None), "{name}");
        }
        // RGB-coded colour told by the Adobe marker alone, or by the
        // component ids alone.
        let adobe_only = rewrite(data!("dc-rgb-transform.jpg").1, |segs| {
            for (m, p) in segs.iter_mut() {
                if *m == 0xC0 {
                    (p[6], p[9], p[12]) = (1, 2, 3);
                }
                if *m == 0xDA {
                    (p[1], p[3], p[5]) = (1, 2, 3);
                }
            }
        });
        assert_eq!(decode_dc(&adobe_only, u64::MAX), Ok(None));
        let ids_only = rewrite(data!("dc-422-optimized.jpg").1, |segs| {
            for (m, p) in segs.iter_mut() {
                if *m == 0xC0 {
                    (p[6], p[9], p[12]) = (b'R', b'G', b'B');
                }
                if *m == 0xDA {
                    (p[1], p[3], p[5]) = (b'R', b'G', b'B');
                }
            }
        });
        assert_eq!(decode_dc(&ids_only, u64::MAX), Ok(None));
        // 12-bit samples.
        let twelve = rewrite(data!("dc-440.jpg").1, |segs| {
            segs.iter_mut().find(|s| s.0 == 0xC0).unwrap().1[0] = 12;
        });
        assert_eq!(decode_dc(&twelve, u64::MAX), Ok(None));
    }

    #[test]
    fn equivalent_headers_give_the_same_plane() {
        let (_, bytes) = HANDLED[0];
        let expected = decode_dc(bytes, u64::MAX).unwrap().unwrap();
        // 16-bit quantisation tables (with SOF1, as libjpeg writes them).
        let wide = rewrite(bytes, |segs| {
            for (m, p) in segs.iter_mut() {
                if *m == 0xDB {
                    let mut q = vec![0x10 | p[0]];
                    q.extend(p[1..].iter().flat_map(|&v| [0, v]));
                    *p = q;
                }
                if *m == 0xC0 {
                    *m = 0xC1;
                }
            }
        });
        assert_eq!(decode_dc(&wide, u64::MAX).unwrap().unwrap(), expected);
        // All Huffman and quantisation tables in one segment each, with a
        // comment and an APP segment between.
        let merged = rewrite(bytes, |segs| {
            let mut dht = Vec::new();
            let mut dqt = Vec::new();
            segs.retain(|(m, p)| match m {
                0xC4 => {
                    dht.extend(p);
                    false
                }
                0xDB => {
                    dqt.extend(p);
                    false
                }
                _ => true,
            });
            let at = segs.len() - 1;
            segs.insert(at, (0xDB, dqt));
            segs.insert(at, (0xFE, b"a comment".to_vec()));
            segs.insert(at, (0xC4, dht));
            segs.insert(at, (0xE5, vec![7; 40]));
        });
        assert_eq!(decode_dc(&merged, u64::MAX).unwrap().unwrap(), expected);
        // Fill bytes before every marker segment.
        let mut filled = vec![0xFF, 0xD8];
        let mut i = 2;
        while bytes[i] == 0xFF && bytes[i + 1] != 0xDA {
            let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
            filled.extend([0xFF, 0xFF, 0xFF]);
            filled.extend(&bytes[i..i + 2 + len]);
            i += 2 + len;
        }
        filled.extend([0xFF, 0xFF]);
        filled.extend(&bytes[i..]);
        assert_eq!(decode_dc(&filled, u64::MAX).unwrap().unwrap(), expected);
        // Fill bytes before the restart markers in the entropy-coded data.
        let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let mut filled = bytes[..sos + 2].to_vec();
        let mut rst = 0;
        for w in bytes[sos + 2..].windows(2) {
            if w[0] == 0xFF && (0xD0..=0xD7).contains(&w[1]) {
                filled.extend([0xFF, 0xFF]);
                rst += 1;
            }
            filled.push(w[0]);
        }
        filled.push(*bytes.last().unwrap());
        assert!(rst > 10);
        assert_eq!(decode_dc(&filled, u64::MAX).unwrap().unwrap(), expected);
    }

    #[test]
    fn sizes_are_checked_before_decoding() {
        let (_, bytes) = HANDLED[0];
        let e = decode_dc(bytes, 203 * 157 - 1).unwrap_err();
        assert!(
            matches!(e, PreprocessError::TooManyPixels { pixels: 31871, .. }),
            "{e}"
        );
        assert!(decode_dc(bytes, 203 * 157).unwrap().is_some());
        let zero = rewrite(bytes, |segs| {
            let sof = &mut segs.iter_mut().find(|s| s.0 == 0xC0).unwrap().1;
            (sof[3], sof[4]) = (0, 0);
        });
        let e = decode_dc(&zero, u64::MAX).unwrap_err();
        assert!(
            matches!(e, PreprocessError::ZeroSize { width: 0, .. }),
            "{e}"
        );
        // A tiny file claiming the largest frame fails on its data, fast.
        let huge = rewrite(bytes, |segs| {
            let sof = &mut segs.iter_mut().find(|s| s.0 == 0xC0).unwrap().1;
            sof[1..5].fill(0xFF);
        });
        let e = decode_dc(&huge, u64::MAX).unwrap_err();
        assert!(matches!(e, PreprocessError::Decode { .. }), "{e}");
    }

    #[test]
    fn corrupt_tables_and_markers_are_errors() {
        let (_, bytes) = HANDLED[0];
        let is_decode_error =
            |b: &[u8]| matches!(decode_dc(b, u64::MAX), Err(PreprocessError::Decode { .. }));
        // Too many codes for their lengths.
        let overfull = rewrite(bytes, |segs| {
            segs.iter_mut().find(|s| s.0 == 0xC4).unwrap().1[2] = 3;
        });
        assert!(is_decode_error(&overfull));
        // A scan naming a table that does not exist.
        let undefined = rewrite(bytes, |segs| {
            segs.last_mut().unwrap().1[2] = 0x33;
        });
        assert!(is_decode_error(&undefined));
        let bad_id = rewrite(bytes, |segs| {
            segs.iter_mut().find(|s| s.0 == 0xDB).unwrap().1[0] = 0x07;
        });
        assert!(is_decode_error(&bad_id));
        // A misnumbered restart marker.
        let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let rst = sos
            + bytes[sos..]
                .windows(2)
                .position(|w| w == [0xFF, 0xD0])
                .unwrap();
        let mut misnumbered = bytes.to_vec();
        misnumbered[rst + 1] = 0xD3;
        assert!(is_decode_error(&misnumbered));
        // Refused here, the file still gets the general decoder's verdict
        // (zune tolerates a misnumbered marker): the fast path never turns
        // a file that decodes into an error.
        let general = decode_jpeg_gray(&misnumbered, u32::MAX, u64::MAX).map(|(w, h, p)| {
            let (w, h, p) = box_downscale(w as usize, h as usize, &p, 8);
            (w as u32, h as u32, p)
        });
        assert_eq!(
            decode_jpeg_gray(&misnumbered, 16, u64::MAX).ok(),
            general.ok()
        );
        assert!(is_decode_error(b"not a jpeg"));
        assert!(is_decode_error(&[0xFF, 0xD8]));
    }

    #[test]
    fn truncated_and_flipped_files_never_panic() {
        for (name, bytes) in HANDLED.iter().chain(&NOT_HANDLED) {
            // Cut inside the entropy-coded data: an error.
            let e = decode_dc(&bytes[..bytes.len() * 2 / 3], u64::MAX);
            assert!(
                matches!(e, Err(PreprocessError::Decode { .. }) | Ok(None)),
                "{name}: {e:?}"
            );
            for cut in (0..bytes.len()).step_by(13) {
                let _ = decode_dc(&bytes[..cut], u64::MAX);
            }
            for at in (2..bytes.len()).step_by(7) {
                for flip in [0x01, 0x5a, 0xff] {
                    let mut b = bytes.to_vec();
                    b[at] ^= flip;
                    let _ = decode_dc(&b, 1 << 20);
                }
            }
        }
    }

    /// `cargo test --release -p mnister-core --lib -- --ignored --nocapture
    /// dc_against_zune` with MNISTER_DC_BENCH naming a JPEG (a 12 MP photo
    /// from `scripts/bench-photos.py`): medians of 9 interleaved runs of
    /// `decode_jpeg_gray` at 1/8 (the DC path), `decode_dc` alone, and the
    /// general path (full luma, then the box average).
    #[test]
    #[ignore]
    fn dc_against_zune() {
        let Ok(path) = std::env::var("MNISTER_DC_BENCH") else {
            return;
        };
        let bytes = std::fs::read(path).unwrap();
        type Decode<'a> = &'a dyn Fn() -> (u32, u32, Vec<u8>);
        let time = |f: Decode| {
            let t = std::time::Instant::now();
            let out = std::hint::black_box(f());
            (t.elapsed().as_secs_f64() * 1e3, out)
        };
        let paths: [(&str, Decode); 3] = [
            ("DC path", &|| {
                decode_jpeg_gray(&bytes, 256, u64::MAX).unwrap()
            }),
            ("decode_dc alone", &|| {
                decode_dc(&bytes, u64::MAX).unwrap().unwrap()
            }),
            ("zune path", &|| reference(&bytes)),
        ];
        let mut ms = [vec![], vec![], vec![]];
        let mut outs = vec![];
        for _ in 0..9 {
            outs.clear();
            for (i, (_, f)) in paths.iter().enumerate() {
                let (t, out) = time(*f);
                ms[i].push(t);
                outs.push(out);
            }
        }
        let (dc, zune) = (&outs[0], &outs[2]);
        assert_eq!((dc.0, dc.1), (zune.0, zune.1));
        let mean =
            dc.2.iter()
                .zip(&zune.2)
                .map(|(&x, &y)| f64::from(x.abs_diff(y)))
                .sum::<f64>()
                / dc.2.len() as f64;
        println!("{}x{} blocks, mean difference {mean:.3}", dc.0, dc.1);
        for ((name, _), t) in paths.iter().zip(&mut ms) {
            t.sort_by(f64::total_cmp);
            println!(
                "{name}: median {:.1} ms (min {:.1}, max {:.1})",
                t[4], t[0], t[8]
            );
        }
    }
}
