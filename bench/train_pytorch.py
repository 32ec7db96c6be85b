#!/usr/bin/python3
# The PyTorch-eager twin of modformer's Llama-style training step, for
# `modformer bench train`: same JSON config, same architecture (embedding,
# pre-norm RMSNorm, GQA attention with rotate-half RoPE as softmax(QK^T)V under
# a causal mask -- torch 1.13 has no scaled_dot_product_attention --, SwiGLU,
# final norm, LM head, cross-entropy), same AdamW (decay on matrices only) and
# global-norm clipping. Prints one JSON line (tokens/s, per-phase seconds,
# parameter count). Configs with switches this twin does not model are refused
# with a message naming the field.
import argparse
import json
import os
import resource
import sys
import time

# Both BLAS pools (OpenMP and OpenBLAS's pthreads) read these when they load.
_pre = argparse.ArgumentParser(add_help=False)
_pre.add_argument("--threads", type=int, default=0)
_threads = _pre.parse_known_args()[0].threads
if _threads > 0:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(_threads)

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # reported to the C++ side as a clear reason
    print(json.dumps({"ok": False, "error": "cannot import torch: %s" % e}))
    sys.exit(3)


# Values this twin models; anything else is refused (field, value).
REQUIRED = {
    "norm": "rmsnorm",
    "norm_placement": "pre",
    "ffn": "swiglu",
    "hidden_act": "silu",
    "position": "rope",
}


