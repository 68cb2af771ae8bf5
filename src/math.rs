//! The two functions of the C math library the binary calls (`pow`, from Rust's `f64::powf` in
//! the progress bars and metrics; `log`, from SQLite), defined here by the `libm` crate. Every
//! call then resolves inside the binary, and the linker, which keeps only libraries something
//! needs, drops `libm.so.6`: the loader no longer maps and relocates it at every start, which
//! left about 0.5 MB of it in the resident set for two functions.

/// `x` to the power `y`.
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

/// The natural logarithm of `x`.
#[unsafe(no_mangle)]
pub extern "C" fn log(x: f64) -> f64 {
    libm::log(x)
}
