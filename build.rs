//! Compiles the public API (`proto/mnister/v1`, and KServe v2 under
//! `proto/inference`) with the pure-Rust `protox` compiler, so no `protoc`
//! binary is needed on any machine that builds mnister. Byte fields decode
//! to `bytes::Bytes`: an image travels from the HTTP/2 buffer to the
//! preprocessing without a copy.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto/mnister");
    println!("cargo:rerun-if-changed=proto/inference");

    // Messages plus server stubs (and client stubs, for the tests), and a
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
        .bytes(".")
        .compile_fds(api)?;
    Ok(())
}
