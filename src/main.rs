//! The `callbridge` binary: a thin command line over the library.
fn main() {}
