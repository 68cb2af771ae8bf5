//! Links the daemon with packed relative relocations (RELR): a position-independent binary
//! otherwise carries one 24-byte record per pointer in its read-only data, which the loader
//! reads at every start and which then stays in the resident set (about 1 MB of jobsd's).
//! The same relocations packed are a few kilobytes. Needs GNU ld 2.38 or lld, and glibc 2.36.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
