//! Reads an exported ONNX model's weights back into the network, so that a
//! served model can be fine-tuned without the checkpoint it came from. The
//! export folds batch norm into the convolutions, so the weights only fit
//! the network without it (`--arch reference`); the fine-tuned model exports
//! to the same graph.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{Param, RunningState};
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor, TensorData};
use prost::Message;

use crate::graph::floats;
use crate::model::{Cnn, ConvBlock};
use crate::onnx::{ModelProto, TensorProto};

struct Initializers<'a> {
    path: &'a Path,
    by_name: HashMap<&'a str, &'a TensorProto>,
}

impl Initializers<'_> {
    /// The float32 values of `name`, checked against the shape `want`.
    fn get(&self, name: &str, want: &[usize]) -> Result<Vec<f32>> {
        let t = self.by_name.get(name).with_context(|| {
            format!(
                "{} has no initializer {name}: only an fp32 model written by `mnister-train` can seed a run \
                 (an int8 model cannot)",
                self.path.display()
            )
        })?;
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        if dims != want {
            bail!(
                "{}: initializer {name} has shape {dims:?}, the network needs {want:?}",
                self.path.display()
            );
        }
        floats(t).with_context(|| format!("{}: reading {name}", self.path.display()))
    }
}

fn set_conv(conv: &mut Conv2d, init: &Initializers, i: usize, device: &Device) -> Result<()> {
    let dims = conv.weight.val().dims();
    let w = init.get(&format!("conv{i}.weight"), &dims)?;
    let b = init.get(&format!("conv{i}.bias"), &[dims[0]])?;
    conv.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, dims), device));
    conv.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(b, [dims[0]]),
        device,
    )));
    Ok(())
}

fn set_linear(l: &mut Linear, init: &Initializers, i: usize, device: &Device) -> Result<()> {
    // Both sides store [in, out] (the exported Gemm has transB = 0).
    let dims = l.weight.val().dims();
    let w = init.get(&format!("fc{i}.weight"), &dims)?;
    let b = init.get(&format!("fc{i}.bias"), &[dims[1]])?;
    l.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, dims), device));
    l.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(b, [dims[1]]),
        device,
    )));
    Ok(())
}

