//! Hashes the files named on the command line on four worker processes:
//! the short way to a process pool (a `jobs!` function and
//! `process_pool`). The same program with rayon is in the crate docs.
//!
//! ```sh
//! cargo run --example hash -- Cargo.toml README.md no-such-file
//! ```

use std::hash::{DefaultHasher, Hasher};

portpool::jobs! {
    fn hash(path: String) -> Result<u64, String> {
        let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
        let mut h = DefaultHasher::new();
        h.write(&bytes);
        Ok(h.finish())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = portpool::process_pool(4, hash)?;
    let paths: Vec<String> = std::env::args().skip(1).collect();
    for (path, h) in paths.iter().zip(pool.map_fn(hash, paths.clone())) {
        println!("{:016x}  {path}", h?);
    }
    Ok(())
}
