//! `vae import`: a folder of PNGs in, as IDX files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use vae_data::{ImportOptions, Split, default_max_set_bytes, import_png_folder};

use crate::args::ImportArgs;

/// The data-set files in `dir` that a loader may read (every name either split looks for).
fn data_set_files(dir: &Path) -> Vec<PathBuf> {
    [Split::Train, Split::Test]
        .into_iter()
        .flat_map(|s| s.file_candidates().into_iter().flatten())
        .map(|name| dir.join(name))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect()
}

/// Refuses an `--out` that already holds files unless `--force`.
fn check_out(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!(
            "--out {} is a file: name a folder for the data set's IDX files",
            out.display()
        );
    }
    let used = out.is_dir()
        && std::fs::read_dir(out)
            .with_context(|| format!("cannot read the output folder {}", out.display()))?
            .next()
            .is_some();
    if used && !force {
        bail!(
            "--out {} already holds files: choose an empty or new folder, or pass --force to replace the data set there",
            out.display()
        );
    }
    Ok(())
}

/// Removes the data-set files in `out`, so that none is left over from an earlier import for
/// the loader to pick (once the new set is read, so that a failed import loses nothing).
fn remove_old_data_set(out: &Path) -> Result<()> {
    for stale in data_set_files(out) {
        std::fs::remove_file(&stale)
            .with_context(|| format!("cannot remove the old {}", stale.display()))?;
        println!("removed {}", stale.display());
    }
    Ok(())
}

pub fn run(a: ImportArgs) -> Result<u8> {
    check_out(&a.out, a.force)?;
    let options = ImportOptions {
        test_fraction: a.test_fraction,
        seed: a.seed,
        background: a.background,
        max_pixels: a.max_pixels,
        max_set_bytes: a.max_set_size.unwrap_or_else(default_max_set_bytes),
    };
    let imported = import_png_folder(&a.folder, &options)?;
    remove_old_data_set(&a.out)?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create the output folder {}", a.out.display()))?;
    let mut written = imported.train.save(&a.out, Split::Train)?;
    written.extend(imported.test.save(&a.out, Split::Test)?);
    let (h, w) = imported.train.image_size();
    let mode = if imported.train.channels() == 3 {
        "RGB"
    } else {
        "grey"
    };
    let classes = if imported.classes.is_empty() {
        "unlabelled".to_string()
    } else {
        format!(
            "{} classes: {}",
            imported.classes.len(),
            imported
                .classes
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{i} = {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    println!(
        "imported {} training and {} test images ({w}x{h} {mode}; {classes}) into {}",
        imported.train.len(),
        imported.test.len(),
        a.out.display()
    );
    for path in written {
        println!("wrote {}", path.display());
    }
    println!("train on it with `vae train --data {}`", a.out.display());
    Ok(0)
}
