fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/swarmgate.proto");
    println!("cargo:rerun-if-changed=proto/cluster.proto");
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(
            &["proto/swarmgate.proto", "proto/cluster.proto"],
            &["proto"],
        )?;
    Ok(())
}
