//! IEEE half precision on the host: widening (exact) and narrowing (rounded to nearest, ties to
//! even, as numpy's `astype(float16)` and torch's `.half()` round). Checkpoints stored in f16 are
//! widened on reading; a model loaded with half-precision weights (`Precision::HalfWeights`) is
//! narrowed here before upload, and the kernels widen each weight back to f32 as they read it.

/// f16 bits to f32 (exact: every f16 is an f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: renormalise.
            let shift = frac.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((frac << shift) & 0x3ff) << 13)
        }
        (31, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// f32 to the nearest f16 (ties to even). Values beyond f16's largest finite value (65504) round
/// to infinity, as IEEE narrowing does; NaN stays NaN.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let frac = bits & 0x7f_ffff;
    if exp == 0xff {
        // Infinity, or NaN (kept quiet and nonzero).
        return sign | 0x7c00 | if frac != 0 { 0x200 } else { 0 };
    }
    // The value's exponent as an f16 exponent field.
    let e = exp - 127 + 15;
    if e >= 31 {
        return sign | 0x7c00;
    }
    // The significand with its leading 1 (for normal f32s), and how many of its low bits go.
    let (mant, drop) = if e > 0 {
        (frac | 0x80_0000, 13)
    } else {
        // Subnormal f16 (or zero): one more bit goes per step below the smallest normal.
        if e < -10 {
            return sign;
        }
        (frac | 0x80_0000, (14 - e) as u32)
    };
    let kept = mant >> drop;
    let rest = mant & ((1 << drop) - 1);
    let half = 1 << (drop - 1);
    let round_up = rest > half || (rest == half && kept & 1 == 1);
    let kept = kept + round_up as u32;
    if e > 0 {
        // A carry out of the significand moves into the exponent, which is what adding the
        // fields does; it reaches infinity (0x7c00) exactly when the value rounds past 65504.
        sign | (((e as u32) << 10) + (kept - 0x400)) as u16
    } else {
        // Rounding up to 0x400 gives the smallest normal, again by plain addition.
        sign | kept as u16
    }
}

#[cfg(test)]
mod tests {
    use super::{f16_to_f32, f32_to_f16};

    #[test]
    fn half_precision_widens_exactly() {
        for (h, want) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x03ff, 6.097_555e-5),
            (0x8000, -0.0),
            (0x7c00, f32::INFINITY),
        ] {
            assert_eq!(f16_to_f32(h).to_bits(), want.to_bits(), "{h:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn every_half_survives_the_round_trip() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_nan() {
                assert!(f16_to_f32(f32_to_f16(x)).is_nan(), "{h:#06x}");
            } else {
                assert_eq!(f32_to_f16(x), h, "{h:#06x}");
            }
        }
    }

    #[test]
    fn narrowing_rounds_to_nearest_even() {
        // Halfway between two halves rounds to the even one; just past halfway rounds away, and
        // a negative value rounds as its magnitude does.
        for h in [0x0001u16, 0x0002, 0x03ff, 0x0400, 0x3c00, 0x3c01, 0x7bfe] {
            let (lo, hi) = (f16_to_f32(h) as f64, f16_to_f32(h + 1) as f64);
            let mid = ((lo + hi) / 2.0) as f32;
            assert_eq!(
                mid as f64,
                (lo + hi) / 2.0,
                "midpoint above {h:#06x} is an f32"
            );
            let even = if h % 2 == 0 { h } else { h + 1 };
            assert_eq!(f32_to_f16(mid), even, "tie above {h:#06x}");
            assert_eq!(
                f32_to_f16(-mid),
                even | 0x8000,
                "negative tie above {h:#06x}"
            );
            assert_eq!(f32_to_f16(f32::from_bits(mid.to_bits() + 1)), h + 1);
            assert_eq!(f32_to_f16(f32::from_bits(mid.to_bits() - 1)), h);
        }
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(65519.99), 0x7bff);
        assert_eq!(
            f32_to_f16(65520.0),
            0x7c00,
            "ties to even past the largest half"
        );
        assert_eq!(f32_to_f16(-1e6), 0xfc00);
        assert_eq!(f32_to_f16(1e-9), 0);
        assert_eq!(f32_to_f16(-1e-9), 0x8000);
        assert_eq!(
            f32_to_f16(2.980_232_2e-8),
            0,
            "half the smallest subnormal ties to zero"
        );
        assert_eq!(f32_to_f16(2.980_233e-8), 1);
    }
}
