//! Compiles the protobuf schemas with the pure-Rust `protox` compiler, so no
//! `protoc` binary is needed on any machine that builds mnister.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    git_commit();

    // ONNX subset: plain prost messages, used by the exporter and by the
    // server to read model metadata.
    let onnx = protox::compile(["onnx/onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(onnx)?;

    // The public API: messages plus tonic server/client stubs, and a
    // descriptor set for gRPC reflection.
    let api_files = [
        "mnister/v1/classifier.proto",
        "mnister/v1/admin.proto",
        "inference/grpc_service.proto",
    ];
    let api = protox::compile(api_files, ["proto"])?;
    let descriptor_path = out_dir.join("mnister_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&api))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(api)?;
    Ok(())
}

/// Records the commit the binaries were built from, for model metadata.
fn git_commit() {
    for p in [".git/HEAD", ".git/refs/heads"] {
        if std::path::Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    let commit = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MNISTER_GIT_COMMIT={commit}");
}
