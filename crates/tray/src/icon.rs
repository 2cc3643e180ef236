//! The tray icon, drawn in code: a disc whose colour and shape say the overall health — so it
//! reads without colour too — and no icon theme to depend on.
//!
//! - fine: a green disc
//! - busy: an amber ring (a disc with a hole)
//! - failed: a red disc crossed by a white bar
//! - down: a thin grey ring
//!
//! Pixmaps are ARGB32 in network byte order, as StatusNotifierItem wants them; hosts pick the
//! size closest to their panel's.

use crate::model::Health;

/// The sizes offered to the host.
pub const SIZES: [u32; 3] = [22, 32, 48];

/// One pixmap: width, height, ARGB32 bytes (big-endian), row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixmap {
    pub size: u32,
    pub argb: Vec<u8>,
}

type Rgb = (u8, u8, u8);

fn colour(h: Health) -> Rgb {
    match h {
        Health::Fine => (0x2e, 0xa0, 0x43),
        Health::Busy => (0xe0, 0x9b, 0x12),
        Health::Failed => (0xd7, 0x2f, 0x2f),
        Health::Down => (0x8a, 0x8a, 0x8a),
    }
}

/// Whether the point (in units of the icon's radius, centre at 0,0) is painted, and with
/// white (`Some(true)`) or the health's colour (`Some(false)`).
fn paint(h: Health, x: f32, y: f32) -> Option<bool> {
    let r = (x * x + y * y).sqrt();
    match h {
        Health::Fine => (r <= 0.9).then_some(false),
        Health::Busy => (0.42..=0.9).contains(&r).then_some(false),
        Health::Failed => {
            if r > 0.9 {
                None
            } else {
                Some(x.abs() <= 0.55 && y.abs() <= 0.16)
            }
        }
        Health::Down => (0.62..=0.85).contains(&r).then_some(false),
    }
}

/// The icon at `size` × `size`, anti-aliased by 4×4 supersampling.
pub fn pixmap(h: Health, size: u32) -> Pixmap {
    const SS: u32 = 4;
    let (cr, cg, cb) = colour(h);
    let mut argb = Vec::with_capacity((size * size * 4) as usize);
    let half = size as f32 / 2.0;
    for py in 0..size {
        for px in 0..size {
            let (mut cover, mut white) = (0u32, 0u32);
            for sy in 0..SS {
                for sx in 0..SS {
                    let x = (px as f32 + (sx as f32 + 0.5) / SS as f32 - half) / half;
                    let y = (py as f32 + (sy as f32 + 0.5) / SS as f32 - half) / half;
                    if let Some(w) = paint(h, x, y) {
                        cover += 1;
                        white += u32::from(w);
                    }
                }
            }
            let a = cover * 255 / (SS * SS);
            let mix = |c: u8| -> u8 {
                if cover == 0 {
                    return 0;
                }
                let c = u32::from(c);
                ((c * (cover - white) + 255 * white) / cover) as u8
            };
            argb.extend_from_slice(&[a as u8, mix(cr), mix(cg), mix(cb)]);
        }
    }
    Pixmap { size, argb }
}

/// The icon in every size of [`SIZES`].
pub fn pixmaps(h: Health) -> Vec<Pixmap> {
    SIZES.iter().map(|s| pixmap(h, *s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn px(p: &Pixmap, x: u32, y: u32) -> [u8; 4] {
        let i = ((y * p.size + x) * 4) as usize;
        [p.argb[i], p.argb[i + 1], p.argb[i + 2], p.argb[i + 3]]
    }

    const ALL: [Health; 4] = [Health::Fine, Health::Busy, Health::Failed, Health::Down];

    #[test]
    fn every_pixmap_is_whole_with_clear_corners() {
        for h in ALL {
            for p in pixmaps(h) {
                assert_eq!(p.argb.len(), (p.size * p.size * 4) as usize);
                assert_eq!(px(&p, 0, 0)[0], 0, "{h:?} corner is transparent");
            }
        }
    }

    #[test]
    fn each_health_looks_different_and_not_by_colour_alone() {
        let centre = |h| px(&pixmap(h, 22), 11, 11);
        assert_eq!(centre(Health::Fine), [255, 0x2e, 0xa0, 0x43]);
        assert_eq!(
            centre(Health::Busy)[0],
            0,
            "busy is a ring: its centre is clear"
        );
        assert_eq!(
            centre(Health::Failed),
            [255, 255, 255, 255],
            "failed: a white bar"
        );
        assert_eq!(centre(Health::Down)[0], 0, "down is a ring too");
        // Busy and down differ in shape: down's ring is thin, busy's thick.
        let opaque = |h| pixmap(h, 32).argb.chunks(4).filter(|c| c[0] == 255).count();
        assert!(opaque(Health::Busy) > opaque(Health::Down) * 3 / 2);
        let all: Vec<Vec<u8>> = ALL.iter().map(|h| pixmap(*h, 22).argb).collect();
        for i in 0..all.len() {
            for j in i + 1..all.len() {
                assert_ne!(all[i], all[j]);
            }
        }
    }
}
