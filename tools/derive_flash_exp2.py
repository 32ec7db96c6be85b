"""Coefficients of the flash attention kernels' 2^f polynomial (src/nn/attention/flash_simd.h).

2^f ~ 1 + f (c1 + f (c2 + f (c3 + f (c4 + f c5)))) on |f| <= 1/2, fitted for
minimal maximum relative error by Lawson's iteratively reweighted least
squares, then checked in float32 Horner arithmetic.
Run: /usr/bin/python3 tools/derive_flash_exp2.py
"""
import numpy as np

x = np.cos(np.linspace(0, np.pi, 4001)) * 0.5
y = np.exp2(x)
A = np.stack([x ** k for k in range(1, 6)], axis=1) / y[:, None]
b = (y - 1) / y
w = np.ones_like(x)
for _ in range(200):
    s = np.sqrt(w)
    c, *_ = np.linalg.lstsq(A * s[:, None], b * s, rcond=None)
    e = np.abs(A @ c - b)
    w = w * e
    w /= w.sum()
cf = c.astype(np.float32)
xs = np.linspace(-0.5, 0.5, 2000001).astype(np.float32)
p = cf[4]
for k in (3, 2, 1, 0):
    p = (p * xs + cf[k]).astype(np.float32)
p = (p * xs + np.float32(1)).astype(np.float32)
ref = np.exp2(xs.astype(np.float64))
print("coefficients c1..c5:", [repr(float(v)) for v in cf])
print("max relative error (fit): %.3g, (float32 Horner): %.3g" % (np.max(e), np.max(np.abs(p - ref) / ref)))
