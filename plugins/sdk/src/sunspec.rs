//! SunSpec register decoding (Modbus meters and inverters).
//!
//! A value is `raw × 10^SF`, where SF is the model's scale-factor register (−10..=10). Each
//! type has its own "not implemented" pattern: int16 and sunssf `0x8000`, uint16 `0xFFFF`,
//! acc32 `0`, int32 `0x8000_0000`, uint32 `0xFFFF_FFFF`. Those decode to `None`.

/// The "SunS" marker (two registers) at the base address (40000, 0 or 50000).
pub const MARKER: [u16; 2] = [0x5375, 0x6e53];
/// The model id that ends the model chain.
pub const END_MODEL: u16 = 0xFFFF;

/// A scale factor, or `None` if not implemented or outside SunSpec's range.
pub fn scale_factor(raw: u16) -> Option<i32> {
    let sf = raw as i16;
    if raw == 0x8000 || !(-10..=10).contains(&sf) {
        return None;
    }
    Some(i32::from(sf))
}

fn apply(value: f64, sf: Option<i32>) -> Option<f64> {
    let sf = sf?;
    // Dividing by an exact power of ten rounds once: 1234 × 10^-2 gives 12.34, not 12.340000000000002.
    Some(if sf < 0 {
        value / 10f64.powi(-sf)
    } else {
        value * 10f64.powi(sf)
    })
}

/// A signed 16-bit value (A, W, V...) with its scale factor register.
pub fn int16(raw: u16, sf: u16) -> Option<f64> {
    if raw == 0x8000 {
        return None;
    }
    apply(f64::from(raw as i16), scale_factor(sf))
}

/// An unsigned 16-bit value with its scale factor register.
pub fn uint16(raw: u16, sf: u16) -> Option<f64> {
    if raw == 0xFFFF {
        return None;
    }
    apply(f64::from(raw), scale_factor(sf))
}

/// A 32-bit accumulator (energy counters: TotWhImp, TotWhExp), high word first.
pub fn acc32(hi: u16, lo: u16, sf: u16) -> Option<f64> {
    let raw = (u32::from(hi) << 16) | u32::from(lo);
    if raw == 0 {
        return None;
    }
    apply(f64::from(raw), scale_factor(sf))
}

/// A 32-bit IEEE float (models 211–214), high word first; NaN means not implemented.
pub fn float32(hi: u16, lo: u16) -> Option<f64> {
    let value = f32::from_bits((u32::from(hi) << 16) | u32::from(lo));
    if value.is_nan() {
        return None;
    }
    Some(f64::from(value))
}

/// A model header: its id and length in registers (not counting the two header registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelHeader {
    pub id: u16,
    pub length: u16,
}

/// Walks a model chain laid out in `registers` (the registers right after the marker).
/// Stops at the end model or where the registers run out; a truncated model is left out.
pub fn models(registers: &[u16]) -> Vec<(usize, ModelHeader)> {
    let mut found = Vec::new();
    let mut at = 0usize;
    while at + 2 <= registers.len() {
        let header = ModelHeader {
            id: registers[at],
            length: registers[at + 1],
        };
        if header.id == END_MODEL {
            break;
        }
        let end = at + 2 + usize::from(header.length);
        if end > registers.len() {
            break;
        }
        found.push((at, header));
        at = end;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_values() {
        // 1234 × 10^-2 A = 12.34 A; -5 W × 10^1 = -50 W.
        assert_eq!(int16(1234, (-2i16) as u16), Some(12.34));
        assert_eq!(int16((-5i16) as u16, 1), Some(-50.0));
        assert_eq!(uint16(2301, (-1i16) as u16), Some(230.1));
        assert_eq!(acc32(0x0001, 0x0000, 0), Some(65536.0));
        assert_eq!(acc32(0, 1500, 3), Some(1_500_000.0));
    }

    #[test]
    fn not_implemented_patterns() {
        assert_eq!(int16(0x8000, 0), None);
        assert_eq!(int16(100, 0x8000), None, "unimplemented scale factor");
        assert_eq!(uint16(0xFFFF, 0), None);
        assert_eq!(acc32(0, 0, 0), None);
        assert_eq!(float32(0x7FC0, 0), None);
        assert_eq!(scale_factor(11), None, "outside -10..=10");
        assert_eq!(scale_factor((-10i16) as u16), Some(-10));
    }

    #[test]
    fn float_models() {
        let bits = 230.5f32.to_bits();
        assert_eq!(float32((bits >> 16) as u16, bits as u16), Some(230.5));
    }

    #[test]
    fn walks_the_model_chain() {
        // Common model (1, length 3), meter model 203 (length 2), end.
        let regs = [1, 3, 9, 9, 9, 203, 2, 7, 7, END_MODEL, 0];
        let found = models(&regs);
        assert_eq!(
            found,
            vec![
                (0, ModelHeader { id: 1, length: 3 }),
                (5, ModelHeader { id: 203, length: 2 })
            ]
        );
        // A model longer than the registers read is left out.
        assert_eq!(models(&[203, 105, 1, 2]), vec![]);
    }
}
