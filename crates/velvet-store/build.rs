//! Embeds every file under migrations/<dialect>/ so adding a migration needs no code change.
use std::fmt::Write;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let mut out = String::new();
    for dialect in ["sqlite", "postgres"] {
        let dir = Path::new("migrations").join(dialect);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                e.expect("readable dir entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8 name")
            })
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        writeln!(
            out,
            "pub(crate) const {}: &[(&str, &str)] = &[",
            dialect.to_uppercase()
        )
        .unwrap();
        for f in files {
            let abs = std::fs::canonicalize(dir.join(&f)).expect("file exists");
            writeln!(
                out,
                "    ({f:?}, include_str!({:?})),",
                abs.display().to_string()
            )
            .unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let dest =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("migrations.rs");
    std::fs::write(dest, out).expect("write generated file");
}
