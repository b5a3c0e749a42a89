//! Rendering link offers as real QR codes (feature `qr`).

use qrcode::{Color, EcLevel, QrCode};

use crate::error::LinkError;

/// A rendered QR code: a square grayscale image, one byte per pixel (0 black, 255 white).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrPixels {
    /// Width and height in pixels.
    pub size: usize,
    /// Row-major pixels.
    pub pixels: Vec<u8>,
}

fn code(text: &str) -> Result<QrCode, LinkError> {
    QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|_| LinkError::BadEncoding)
}

/// Renders `text` for a terminal, two modules per character cell.
pub fn render_terminal(text: &str) -> Result<String, LinkError> {
    Ok(code(text)?
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build())
}

/// Renders `text` to pixels, `scale` pixels per module, with a four-module quiet zone.
pub fn render_pixels(text: &str, scale: usize) -> Result<QrPixels, LinkError> {
    let code = code(text)?;
    let modules = code.width();
    let colors = code.to_colors();
    let scale = scale.max(1);
    let size = (modules + 8) * scale;
    let mut pixels = vec![255u8; size * size];
    for (index, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (row, column) = (index / modules + 4, index % modules + 4);
        for y in row * scale..(row + 1) * scale {
            if let Some(line) =
                pixels.get_mut(y * size + column * scale..y * size + (column + 1) * scale)
            {
                line.fill(0);
            }
        }
    }
    Ok(QrPixels { size, pixels })
}
