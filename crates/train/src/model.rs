//! The network, in burn. The reference architecture (587,402 parameters) is
//! the default; `bn` adds batch normalisation after each convolution, which
//! the exporter folds back into the convolutions, so the ONNX graph and the
//! served model have the reference's shape either way.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// Which network to build.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum Arch {
    /// The reference Keras network: 5 conv3x3 (64,64,64,64,128), 2 max-pools,
    /// dense 64, dense 10.
    Reference,
    /// The reference network with batch normalisation after each convolution
    /// (folded away at export).
    ReferenceBn,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Reference => "reference",
            Arch::ReferenceBn => "reference-bn",
        }
    }
}

/// A 3x3 "same" convolution, optional batch norm, ReLU.
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub conv: Conv2d,
    pub bn: Option<BatchNorm>,
}

impl ConvBlock {
    fn new(cin: usize, cout: usize, bn: bool, device: &Device) -> Self {
        ConvBlock {
            conv: Conv2dConfig::new([cin, cout], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device),
            bn: bn.then(|| BatchNormConfig::new(cout).init(device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.conv.forward(x);
        let x = match &self.bn {
            Some(bn) => bn.forward(x),
            None => x,
        };
        relu(x)
    }
}

#[derive(Module, Debug)]
pub struct Cnn {
    pub c1: ConvBlock,
    pub c2: ConvBlock,
    pub c3: ConvBlock,
    pub c4: ConvBlock,
    pub c5: ConvBlock,
    pub pool: MaxPool2d,
    pub drop1: Dropout,
    pub drop2: Dropout,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Cnn {
    pub fn new(arch: Arch, dropout: f64, device: &Device) -> Self {
        let bn = arch == Arch::ReferenceBn;
        Cnn {
            c1: ConvBlock::new(1, 64, bn, device),
            c2: ConvBlock::new(64, 64, bn, device),
            c3: ConvBlock::new(64, 64, bn, device),
            c4: ConvBlock::new(64, 64, bn, device),
            c5: ConvBlock::new(64, 128, bn, device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            drop1: DropoutConfig::new(dropout).init(),
            drop2: DropoutConfig::new(dropout).init(),
            fc1: LinearConfig::new(128 * 7 * 7, 64).init(device),
            fc2: LinearConfig::new(64, 10).init(device),
        }
    }

    /// Logits [N,10] for images [N,1,28,28]. Softmax is applied by the loss
    /// in training and by the exported graph in serving.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.c2.forward(self.c1.forward(x));
        let x = self.drop1.forward(self.pool.forward(x));
        let x = self.c4.forward(self.c3.forward(x));
        let x = self.drop2.forward(self.pool.forward(x));
        let x = self.c5.forward(x);
        let x: Tensor<2> = x.flatten(1, 3);
        let x = relu(self.fc1.forward(x));
        self.fc2.forward(x)
    }

    /// Parameters that inference uses (batch-norm running statistics and
    /// affine terms are folded into the convolutions at export).
    pub fn inference_params(&self) -> usize {
        let blocks = [&self.c1, &self.c2, &self.c3, &self.c4, &self.c5];
        let conv: usize = blocks.iter().map(|b| b.conv.num_params()).sum();
        conv + self.fc1.num_params() + self.fc2.num_params()
    }
}
