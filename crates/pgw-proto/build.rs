//! Compiles `proto/pgw.proto` into tonic clients and servers with the vendored protoc, so the
//! build needs no system protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = proto_dir.join("pgw.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let mut cfg = prost_build::Config::new();
    cfg.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .bytes(".")
        .compile_with_config(cfg, &[file], &[proto_dir])?;
    Ok(())
}
