//! Activation statistics, measured by running the fp32 graph through ONNX
//! Runtime. Kept apart from the rewrite so that one calibration pass serves
//! every candidate range method: only [`Observed::range`] differs per method.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Result, anyhow};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use prost::Message;

use crate::graph::unshaped_value_info;
use crate::onnx::ModelProto;
use mnister_core::preprocess::MnistImage;

/// One way of turning observed activations into a range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    MinMax,
    /// Upper end at this percentile of the values (lower end at their min).
    Percentile(f64),
}

impl Method {
    pub fn name(&self) -> String {
        match self {
            Method::MinMax => "minmax".into(),
            Method::Percentile(p) => format!("percentile-{p}"),
        }
    }
}

/// Per-tensor statistics from calibration.
#[derive(Debug, Clone)]
pub struct Observed {
    pub min: f32,
    pub max: f32,
    /// Histogram of the values over [min, max].
    pub hist: Vec<u64>,
}

impl Observed {
    /// The range a method picks.
    pub fn range(&self, m: Method) -> (f32, f32) {
        match m {
            Method::MinMax => (self.min, self.max),
            Method::Percentile(p) => {
                let total: u64 = self.hist.iter().sum();
                let want = (total as f64 * p / 100.0).ceil() as u64;
                let mut seen = 0;
                let bins = self.hist.len();
                for (i, &c) in self.hist.iter().enumerate() {
                    seen += c;
                    if seen >= want {
                        let hi = self.min + (self.max - self.min) * (i + 1) as f32 / bins as f32;
                        return (self.min, hi.min(self.max));
                    }
                }
                (self.min, self.max)
            }
        }
    }
}

const HIST_BINS: usize = 4096;
const CALIBRATION_BATCH: usize = 100;

/// Runs `images` through the fp32 graph and records min, max and a
/// histogram of every tensor in `tensors`.
pub fn calibrate(
    env: &'static Environment,
    model: &ModelProto,
    tensors: &[String],
    images: &[MnistImage],
) -> Result<BTreeMap<String, Observed>> {
    let mut probe = model.clone();
    let g = probe
        .graph
        .as_mut()
        .ok_or_else(|| anyhow!("model has no graph"))?;
    let input = g.input[0].name.clone();
    let existing: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    for t in tensors {
        if !existing.contains(t) && *t != input {
            g.output.push(unshaped_value_info(t));
        }
    }
    let bytes = probe.encode_to_vec();
    let e = |e: String| anyhow!("calibration session: {e}");
    let mut session = Session::builder(env)
        .map_err(|x| e(x.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(|x| e(x.to_string()))?
        .with_intra_threads(2)
        .map_err(|x| e(x.to_string()))?
        .commit_from_memory(&bytes)
        .map_err(|x| e(x.to_string()))?;
    // Two passes: the range first, then a histogram over it.
    let mut obs: BTreeMap<String, Observed> = tensors
        .iter()
        .map(|t| {
            (
                t.clone(),
                Observed {
                    min: f32::INFINITY,
                    max: f32::NEG_INFINITY,
                    hist: vec![0; HIST_BINS],
                },
            )
        })
        .collect();
    for pass in 0..2 {
        for chunk in images.chunks(CALIBRATION_BATCH) {
            let flat: Vec<f32> = chunk.iter().flatten().copied().collect();
            let tensor = TensorRef::from_array_view(([chunk.len(), 1, 28, 28], &flat[..]))
                .map_err(|x| e(x.to_string()))?;
            let outputs = session
                .run(ort::inputs![input.as_str() => tensor])
                .map_err(|x| e(x.to_string()))?;
            for t in tensors {
                let values: &[f32] = if *t == input {
                    &flat
                } else {
                    outputs[t.as_str()]
                        .try_extract_tensor::<f32>()
                        .map_err(|x| e(x.to_string()))?
                        .1
                };
                let o = obs.get_mut(t).expect("every tensor has an entry");
                if pass == 0 {
                    for &v in values {
                        o.min = o.min.min(v);
                        o.max = o.max.max(v);
                    }
                } else {
                    let width = (o.max - o.min).max(f32::MIN_POSITIVE);
                    for &v in values {
                        let b = (((v - o.min) / width) * HIST_BINS as f32) as usize;
                        o.hist[b.min(HIST_BINS - 1)] += 1;
                    }
                }
            }
        }
    }
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_range_clips_the_tail() {
        let mut hist = vec![0u64; 100];
        hist[0] = 9_990;
        hist[99] = 10;
        let o = Observed {
            min: 0.0,
            max: 10.0,
            hist,
        };
        assert_eq!(o.range(Method::MinMax), (0.0, 10.0));
        let (_, hi) = o.range(Method::Percentile(99.9));
        assert!((hi - 0.1).abs() < 1e-6, "{hi}");
        assert_eq!(o.range(Method::Percentile(99.95)), (0.0, 10.0));
    }
}
