//! `mnister classify FILE...`: one Classify call per file.

use std::path::PathBuf;

use crate::proto::v1::{ClassifyRequest, classify_request::Input};
use crate::{CliError, Connection};

#[derive(Debug, Clone, clap::Args)]
pub struct ClassifyArgs {
    /// Image files (PNG, JPEG, BMP, GIF, WebP, PNM).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Answers below this confidence are marked abstained; default: the
    /// server's --min-confidence.
    #[arg(long)]
    pub min_confidence: Option<f32>,
}

/// Returns the number of files that failed.
pub async fn run(conn: &Connection, args: &ClassifyArgs) -> Result<usize, CliError> {
    let mut client = conn.client().await?;
    let mut failed = 0;
    if !args.json {
        println!(
            "{:<40} {:>5} {:>10}  {:>9}",
            "file", "digit", "confidence", "server µs"
        );
    }
    for file in &args.files {
        let name = file.display().to_string();
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                failed += 1;
                report_error(args.json, &name, &format!("cannot read: {e}"));
                continue;
            }
        };
        let req = ClassifyRequest {
            id: name.clone(),
            input: Some(Input::Image(bytes)),
            return_preprocessed: false,
            min_confidence: args.min_confidence,
        };
        match client.classify(conn.request(req)).await {
            Ok(r) => {
                let r = r.into_inner();
                let us = r.timings.map(|t| t.total_us).unwrap_or(0);
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "file": name, "digit": r.digit, "confidence": r.confidence,
                            "abstained": r.abstained, "probabilities": r.probabilities, "model_version": r.model_version, "server_us": us,
                        })
                    );
                } else {
                    println!(
                        "{name:<40} {:>5} {:>9.1}%  {us:>9}{}",
                        r.digit,
                        r.confidence * 100.0,
                        if r.abstained {
                            "  not sure: check it"
                        } else {
                            ""
                        }
                    );
                }
            }
            Err(s) if matches!(s.code(), tonic::Code::InvalidArgument) => {
                failed += 1;
                report_error(args.json, &name, s.message());
            }
            Err(s) => return Err(s.into()),
        }
    }
    Ok(failed)
}

fn report_error(json: bool, name: &str, msg: &str) {
    if json {
        println!("{}", serde_json::json!({"file": name, "error": msg}));
    } else {
        println!("{name:<40} error: {msg}");
    }
}
