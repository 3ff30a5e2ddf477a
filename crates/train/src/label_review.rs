//! MNIST training labels checked by eye. A reject threshold for 99.9% kept
//! accuracy may keep only 12 mistakes among 12,000 validation digits, so a
//! handful of wrong labels among them, answered "wrongly" with full
//! confidence, pushes it up and costs coverage everywhere it is served.
//! The review (`data/label-review.csv`, protocol in
//! `docs/model/label-review/README.md`) read each image blind, with random
//! controls mixed in; only images whose reading excludes their label are
//! left out of the calibration set.

use std::collections::HashSet;
use std::sync::OnceLock;

const CSV: &str = include_str!("../data/label-review.csv");

/// One reviewed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    /// Index into MNIST's training set.
    pub index: usize,
    pub label: u8,
    /// The digits the reviewer saw ("5", "4/9"), or "?" for none.
    pub reading: String,
    pub verdict: Verdict,
    /// A candidate (some model's mistake) or a random control.
    pub control: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The reading is the label.
    Agrees,
    /// Either of two digits, the label one of them.
    Ambiguous,
    /// No digit could be read.
    Unreadable,
    /// The reading names digits other than the label.
    Mislabeled,
}

impl Verdict {
    /// The verdict the reading implies for `label`.
    pub fn of(reading: &str, label: u8) -> Result<Verdict, String> {
        if reading == "?" {
            return Ok(Verdict::Unreadable);
        }
        let digits = reading
            .split('/')
            .map(|d| match d.as_bytes() {
                [c @ b'0'..=b'9'] => Ok(c - b'0'),
                _ => Err(format!(
                    "reading {reading:?}: expected digits joined by '/', or '?'"
                )),
            })
            .collect::<Result<Vec<u8>, _>>()?;
        Ok(match (digits.contains(&label), digits.len()) {
            (false, _) => Verdict::Mislabeled,
            (true, 1) => Verdict::Agrees,
            (true, _) => Verdict::Ambiguous,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Verdict::Agrees => "agrees",
            Verdict::Ambiguous => "ambiguous",
            Verdict::Unreadable => "unreadable",
            Verdict::Mislabeled => "mislabeled",
        }
    }
}

/// Parses the review file; each row's verdict must be the one its reading
/// implies, so the file cannot claim more than was seen.
pub fn parse(csv: &str) -> Result<Vec<Reviewed>, String> {
    let mut out = Vec::new();
    let mut lines = csv
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty());
    match lines.next() {
        Some((_, h)) if h.starts_with("index,label,reading,verdict,kind") => {}
        _ => return Err("the header row must come first".into()),
    }
    for (n, line) in lines {
        let at = |e: String| format!("line {}: {e}", n + 1);
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 5 {
            return Err(at(format!("{} fields, expected at least 5", f.len())));
        }
        let index = f[0].parse().map_err(|e| at(format!("index: {e}")))?;
        let label: u8 = f[1].parse().map_err(|e| at(format!("label: {e}")))?;
        let verdict = Verdict::of(f[2], label).map_err(at)?;
        if f[3] != verdict.name() {
            return Err(at(format!(
                "verdict {:?}, but reading {:?} of label {label} means {:?}",
                f[3],
                f[2],
                verdict.name()
            )));
        }
        let control = match f[4] {
            "control" => true,
            "candidate" => false,
            k => return Err(at(format!("kind {k:?}: expected candidate or control"))),
        };
        out.push(Reviewed {
            index,
            label,
            reading: f[2].to_string(),
            verdict,
            control,
        });
    }
    Ok(out)
}

/// The committed review.
pub fn reviewed() -> &'static [Reviewed] {
    static R: OnceLock<Vec<Reviewed>> = OnceLock::new();
    R.get_or_init(|| parse(CSV).expect("data/label-review.csv is checked by a unit test"))
}

/// Training-set indices whose label the review found wrong.
pub fn mislabeled() -> &'static HashSet<usize> {
    static S: OnceLock<HashSet<usize>> = OnceLock::new();
    S.get_or_init(|| {
        reviewed()
            .iter()
            .filter(|r| r.verdict == Verdict::Mislabeled)
            .map(|r| r.index)
            .collect()
    })
}

/// `indices` without the reviewed label errors, and how many were left out.
pub fn without_mislabeled(indices: &[usize]) -> (Vec<usize>, usize) {
    let bad = mislabeled();
    let kept: Vec<usize> = indices
        .iter()
        .copied()
        .filter(|i| !bad.contains(i))
        .collect();
    let dropped = indices.len() - kept.len();
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_review_parses_and_names_real_training_images() {
        let r = reviewed();
        assert!(r.len() >= 200, "{} rows", r.len());
        assert!(r.iter().all(|x| x.index < 60_000 && x.label < 10));
        let idx: HashSet<usize> = r.iter().map(|x| x.index).collect();
        assert_eq!(idx.len(), r.len(), "an image is reviewed once");
        // The controls measure the reviewer: none of them may be called
        // mislabeled, or the reading is not to be trusted.
        assert!(r.iter().filter(|x| x.control).count() >= 100);
        assert!(
            r.iter()
                .filter(|x| x.control)
                .all(|x| x.verdict != Verdict::Mislabeled)
        );
        assert!(!mislabeled().is_empty());
    }

    #[test]
    fn the_committed_labels_are_mnists() {
        // The tests do not need MNIST; check against it where it is.
        let dir = std::env::var_os("MNIST_DIR").map_or_else(
            || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist"),
            std::path::PathBuf::from,
        );
        let Ok(train) = mnister_core::idx::load_mnist(&dir, mnister_core::idx::Split::Train) else {
            eprintln!("MNIST not found at {}: labels not checked", dir.display());
            return;
        };
        for r in reviewed() {
            assert_eq!(train.labels[r.index], r.label, "image {}", r.index);
        }
    }

    #[test]
    fn verdicts_follow_the_reading() {
        assert_eq!(Verdict::of("5", 5), Ok(Verdict::Agrees));
        assert_eq!(Verdict::of("4/9", 4), Ok(Verdict::Ambiguous));
        assert_eq!(Verdict::of("0/8", 9), Ok(Verdict::Mislabeled));
        assert_eq!(Verdict::of("6", 0), Ok(Verdict::Mislabeled));
        assert_eq!(Verdict::of("?", 3), Ok(Verdict::Unreadable));
        assert!(Verdict::of("five", 5).is_err());
    }

    #[test]
    fn a_verdict_the_reading_does_not_support_is_refused() {
        let head = "index,label,reading,verdict,kind,round,tile\n";
        assert!(parse(&format!("{head}1,4,4/9,mislabeled,candidate,1,0\n")).is_err());
        assert!(parse(&format!("{head}1,4,4/9,ambiguous,person,1,0\n")).is_err());
        assert!(parse("1,4,4,agrees,control\n").is_err());
        let ok = parse(&format!("# note\n{head}1,4,9,mislabeled,candidate,1,0\n")).unwrap();
        assert_eq!(ok[0].verdict, Verdict::Mislabeled);
    }

    #[test]
    fn only_mislabeled_images_are_left_out() {
        let bad = *mislabeled().iter().next().unwrap();
        let ambiguous = reviewed()
            .iter()
            .find(|r| r.verdict == Verdict::Ambiguous)
            .unwrap()
            .index;
        let (kept, dropped) = without_mislabeled(&[bad, ambiguous]);
        assert_eq!((kept, dropped), (vec![ambiguous], 1));
    }
}
