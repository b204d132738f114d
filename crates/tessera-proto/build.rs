//! Compiles `proto/tessera/v1/*.proto` with protox (pure Rust: no system `protoc`).

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    // protox does not emit rerun-if-changed lines itself.
    println!("cargo:rerun-if-changed={}", root.display());
    let files = ["agent", "orchestrator", "admin", "verifier", "common"].map(|name| format!("tessera/v1/{name}.proto"));
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // For gRPC server reflection.
    std::fs::write(out.join("tessera_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
