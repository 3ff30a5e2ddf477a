//! The trainer's flags. Every flag has an env var too, and every value ends
//! up in the exported model's metadata.

use std::path::PathBuf;

use crate::augment::{AugmentConfig, FieldAugment, Fill, OutlierExposure};
use crate::model::Arch;

#[derive(Debug, Clone, clap::Parser, serde::Serialize, serde::Deserialize)]
#[command(
    name = "mnister-train",
    version,
    about = "Trains mnister's digit model on MNIST, exports it to ONNX and writes an evaluation report"
)]
pub struct TrainArgs {
    /// Folder with the MNIST IDX files (plain or .gz). Never downloaded.
    #[arg(long, env = "MNIST_DIR", default_value = "data/mnist")]
    pub data_dir: PathBuf,

    /// Report and checkpoint folder.
    #[arg(long, env = "MNISTER_TRAIN_OUT", default_value = "runs/latest")]
    pub out: PathBuf,

    /// Also copy the exported model here (e.g. models/mnist-cnn.onnx).
    #[arg(long, env = "MNISTER_TRAIN_EXPORT")]
    pub export: Option<PathBuf>,

    /// Continue from the checkpoint in --out if there is one.
    #[arg(long, env = "MNISTER_TRAIN_RESUME")]
    pub resume: bool,

    /// Start from these weights instead of random ones: a fine-tuning run
    /// with its own schedule. Either an earlier run's `checkpoint/model.bpk`
    /// (same --arch) or an exported fp32 `.onnx` model (with --arch
    /// reference, since the export folds batch norm away). A checkpoint in
    /// --out, with --resume, wins.
    #[arg(long, env = "MNISTER_TRAIN_INIT_FROM")]
    #[serde(default)]
    pub init_from: Option<PathBuf>,

    /// Export a weighted mean of the best epoch and these networks instead
    /// of the best epoch alone: `PATH=W`, repeatable, each an exported fp32
    /// `.onnx` or a `.bpk` checkpoint of the same --arch; the best epoch
    /// gets 1 minus the sum. Weight-space averaging of a fine-tune with its
    /// start and its siblings (WiSE-FT; model soups) keeps what each run's
    /// augmentation taught, where picking one run keeps one. With --arch
    /// reference-bn, only .bpk checkpoints of that network (the export folds
    /// batch norm away).
    #[arg(long = "soup", env = "MNISTER_TRAIN_SOUP", value_delimiter = ',')]
    #[serde(default)]
    pub soup: Vec<SoupPart>,

    #[arg(long, env = "MNISTER_TRAIN_EPOCHS", default_value_t = 12)]
    pub epochs: usize,

    /// Stop cleanly after this many epochs in this invocation (the schedule
    /// still spans --epochs); resume later with --resume. Splits a long run
    /// into pieces that fit a working session.
    #[arg(long, env = "MNISTER_TRAIN_STOP_AFTER")]
    pub stop_after: Option<usize>,

    #[arg(long, env = "MNISTER_TRAIN_BATCH_SIZE", default_value_t = 128)]
    pub batch_size: usize,

    /// Peak learning rate of the one-cycle schedule (Adam).
    #[arg(long, env = "MNISTER_TRAIN_LR", default_value_t = 3e-3)]
    pub lr: f64,

    /// Fraction of the steps spent warming the learning rate up.
    #[arg(long, env = "MNISTER_TRAIN_WARMUP", default_value_t = 0.25)]
    pub warmup: f64,

    /// Decoupled (AdamW-style) weight decay; 0 turns it off.
    #[arg(long, env = "MNISTER_TRAIN_WEIGHT_DECAY", default_value_t = 0.0)]
    pub weight_decay: f32,

    /// Label smoothing for the cross-entropy loss; 0 turns it off.
    #[arg(long, env = "MNISTER_TRAIN_LABEL_SMOOTHING", default_value_t = 0.0)]
    pub label_smoothing: f32,

