//! Link settings that keep the daemon's resident set small (ARCHITECTURE.md, "The binary's own memory").
//!
//! - Packed relative relocations (RELR): a position-independent binary otherwise carries one
//!   24-byte record per pointer in its read-only data, which the loader reads at every start
//!   and which then stays in the resident set (about 1 MB of jobsd's). The same relocations
//!   packed are a few kilobytes. Needs GNU ld 2.38 or lld, and glibc 2.36.
//! - The functions a replica runs first (`link/hot-functions.txt`, written by
//!   `scripts/hot-functions`): the kernel maps code in 64 KiB windows around each page that
//!   runs, so code used together is best laid out together. Only lld reads the list, and lld is
//!   rustc's own linker for this target since Rust 1.90; elsewhere the list is left out.
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");

    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-functions.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    if list.exists() && links_with_lld() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            list.display()
        );
        // Names the build no longer has (a function renamed or gone) are skipped in silence.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether rustc links this build with its own lld: on x86_64 Linux from Rust 1.90, unless the
/// build names another linker (cargo's `linker` setting, or `-C linker` or `-fuse-ld` in the
/// flags).
fn links_with_lld() -> bool {
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let target = std::env::var("TARGET").unwrap_or_default();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu"
        || std::env::var_os("RUSTC_LINKER").is_some()
        || flags.contains("linker")
        || flags.contains("fuse-ld")
    {
        return false;
    }
    // Not the rustc_version crate: a dependency more changes the symbol names the list holds.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(output) = Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&output.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|number| number.split('.').nth(1))
        .and_then(|minor| minor.parse::<u32>().ok());
    minor.is_some_and(|minor| minor >= 90)
}
