//! Compiles the protobuf schemas with the pure-Rust `protox` compiler, so no
//! `protoc` binary is needed on any machine that builds mnister.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");

    // ONNX subset: plain prost messages, used by the exporter and by the
    // server to read model metadata.
    let onnx = protox::compile(["onnx/onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(onnx)?;

    // The public API: messages plus tonic server/client stubs, and a
    // descriptor set for gRPC reflection.
    let api_files = ["mnister/v1/classifier.proto"];
    let api = protox::compile(api_files, ["proto"])?;
    let descriptor_path = out_dir.join("mnister_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&api))?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(api)?;
    Ok(())
}