def check_config(c):
    for field, want in REQUIRED.items():
        if field in c and c[field] != want:
            raise ValueError("field '%s' is %r; the PyTorch twin models only %r" % (field, c[field], want))
    if c.get("rope_scaling") not in (None, {}):
        raise ValueError("field 'rope_scaling' is set; the PyTorch twin models only plain RoPE")


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.hq, self.hkv, self.d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        C, bias = c["hidden_size"], bool(c.get("attention_bias", False))
        self.q_proj = nn.Linear(C, self.hq * self.d, bias=bias)
        self.k_proj = nn.Linear(C, self.hkv * self.d, bias=bias)
        self.v_proj = nn.Linear(C, self.hkv * self.d, bias=bias)
        self.o_proj = nn.Linear(self.hq * self.d, C, bias=bias)

    def forward(self, x, cos, sin, mask):
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.hq, self.d).transpose(1, 2)   # [B, Hq, L, D]
        k = self.k_proj(x).view(B, L, self.hkv, self.d).transpose(1, 2)  # [B, Hkv, L, D]
        v = self.v_proj(x).view(B, L, self.hkv, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        g = self.hq // self.hkv
        if g > 1:  # query head h reads KV head h // g
            k = k.repeat_interleave(g, dim=1)
            v = v.repeat_interleave(g, dim=1)
        s = torch.matmul(q, k.transpose(-2, -1)) * (self.d ** -0.5)
        s = s.masked_fill(mask, float("-inf"))
        p = torch.softmax(s, dim=-1)
        o = torch.matmul(p, v).transpose(1, 2).reshape(B, L, self.hq * self.d)
        return self.o_proj(o)


class SwiGLU(nn.Module):
    def __init__(self, c):
        super().__init__()
        C, I, bias = c["hidden_size"], c["intermediate_size"], bool(c.get("mlp_bias", False))
        self.gate_proj = nn.Linear(C, I, bias=bias)
        self.up_proj = nn.Linear(C, I, bias=bias)
        self.down_proj = nn.Linear(I, C, bias=bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c, eps):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], eps)
        self.mlp = SwiGLU(c)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaTwin(nn.Module):
    def __init__(self, c):
        super().__init__()
        check_config(c)
        eps = c.get("rms_norm_eps", 1e-6)
        self.c = c
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList([Block(c, eps) for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], eps)
        self.tied = bool(c.get("tie_word_embeddings", False))
        if not self.tied:
            self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        std = c.get("initializer_range", 0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def rope(self, L):
        d = self.c["head_dim"]
        inv = 1.0 / (self.c.get("rope_theta", 10000.0) ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        f = torch.outer(torch.arange(L, dtype=torch.float64), inv)
        e = torch.cat((f, f), dim=-1)
        return e.cos().float(), e.sin().float()  # [L, D]

    def mask(self, L):
        i = torch.arange(L).view(L, 1)
        j = torch.arange(L).view(1, L)
        m = j > i  # causal
        w = self.c.get("sliding_window") or 0
        if w > 0:  # a token sees itself and the w - 1 before it
            m = m | (j <= i - w)
        return m

    def forward(self, tokens, targets, cos, sin, mask):
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        x = self.norm(x)
        w = self.embed_tokens.weight if self.tied else self.lm_head.weight
        logits = F.linear(x, w)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def load_safetensors(model, path):
    """Copies the float32 tensors of a safetensors file (our checkpoint names =
    Hugging Face Llama's) into the twin; every parameter must be present."""
    import struct
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    params = dict(model.named_parameters())
    loaded = set()
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        ours = name[len("model."):] if name.startswith("model.") else name
        if ours not in params:
            raise ValueError("tensor '%s' has no twin parameter" % name)
        if meta["dtype"] != "F32":
            raise ValueError("tensor '%s' is %s; only F32 is read" % (name, meta["dtype"]))
        b, e = meta["data_offsets"]
        t = torch.frombuffer(bytearray(raw[base + b:base + e]), dtype=torch.float32).view(meta["shape"])
        with torch.no_grad():
            params[ours].copy_(t)
        loaded.add(ours)
    missing = set(params) - loaded
    if missing:
        raise ValueError("parameters missing from '%s': %s" % (path, sorted(missing)))


def check_tokens(vocab, B, L):
    """Deterministic tokens and targets shared with the C++ test: id(b, i) = (131 b + 31 i + 7) mod vocab."""
    ids = torch.tensor([[(131 * b + 31 * i + 7) % vocab for i in range(L + 1)] for b in range(B)])
    return ids[:, :L], ids[:, 1:]


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # Matrices of linear layers (and an untied lm_head) decay; norms, biases, embeddings do not.
        is_matrix = p.dim() == 2 and "embed_tokens" not in name
        (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def blas_library():
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "blas" in line.lower() and "/" in line}
        return sorted(libs)
    except OSError:
        return []


def main():
    ap = argparse.ArgumentParser(description="PyTorch-eager twin of modformer's training step")
    ap.add_argument("--config", required=True, help="model config JSON (modformer / Hugging Face field names)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--count-params", action="store_true", help="print the parameter count and exit")
    ap.add_argument("--check-loss", metavar="SAFETENSORS",
                    help="load these weights, print the loss of check_tokens(vocab, batch, seq_len) and exit")
    a = ap.parse_args()

    try:
        with open(a.config) as f:
            c = json.load(f)
        model = LlamaTwin(c)
    except (OSError, ValueError, KeyError) as e:
        print(json.dumps({"ok": False, "error": "config '%s': %s" % (a.config, e)}))
        return 2
    n_params = sum(p.numel() for p in model.parameters())
    if a.count_params:
        print(json.dumps({"ok": True, "parameters": n_params}))
        return 0
    if a.check_loss:
        try:
            load_safetensors(model, a.check_loss)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            print(json.dumps({"ok": False, "error": "weights '%s': %s" % (a.check_loss, e)}))
            return 2
        L = a.seq_len
        cos, sin = model.rope(L)
        tokens, targets = check_tokens(c["vocab_size"], a.batch_size, L)
        with torch.no_grad():
            loss = model(tokens, targets, cos, sin, model.mask(L))
        print(json.dumps({"ok": True, "parameters": n_params, "loss": loss.item()}))
        return 0
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    B, L = a.batch_size, a.seq_len
    opt = torch.optim.AdamW(param_groups(model, a.weight_decay), lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    cos, sin = model.rope(L)
    mask = model.mask(L)
    gen = torch.Generator().manual_seed(a.seed)
    data = torch.randint(0, c["vocab_size"], (a.warmup + a.steps, B, L + 1), generator=gen)

    phases = {"forward_s": 0.0, "backward_s": 0.0, "optimizer_s": 0.0}
    loss_v = float("nan")
    t_start = None
    for s in range(a.warmup + a.steps):
        if s == a.warmup:
            phases = {k: 0.0 for k in phases}
            t_start = time.perf_counter()
        tokens, targets = data[s, :, :L], data[s, :, 1:]
        t0 = time.perf_counter()
        loss = model(tokens, targets, cos, sin, mask)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        phases["forward_s"] += t1 - t0
        phases["backward_s"] += t2 - t1
        phases["optimizer_s"] += t3 - t2
        loss_v = loss.item()
    total = time.perf_counter() - t_start
    print(json.dumps({
        "ok": True,
        "parameters": n_params,
        "tokens_per_s": a.steps * B * L / total,
        "step_s": total / a.steps,
        "phases": {k: v / a.steps for k, v in phases.items()},
        "last_loss": loss_v,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "blas": blas_library(),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
