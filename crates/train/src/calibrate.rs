//! Confidence a caller can act on: calibration error, one temperature
//! fitted on validation data and folded into the exported model, and the
//! reject option's price (which threshold keeps which accuracy, at what
//! coverage).
//!
//! The threshold is chosen on validation data that includes field
//! renderings of the validation digits, never on test or field-test data:
//! a threshold fitted on clean MNIST alone promised 99.9% and kept 96% on
//! other people's handwriting. Each form is held to its own bar
//! ([`FIELD_RISK_FACTOR`]) rather than pooled: pooled, the hardest forms'
//! errors set the threshold for everyone and the clean digits pay in
//! coverage, while an easy form could hide a hard one.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use crate::fit::argmax;

/// Bins of the expected calibration error.
pub const ECE_BINS: usize = 15;

/// The (confidence, right) pairs of the answered images: rows with NaN
/// (images the preprocessing refused) are not answers.
fn answers<'a>(probs: &'a [f32], labels: &'a [u8]) -> impl Iterator<Item = (f32, bool)> + 'a {
    probs
        .chunks_exact(10)
        .zip(labels)
        .filter(|(p, _)| !p[0].is_nan())
        .map(|(p, &l)| {
            let d = argmax(p);
            (p[d], d == l as usize)
        })
}

/// Per bin: (images, mean confidence, accuracy).
pub fn reliability(probs: &[f32], labels: &[u8], bins: usize) -> Vec<(usize, f64, f64)> {
    let mut acc = vec![(0usize, 0f64, 0f64); bins];
    for (c, right) in answers(probs, labels) {
        let b = ((c * bins as f32) as usize).min(bins - 1);
        acc[b].0 += 1;
        acc[b].1 += f64::from(c);
        acc[b].2 += f64::from(u8::from(right));
    }
    acc.into_iter()
        .map(|(n, c, r)| {
            let n1 = n.max(1) as f64;
            (n, c / n1, r / n1)
        })
        .collect()
}

/// Expected calibration error: the gap between confidence and accuracy,
/// averaged over equal-width confidence bins weighted by their images.
pub fn ece(probs: &[f32], labels: &[u8]) -> f64 {
    let bins = reliability(probs, labels, ECE_BINS);
    let total: usize = bins.iter().map(|b| b.0).sum();
    bins.iter()
        .map(|&(n, c, a)| n as f64 * (c - a).abs())
        .sum::<f64>()
        / total.max(1) as f64
}

