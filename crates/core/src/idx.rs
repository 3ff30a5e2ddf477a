//! Reader for the IDX files MNIST ships in (gzipped or plain).
//!
//! Every failure names the file and what was expected, because the usual
//! causes (a truncated download, images and labels from different sets) are
//! otherwise hard to tell apart.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Magic number of an unsigned-byte IDX file with three dimensions (images).
const MAGIC_IMAGES: u32 = 0x0000_0803;
/// Magic number of an unsigned-byte IDX file with one dimension (labels).
const MAGIC_LABELS: u32 = 0x0000_0801;

#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: not found (looked for {tried}); pass the folder that holds the MNIST IDX files with --data-dir or MNIST_DIR"
    )]
    Missing { path: PathBuf, tried: String },
    #[error("{path}: broken gzip stream ({source}); re-fetch the file")]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("{path}: images are {rows}x{cols}, expected 28x28 MNIST images")]
    NotMnist {
        path: PathBuf,
        rows: usize,
        cols: usize,
    },
    #[error(
        "{images} holds {n_images} images but {labels} holds {n_labels} labels; they must come from the same set"
    )]
    CountMismatch {
        images: PathBuf,
        labels: PathBuf,
        n_images: usize,
        n_labels: usize,
    },
}

/// What is wrong with the bytes of an IDX file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{got} bytes is too short for an IDX {kind} header ({need} bytes)")]
    TooShort {
        kind: &'static str,
        got: usize,
        need: usize,
    },
    #[error("wrong magic number 0x{found:08x}, expected 0x{expected:08x} for IDX {kind}{hint}")]
    WrongMagic {
        kind: &'static str,
        found: u32,
        expected: u32,
        /// Says so when the file is the other kind (labels for images).
        hint: &'static str,
    },
    #[error("image size {rows}x{cols} is empty")]
    EmptyImages { rows: usize, cols: usize },
    #[error("header claims {count} images of {rows}x{cols}, which overflows")]
    Overflow {
        count: usize,
        rows: usize,
        cols: usize,
    },
    #[error("header claims {count} {kind} ({expected} bytes) but the file has {got} bytes{}",
        if got < expected { "; it is truncated" } else { "" })]
    Length {
        kind: &'static str,
        count: usize,
        expected: usize,
        got: usize,
    },
    #[error("label {index} is {label}; digit labels must be 0-9")]
    BadLabel { index: usize, label: u8 },
}

/// A set of equally sized grayscale images, row-major, one byte per pixel.
#[derive(Debug, Clone)]
pub struct Images {
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
    /// sha256 of the uncompressed file, hex.
    pub sha256: String,
}

