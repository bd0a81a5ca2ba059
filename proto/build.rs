//! Compiles `proto/*.proto` into Rust with a pure-Rust protobuf compiler (protox), so building
//! needs no `protoc`. The descriptor set is kept too: the service's reflection serves it.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &["proto/prediction.proto", "proto/inference.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