/// `model` with every weight replaced by the one in the ONNX file at `path`.
/// A temperature folded in at export stays in the last layer, so the loaded
/// network's logits are the served ones.
pub fn load_onnx(mut model: Cnn, path: &Path, device: &Device) -> Result<Cnn> {
    if model.c1.bn.is_some() {
        bail!(
            "an ONNX file has its batch norm folded into the convolutions, so it can only seed --arch reference"
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let proto = ModelProto::decode(&bytes[..])
        .with_context(|| format!("{} is not an ONNX model", path.display()))?;
    let graph = proto
        .graph
        .as_ref()
        .with_context(|| format!("{} has no graph", path.display()))?;
    let init = Initializers {
        path,
        by_name: graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect(),
    };
    let blocks: [&mut ConvBlock; 5] = [
        &mut model.c1,
        &mut model.c2,
        &mut model.c3,
        &mut model.c4,
        &mut model.c5,
    ];
    for (i, block) in blocks.into_iter().enumerate() {
        set_conv(&mut block.conv, &init, i + 1, device)?;
    }
    set_linear(&mut model.fc1, &init, 1, device)?;
    set_linear(&mut model.fc2, &init, 2, device)?;
    Ok(model)
}

fn mix_param<const D: usize>(a: &mut Param<Tensor<D>>, b: &Param<Tensor<D>>, alpha: f32) {
    let t = a
        .val()
        .mul_scalar(1.0 - alpha)
        .add(b.val().mul_scalar(alpha));
    *a = Param::from_tensor(t);
}

fn mix_running(
    a: &RunningState<Tensor<1>>,
    b: &RunningState<Tensor<1>>,
    alpha: f32,
) -> RunningState<Tensor<1>> {
    RunningState::new(
        a.value()
            .mul_scalar(1.0 - alpha)
            .add(b.value().mul_scalar(alpha)),
    )
}

/// `(1 - alpha) * start + alpha * tuned`, weight by weight: the
/// interpolation of a fine-tuned network with the one it started from
/// (WiSE-FT, Wortsman et al. 2022). Both sit in one basin, so the mix keeps
/// much of what the start knew and the fine-tune's narrower augmentation
/// made it forget, while keeping most of what the fine-tune added.
/// With batch norm, its scale, shift and running statistics mix the same
/// way: the ingredients then have to share an ancestor (epochs of one run,
/// or calm endings resumed from one checkpoint), as unrelated runs do not
/// sit in one basin.
pub fn interpolate(mut start: Cnn, tuned: &Cnn, alpha: f32) -> Result<Cnn> {
    if !(0.0..=1.0).contains(&alpha) {
        bail!("the mix weight must be in [0, 1], got {alpha}");
    }
    if start.c1.bn.is_some() != tuned.c1.bn.is_some() {
        bail!(
            "cannot mix a network with batch norm and one without: use ingredients of one --arch \
             (an exported .onnx has its batch norm folded away, so it mixes only with --arch reference)"
        );
    }
    let pairs = [
        (&mut start.c1, &tuned.c1),
        (&mut start.c2, &tuned.c2),
        (&mut start.c3, &tuned.c3),
        (&mut start.c4, &tuned.c4),
        (&mut start.c5, &tuned.c5),
    ];
    for (a, b) in pairs {
        mix_param(&mut a.conv.weight, &b.conv.weight, alpha);
        if let (Some(x), Some(y)) = (a.conv.bias.as_mut(), b.conv.bias.as_ref()) {
            mix_param(x, y, alpha);
        }
        if let (Some(x), Some(y)) = (a.bn.as_mut(), b.bn.as_ref()) {
            mix_param(&mut x.gamma, &y.gamma, alpha);
            mix_param(&mut x.beta, &y.beta, alpha);
            x.running_mean = mix_running(&x.running_mean, &y.running_mean, alpha);
            x.running_var = mix_running(&x.running_var, &y.running_var, alpha);
        }
    }
    for (a, b) in [(&mut start.fc1, &tuned.fc1), (&mut start.fc2, &tuned.fc2)] {
        mix_param(&mut a.weight, &b.weight, alpha);
        if let (Some(x), Some(y)) = (a.bias.as_mut(), b.bias.as_ref()) {
            mix_param(x, y, alpha);
        }
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use burn::module::Module;

    use super::*;
    use crate::export;
    use crate::fit::device;
    use crate::model::Arch;

    fn logits(model: &Cnn, device: &Device) -> Vec<f32> {
        let x: Vec<f32> = (0..2 * 784)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(x, [2, 1, 28, 28]), device);
        model
            .forward(x)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn an_exported_model_loads_back_to_the_same_network() {
        let dev = device();
        dev.seed(7);
        // Dropout 0 so that forward is deterministic on any device mode.
        let a = Cnn::new(Arch::Reference, 0.0, &dev);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), export::to_bytes(&a, &BTreeMap::new())).unwrap();
        dev.seed(8);
        let fresh = Cnn::new(Arch::Reference, 0.0, &dev);
        assert_ne!(logits(&fresh, &dev), logits(&a, &dev), "the seeds differ");
        let b = load_onnx(fresh, file.path(), &dev).unwrap();
        assert_eq!(logits(&b, &dev), logits(&a, &dev));
        // And it exports to the same bytes.
        assert_eq!(
            export::to_bytes(&b, &BTreeMap::new()),
            export::to_bytes(&a, &BTreeMap::new())
        );
    }

    #[test]
    fn batch_norm_networks_and_foreign_files_are_refused() {
        let dev = device();
        let file = tempfile::NamedTempFile::new().unwrap();
        let a = Cnn::new(Arch::Reference, 0.0, &dev);
        std::fs::write(file.path(), export::to_bytes(&a, &BTreeMap::new())).unwrap();
        let bn = Cnn::new(Arch::ReferenceBn, 0.0, &dev);
        let e = load_onnx(bn, file.path(), &dev).unwrap_err().to_string();
        assert!(e.contains("--arch reference"), "{e}");

        std::fs::write(file.path(), b"not a model").unwrap();
        let e = load_onnx(Cnn::new(Arch::Reference, 0.0, &dev), file.path(), &dev)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not an ONNX model") || e.contains("no graph"),
            "{e}"
        );

        // A graph without the expected weights (as an int8 model names them).
        let mut proto = export::to_onnx(&a, &BTreeMap::new());
        proto
            .graph
            .as_mut()
            .unwrap()
            .initializer
            .retain(|t| t.name != "fc2.weight");
        std::fs::write(file.path(), proto.encode_to_vec()).unwrap();
        let e = format!(
            "{:#}",
            load_onnx(Cnn::new(Arch::Reference, 0.0, &dev), file.path(), &dev).unwrap_err()
        );
        assert!(e.contains("fc2.weight"), "{e}");
    }

    #[test]
    fn interpolation_is_weight_by_weight() {
        let dev = device();
        dev.seed(1);
        let a = Cnn::new(Arch::Reference, 0.0, &dev);
        dev.seed(2);
        let b = Cnn::new(Arch::Reference, 0.0, &dev);
        let w = |m: &Cnn| -> Vec<f32> {
            m.fc2
                .weight
                .val()
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let (wa, wb) = (w(&a), w(&b));
        let at = |alpha: f32| w(&interpolate(a.clone(), &b, alpha).unwrap());
        assert_eq!(at(0.0), wa);
        assert_eq!(at(1.0), wb);
        for ((m, x), y) in at(0.25).iter().zip(&wa).zip(&wb) {
            assert!((m - (0.75 * x + 0.25 * y)).abs() < 1e-6);
        }
        // Every layer mixes, not only the last.
        let c = |m: &Cnn| {
            m.c3.conv
                .weight
                .val()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let mid = interpolate(a.clone(), &b, 0.5).unwrap();
        let (ca, cb, cm) = (c(&a), c(&b), c(&mid));
        assert!(
            cm.iter()
                .zip(ca.iter().zip(&cb))
                .all(|(m, (x, y))| (m - (x + y) / 2.0).abs() < 1e-6)
        );
        assert!(interpolate(a.clone(), &b, 1.5).is_err());
        let bn = Cnn::new(Arch::ReferenceBn, 0.0, &dev);
        let e = interpolate(bn, &b, 0.5).unwrap_err().to_string();
        assert!(e.contains("batch norm"), "{e}");
    }

    #[test]
    fn batch_norm_scales_and_running_statistics_mix_too() {
        let dev = device();
        let (a, b) = (trained_bn(&dev, 3), trained_bn(&dev, 4));
        let stats = |m: &Cnn| -> Vec<Vec<f32>> {
            let bn = m.c2.bn.as_ref().unwrap();
            [
                bn.gamma.val(),
                bn.beta.val(),
                bn.running_mean.value(),
                bn.running_var.value(),
            ]
            .into_iter()
            .map(|t| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
            .collect()
        };
        let (sa, sb) = (stats(&a), stats(&b));
        assert!(
            sa.iter().zip(&sb).all(|(x, y)| x != y),
            "each statistic differs between the ingredients"
        );
        let mid = stats(&interpolate(a.clone(), &b, 0.25).unwrap());
        for ((m, x), y) in mid.iter().zip(&sa).zip(&sb) {
            for ((m, x), y) in m.iter().zip(x).zip(y) {
                assert!((m - (0.75 * x + 0.25 * y)).abs() < 1e-5, "{m} {x} {y}");
            }
        }
        // The ends are the ingredients themselves, forward pass included.
        let end = interpolate(a.clone(), &b, 1.0).unwrap();
        let (lb, le) = (logits(&b.valid(), &dev), logits(&end.valid(), &dev));
        assert!(lb.iter().zip(&le).all(|(x, y)| (x - y).abs() < 1e-4));
    }

    /// A batch-norm network whose scale, shift and running statistics have
    /// moved from their initial values (one seed each).
    fn trained_bn(dev: &Device, seed: u64) -> Cnn {
        dev.seed(seed);
        let mut m = Cnn::new(Arch::ReferenceBn, 0.0, dev);
        let shift = seed as f32;
        for block in [&mut m.c1, &mut m.c2, &mut m.c3, &mut m.c4, &mut m.c5] {
            let bn = block.bn.as_mut().unwrap();
            let n = bn.gamma.val().dims()[0];
            let ramp = |k: f32| {
                Tensor::<1>::from_data(
                    TensorData::new((0..n).map(|i| k + i as f32 * 0.01).collect(), [n]),
                    dev,
                )
            };
            bn.gamma = Param::from_tensor(ramp(1.0 + shift * 0.1));
            bn.beta = Param::from_tensor(ramp(shift * -0.2));
            bn.running_mean = RunningState::new(ramp(shift * 0.3));
            bn.running_var = RunningState::new(ramp(1.0 + shift));
        }
        m
    }
}
