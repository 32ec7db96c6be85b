#!/usr/bin/python3
"""Writes the PyTorch reference fixtures that the C++ tests compare with.

Run with Debian's python3-torch (PyTorch 1.13):  /usr/bin/python3 tools/make_fixtures.py
Each module tools/fixtures/<family>.py defines FIXTURES = {name: fn}; fn()
returns a dict {tensor_name: torch.Tensor} (inputs, weights, outputs,
gradients). Every fixture is written to tests/fixtures/<name>.safetensors with
metadata naming the generator and the torch version. Tensors are computed in
float64 and stored as float32 (int tensors as int64/int32), so the fixture is
the exact math rounded once.

Usage: make_fixtures.py [--only SUBSTRING] [--out DIR]
"""
import argparse
import importlib
import json
import os
import pkgutil
import struct
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

_DTYPES = {torch.float32: "F32", torch.float64: "F32", torch.int32: "I32", torch.int64: "I64",
           torch.bfloat16: "BF16", torch.float16: "F16"}


def save_safetensors(path, tensors, metadata):
    """Writes a safetensors file (float64 is stored as F32) atomically."""
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.float64:
            t = t.float()
        if t.dtype == torch.bool:
            t = t.to(torch.int32)
        dtype = _DTYPES[t.dtype]
        if t.dtype in (torch.bfloat16, torch.float16):
            raw = t.view(torch.int16).numpy().tobytes()
        else:
            raw = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="only fixtures whose name contains this")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    sys.path.insert(0, HERE)
    count = 0
    for mod in sorted(m.name for m in pkgutil.iter_modules([os.path.join(HERE, "fixtures")])):
        module = importlib.import_module("fixtures." + mod)
        for name, fn in sorted(module.FIXTURES.items()):
            if args.only not in name:
                continue
            torch.manual_seed(sum(map(ord, name)))  # stable per fixture name
            tensors = fn()
            meta = {"generator": "tools/fixtures/%s.py" % mod, "torch": torch.__version__, "name": name}
            save_safetensors(os.path.join(args.out, name + ".safetensors"), tensors, meta)
            count += 1
            print("wrote %s (%d tensors)" % (name, len(tensors)))
    print("%d fixtures" % count)


if __name__ == "__main__":
    main()
