//! The stratified, seeded train/validation split and batch assembly.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use mnister_core::idx::Dataset;
use mnister_core::preprocess::{MnistImage, normalize_mnist};

/// Indices into MNIST's training set.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

/// Splits `labels` into train and validation with `val_size` validation
/// images, each class in proportion to its share (largest remainder), seeded.
pub fn stratified_split(labels: &[u8], val_size: usize, seed: u64) -> Split {
    let n = labels.len();
    let val_size = val_size.min(n);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); 10];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    // Largest-remainder apportionment of val_size over the classes.
    let exact: Vec<f64> = by_class
        .iter()
        .map(|c| c.len() as f64 * val_size as f64 / n.max(1) as f64)
        .collect();
    let mut quota: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..10).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let mut left = val_size - quota.iter().sum::<usize>();
    for &c in order.iter().cycle() {
        if left == 0 {
            break;
        }
        if quota[c] < by_class[c].len() {
            quota[c] += 1;
            left -= 1;
        }
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5_9117);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (c, idx) in by_class.iter_mut().enumerate() {
        idx.shuffle(&mut rng);
        val.extend_from_slice(&idx[..quota[c]]);
        train.extend_from_slice(&idx[quota[c]..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    Split { train, val }
}

/// A stratified subset of `indices` of about `limit` items (for smoke runs).
pub fn stratified_subset(indices: &[usize], labels: &[u8], limit: usize, seed: u64) -> Vec<usize> {
    if limit >= indices.len() {
        return indices.to_vec();
    }
    let sub_labels: Vec<u8> = indices.iter().map(|&i| labels[i]).collect();
    let keep = stratified_split(&sub_labels, limit, seed).val;
    keep.into_iter().map(|j| indices[j]).collect()
}

/// The MNIST image at `i` in the model's [0,1] form, via the shared
/// preprocessing entry point.
pub fn image(ds: &Dataset, i: usize) -> MnistImage {
    normalize_mnist(ds.images.image(i)).expect("MNIST images are 28x28")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_stratified_disjoint_and_seeded() {
        let labels: Vec<u8> = (0..1000).map(|i| (i % 10) as u8).collect();
        let a = stratified_split(&labels, 200, 7);
        let b = stratified_split(&labels, 200, 7);
        let c = stratified_split(&labels, 200, 8);
        assert_eq!(a.val, b.val);
        assert_ne!(a.val, c.val);
        assert_eq!(a.val.len(), 200);
        assert_eq!(a.train.len(), 800);
        for d in 0..10u8 {
            assert_eq!(a.val.iter().filter(|&&i| labels[i] == d).count(), 20);
        }
        let mut all = [a.train.clone(), a.val.clone()].concat();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }
}
