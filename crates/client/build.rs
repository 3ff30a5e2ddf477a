//! Generates the client's stubs from the repository's `proto/` with the
//! pure-Rust `protox` compiler: the client is built from the published API
//! alone, the way any other team's client is.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto/mnister");
    let api = protox::compile(["mnister/v1/classifier.proto"], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(api)?;
    Ok(())
}
