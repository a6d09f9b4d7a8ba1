//! Compiles `baton.proto` with protox (a pure-Rust protobuf compiler), so the
//! build needs no `protoc` binary, then generates prost types and, with
//! pbjson, their canonical proto3 JSON mapping (used by `baton ctl`).

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=baton.proto");
    let descriptors = protox::compile(["baton.proto"], ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_bytes = descriptors.encode_to_vec();
    std::fs::write(out_dir.join("baton_descriptor.bin"), &descriptor_bytes)?;

    prost_build::Config::new().compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        // Keep snake_case names and print zero values: operators grep and jq
        // the output and expect `"sessions": 0`, not a missing key.
        .preserve_proto_field_names()
        .emit_fields()
        .build(&[".baton.v1"])?;
    Ok(())
}
