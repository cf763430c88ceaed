//! Compiles `proto/pgw.proto` into tonic clients and servers with the vendored protoc, so the
//! build needs no system protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not `env!` at the build script's compile time: a build script binary
    // reused from another checkout (a copied target dir) would compile that checkout's proto.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let proto_dir = std::path::Path::new(&manifest_dir).join("../../proto");
    let file = proto_dir.join("pgw.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let mut cfg = prost_build::Config::new();
    cfg.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .bytes(".")
        .compile_with_config(cfg, &[file], &[proto_dir])?;
    Ok(())
}
