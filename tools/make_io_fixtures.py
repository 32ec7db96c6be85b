#!/usr/bin/python3
"""Writes the tensor-file interop fixtures for tests/unit/test_core_io.cpp.

.npy files are written by numpy itself (np.save / np.lib.format.write_array),
the safetensors file by tools/make_fixtures.py's save_safetensors (PyTorch).
The C++ test knows the values below; change both together.
Run: /usr/bin/python3 tools/make_io_fixtures.py   (writes tests/fixtures/io/)
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "io")
sys.path.insert(0, HERE)
from make_fixtures import save_safetensors  # noqa: E402  (imports torch)
import torch  # noqa: E402


def main():
    os.makedirs(OUT, exist_ok=True)
    p = lambda name: os.path.join(OUT, name)
    f32 = (np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5 - 1.0).astype("<f4")
    np.save(p("f32_2x3.npy"), f32)
    np.save(p("i32_5.npy"), np.array([-2, -1, 0, 1, 2**31 - 1], dtype="<i4"))
    np.save(p("i64_2x3x4.npy"), (np.arange(24, dtype="<i8") * 10**10 - 7).reshape(2, 3, 4))
    np.save(p("scalar_f32.npy"), np.array(3.25, dtype="<f4"))
    np.save(p("empty_0x3_f32.npy"), np.zeros((0, 3), dtype="<f4"))
    with open(p("v2_f32_3x2.npy"), "wb") as f:  # format version 2.0 (4-byte header length)
        np.lib.format.write_array(f, np.array([[1.5, -2.0], [0.25, 8.0], [-0.125, 1e-3]], dtype="<f4"),
                                  version=(2, 0))
    # Valid numpy files that we reject on purpose.
    np.save(p("fortran_f32.npy"), np.asfortranarray(f32))
    np.save(p("bigendian_f32.npy"), f32.astype(">f4"))
    np.save(p("f64.npy"), f32.astype("<f8"))

    tensors = {
        "f32": torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.25 - 1.0,
        "bf16": torch.tensor([1.0, -2.5, 3.140625, 0.0078125], dtype=torch.bfloat16),
        "f16": torch.tensor([[0.5, -65504.0], [2.0**-24, 1.5]], dtype=torch.float16),
        "i32": torch.tensor([-7, 0, 2**31 - 1], dtype=torch.int32),
        "i64": torch.tensor([-2**40, 2**62], dtype=torch.int64),
        "scalar": torch.tensor(-0.75, dtype=torch.float32),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
    }
    save_safetensors(p("mixed.safetensors"), tensors, {"generator": "tools/make_io_fixtures.py", "kind": "interop"})
    for name in sorted(os.listdir(OUT)):
        print("wrote", os.path.join("tests/fixtures/io", name), os.path.getsize(p(name)), "bytes")


if __name__ == "__main__":
    main()
