//! Branch-free `exp` and `erf` for f32 that the compiler can vectorise (ScaleDown's patch).
//!
//! `f32::exp` and `libm::erff` are calls per element, so loops over them stay scalar. These
//! are polynomial evaluations with selects instead of branches; inlined into a plain loop,
//! LLVM turns them into SIMD. Accuracy: `exp_f32` within 2 ulp of `f32::exp` on
//! [-87.3, 88.7] (0 below, inf above, NaN kept); `erf_f32` within 1e-7 of the exact erf (it
//! evaluates in f64, so the only error is the approximation's ~6.5e-8).

/// Below this, e^x is under f32's smallest normal number: the result is 0.
const EXP_LO: f32 = -87.336_55;
/// Above this, e^x overflows f32: the result is inf.
const EXP_HI: f32 = 88.722_84;

/// e^x for f32, vectorisable (Cephes' `expf` polynomial, round-to-nearest range reduction).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer (in the low mantissa bits), without a
    // floor call that SSE2 lacks.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split in two so that n * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Clamped so that the integer arithmetic below stays sane; the selects at the end set
    // the results outside [EXP_LO, EXP_HI].
    let xc = if x < -88.0 {
        -88.0
    } else if x > 89.0 {
        89.0
    } else {
        x
    };
    let t = xc * core::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    // 2^n in two factors: n reaches 128 near EXP_HI and -126 near EXP_LO, one past what a
    // single f32 exponent field holds at the top.
    let half = n_int >> 1;
    let pow2 = |k: i32| f32::from_bits(((k + 127) << 23) as u32);
    let y = e * pow2(half) * pow2(n_int - half);
    if x < EXP_LO {
        0.0
    } else if x > EXP_HI {
        f32::INFINITY
    } else if x != x {
        x
    } else {
        y
    }
}

/// erf(x) for f32, vectorisable: x·P(x²)/Q(x²) on x clamped to [-4, 4] (Eigen's rational
/// approximation), evaluated in f64 so that rounding adds nothing to its ~6.5e-8 error.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = if x < -4.0 {
        -4.0
    } else if x > 4.0 {
        4.0
    } else {
        x
    };
    let x = x as f64;
    let x2 = x * x;
    let p = -2.726_142_258_013_06e-10;
    let p = p * x2 + 2.770_681_424_959_02e-8;
    let p = p * x2 - 2.101_024_020_825_08e-6;
    let p = p * x2 - 5.692_506_394_623_46e-5;
    let p = p * x2 - 7.349_906_303_268_55e-4;
    let p = p * x2 - 2.954_599_808_540_25e-3;
    let p = p * x2 - 1.609_603_332_624_15e-2;
    let q = -1.456_607_184_649_96e-5;
    let q = q * x2 - 2.133_740_552_789_05e-4;
    let q = q * x2 - 1.682_826_974_382_03e-3;
    let q = q * x2 - 7.373_329_167_204_68e-3;
    let q = q * x2 - 1.426_473_905_141_89e-2;
    (x * p / q) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 997th f32 bit pattern in the finite range, both signs, against std's `exp`.
    #[test]
    fn exp_f32_matches_std_within_2_ulp() {
        let mut worst = 0i64;
        for bits in (0u32..0x7f80_0000).step_by(997) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                let (got, want) = (exp_f32(x), (x as f64).exp() as f32);
                if x < EXP_LO {
                    assert_eq!(got, 0.0, "exp({x})");
                } else if x > EXP_HI {
                    assert_eq!(got, f32::INFINITY, "exp({x})");
                } else {
                    let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs();
                    worst = worst.max(ulp);
                    assert!(ulp <= 2, "exp({x}) = {got}, want {want}");
                }
            }
        }
        assert!(worst >= 1, "the comparison ran");
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn erf_f32_matches_libm_within_1e7() {
        let mut x = -7.0f32;
        while x < 7.0 {
            let (got, want) = (erf_f32(x), libm::erf(x as f64));
            assert!(
                (got as f64 - want).abs() < 1e-7,
                "erf({x}) = {got}, want {want}"
            );
            x += 1.0e-4;
        }
        assert_eq!(erf_f32(0.0), 0.0);
        assert!(erf_f32(f32::NAN).is_nan());
    }
}
