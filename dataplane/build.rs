//! Compiles the XDP steering program (bpf/steer.c) with clang into OUT_DIR; the
//! crate embeds the object with `include_bytes!` (src/io/steering.rs). Fails with
//! a clear message when clang is missing or the compile fails. It touches nothing
//! outside OUT_DIR.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let src = manifest.join("bpf/steer.c");
    let obj = out.join("steer.bpf.o");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=NODEPLANE_CLANG");
    println!("cargo:rerun-if-env-changed=DEP_BPF_INCLUDE");

    let clang = env::var("NODEPLANE_CLANG").unwrap_or_else(|_| "clang".to_string());
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]);
    // libbpf-sys exports its vendored headers (bpf/bpf_helpers.h) to direct dependents.
    if let Some(inc) = env::var_os("DEP_BPF_INCLUDE") {
        cmd.arg("-I").arg(inc);
    }
    // <linux/types.h> pulls <asm/types.h>, which lives under the multiarch dir.
    for dir in multiarch_include_dirs() {
        cmd.arg("-I").arg(dir);
    }
    cmd.arg("-c").arg(&src).arg("-o").arg(&obj);
    let status = match cmd.status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: cannot run `{clang}` to compile the XDP steering program ({e}).\n\
                 Install clang (apt-get install clang llvm libelf-dev) or set NODEPLANE_CLANG."
            );
            std::process::exit(1);
        }
    };
    if !status.success() {
        eprintln!(
            "error: `{clang}` failed to compile {} ({status})",
            src.display()
        );
        std::process::exit(1);
    }
}

fn multiarch_include_dirs() -> Vec<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        _ => return Vec::new(),
    };
    let dir = Path::new("/usr/include").join(triple);
    if dir.is_dir() {
        vec![dir]
    } else {
        Vec::new()
    }
}
