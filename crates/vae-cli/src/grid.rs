//! PNG image grids.

use std::path::Path;

use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

/// Tiles `images` (`[N, 1, H, W]`, values in [0, 1]) into a grid of `cols` columns with a
/// 2-pixel dark border, and writes it to `path` as an 8-bit grayscale PNG (atomically).
/// Returns the PNG's (width, height).
pub fn save_grid(path: &Path, images: &Tensor, cols: usize) -> Result<(u32, u32)> {
    let size = images.size();
    if size.len() != 4 || size[1] != 1 {
        bail!("cannot tile images of shape {size:?}: expected [N, 1, H, W]");
    }
    let (n, h, w) = (size[0] as usize, size[2] as usize, size[3] as usize);
    if n == 0 || cols == 0 {
        bail!("nothing to draw");
    }
    let rows = n.div_ceil(cols);
    let pad = 2;
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    let pixels: Vec<f32> = Vec::try_from(
        &images
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .view([-1]),
    )?;
    let mut canvas = vec![40u8; gw * gh];
    for k in 0..n {
        let (r, c) = (k / cols, k % cols);
        let (y0, x0) = (pad + r * (h + pad), pad + c * (w + pad));
        for i in 0..h {
            for j in 0..w {
                let v = pixels[k * h * w + i * w + j];
                canvas[(y0 + i) * gw + x0 + j] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, gw as u32, gh as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&canvas)?;
    }
    vae_data::write_atomic(path, &bytes)?;
    Ok((gw as u32, gh as u32))
}