/// The probabilities a model with its logits divided by `t` would give:
/// log p differs from the logits by a constant per row, which the softmax
/// removes.
pub fn with_temperature(probs: &[f32], t: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(probs.len());
    for row in probs.chunks_exact(10) {
        if row[0].is_nan() {
            out.extend_from_slice(row);
            continue;
        }
        let z: Vec<f32> = row.iter().map(|&p| p.max(1e-30).ln() / t).collect();
        let m = z.iter().cloned().fold(f32::MIN, f32::max);
        let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

fn nll(probs: &[f32], labels: &[u8], t: f32) -> f64 {
    let p = with_temperature(probs, t);
    let (mut sum, mut n) = (0f64, 0usize);
    for (row, &l) in p.chunks_exact(10).zip(labels) {
        if row[0].is_nan() {
            continue;
        }
        sum -= f64::from(row[l as usize].max(1e-30)).ln();
        n += 1;
    }
    sum / n.max(1) as f64
}

/// The temperature that minimises the negative log-likelihood, searched
/// over log T in [1/4, 8] (golden section; the NLL is unimodal in T).
pub fn fit_temperature(probs: &[f32], labels: &[u8]) -> f32 {
    let (mut a, mut b) = (0.25f32.ln(), 8f32.ln());
    let g = (5f32.sqrt() - 1.0) / 2.0;
    let f = |x: f32| nll(probs, labels, x.exp());
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..40 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// The lowest confidence threshold whose kept answers (confidence at or
/// above it) reach `target` accuracy, keeping as many as possible; None
/// when no threshold does.
pub fn threshold_for(probs: &[f32], labels: &[u8], target: f64) -> Option<f32> {
    let mut a: Vec<(f32, bool)> = answers(probs, labels).collect();
    a.sort_by(|x, y| y.0.total_cmp(&x.0));
    let (mut right, mut best) = (0usize, None);
    for (i, &(c, ok)) in a.iter().enumerate() {
        right += usize::from(ok);
        // Only where the next answer has a lower confidence: a threshold
        // keeps all answers at or above it.
        let boundary = a.get(i + 1).is_none_or(|n| n.0 < c);
        if boundary && right as f64 / (i + 1) as f64 >= target {
            best = Some(c);
        }
    }
    best
}

/// A field form may err this many times as often as clean digits among the
/// answers a threshold keeps: a target of 99.9% on clean validation digits
/// holds every field rendering of them to 99.5%, the split issue 16 asks
/// for (MNIST test ≥ 99.9%, every field row ≥ 99.5%).
pub const FIELD_RISK_FACTOR: f64 = 5.0;

/// The lowest threshold at which the clean group keeps `target` accuracy
/// and every field group keeps `1 - FIELD_RISK_FACTOR * (1 - target)`;
/// None when no threshold does. A group that keeps no answer meets its bar.
pub fn threshold_for_groups(
    clean: (&[f32], &[u8]),
    field: &[(&[f32], &[u8])],
    target: f64,
) -> Option<f32> {
    let field_target = 1.0 - FIELD_RISK_FACTOR * (1.0 - target);
    let groups = 1 + field.len();
    let bar = |g: usize| if g == 0 { target } else { field_target };
    let mut a: Vec<(f32, bool, usize)> = std::iter::once(clean)
        .chain(field.iter().copied())
        .enumerate()
        .flat_map(|(g, (p, l))| answers(p, l).map(move |(c, ok)| (c, ok, g)))
        .collect();
    a.sort_by(|x, y| y.0.total_cmp(&x.0));
    let mut kept = vec![0usize; groups];
    let mut right = vec![0usize; groups];
    let mut best = None;
    for (i, &(c, ok, g)) in a.iter().enumerate() {
        kept[g] += 1;
        right[g] += usize::from(ok);
        let boundary = a.get(i + 1).is_none_or(|n| n.0 < c);
        if boundary && (0..groups).all(|g| right[g] as f64 >= bar(g) * kept[g] as f64) {
            best = Some(c);
        }
    }
    best
}

/// (coverage, accuracy of the kept answers) at threshold `t`: an image the
/// preprocessing refused counts as not kept.
pub fn coverage_at(probs: &[f32], labels: &[u8], t: f32) -> (f64, f64) {
    let n = labels.len().max(1) as f64;
    let (mut kept, mut right) = (0usize, 0usize);
    for (c, ok) in answers(probs, labels) {
        if c >= t {
            kept += 1;
            right += usize::from(ok);
        }
    }
    (kept as f64 / n, right as f64 / kept.max(1) as f64)
}

/// One set's calibration numbers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SetCalibration {
    pub set: String,
    pub images: usize,
    /// ECE before and after the temperature.
    pub ece_before: f64,
    pub ece_after: f64,
    /// For each target in `Calibration::targets`: (coverage, kept accuracy)
    /// at the threshold chosen on validation.
    pub kept: Vec<(f64, f64)>,
}

/// What report.json and the model card say about confidence.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    /// Folded into the exported model: logits / temperature.
    pub temperature: f32,
    /// Kept-accuracy targets, e.g. 0.99, 0.995, 0.999.
    pub targets: Vec<f64>,
    /// The threshold for each target, chosen on the validation set after
    /// the temperature: the clean validation digits keep the target, each
    /// field rendering of them `1 - field_risk_factor * (1 - target)`.
    pub thresholds: Vec<Option<f32>>,
    /// See [`FIELD_RISK_FACTOR`]. Absent in reports made before it (they
    /// pooled clean and field validation digits under one target).
    #[serde(default)]
    pub field_risk_factor: Option<f64>,
    /// Validation digits left out because a blind review found their label
    /// wrong (`label_review`). Absent in reports made before the review.
    #[serde(default)]
    pub label_errors_left_out: Option<usize>,
    /// Validation first, then MNIST test, then every field row.
    pub sets: Vec<SetCalibration>,
    /// Each validation group alone: the threshold its own bar would need
    /// for each target. The group with the highest one sets the price in
    /// coverage everyone pays. Absent in reports made before it.
    #[serde(default)]
    pub needs: Vec<GroupNeed>,
}

/// One validation group's own threshold for each target, None where no
/// threshold meets its bar.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GroupNeed {
    pub group: String,
    pub thresholds: Vec<Option<f32>>,
}

