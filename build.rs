//! Embeds the built-in catalog (`config/catalog/*.toml`) into the binary.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new("config/catalog");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("config/catalog exists")
        .map(|e| e.expect("readable config/catalog").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = String::from("&[\n");
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
        let abs = std::fs::canonicalize(&f).expect("canonical path");
        let name = f
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            abs.display().to_string()
        )
        .expect("write");
    }
    out.push(']');
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("builtin_catalog.rs");
    std::fs::write(dest, out).expect("write builtin_catalog.rs");
}
