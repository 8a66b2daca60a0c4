//! PNG image grids.

use std::path::Path;

use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

/// A PNG file in memory.
#[derive(Debug, Clone)]
pub struct Png {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 (grey) or 3 (RGB).
    pub channels: u8,
}

/// Tiles `images` (`[N, C, H, W]` with C = 1 or 3, values in [0, 1]) into a grid of `cols`
/// columns with a 2-pixel dark border, and writes it to `path` as an 8-bit grey or RGB PNG
/// (atomically). Returns the PNG's (width, height).
pub fn save_grid(path: &Path, images: &Tensor, cols: usize) -> Result<(u32, u32)> {
    let png = grid_png(images, cols)?;
    vae_data::write_atomic(path, &png.bytes)?;
    Ok((png.width, png.height))
}

/// The grid of [`save_grid`], as a PNG in memory.
pub fn grid_png(images: &Tensor, cols: usize) -> Result<Png> {
    tile_png(images, cols, 2)
}

/// One image (`[1, C, H, W]` or `[C, H, W]`, values in [0, 1]) as a PNG, without a border.
pub fn image_png(image: &Tensor) -> Result<Png> {
    let size = image.size();
    let image = if size.len() == 3 {
        image.unsqueeze(0)
    } else {
        image.shallow_clone()
    };
    tile_png(&image, 1, 0)
}

fn tile_png(images: &Tensor, cols: usize, pad: usize) -> Result<Png> {
    let size = images.size();
    if size.len() != 4 || !matches!(size[1], 1 | 3) {
        bail!("cannot tile images of shape {size:?}: expected [N, 1 or 3, H, W]");
    }
    let (n, c, h, w) = (
        size[0] as usize,
        size[1] as usize,
        size[2] as usize,
        size[3] as usize,
    );
    if n == 0 || cols == 0 {
        bail!("nothing to draw");
    }
    let rows = n.div_ceil(cols);
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    // Channels last, as PNG stores them.
    let pixels: Vec<f32> = Vec::try_from(
        &images
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .permute([0, 2, 3, 1])
            .contiguous()
            .view([-1]),
    )?;
    let mut canvas = vec![40u8; gw * gh * c];
    for k in 0..n {
        let (r, col) = (k / cols, k % cols);
        let (y0, x0) = (pad + r * (h + pad), pad + col * (w + pad));
        for i in 0..h {
            for j in 0..w {
                for ch in 0..c {
                    let v = pixels[((k * h + i) * w + j) * c + ch];
                    canvas[((y0 + i) * gw + x0 + j) * c + ch] =
                        (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                }
            }
        }
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, gw as u32, gh as u32);
        enc.set_color(if c == 3 {
            png::ColorType::Rgb
        } else {
            png::ColorType::Grayscale
        });
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&canvas)?;
    }
    Ok(Png {
        bytes,
        width: gw as u32,
        height: gh as u32,
        channels: c as u8,
    })
}
