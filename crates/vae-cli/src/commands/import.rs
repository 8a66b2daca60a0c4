//! `vae import`: a folder of PNGs in, as IDX files.

use anyhow::{Context, Result};
use vae_data::{Split, import_png_folder};

use crate::args::ImportArgs;

pub fn run(a: ImportArgs) -> Result<u8> {
    let imported = import_png_folder(&a.folder, a.test_fraction, a.seed)?;
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
