//! `mnister`: the command-line client.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mnister_client::proto::v1::GetModelInfoRequest;
use mnister_client::{CliError, Connection, bench, classify, stream};

#[derive(Debug, Parser)]
#[command(
    name = "mnister",
    version,
    about = "Client for mnister-server: classify files, stream bulk input, load-test"
)]
struct Args {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Classify image files and print digit and confidence.
    Classify(classify::ClassifyArgs),
    /// Bulk recognition over ClassifyStream.
    Stream(stream::StreamArgs),
    /// Load generator: throughput, latency percentiles, errors by code.
    Bench(bench::BenchArgs),
    /// The served model and the server's limits.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// The grpc.health.v1 status.
    Health {
        /// Service to ask about ("" = the whole server).
        #[arg(long, default_value = "mnister.v1.DigitClassifier")]
        service: String,
    },
}

async fn run(args: Args) -> Result<ExitCode, CliError> {
    let conn = &args.conn;
    match args.cmd {
        Cmd::Classify(a) => {
            let failed = classify::run(conn, &a).await?;
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Stream(a) => {
            let s = stream::run(conn, &a).await?;
            stream::print_summary(&s);
            Ok(if s.errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Bench(a) => {
            let r = bench::run(conn, &a).await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).expect("report serializes")
                );
            } else {
                bench::print_report(&r);
            }
            Ok(if r.ok > 0 && r.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Info { json } => {
            let info = conn
                .client()
                .await?
                .get_model_info(conn.request(GetModelInfoRequest {}))
                .await?
                .into_inner();
            if json {
                let v = serde_json::json!({
                    "name": info.name, "version": info.version, "sha256": info.sha256, "precision": info.precision,
                    "accuracy": info.accuracy, "limits": info.limits.map(|l| serde_json::json!({
                        "max_batch_size": l.max_batch_size, "max_queue": l.max_queue,
                        "max_image_bytes": l.max_image_bytes, "max_pixels": l.max_pixels,
                        "max_frames_in_flight_per_stream": l.max_frames_in_flight_per_stream,
                        "max_message_bytes": l.max_message_bytes, "default_timeout_ms": l.default_timeout_ms,
                        "max_concurrent_streams_per_connection": l.max_concurrent_streams_per_connection,
                        "queue_policy": l.queue_policy,
                    })),
                    "metadata": info.metadata,
                });
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else {
                println!(
                    "model      {} {} ({})",
                    info.name, info.version, info.precision
                );
                println!("sha256     {}", info.sha256);
                if let (Some(i), Some(o)) = (&info.input, &info.output) {
                    println!("input      {} {} {:?}", i.name, i.dtype, i.shape);
                    println!("output     {} {} {:?}", o.name, o.dtype, o.shape);
                }
                let mut acc: Vec<_> = info.accuracy.iter().collect();
                acc.sort_by(|a, b| a.0.cmp(b.0));
                for (k, v) in acc {
                    println!("accuracy   {k:<60} {:.4}", v);
                }
                if let Some(l) = info.limits {
                    println!(
                        "limits     max batch {}, max queue {} ({}), max image {} bytes / {} pixels, max message {} bytes, {} frames in flight per stream, {} streams per connection, default timeout {} ms",
                        l.max_batch_size,
                        l.max_queue,
                        l.queue_policy,
                        l.max_image_bytes,
                        l.max_pixels,
                        l.max_message_bytes,
                        l.max_frames_in_flight_per_stream,
                        l.max_concurrent_streams_per_connection,
                        l.default_timeout_ms
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Health { service } => {
            use tonic_health::pb::{
                HealthCheckRequest, health_check_response::ServingStatus,
                health_client::HealthClient,
            };
            let mut h = HealthClient::new(conn.channel().await?);
            let s = h
                .check(conn.request(HealthCheckRequest { service }))
                .await?
                .into_inner()
                .status;
            let s = ServingStatus::try_from(s).unwrap_or(ServingStatus::Unknown);
            println!("{}", s.as_str_name());
            Ok(if s == ServingStatus::Serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mnister: {e}");
            ExitCode::from(2)
        }
    }
}
