//! `mnister-train dump-sets`: every set the report scores, as the model
//! sees it (28×28 float32 after the server's preprocessing), with its
//! labels, written as `.npy`. So that members, mixing rules and thresholds
//! can be studied in numpy on exactly the report's inputs, without
//! re-rendering the field rows or the non-digits in another language.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::data;
use crate::evaluate::{self, FieldInput};
use crate::nondigit::{self, NonDigit};
use crate::run::{self, FIELD_SEED};
use mnister_core::backend::{Backend, BackendError};
use mnister_core::idx::{Split, load_mnist};
use mnister_core::preprocess::{self, MnistImage, PIXELS};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "mnister-train dump-sets",
    about = "Writes the report's sets (validation with field renderings, MNIST test, every field row, the non-digits) as preprocessed .npy tensors"
)]
pub struct DumpArgs {
    /// Folder with the MNIST IDX files (plain or .gz). Never downloaded.
    #[arg(long, env = "MNIST_DIR", default_value = "data/mnist")]
    pub data_dir: PathBuf,

    /// Where to write the .npy files and manifest.json.
    #[arg(long)]
    pub out: PathBuf,

    /// The validation split's size and seed, as the training run's.
    #[arg(long, default_value_t = 12_000)]
    pub val_size: usize,
    #[arg(long, default_value_t = 42)]
    pub split_seed: u64,

    /// Only the first N test images (and their field renderings).
    #[arg(long)]
    pub test_limit: Option<usize>,
}

/// A backend that answers nothing and keeps what it was asked: the report's
/// own functions then render and preprocess every set, and this records
/// their inputs in order.
#[derive(Default)]
struct Recorder {
    inputs: Vec<f32>,
}

impl Backend for Recorder {
    fn infer(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, BackendError> {
        self.inputs.extend_from_slice(input);
        Ok(vec![0.1; n * 10])
    }
}

/// A minimal `.npy` (version 1.0) writer: little-endian, C order.
fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded to 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// One set: `{file}.x.npy` holds the images the preprocessing accepted,
/// `{file}.y.npy` every label, `{file}.kept.npy` which images were accepted.
fn write_set(out: &Path, file: &str, inputs: &[f32], labels: &[u8], kept: &[bool]) -> Result<()> {
    let n = inputs.len() / PIXELS;
    let x: Vec<u8> = inputs.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(
        &out.join(format!("{file}.x.npy")),
        "<f4",
        &[n, 1, 28, 28],
        &x,
    )?;
    write_npy(
        &out.join(format!("{file}.y.npy")),
        "|u1",
        &[labels.len()],
        labels,
    )?;
    let k: Vec<u8> = kept.iter().map(|&b| u8::from(b)).collect();
    write_npy(&out.join(format!("{file}.kept.npy")), "|u1", &[k.len()], &k)
}

/// Which rows of field-row probabilities are answers (not refused).
fn kept_rows(probs: &[f32]) -> Vec<bool> {
    probs.chunks_exact(10).map(|p| !p[0].is_nan()).collect()
}

pub fn run(args: &DumpArgs) -> Result<serde_json::Value> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let train = load_mnist(&args.data_dir, Split::Train)?;
    let test = load_mnist(&args.data_dir, Split::Test)?;
    let split = data::stratified_split(&train.labels, args.val_size, args.split_seed);
    let mut sets = Vec::new();

    let mut rec = Recorder::default();
    let (probs, labels, clean, per_form) = run::calibration_set(&mut rec, &train, &split.val)?;
    write_set(
        &args.out,
        "validation",
        &rec.inputs,
        &labels,
        &kept_rows(&probs),
    )?;
    let forms: Vec<&str> = crate::field::FieldRow::ALL
        .iter()
        .map(|r| r.name())
        .collect();
    sets.push(
        serde_json::json!({"file": "validation", "set": "validation (clean + field renderings)",
        "clean": clean, "per_form": per_form, "forms": forms}),
    );

    let n_test = args.test_limit.unwrap_or(test.len()).min(test.len());
    let test_images: Vec<MnistImage> = (0..n_test).map(|i| data::image(&test, i)).collect();
    let test_labels = &test.labels[..n_test];
    write_set(
        &args.out,
        "test",
        &test_images.concat(),
        test_labels,
        &vec![true; n_test],
    )?;
    sets.push(serde_json::json!({"file": "test", "set": "MNIST test"}));

    let digits: Vec<[u8; PIXELS]> = test_images
        .iter()
        .map(|img| preprocess::to_bytes(img).try_into().expect("784 values"))
        .collect();
    for (i, input) in FieldInput::all().into_iter().enumerate() {
        let mut rec = Recorder::default();
        let s = evaluate::field_row(&mut rec, input, &digits, test_labels, FIELD_SEED)?;
        let file = format!("field{i:02}");
        write_set(
            &args.out,
            &file,
            &rec.inputs,
            test_labels,
            &kept_rows(&s.probs),
        )?;
        sets.push(serde_json::json!({"file": file, "set": input.name()}));
    }

    let limits = preprocess::Limits::default();
    for (i, kind) in NonDigit::ALL.into_iter().enumerate() {
        let images = nondigit::render(kind, run::NONDIGIT_IMAGES, FIELD_SEED, &digits);
        let pre: Vec<Option<MnistImage>> = images
            .par_iter()
            .map(|b| preprocess::preprocess_encoded(b, &limits).ok())
            .collect();
        let kept: Vec<bool> = pre.iter().map(Option::is_some).collect();
        let x: Vec<f32> = pre
            .iter()
            .flatten()
            .flat_map(|m| m.iter().copied())
            .collect();
        let file = format!("nondigit{i}");
        write_set(&args.out, &file, &x, &vec![255; images.len()], &kept)?;
        sets.push(serde_json::json!({"file": file, "set": kind.name(), "nondigit": true}));
    }
    let manifest = serde_json::json!({ "split_seed": args.split_seed, "val_size": args.val_size, "test_images": n_test,
        "field_seed": FIELD_SEED, "sets": sets });
    std::fs::write(
        args.out.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_files_have_an_aligned_header_numpy_can_parse() {
        let dir = std::env::temp_dir().join(format!("mnister-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        write_npy(&path, "<f4", &[2], &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0, "numpy wants the data 64-byte aligned");
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }"));
        assert!(header.ends_with('\n'));
        assert_eq!(&bytes[10 + len..], &data[..]);
    }

    #[test]
    fn the_recorder_keeps_every_input_in_order() {
        let mut r = Recorder::default();
        let a = [0.25f32; PIXELS];
        let b = [0.5f32; PIXELS * 2];
        assert_eq!(r.infer(&a, 1).unwrap().len(), 10);
        assert_eq!(r.infer(&b, 2).unwrap().len(), 20);
        assert_eq!(r.inputs.len(), PIXELS * 3);
        assert_eq!(r.inputs[PIXELS - 1], 0.25);
        assert_eq!(r.inputs[PIXELS], 0.5);
    }
}
