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

/// Most pixels [`render_pixels`] produces: a 64 MiB image, far beyond any screen.
pub const MAX_QR_PIXELS: usize = 64 * 1024 * 1024;

/// Renders `text` to pixels, `scale` pixels per module (at least 1), with a four-module quiet
/// zone. A scale whose image would exceed [`MAX_QR_PIXELS`] (or overflow) is
/// [`LinkError::ImageTooLarge`].
pub fn render_pixels(text: &str, scale: usize) -> Result<QrPixels, LinkError> {
    let code = code(text)?;
    let modules = code.width();
    let colors = code.to_colors();
    let scale = scale.max(1);
    let size = modules
        .checked_add(8)
        .and_then(|quiet| quiet.checked_mul(scale))
        .filter(|size| size.checked_mul(*size).is_some_and(|area| area <= MAX_QR_PIXELS))
        .ok_or(LinkError::ImageTooLarge)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_past_the_pixel_bound_is_refused_not_overflowed() {
        let text = "MULTIDEVICE://LINK/1/ABC";
        let modules = code(text).unwrap().width() + 8;
        let largest = (1..).take_while(|s| (modules * s) * (modules * s) <= MAX_QR_PIXELS).last();
        let largest = largest.unwrap();
        assert_eq!(render_pixels(text, largest).unwrap().size, modules * largest);
        assert_eq!(render_pixels(text, largest + 1), Err(LinkError::ImageTooLarge));
        assert_eq!(render_pixels(text, usize::MAX), Err(LinkError::ImageTooLarge));
    }
}
