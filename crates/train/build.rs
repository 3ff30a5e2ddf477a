//! Compiles the ONNX subset with the pure-Rust `protox` compiler (no `protoc`
//! needed), and records the commit the trainer was built from for the
//! exported model's metadata.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto/onnx");
    let onnx = protox::compile(["onnx/onnx.proto"], ["../../proto"])?;
    prost_build::Config::new().compile_fds(onnx)?;
    git_commit();
    Ok(())
}

fn git_commit() {
    for p in ["../../.git/HEAD", "../../.git/refs/heads"] {
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
