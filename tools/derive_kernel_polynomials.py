#!/usr/bin/python3
"""Derives the polynomial coefficients used by src/kernels/vec_exp.h (exp) and
src/kernels/activations.cpp (erfc for the exact GELU), and prints them as C++
hex-float constants together with the error they reach in exact arithmetic
after rounding the coefficients to float32.

Fits are Chebyshev fits (near-minimax) done with mpmath at 40 digits:
  exp(r) ~ 1 + r + r^2 * q(r),  q of degree 4, |r| <= 0.3475 (slightly more
          than ln2/2, because n = round(x*log2e) is computed in float);
  erfc(z) ~ exp(-z^2) * t * h(t),  t = 1 / (1 + z/2),  h of degree 10 on
          t in [0, 1] (covers every z >= 0).

Usage: /usr/bin/python3 tools/derive_kernel_polynomials.py
"""
import mpmath as mp
import numpy as np

mp.mp.dps = 40


def f32(v):
    return np.float32(float(v))


def hexf(v):
    """C++ hex-float literal of a float32 value."""
    mant, exp = float(v).hex().split("p")
    mant = mant.rstrip("0")
    if mant.endswith("."):
        mant = mant[:-1]
    return "%sp%sf" % (mant, exp)


def exp_coefficients():
    L = mp.mpf("0.3475")

    def q(r):
        if abs(r) < mp.mpf("1e-12"):
            return mp.mpf(1) / 2 + r / 6
        return (mp.exp(r) - 1 - r) / r ** 2

    coeffs = mp.chebyfit(q, [-L, L], 5)  # highest degree first
    c32 = [f32(c) for c in coeffs] + [np.float32(1), np.float32(1)]
    worst = 0
    for i in range(4001):
        r = -L + 2 * L * i / 4000
        p = mp.mpf(0)
        for c in c32:
            p = p * r + mp.mpf(float(c))
        worst = max(worst, abs(p / mp.exp(r) - 1))
    return c32, worst


def erfc_coefficients():
    a = mp.mpf("0.5")

    def h(t):
        if t == 0:
            return a / mp.sqrt(mp.pi)
        z = (1 / t - 1) / a
        return mp.erfc(z) * mp.exp(z * z) / t

    coeffs = mp.chebyfit(h, [0, 1], 11)
    c32 = [f32(c) for c in coeffs]
    worst = 0
    for i in range(3001):
        z = mp.mpf(12) * i / 3000
        t = 1 / (1 + a * z)
        p = mp.mpf(0)
        for c in c32:
            p = p * t + mp.mpf(float(c))
        worst = max(worst, abs(t * p / (mp.erfc(z) * mp.exp(z * z)) - 1))
    return c32, worst


def main():
    c, worst = exp_coefficients()
    print("// exp(r) = 1 + r + r^2 (c2 + c3 r + ... + c6 r^4); max relative error %.3g" % float(worst))
    for k, v in zip(range(6, -1, -1), c):
        print("inline constexpr float kExpC%d = %s;  // %.9g" % (k, hexf(v), v))
    c, worst = erfc_coefficients()
    print("// erfc(z) exp(z^2) / t = sum_k e_k t^k, t = 1/(1 + z/2); max relative error %.3g" % float(worst))
    for k, v in zip(range(10, -1, -1), c):
        print("constexpr float kErfcE%d = %s;  // %.9g" % (k, hexf(v), v))
    for name, v in (("kLog2e", 1.4426950408889634), ("kLn2Hi", 0.693145751953125),
                    ("kLn2Lo", 0.6931471805599453 - 0.693145751953125)):
        print("inline constexpr float %s = %s;  // %.9g" % (name, hexf(f32(v)), f32(v)))


if __name__ == "__main__":
    main()