/// A group's own threshold for `target`: 0 when it meets the target with
/// every answer kept (it constrains nothing), None when nothing does.
fn need_for(probs: &[f32], labels: &[u8], target: f64) -> Option<f32> {
    let t = threshold_for(probs, labels, target)?;
    let lowest = answers(probs, labels)
        .map(|(c, _)| c)
        .fold(f32::INFINITY, f32::min);
    Some(if t <= lowest { 0.0 } else { t })
}

/// The group whose own need is highest for target `i`, the one that set
/// the threshold; None when no group constrains it. A group no threshold
/// satisfies wins outright.
pub fn set_by(needs: &[GroupNeed], i: usize) -> Option<&GroupNeed> {
    let key = |g: &GroupNeed| {
        g.thresholds
            .get(i)
            .copied()
            .flatten()
            .unwrap_or(f32::INFINITY)
    };
    needs
        .iter()
        .max_by(|a, b| key(a).total_cmp(&key(b)))
        .filter(|g| key(g) > 0.0)
}

/// Kept-accuracy targets of the risk–coverage table.
pub const TARGETS: [f64; 3] = [0.99, 0.995, 0.999];

/// The validation data the temperature and the thresholds are fitted on:
/// the clean validation digits first (`clean` images), then the field
/// renderings of a sample of them, `per_form` images per form.
pub struct Validation<'a> {
    pub name: &'a str,
    pub probs: &'a [f32],
    pub labels: &'a [u8],
    pub clean: usize,
    pub per_form: usize,
    /// The field forms' names, in the order of their renderings.
    pub forms: &'a [&'a str],
}

impl Validation<'_> {
    /// (clean group, field groups), probabilities after temperature `t`.
    fn groups(&self, t: f32) -> (Vec<f32>, Vec<(usize, usize)>) {
        let probs = with_temperature(self.probs, t);
        let mut bounds = vec![(0, self.clean)];
        let mut at = self.clean;
        while self.per_form > 0 && at + self.per_form <= self.labels.len() {
            bounds.push((at, at + self.per_form));
            at += self.per_form;
        }
        (probs, bounds)
    }
}

/// Fits the temperature on all of `val` and the thresholds on its groups
/// ([`threshold_for_groups`]), and describes every set with them. Each set
/// is (name, probabilities at T = 1, labels).
pub fn calibrate(val: &Validation, sets: &[(String, Vec<f32>, Vec<u8>)]) -> Calibration {
    let t = fit_temperature(val.probs, val.labels);
    let (val_t, bounds) = val.groups(t);
    let slice = |&(a, b): &(usize, usize)| (&val_t[a * 10..b * 10], &val.labels[a..b]);
    let clean = slice(&bounds[0]);
    let field: Vec<(&[f32], &[u8])> = bounds[1..].iter().map(slice).collect();
    let thresholds: Vec<Option<f32>> = TARGETS
        .iter()
        .map(|&target| threshold_for_groups(clean, &field, target))
        .collect();
    let describe = |name: &str, probs: &[f32], labels: &[u8]| {
        let after = with_temperature(probs, t);
        SetCalibration {
            set: name.to_string(),
            images: labels.len(),
            ece_before: ece(probs, labels),
            ece_after: ece(&after, labels),
            kept: thresholds
                .iter()
                .map(|th| th.map_or((0.0, 0.0), |th| coverage_at(&after, labels, th)))
                .collect(),
        }
    };
    let mut out = vec![describe(val.name, val.probs, val.labels)];
    out.extend(sets.iter().map(|(n, p, l)| describe(n, p, l)));
    let field_target = |target: f64| 1.0 - FIELD_RISK_FACTOR * (1.0 - target);
    let mut needs = vec![GroupNeed {
        group: "clean validation digits".into(),
        thresholds: TARGETS
            .iter()
            .map(|&t| need_for(clean.0, clean.1, t))
            .collect(),
    }];
    needs.extend(field.iter().enumerate().map(|(i, (p, l))| {
        GroupNeed {
            group: val
                .forms
                .get(i)
                .map_or_else(|| format!("form {i}"), |f| f.to_string()),
            thresholds: TARGETS
                .iter()
                .map(|&t| need_for(p, l, field_target(t)))
                .collect(),
        }
    }));
    Calibration {
        temperature: t,
        targets: TARGETS.to_vec(),
        thresholds,
        field_risk_factor: Some(FIELD_RISK_FACTOR),
        label_errors_left_out: None,
        sets: out,
        needs,
    }
}

