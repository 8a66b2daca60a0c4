//! Small RGB charts written as PNG: line charts (training curves) and scatter plots (latent
//! spaces), drawn with `embedded-graphics` and its built-in bitmap font.

use std::path::Path;

use anyhow::Result;
use embedded_graphics::mono_font::{MonoTextStyle, ascii::FONT_6X10};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Circle, Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};

/// Ten distinguishable colours (matplotlib's tab10), one per class.
pub const PALETTE: [Rgb888; 10] = [
    Rgb888::new(31, 119, 180),
    Rgb888::new(255, 127, 14),
    Rgb888::new(44, 160, 44),
    Rgb888::new(214, 39, 40),
    Rgb888::new(148, 103, 189),
    Rgb888::new(140, 86, 75),
    Rgb888::new(227, 119, 194),
    Rgb888::new(127, 127, 127),
    Rgb888::new(188, 189, 34),
    Rgb888::new(23, 190, 207),
];

/// An RGB pixel buffer that `embedded-graphics` draws on.
pub struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            pixels: vec![255; (width * height * 3) as usize],
        }
    }

    /// Encodes it as an RGB PNG, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.width, self.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.write_header()?.write_image_data(&self.pixels)?;
        }
        vae_data::write_atomic(path, &bytes)?;
        Ok(())
    }
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Self::Error> {
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < self.width && (p.y as u32) < self.height {
                let i = ((p.y as u32 * self.width + p.x as u32) * 3) as usize;
                self.pixels[i..i + 3].copy_from_slice(&[c.r(), c.g(), c.b()]);
            }
        }
        Ok(())
    }
}

/// Maps data coordinates into a pixel rectangle.
struct Frame {
    left: i32,
    top: i32,
    width: i32,
    height: i32,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn point(&self, x: f64, y: f64) -> Point {
        let fx = (x - self.x.0) / (self.x.1 - self.x.0);
        let fy = (y - self.y.0) / (self.y.1 - self.y.0);
        Point::new(
            self.left + (fx * self.width as f64).round() as i32,
            self.top + self.height - (fy * self.height as f64).round() as i32,
        )
    }
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// Tick values at round steps (1, 2 or 5 × 10^k) inside `[lo, hi]`, about five of them, and
/// the decimals their labels need: epochs get 0, 25, 50 rather than −3.95, 23.3, ….
fn ticks(lo: f64, hi: f64) -> (Vec<f64>, usize) {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return (vec![lo], 2);
    }
    let magnitude = 10f64.powf((span / 5.0).log10().floor());
    let count = |step: f64| (hi / step).floor() as i64 - (lo / step).ceil() as i64 + 1;
    // The round step whose tick count is nearest five (the smaller step on a tie).
    let step = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0]
        .iter()
        .map(|m| m * magnitude)
        .min_by_key(|&s| (count(s) - 5).abs())
        .expect("candidates");
    let values = ((lo / step).ceil() as i64..=(hi / step).floor() as i64)
        .map(|k| k as f64 * step)
        .collect();
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    (values, decimals)
}

const BLACK: Rgb888 = Rgb888::BLACK;

/// Draws axes with round-valued ticks, a title and an x-axis name; returns the data frame.
fn axes(
    c: &mut Canvas,
    rect: Rectangle,
    x: (f64, f64),
    y: (f64, f64),
    title: &str,
    x_name: &str,
) -> Frame {
    let font = MonoTextStyle::new(&FONT_6X10, BLACK);
    let (left, top) = (rect.top_left.x + 48, rect.top_left.y + 18);
    let (width, height) = (rect.size.width as i32 - 60, rect.size.height as i32 - 44);
    let frame = Frame {
        left,
        top,
        width,
        height,
        x,
        y,
    };
    let _ = Rectangle::new(
        Point::new(left, top),
        Size::new(width as u32, height as u32),
    )
    .into_styled(PrimitiveStyle::with_stroke(BLACK, 1))
    .draw(c);
    let _ = Text::with_alignment(
        title,
        Point::new(left + width / 2, top - 6),
        font,
        Alignment::Center,
    )
    .draw(c);
    let _ = Text::with_alignment(
        x_name,
        Point::new(left + width / 2, top + height + 24),
        font,
        Alignment::Center,
    )
    .draw(c);
    let (x_ticks, x_decimals) = ticks(x.0, x.1);
    for xv in x_ticks {
        let px = frame.point(xv, y.0);
        let _ = Line::new(px, px + Point::new(0, 3))
            .into_styled(PrimitiveStyle::with_stroke(BLACK, 1))
            .draw(c);
        let text = format!("{xv:.x_decimals$}");
        let _ =
            Text::with_alignment(&text, px + Point::new(0, 13), font, Alignment::Center).draw(c);
    }
    let (y_ticks, y_decimals) = ticks(y.0, y.1);
    for yv in y_ticks {
        let py = frame.point(x.0, yv);
        let _ = Line::new(py, py - Point::new(3, 0))
            .into_styled(PrimitiveStyle::with_stroke(BLACK, 1))
            .draw(c);
        let text = format!("{yv:.y_decimals$}");
        let _ = Text::with_alignment(&text, py + Point::new(-5, 3), font, Alignment::Right).draw(c);
    }
    frame
}

