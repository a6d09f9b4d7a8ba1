//! Builds the kernel fast path's BPF program (bpf/forward.bpf.c) with clang
//! when clang is installed. Without clang the relay builds all the same and
//! `--kernel-forwarding` says at start that this build has no program:
//! a fresh machine with only the Rust toolchain still builds and runs.
//!
//! Why C and clang rather than a Rust BPF crate: Rust BPF programs need a
//! nightly toolchain and bpf-linker, which a fresh clone cannot get from
//! the registries; clang is a Debian package, and the loader (aya) is a
//! plain crate.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "bpf/forward.bpf.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=BATON_CLANG");
    println!("cargo:rustc-check-cfg=cfg(baton_bpf)");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("forward.bpf.o");
    let clang = std::env::var("BATON_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if !linux {
        return;
    }
    // The UAPI headers' asm/ directory is per architecture.
    let multiarch = Command::new("gcc")
        .arg("-dumpmachine")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| {
            format!(
                "{}-linux-gnu",
                std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default()
            )
        });
    let built = Command::new(&clang)
        .args([
            "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
        ])
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", source, "-o"])
        .arg(&object)
        .status();
    match built {
        Ok(status) if status.success() => {
            println!("cargo:rustc-cfg=baton_bpf");
        }
        Ok(status) => {
            // A program that does not compile is a bug to see, not to hide.
            panic!("{clang} failed on {source}: {status}");
        }
        Err(e) => {
            println!(
                "cargo:warning=kernel fast path not built: {clang} not found ({e}); install clang for --kernel-forwarding"
            );
        }
    }
}