/// A reliability diagram: per confidence bin, the accuracy against the
/// mean confidence, before and after the temperature.
pub fn reliability_diagram(
    path: &Path,
    title: &str,
    probs: &[f32],
    labels: &[u8],
    t: f32,
) -> Result<()> {
    crate::report::fonts();
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (640, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (crate::report::FONT, 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("confidence")
        .y_desc("accuracy")
        .label_style((crate::report::FONT, 14))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.4)))
        .map_err(|e| err(&e))?;
    let after = with_temperature(probs, t);
    for (p, color, name) in [
        (
            probs,
            RED,
            format!("before, ECE {:.2}%", ece(probs, labels) * 100.0),
        ),
        (
            &after[..],
            BLUE,
            format!("T = {t:.3}, ECE {:.2}%", ece(&after, labels) * 100.0),
        ),
    ] {
        let pts: Vec<(f64, f64)> = reliability(p, labels, ECE_BINS)
            .into_iter()
            .filter(|b| b.0 > 0)
            .map(|b| (b.1, b.2))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((crate::report::FONT, 14))
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows whose top probability is `c`, right or wrong.
    fn rows(spec: &[(f32, bool)]) -> (Vec<f32>, Vec<u8>) {
        let mut p = Vec::new();
        let mut l = Vec::new();
        for &(c, right) in spec {
            let mut row = [(1.0 - c) / 9.0; 10];
            row[3] = c;
            p.extend_from_slice(&row);
            l.push(if right { 3 } else { 4 });
        }
        (p, l)
    }

    #[test]
    fn a_calibrated_set_has_no_error_and_an_overconfident_one_does() {
        // 90% confident, 90% right: calibrated.
        let spec: Vec<_> = (0..100).map(|i| (0.9, i % 10 != 0)).collect();
        let (p, l) = rows(&spec);
        assert!(ece(&p, &l) < 1e-6);
        // 99% confident, 90% right: an ECE of 9 points.
        let spec: Vec<_> = (0..100).map(|i| (0.99, i % 10 != 0)).collect();
        let (p, l) = rows(&spec);
        assert!((ece(&p, &l) - 0.09).abs() < 1e-4, "{}", ece(&p, &l));
    }

    #[test]
    fn the_temperature_cools_an_overconfident_model_and_keeps_its_answers() {
        let spec: Vec<_> = (0..200).map(|i| (0.999, i % 10 != 0)).collect();
        let (p, l) = rows(&spec);
        let t = fit_temperature(&p, &l);
        assert!(t > 1.0, "{t}");
        let after = with_temperature(&p, t);
        assert!(ece(&after, &l) < ece(&p, &l) / 4.0);
        for (a, b) in p.chunks(10).zip(after.chunks(10)) {
            assert_eq!(argmax(a), argmax(b));
        }
    }

    #[test]
    fn the_threshold_keeps_the_target_and_as_many_answers_as_it_can() {
        // Confident and right, then less confident with mistakes.
        let mut spec = vec![(0.99, true); 90];
        spec.extend([(0.8, true), (0.8, false), (0.7, true), (0.6, false)]);
        spec.extend(vec![(0.5, true); 6]);
        let (p, l) = rows(&spec);
        let t = threshold_for(&p, &l, 0.99).unwrap();
        let (cov, acc) = coverage_at(&p, &l, t);
        assert!(acc >= 0.99, "{acc}");
        assert_eq!(t, 0.99);
        assert!((cov - 0.90).abs() < 1e-9);
        // At 98.5% the 0.8 pair (one wrong) and the 0.7 answer still fit
        // (92/93); the 0.6 mistake does not (92/94), nor does keeping all
        // (98/100).
        assert_eq!(threshold_for(&p, &l, 0.985).unwrap(), 0.7);
        // At 98%, keeping everything does.
        assert_eq!(threshold_for(&p, &l, 0.98).unwrap(), 0.5);
        assert!(threshold_for(&p, &l, 1.01).is_none());
    }

    #[test]
    fn each_group_is_held_to_its_own_bar() {
        // Clean: 1,000 right at 0.99, one mistake at 0.95, 9 right at 0.9.
        let mut spec = vec![(0.99, true); 1000];
        spec.push((0.95, false));
        spec.extend(vec![(0.9, true); 9]);
        let clean = rows(&spec);
        // A field form: 99 right at 0.999, a mistake at 0.97, 199 right at
        // 0.93, a mistake at 0.92.
        let mut spec = vec![(0.999, true); 99];
        spec.push((0.97, false));
        spec.extend(vec![(0.93, true); 199]);
        spec.push((0.92, false));
        let hard = rows(&spec);
        let field = [(&hard.0[..], &hard.1[..])];
        let c = (&clean.0[..], &clean.1[..]);
        // Clean meets 99.9% at every threshold (1009/1010 at 0.9); the
        // form's 99.5% holds at 0.93 (298/299), not at 0.97 (99/100) or
        // 0.92 (298/300).
        assert_eq!(threshold_for_groups(c, &field, 0.999), Some(0.93));
        // Pooled under one 99.9% target, the form's mistakes push it up to
        // 0.97 (1099/1100), and the clean digits at 0.95 and 0.9 are lost.
        let pooled_p: Vec<f32> = clean.0.iter().chain(&hard.0).copied().collect();
        let pooled_l: Vec<u8> = clean.1.iter().chain(&hard.1).copied().collect();
        assert_eq!(threshold_for(&pooled_p, &pooled_l, 0.999), Some(0.97));
        // With the form's mistakes made confident, no threshold meets its bar.
        let bad = rows(&[(0.999, false), (0.999, true)]);
        assert_eq!(
            threshold_for_groups(c, &[(&bad.0[..], &bad.1[..])], 0.999),
            None
        );
    }

    #[test]
    fn the_report_names_the_group_that_sets_each_threshold() {
        // Clean: 1,000 right at 0.99, 9 right at 0.9. The form: 99 right
        // at 0.999, a mistake at 0.97, 199 right at 0.93, a mistake at 0.92.
        let mut spec = vec![(0.99, true); 1000];
        spec.extend(vec![(0.9, true); 9]);
        let clean = rows(&spec);
        let mut spec = vec![(0.999, true); 99];
        spec.push((0.97, false));
        spec.extend(vec![(0.93, true); 199]);
        spec.push((0.92, false));
        let hard = rows(&spec);
        let probs: Vec<f32> = clean.0.iter().chain(&hard.0).copied().collect();
        let labels: Vec<u8> = clean.1.iter().chain(&hard.1).copied().collect();
        let val = Validation {
            name: "validation",
            probs: &probs,
            labels: &labels,
            clean: 1009,
            per_form: 300,
            forms: &["hard"],
        };
        let c = calibrate(&val, &[]);
        assert_eq!(c.needs.len(), 2);
        assert_eq!(c.needs[0].group, "clean validation digits");
        assert_eq!(c.needs[1].group, "hard");
        // The clean digits are all right: they constrain nothing. For the
        // 99.9% target the form (held to 99.5%) must drop its mistake at
        // 0.92 (298/300 = 99.3%) but not the one at 0.97 (298/299): its
        // need, the form's 0.93, is the threshold. For 99% (the form held
        // to 95%) nobody constrains anything.
        assert_eq!(c.needs[0].thresholds, vec![Some(0.0); 3], "{:?}", c.needs);
        let by = set_by(&c.needs, 2).expect("the form sets the 99.9% threshold");
        assert_eq!(by.group, "hard");
        assert!(by.thresholds[2].unwrap() > 0.0);
        assert_eq!(c.thresholds[2], by.thresholds[2], "{:?}", c.needs);
        let hard_t = with_temperature(&hard.0, c.temperature);
        assert_eq!(
            coverage_at(&hard_t, &hard.1, c.thresholds[2].unwrap()).0,
            299.0 / 300.0
        );
        assert!(set_by(&c.needs, 0).is_none(), "{:?}", c.needs);
        // A group that no threshold satisfies sets it outright.
        let needs = vec![
            GroupNeed {
                group: "a".into(),
                thresholds: vec![Some(0.9)],
            },
            GroupNeed {
                group: "b".into(),
                thresholds: vec![None],
            },
        ];
        assert_eq!(set_by(&needs, 0).unwrap().group, "b");
    }

    #[test]
    fn refused_images_are_not_answers_and_not_covered() {
        let (mut p, l) = rows(&[(0.95, true), (0.95, true)]);
        p[10..20].fill(f32::NAN);
        let (cov, acc) = coverage_at(&p, &l, 0.5);
        assert_eq!((cov, acc), (0.5, 1.0));
    }
}