impl Images {
    pub fn len(&self) -> usize {
        self.pixels.len() / (self.rows * self.cols).max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// Labels, one byte each.
#[derive(Debug, Clone)]
pub struct Labels {
    pub labels: Vec<u8>,
    pub sha256: String,
}

/// Images with their labels, checked to agree.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub images: Images,
    pub labels: Vec<u8>,
    pub images_sha256: String,
    pub labels_sha256: String,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Which of MNIST's two sets to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Loads one of MNIST's sets from `dir`, accepting `name` or `name.gz`.
pub fn load_mnist(dir: &Path, split: Split) -> Result<Dataset, IdxError> {
    let images_path = find(dir, &format!("{}-images-idx3-ubyte", split.prefix()))?;
    let labels_path = find(dir, &format!("{}-labels-idx1-ubyte", split.prefix()))?;
    let images = read_images(&images_path)?;
    let labels = read_labels(&labels_path)?;
    if images.len() != labels.labels.len() {
        return Err(IdxError::CountMismatch {
            images: images_path,
            labels: labels_path,
            n_images: images.len(),
            n_labels: labels.labels.len(),
        });
    }
    if images.rows != 28 || images.cols != 28 {
        return Err(IdxError::NotMnist {
            path: images_path,
            rows: images.rows,
            cols: images.cols,
        });
    }
    Ok(Dataset {
        images_sha256: images.sha256.clone(),
        labels_sha256: labels.sha256,
        images,
        labels: labels.labels,
    })
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf, IdxError> {
    let candidates = [stem.to_string(), format!("{stem}.gz")];
    for c in &candidates {
        let p = dir.join(c);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(IdxError::Missing {
        path: dir.join(stem),
        tried: candidates.join(" or "),
    })
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, IdxError> {
    let io = |source| IdxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|source| IdxError::Gzip {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Parses an IDX image file (magic 0x00000803: ubyte, 3 dimensions).
pub fn read_images(path: &Path) -> Result<Images, IdxError> {
    let bytes = read_maybe_gz(path)?;
    parse_images(&bytes).map_err(|source| IdxError::Format {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses an IDX label file (magic 0x00000801: ubyte, 1 dimension).
pub fn read_labels(path: &Path) -> Result<Labels, IdxError> {
    let bytes = read_maybe_gz(path)?;
    parse_labels(&bytes).map_err(|source| IdxError::Format {
        path: path.to_path_buf(),
        source,
    })
}

pub fn parse_images(bytes: &[u8]) -> Result<Images, FormatError> {
    const KIND: &str = "images";
    if bytes.len() < 16 {
        return Err(FormatError::TooShort {
            kind: KIND,
            got: bytes.len(),
            need: 16,
        });
    }
    let magic = be_u32(bytes, 0);
    if magic != MAGIC_IMAGES {
        return Err(FormatError::WrongMagic {
            kind: KIND,
            found: magic,
            expected: MAGIC_IMAGES,
            hint: if magic == MAGIC_LABELS {
                " (this is a label file)"
            } else {
                ""
            },
        });
    }
    let count = be_u32(bytes, 4) as usize;
    let rows = be_u32(bytes, 8) as usize;
    let cols = be_u32(bytes, 12) as usize;
    if rows == 0 || cols == 0 {
        return Err(FormatError::EmptyImages { rows, cols });
    }
    let expected = count
        .checked_mul(rows * cols)
        .and_then(|p| p.checked_add(16))
        .ok_or(FormatError::Overflow { count, rows, cols })?;
    if bytes.len() != expected {
        return Err(FormatError::Length {
            kind: KIND,
            count,
            expected,
            got: bytes.len(),
        });
    }
    Ok(Images {
        rows,
        cols,
        pixels: bytes[16..].to_vec(),
        sha256: sha256_hex(bytes),
    })
}

pub fn parse_labels(bytes: &[u8]) -> Result<Labels, FormatError> {
    const KIND: &str = "labels";
    if bytes.len() < 8 {
        return Err(FormatError::TooShort {
            kind: KIND,
            got: bytes.len(),
            need: 8,
        });
    }
    let magic = be_u32(bytes, 0);
    if magic != MAGIC_LABELS {
        return Err(FormatError::WrongMagic {
            kind: KIND,
            found: magic,
            expected: MAGIC_LABELS,
            hint: if magic == MAGIC_IMAGES {
                " (this is an image file)"
            } else {
                ""
            },
        });
    }
    let count = be_u32(bytes, 4) as usize;
    if bytes.len() != count + 8 {
        return Err(FormatError::Length {
            kind: KIND,
            count,
            expected: count + 8,
            got: bytes.len(),
        });
    }
    let labels = bytes[8..].to_vec();
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, l)| **l > 9) {
        return Err(FormatError::BadLabel { index, label });
    }
    Ok(Labels {
        labels,
        sha256: sha256_hex(bytes),
    })
}

/// Encodes images as an IDX file; used by tests and by tools that write
/// MNIST-format data.
pub fn encode_images(rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    let n = pixels.len() / (rows * cols);
    let mut out = Vec::with_capacity(16 + pixels.len());
    for v in [MAGIC_IMAGES, n as u32, rows as u32, cols as u32] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// Encodes labels as an IDX file.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&MAGIC_LABELS.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn images(n: usize) -> Vec<u8> {
        encode_images(28, 28, &vec![7u8; n * 784])
    }

    #[test]
    fn reads_plain_and_gzipped_sets() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "t10k-images-idx3-ubyte", &images(3));
        write(
            d.path(),
            "t10k-labels-idx1-ubyte.gz",
            &gz(&encode_labels(&[1, 2, 3])),
        );
        let ds = load_mnist(d.path(), Split::Test).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.images.image(2).len(), 784);
        assert_eq!(ds.labels, vec![1, 2, 3]);
    }

    #[test]
    fn truncated_file_is_named_and_explained() {
        let d = tempfile::tempdir().unwrap();
        let mut b = images(3);
        b.truncate(b.len() - 100);
        write(d.path(), "x", &b);
        let e = read_images(&d.path().join("x")).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        assert!(e.contains("/x"), "{e}");
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let e = parse_images(&encode_labels(&[1; 20]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("wrong magic") && e.contains("label file"), "{e}");
        let e = parse_labels(&images(1)).unwrap_err().to_string();
        assert!(e.contains("wrong magic") && e.contains("image file"), "{e}");
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "train-images-idx3-ubyte", &images(3));
        write(d.path(), "train-labels-idx1-ubyte", &encode_labels(&[1, 2]));
        let e = load_mnist(d.path(), Split::Train).unwrap_err().to_string();
        assert!(e.contains("3 images") && e.contains("2 labels"), "{e}");
    }

    #[test]
    fn images_without_labels_say_which_file_is_missing() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "train-images-idx3-ubyte", &images(3));
        let e = load_mnist(d.path(), Split::Train).unwrap_err().to_string();
        assert!(e.contains("train-labels-idx1-ubyte"), "{e}");
        assert!(e.contains("--data-dir"), "{e}");
    }

    #[test]
    fn corrupt_gzip_and_bad_labels() {
        let d = tempfile::tempdir().unwrap();
        let mut b = gz(&images(2));
        let l = b.len();
        b.truncate(l / 2);
        write(d.path(), "a.gz", &b);
        let e = read_images(&d.path().join("a.gz")).unwrap_err().to_string();
        assert!(e.contains("gzip"), "{e}");
        let e = parse_labels(&encode_labels(&[1, 12])).unwrap_err();
        assert_eq!(
            e,
            FormatError::BadLabel {
                index: 1,
                label: 12
            }
        );
        assert!(e.to_string().contains("0-9"), "{e}");
        assert!(
            parse_images(&[0, 0, 8])
                .unwrap_err()
                .to_string()
                .contains("too short")
        );
    }
}
