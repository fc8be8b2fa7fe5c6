"""The parameter sets of the benchmark, as spec strings shared with the C++
program: items joined by '+', each COUNT*D0xD1x..., float32."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParamSet:
    key: str
    title: str
    spec: str

    def shapes(self) -> list[tuple[int, ...]]:
        out = []
        for item in self.spec.split("+"):
            count, _, dims = item.rpartition("*")
            shape = tuple(int(d) for d in dims.split("x"))
            out += [shape] * (int(count) if count else 1)
        return out

    def numel(self) -> int:
        total = 0
        for shape in self.shapes():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    def make(self) -> list[torch.Tensor]:
        """Parameters with gradients (randn, seed 0)."""
        gen = torch.Generator().manual_seed(0)
        params = []
        for shape in self.shapes():
            p = torch.randn(shape, generator=gen)
            p.grad = torch.randn(shape, generator=gen)
            params.append(p)
        return params


def clone(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Fresh leaf copies, with copies of the gradients."""
    out = []
    for p in params:
        q = p.detach().clone()
        q.grad = p.grad.detach().clone()
        out.append(q)
    return out


def human(n: int) -> str:
    """1048576 -> '1M', 16793600 -> '16.8M'."""
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.0f}K"
    return str(n)


# The sets of the issue.
FULL = {
    # 4 attention/MLP-sized matrices and 8 bias/norm vectors: 16.8M.
    "transformer": ParamSet("transformer", "transformer-like: 4 x 2048x2048 + 8 x 2048",
                            "4*2048x2048+8*2048"),
    # ResNet-like 3x3 convolutions (factored over the last two dims, 3x3, as
    # torch.optim.Adafactor does) and norm vectors: 16.5M.
    "conv": ParamSet("conv", "conv-like: 6 x 512x512x3x3 + 4 x 256x256x3x3 + 16 x 512",
                     "6*512x512x3x3+4*256x256x3x3+16*512"),
    # Per-call overhead dominates: 1.0M parameters in 1000 tensors.
    "small": ParamSet("small", "many small tensors: 1000 x 32x32", "1000*32x32"),
    # One tiny tensor: the cost of a call through each door.
    "tiny": ParamSet("tiny", "one tiny tensor: 1 x 32x32", "1*32x32"),
}
# 1M -> 64M parameters, one matrix each, doubling.
FULL_SWEEP = [
    ParamSet(f"sweep-{human(r * c)}", f"{r}x{c}", f"1*{r}x{c}")
    for r, c in [(1024, 1024), (1024, 2048), (2048, 2048), (4096, 2048), (4096, 4096),
                 (8192, 4096), (8192, 8192)]
]

# --smoke: the same code paths on tiny sizes.
SMOKE = {
    "transformer": ParamSet("transformer", "transformer-like (smoke): 4 x 64x64 + 8 x 64",
                            "4*64x64+8*64"),
    "conv": ParamSet("conv", "conv-like (smoke): 2 x 8x8x3x3 + 4 x 8", "2*8x8x3x3+4*8"),
    "small": ParamSet("small", "many small tensors (smoke): 20 x 8x8", "20*8x8"),
    "tiny": ParamSet("tiny", "one tiny tensor (smoke): 1 x 8x8", "1*8x8"),
}
SMOKE_SWEEP = [ParamSet(f"sweep-{human(r * c)}", f"{r}x{c}", f"1*{r}x{c}")
               for r, c in [(64, 64), (128, 64)]]
