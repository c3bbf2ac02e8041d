//! Build script: compiles proto/onnx.proto with protox (no protoc needed),
//! sets an rpath to libtorch so binaries need no LD_LIBRARY_PATH, and records
//! where the onnxruntime shared library of the project's virtual environment is.

use std::env;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    println!("cargo:rerun-if-env-changed=IBAU_VENV");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = protox::compile(["proto/onnx.proto"], ["proto"])?;
    std::fs::write(
        out_dir.join("onnx_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Initializer bytes as `bytes::Bytes`: decoding a model read into one
    // `Bytes` buffer slices it instead of copying every tensor's data.
    prost_build::Config::new()
        .bytes([".onnx.TensorProto.raw_data"])
        .compile_fds(descriptors)?;

    if let Ok(lib) = env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }

    let ort = env::var("IBAU_VENV")
        .ok()
        .and_then(|venv| find_onnxruntime(Path::new(&venv)));
    println!(
        "cargo:rustc-env=IBAU_ORT_DYLIB={}",
        ort.map(|p| p.display().to_string()).unwrap_or_default()
    );
    Ok(())
}

/// The versioned `libonnxruntime.so.1.N.M` of the onnxruntime wheel in `venv`.
fn find_onnxruntime(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    for python in std::fs::read_dir(&lib).ok()?.flatten() {
        let capi = python.path().join("site-packages/onnxruntime/capi");
        println!("cargo:rerun-if-changed={}", capi.display());
        let Ok(entries) = std::fs::read_dir(&capi) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so.1."))
            })
            .collect();
        found.sort();
        if let Some(path) = found.pop() {
            return Some(path);
        }
    }
    None
}