    #[arg(long, value_enum, env = "MNISTER_TRAIN_ARCH", default_value_t = Arch::Reference)]
    pub arch: Arch,

    /// Dropout after each pooling stage.
    #[arg(long, env = "MNISTER_TRAIN_DROPOUT", default_value_t = 0.25)]
    pub dropout: f64,

    #[arg(long, env = "MNISTER_TRAIN_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Seed of the train/validation split, when it must differ from --seed:
    /// members of one ensemble (`mnister-train ensemble`) hold out the same
    /// split while their weights and augmentation draws differ.
    /// Default: --seed.
    #[arg(long, env = "MNISTER_TRAIN_SPLIT_SEED")]
    pub split_seed: Option<u64>,

    /// Validation images held out of MNIST's 60,000 training images.
    #[arg(long, env = "MNISTER_TRAIN_VAL_SIZE", default_value_t = 12_000)]
    pub val_size: usize,

    /// Train on a stratified subset of this many images (smoke runs).
    #[arg(long, env = "MNISTER_TRAIN_LIMIT")]
    pub train_limit: Option<usize>,

    /// Validate on a stratified subset of this many images.
    #[arg(long, env = "MNISTER_VAL_LIMIT")]
    pub val_limit: Option<usize>,

    /// Evaluate on the first this many test images (smoke runs).
    #[arg(long, env = "MNISTER_TEST_LIMIT")]
    pub test_limit: Option<usize>,

    /// Stop after this many epochs without a better validation accuracy; 0 never stops early.
    #[arg(long, env = "MNISTER_TRAIN_PATIENCE", default_value_t = 0)]
    pub patience: usize,

    /// Train without augmentation (the baseline).
    #[arg(long, env = "MNISTER_TRAIN_NO_AUGMENT")]
    pub no_augment: bool,

    /// Rotation range, ± degrees.
    #[arg(long, env = "MNISTER_AUG_ROTATION", default_value_t = 50.0)]
    pub rotation: f32,

    /// Horizontal shift range, ± fraction of the width.
    #[arg(long, env = "MNISTER_AUG_WIDTH_SHIFT", default_value_t = 0.3)]
    pub width_shift: f32,

    /// Vertical shift range, ± fraction of the height.
    #[arg(long, env = "MNISTER_AUG_HEIGHT_SHIFT", default_value_t = 0.2)]
    pub height_shift: f32,

    /// Smallest zoom factor (above 1 shrinks the digit, as in Keras).
    #[arg(long, env = "MNISTER_AUG_ZOOM_MIN", default_value_t = 1.0)]
    pub zoom_min: f32,

    /// Largest zoom factor.
    #[arg(long, env = "MNISTER_AUG_ZOOM_MAX", default_value_t = 1.5)]
    pub zoom_max: f32,

    /// What augmentation samples outside the image.
    #[arg(long, value_enum, env = "MNISTER_AUG_FILL", default_value_t = Fill::Nearest)]
    pub fill: Fill,

    /// Fraction of each batch that is augmented; the rest is seen as is.
    #[arg(long, env = "MNISTER_AUG_PROB", default_value_t = 1.0)]
    pub augment_prob: f32,

    /// Share of training images also degraded the way field inputs are
    /// (stroke width, scan resolution, binarisation, aspect stretch, blur,
    /// noise) and sent through the serving preprocessing; 0 turns it off.
    #[arg(long, env = "MNISTER_AUG_FIELD_PROB", default_value_t = 0.4)]
    pub field_augment_prob: f32,

    /// Share of the other training images whose 28x28 strokes are thinned
    /// (plus-shaped erosion, two in three) or thickened (3x3 dilation): a
    /// pen thinner or bolder than MNIST's writers' at MNIST's own scale.
    #[arg(long, env = "MNISTER_AUG_STROKE_PROB", default_value_t = 0.15)]
    #[serde(default)]
    pub stroke_augment_prob: f32,