/// One line of a chart.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Colour.
    pub color: Rgb888,
    /// (x, y) points in order.
    pub points: Vec<(f64, f64)>,
}

/// One panel of a line chart.
pub struct Panel {
    /// Title above it.
    pub title: String,
    /// Name of the x axis.
    pub x_name: String,
    /// Its lines.
    pub series: Vec<Series>,
}

/// Panels side by side, each with its own axes and legend, as one PNG.
pub fn line_chart(path: &Path, panels: &[Panel]) -> Result<()> {
    let (pw, ph) = (340u32, 260u32);
    let mut c = Canvas::new(pw * panels.len().max(1) as u32, ph);
    let font = MonoTextStyle::new(&FONT_6X10, BLACK);
    for (k, panel) in panels.iter().enumerate() {
        let rect = Rectangle::new(Point::new((k as u32 * pw) as i32, 0), Size::new(pw, ph));
        let pts = || panel.series.iter().flat_map(|s| s.points.iter());
        let x = range(pts().map(|p| p.0));
        let y = range(pts().map(|p| p.1));
        let frame = axes(&mut c, rect, x, y, &panel.title, &panel.x_name);
        for (i, s) in panel.series.iter().enumerate() {
            let style = PrimitiveStyle::with_stroke(s.color, 2);
            for w in s.points.windows(2) {
                let _ = Line::new(frame.point(w[0].0, w[0].1), frame.point(w[1].0, w[1].1))
                    .into_styled(style)
                    .draw(&mut c);
            }
            for p in &s.points {
                let _ = Circle::with_center(frame.point(p.0, p.1), 5)
                    .into_styled(PrimitiveStyle::with_fill(s.color))
                    .draw(&mut c);
            }
            let at = Point::new(frame.left + 8, frame.top + 12 + 12 * i as i32);
            let _ = Line::new(at + Point::new(0, -3), at + Point::new(14, -3))
                .into_styled(style)
                .draw(&mut c);
            let _ = Text::new(&s.name, at + Point::new(18, 0), font).draw(&mut c);
        }
    }
    c.save(path)
}

/// A scatter plot of `points` (x, y, class), coloured by class, with a legend of the classes.
pub fn scatter(
    path: &Path,
    points: &[(f64, f64, u8)],
    title: &str,
    x_name: &str,
    y_name: &str,
) -> Result<()> {
    let (w, h) = (560u32, 500u32);
    let mut c = Canvas::new(w, h);
    let font = MonoTextStyle::new(&FONT_6X10, BLACK);
    let x = range(points.iter().map(|p| p.0));
    let y = range(points.iter().map(|p| p.1));
    let frame = axes(
        &mut c,
        Rectangle::new(Point::zero(), Size::new(w - 60, h)),
        x,
        y,
        title,
        x_name,
    );
    let _ = Text::new(y_name, Point::new(4, 12), font).draw(&mut c);
    for &(px, py, class) in points {
        let color = PALETTE[usize::from(class) % PALETTE.len()];
        let _ = Circle::with_center(frame.point(px, py), 3)
            .into_styled(PrimitiveStyle::with_fill(color))
            .draw(&mut c);
    }
    let mut classes: Vec<u8> = points.iter().map(|p| p.2).collect();
    classes.sort_unstable();
    classes.dedup();
    for (i, class) in classes.iter().enumerate() {
        let at = Point::new(w as i32 - 52, 30 + 14 * i as i32);
        let color = PALETTE[usize::from(*class) % PALETTE.len()];
        let _ = Circle::with_center(at, 7)
            .into_styled(PrimitiveStyle::with_fill(color))
            .draw(&mut c);
        let _ = Text::new(&class.to_string(), at + Point::new(10, 3), font).draw(&mut c);
    }
    c.save(path)
}

#[cfg(test)]
mod tests {
    use super::ticks;

    #[test]
    fn ticks_fall_on_round_values_inside_the_range() {
        let (t, d) = ticks(-3.95, 105.0);
        assert_eq!(t, vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(d, 0);
        let (t, d) = ticks(-188.0, -79.0);
        assert_eq!(t, vec![-180.0, -160.0, -140.0, -120.0, -100.0, -80.0]);
        assert_eq!(d, 0);
        let (t, d) = ticks(0.12, 0.61);
        assert_eq!(d, 1);
        assert_eq!(t.len(), 5, "{t:?}");
        assert!(
            (t[0] - 0.2).abs() < 1e-12 && (t[4] - 0.6).abs() < 1e-12,
            "{t:?}"
        );
        for (lo, hi) in [(0.0, 1.0), (9.99, 27.5), (52.3, 178.0), (-1e-3, 2e-3)] {
            let (t, _) = ticks(lo, hi);
            assert!((3..=6).contains(&t.len()), "{lo}..{hi}: {t:?}");
            assert!(t.iter().all(|v| (lo..=hi).contains(v)), "{lo}..{hi}: {t:?}");
        }
    }
}
