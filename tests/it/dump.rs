//! `mnister-train dump-sets` on the committed sample: every set the report
//! scores, as `.npy` files numpy can read, holding the very tensors the
//! report feeds the model.

use std::path::Path;

use mnister_core::preprocess::normalize_mnist;
use mnister_train::dump::{DumpArgs, run};
use mnister_train::evaluate::FieldInput;
use mnister_train::nondigit::NonDigit;

use crate::common::{root, test_set};

/// (shape, data bytes) of a `.npy` file written by the dump.
fn npy(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    let shape = header.split("'shape': (").nth(1).unwrap();
    let shape: Vec<usize> = shape[..shape.find(')').unwrap()]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    (shape, bytes[10 + len..].to_vec())
}

#[test]
fn dump_sets_writes_the_reports_inputs_as_npy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sets");
    let manifest = run(&DumpArgs {
        data_dir: root().join("tests/data/mnist"),
        out: out.clone(),
        val_size: 300,
        split_seed: 42,
        test_limit: Some(40),
    })
    .unwrap();
    let sets = manifest["sets"].as_array().unwrap();
    assert_eq!(
        sets.len(),
        2 + FieldInput::all().len() + NonDigit::ALL.len()
    );
    for s in sets {
        let f = s["file"].as_str().unwrap();
        let (xs, x) = npy(&out.join(format!("{f}.x.npy")));
        let (ys, _) = npy(&out.join(format!("{f}.y.npy")));
        let (ks, k) = npy(&out.join(format!("{f}.kept.npy")));
        assert_eq!(ys, ks, "{f}");
        let kept = k.iter().filter(|&&b| b == 1).count();
        assert_eq!(
            xs,
            vec![kept, 1, 28, 28],
            "{f}: one tensor per accepted image"
        );
        assert_eq!(x.len(), kept * 784 * 4);
        if s.get("nondigit").is_some() {
            assert_eq!(ys, vec![1000], "{f}");
        } else if f != "validation" {
            assert_eq!(ys, vec![40], "{f}");
        }
    }

    // Validation: the clean digits, then every field form's renderings.
    let v = &sets[0];
    let (clean, per) = (
        v["clean"].as_u64().unwrap() as usize,
        v["per_form"].as_u64().unwrap() as usize,
    );
    let forms = v["forms"].as_array().unwrap().len();
    assert_eq!((forms, per > 0, clean <= 300), (8, true, true));
    assert_eq!(
        npy(&out.join("validation.y.npy")).0,
        vec![clean + forms * per]
    );

    // MNIST test as the model sees it: the normalised 28x28 digits.
    let (_, x) = npy(&out.join("test.x.npy"));
    let ds = test_set();
    for i in [0, 17, 39] {
        let want = normalize_mnist(ds.images.image(i)).unwrap();
        let got: Vec<f32> = x[i * 784 * 4..(i + 1) * 784 * 4]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(got, want.to_vec(), "test image {i}");
    }
    let (_, y) = npy(&out.join("test.y.npy"));
    assert_eq!(&y[..], &ds.labels[..40]);
}