    /// Of the field-degraded images (at 32 px and up), the share placed in
    /// a photo of unevenly lit paper with noise and blur; 0 turns it off.
    #[arg(long, env = "MNISTER_AUG_PHOTO_PROB", default_value_t = 0.0)]
    #[serde(default)]
    pub photo_augment_prob: f32,

    /// Outlier exposure: non-digit inputs (two training digits side by
    /// side, random curves) per digit in each batch, trained towards the
    /// uniform distribution so the reject option catches what is not a
    /// digit; 0 turns it off.
    #[arg(long, env = "MNISTER_OUTLIER_SHARE", default_value_t = 0.0)]
    #[serde(default)]
    pub outlier_share: f32,

    /// Weight of the outliers' loss against the digits'.
    #[arg(long, env = "MNISTER_OUTLIER_WEIGHT", default_value_t = 0.5)]
    #[serde(default)]
    pub outlier_weight: f32,

    /// Font files (TTF/OTF) whose letters, digit-like ones left out, make a
    /// third of the outliers, e.g. /usr/share/fonts/truetype/liberation/*.ttf
    /// (Debian's fonts-liberation). DejaVu is refused: the report's
    /// held-out letters come from it.
    #[arg(long, env = "MNISTER_OUTLIER_FONTS", value_delimiter = ',')]
    #[serde(default)]
    pub outlier_fonts: Vec<PathBuf>,

    /// Ramp the augmentation strength up linearly over this many first epochs.
    #[arg(long, env = "MNISTER_AUG_WARMUP_EPOCHS", default_value_t = 0)]
    pub augment_warmup_epochs: usize,

    /// Use --augment-final-strength for this many last epochs.
    #[arg(long, env = "MNISTER_AUG_FINAL_EPOCHS", default_value_t = 0)]
    pub augment_final_epochs: usize,

    /// Augmentation strength (scales every range) for the last epochs.
    #[arg(long, env = "MNISTER_AUG_FINAL_STRENGTH", default_value_t = 0.5)]
    pub augment_final_strength: f32,

    /// Strength of the shifts alone for the last epochs; unset, they follow
    /// --augment-final-strength. Large shifts are what a calm ending
    /// otherwise unlearns.
    #[arg(long, env = "MNISTER_AUG_FINAL_SHIFT_STRENGTH")]
    #[serde(default)]
    pub augment_final_shift_strength: Option<f32>,

    /// Images drawn per class in augmentation.png.
    #[arg(long, env = "MNISTER_AUG_PREVIEW", default_value_t = 8)]
    pub augment_preview: usize,

    /// ONNX Runtime library used to evaluate the exported model.
    #[arg(long, env = "MNISTER_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,

    /// Also write a calibrated int8 copy (`model.int8.onnx`, and beside
    /// --export) and the fp32/int8 comparison (int8-report.md); the same as
    /// running `mnister-train quantize` on the exported model.
    #[arg(long, env = "MNISTER_TRAIN_INT8")]
    #[serde(default)]
    pub int8: bool,

    /// Export the best epoch (or the --soup) to `candidate.onnx` in --out
    /// and stop, without reading the test set: no report, no temperature,
    /// no --export. For choosing between candidates (soup weights, calm
    /// endings) with `evaluate --validation` before one of them is
    /// reported on test.
    #[arg(long, env = "MNISTER_TRAIN_NO_TEST")]
    #[serde(default)]
    pub no_test: bool,
}

impl TrainArgs {
    /// The field degradation, unless off.
    pub fn field_augment(&self) -> Option<FieldAugment> {
        (!self.no_augment && self.field_augment_prob + self.stroke_augment_prob > 0.0).then_some(
            FieldAugment {
                prob: self.field_augment_prob,
                stroke_prob: self.stroke_augment_prob,
                photo_prob: self.photo_augment_prob,
            },
        )
    }

