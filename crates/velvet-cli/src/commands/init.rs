//! `velvet init`: a commented starter velvet.yaml and a fresh keyring (mode 0600).

use super::Context;
use crate::exit::Failure;
use chrono::Utc;
use std::path::Path;
use velvet_core::keyring::Keyring;

pub const STARTER: &str = include_str!("../../templates/velvet.yaml");

pub fn run(_ctx: &Context, dir: &Path, force: bool) -> Result<(), Failure> {
    let written = write_starter(dir, force)?;
    println!("Wrote {} and {} (mode 0600).", written.0, written.1);
    println!("Next: edit velvet.yaml, check it with `velvet validate`, then `velvet serve`.");
    println!("Back up the keyring: without it, stored versions cannot be decrypted.");
    Ok(())
}

/// Writes the starter files into `dir`; returns their paths for display.
pub fn write_starter(dir: &Path, force: bool) -> Result<(String, String), Failure> {
    if !dir.is_dir() {
        return Err(Failure::usage(format!(
            "{} is not a directory; create it first or pass another --dir",
            dir.display()
        )));
    }
    let config = dir.join("velvet.yaml");
    let keys = dir.join("velvet-keys.json");
    if !force {
        for p in [&config, &keys] {
            if p.exists() {
                return Err(Failure::usage(format!(
                    "{} already exists; pass --force to overwrite (an existing keyring is kept as a backup)",
                    p.display()
                )));
            }
        }
    }
    if keys.exists() {
        // Overwriting a keyring would orphan every value sealed under it: keep it.
        let backup = dir.join(format!(
            "velvet-keys.json.bak-{}",
            Utc::now().format("%Y%m%dT%H%M%S")
        ));
        std::fs::rename(&keys, &backup)?;
        eprintln!("kept the previous keyring as {}", backup.display());
    }
    std::fs::write(&config, STARTER)?;
    Keyring::generate(&keys, Utc::now()).save()?;
    Ok((config.display().to_string(), keys.display().to_string()))
}