    /// Outlier exposure, unless off.
    /// Outlier exposure as configured, its fonts loaded (once per run; they
    /// live as long as the process).
    pub fn outliers(&self) -> Result<Option<OutlierExposure>, String> {
        if self.outlier_share <= 0.0 {
            return Ok(None);
        }
        let fonts = if self.outlier_fonts.is_empty() {
            None
        } else {
            let loaded = crate::augment::load_outlier_fonts(&self.outlier_fonts)?;
            Some(&*Box::leak(loaded.into_boxed_slice()))
        };
        Ok(Some(OutlierExposure {
            share: self.outlier_share,
            weight: self.outlier_weight,
            fonts,
        }))
    }

    pub fn augment(&self) -> Option<AugmentConfig> {
        (!self.no_augment).then_some(AugmentConfig {
            rotation_deg: self.rotation,
            width_shift: self.width_shift,
            height_shift: self.height_shift,
            zoom_min: self.zoom_min,
            zoom_max: self.zoom_max,
            fill: self.fill,
        })
    }

    /// Augmentation strength for a 0-based epoch.
    pub fn augment_strength(&self, epoch: usize) -> f32 {
        if self.no_augment {
            return 0.0;
        }
        if self.augment_final_epochs > 0 && epoch + self.augment_final_epochs >= self.epochs {
            return self.augment_final_strength;
        }
        if epoch < self.augment_warmup_epochs {
            return (epoch + 1) as f32 / self.augment_warmup_epochs as f32;
        }
        1.0
    }

    /// Strength of the shifts for a 0-based epoch.
    pub fn augment_shift_strength(&self, epoch: usize) -> f32 {
        match self.augment_final_shift_strength {
            Some(s)
                if !self.no_augment
                    && self.augment_final_epochs > 0
                    && epoch + self.augment_final_epochs >= self.epochs =>
            {
                s
            }
            _ => self.augment_strength(epoch),
        }
    }

    /// Checks the flags against each other before any work starts.
    /// The seed that picks the validation split.
    pub fn split_seed(&self) -> u64 {
        self.split_seed.unwrap_or(self.seed)
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.epochs == 0 {
            problems.push("--epochs must be at least 1".to_string());
        }
        if self.batch_size == 0 {
            problems.push("--batch-size must be at least 1".to_string());
        }
        if self.lr.is_nan() || self.lr <= 0.0 {
            problems.push(format!("--lr must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.warmup) {
            problems.push(format!("--warmup must be in [0, 1), got {}", self.warmup));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            problems.push(format!("--dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            problems.push(format!(
                "--label-smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if !(0.0..=1.0).contains(&self.field_augment_prob) {
            problems.push(format!(
                "--field-augment-prob must be in [0, 1], got {}",
                self.field_augment_prob
            ));
        }
        if !(0.0..=1.0).contains(&self.stroke_augment_prob)
            || self.field_augment_prob + self.stroke_augment_prob > 1.0
        {
            problems.push(format!(
                "--stroke-augment-prob must be in [0, 1] and, with --field-augment-prob, at most 1; got {} and {}",
                self.stroke_augment_prob, self.field_augment_prob
            ));
        }
        if !(0.0..=1.0).contains(&self.outlier_share)
            || !(0.0..=10.0).contains(&self.outlier_weight)
        {
            problems.push(format!(
                "--outlier-share must be in [0, 1] and --outlier-weight in [0, 10]; got {} and {}",
                self.outlier_share, self.outlier_weight
            ));
        }
        if !self.outlier_fonts.is_empty() && self.outlier_share <= 0.0 {
            problems.push(
                "--outlier-fonts needs outlier exposure on (--outlier-share > 0)".to_string(),
            );
        }
        if !(0.0..=1.0).contains(&self.augment_prob) {
            problems.push(format!(
                "--augment-prob must be in [0, 1], got {}",
                self.augment_prob
            ));
        }
        if !(0.0..=180.0).contains(&self.rotation) {
            problems.push(format!(
                "--rotation must be in [0, 180] degrees, got {}",
                self.rotation
            ));
        }
        if !(0.0..1.0).contains(&self.width_shift) || !(0.0..1.0).contains(&self.height_shift) {
            problems
                .push("--width-shift and --height-shift must be fractions in [0, 1)".to_string());
        }
        if !(self.zoom_min > 0.0 && self.zoom_min <= self.zoom_max) {
            problems.push(format!(
                "--zoom-min must be positive and at most --zoom-max, got {}..{}",
                self.zoom_min, self.zoom_max
            ));
        }
        if self.val_size == 0 || self.val_size >= 60_000 {
            problems.push(format!(
                "--val-size must be in 1..60000, got {}",
                self.val_size
            ));
        }
        for (flag, v) in [
            (
                "--augment-final-strength",
                Some(self.augment_final_strength),
            ),
            (
                "--augment-final-shift-strength",
                self.augment_final_shift_strength,
            ),
        ] {
            if let Some(v) = v.filter(|v| !(0.0..=1.0).contains(v)) {
                problems.push(format!("{flag} must be in [0, 1], got {v}"));
            }
        }
        if self.no_test && (self.export.is_some() || self.int8) {
            problems.push(
                "--no-test writes only candidate.onnx in --out: a model never scored on test is not \
                 exported for serving (--export) or quantized (--int8); report the chosen candidate first"
                    .into(),
            );
        }
        if !self.soup.is_empty() {
            let sum: f32 = self.soup.iter().map(|p| p.weight).sum();
            if sum > 1.0 + 1e-4 {
                problems.push(format!(
                    "--soup weights add up to {sum}; they must leave the best epoch 1 minus their sum, so at most 1"
                ));
            }
            if self.arch != crate::model::Arch::Reference {
                for p in self.soup.iter().filter(|p| is_onnx(&p.path)) {
                    problems.push(format!(
                        "--soup {}: an exported .onnx has its batch norm folded away, so it mixes only with \
                         --arch reference; with --arch {} give .bpk checkpoints of the same network",
                        p.path.display(),
                        self.arch.name()
                    ));
                }
            }
            for p in self.soup.iter().filter(|p| !p.path.is_file()) {
                problems.push(format!("--soup {} is not a file", p.path.display()));
            }
        }
        if let Some(p) = self.init_from.as_ref() {
            if !p.is_file() {
                problems.push(format!(
                    "--init-from {} is not a file; give an earlier run's checkpoint/model.bpk or an exported .onnx",
                    p.display()
                ));
            } else if p.extension().is_some_and(|e| e == "onnx")
                && self.arch != crate::model::Arch::Reference
            {
                problems.push(format!(
                    "--init-from {} is an ONNX model, whose batch norm is folded away: it needs --arch reference, got --arch {}",
                    p.display(),
                    self.arch.name()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// One `--soup PATH=W` ingredient.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SoupPart {
    pub path: PathBuf,
    pub weight: f32,
}

impl std::str::FromStr for SoupPart {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (path, w) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("--soup takes PATH=WEIGHT, got {s:?}"))?;
        let weight: f32 = w
            .parse()
            .map_err(|_| format!("--soup {s:?}: the weight {w:?} is not a number"))?;
        if !(0.0..=1.0).contains(&weight) {
            return Err(format!("--soup {s:?}: the weight must be in [0, 1]"));
        }
        Ok(SoupPart {
            path: path.into(),
            weight,
        })
    }
}

fn is_onnx(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "onnx")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_split_follows_the_seed_unless_split_seed_says_otherwise() {
        let parse = |extra: &[&str]| {
            TrainArgs::try_parse_from(["mnister-train"].iter().chain(extra)).unwrap()
        };
        assert_eq!(parse(&[]).split_seed(), 42);
        assert_eq!(parse(&["--seed", "7"]).split_seed(), 7);
        let member = parse(&["--seed", "7", "--split-seed", "42"]);
        assert_eq!((member.seed, member.split_seed()), (7, 42));
    }

    #[test]
    fn outlier_fonts_need_outlier_exposure_and_refuse_dejavu() {
        let parse = |extra: &[&str]| {
            TrainArgs::try_parse_from(["mnister-train"].iter().chain(extra)).unwrap()
        };
        let e = parse(&["--outlier-fonts", "/x/LiberationSans-Regular.ttf"])
            .validate()
            .unwrap_err();
        assert!(e.contains("--outlier-fonts needs outlier exposure"), "{e}");
        let dejavu = parse(&[
            "--outlier-share",
            "0.1",
            "--outlier-fonts",
            "/x/DejaVuSerif.ttf",
        ]);
        assert!(dejavu.validate().is_ok());
        let e = dejavu.outliers().unwrap_err();
        assert!(e.contains("DejaVu"), "{e}");
        let none = parse(&["--outlier-share", "0.1"])
            .outliers()
            .unwrap()
            .unwrap();
        assert!(none.fonts.is_none());
        assert!(parse(&[]).outliers().unwrap().is_none());
    }

    #[test]
    fn soup_parts_parse_and_bad_ones_say_what_is_accepted() {
        let p: SoupPart = "runs/a/model.onnx=0.25".parse().unwrap();
        assert_eq!(p.path, PathBuf::from("runs/a/model.onnx"));
        assert_eq!(p.weight, 0.25);
        // The last '=' splits, so a path may hold one.
        let p: SoupPart = "runs/x=y/best.bpk=1".parse().unwrap();
        assert_eq!(p.path, PathBuf::from("runs/x=y/best.bpk"));
        for bad in ["model.onnx", "model.onnx=half", "model.onnx=1.5", "m=-0.1"] {
            let e = bad.parse::<SoupPart>().unwrap_err();
            assert!(e.contains("--soup"), "{bad}: {e}");
        }
    }

    #[test]
    fn soup_weights_over_one_and_batch_norm_are_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let f = file.path().display().to_string();
        let args = |extra: &[&str]| {
            let mut v = vec!["mnister-train".to_string()];
            v.extend(extra.iter().map(|s| s.to_string()));
            TrainArgs::parse_from(v)
        };
        let ok = args(&["--arch", "reference", "--soup", &format!("{f}=0.3,{f}=0.5")]);
        assert_eq!(ok.soup.len(), 2);
        assert!(ok.validate().is_ok(), "{:?}", ok.validate());
        let over = args(&["--arch", "reference", "--soup", &format!("{f}=0.6,{f}=0.5")]);
        assert!(over.validate().unwrap_err().contains("add up to"));
        let onnx = tempfile::Builder::new().suffix(".onnx").tempfile().unwrap();
        let o = onnx.path().display().to_string();
        let bn = args(&["--arch", "reference-bn", "--soup", &format!("{o}=0.5")]);
        assert!(bn.validate().unwrap_err().contains("--arch reference"));
        let bn_bpk = args(&["--arch", "reference-bn", "--soup", &format!("{f}=0.5")]);
        assert!(bn_bpk.validate().is_ok(), "{:?}", bn_bpk.validate());
        let untested = args(&["--no-test", "--export", "models/x.onnx"]);
        assert!(untested.validate().unwrap_err().contains("--no-test"));
        let untested = args(&["--no-test", "--int8"]);
        assert!(untested.validate().unwrap_err().contains("--int8"));
        assert!(args(&["--no-test"]).validate().is_ok());
        let missing = args(&["--arch", "reference", "--soup", "/no/such/file.onnx=0.5"]);
        assert!(missing.validate().unwrap_err().contains("not a file"));
    }
}
