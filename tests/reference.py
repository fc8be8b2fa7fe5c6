"""Adafactor written out in plain torch ops, straight from the formulas of
docs/algorithm.md, as an independent reference for the tests. Slow and
simple on purpose: float64 math, one formula per line, no shared code with
the C++ core."""
from __future__ import annotations

import torch


class ReferenceAdafactor:
    def __init__(self, params, *, variant="torch", lr=1e-2, beta2_decay=-0.8,
                 eps1=None, eps2=1e-3, d=1.0, weight_decay=0.0, beta1=None,
                 relative_step=True, scale_parameter=True, warmup_init=False,
                 maximize=False):
        self.params = list(params)
        self.o = dict(variant=variant, lr=lr, beta2_decay=beta2_decay, eps1=eps1,
                      eps2=eps2, d=d, weight_decay=weight_decay, beta1=beta1,
                      relative_step=relative_step, scale_parameter=scale_parameter,
                      warmup_init=warmup_init, maximize=maximize)
        self.state: dict[int, dict] = {}

    @staticmethod
    def _rms(x: torch.Tensor) -> float:
        return x.double().pow(2).mean().sqrt().item()

    @torch.no_grad()
    def step(self) -> None:
        o = self.o
        for p in self.params:
            if p.grad is None:
                continue
            st = self.state.setdefault(id(p), {"t": 0})
            x = p.double()
            g = p.grad.double()
            if o["maximize"]:
                g = -g
            st["t"] += 1
            t = st["t"]
            eps1 = o["eps1"]
            if eps1 is None:
                eps1 = torch.finfo(p.dtype).eps if o["variant"] == "torch" else 1e-30
            if o["relative_step"]:
                cap = 1e-6 * t if o["warmup_init"] else o["lr"]
                rho = min(cap, t ** -0.5)
            else:
                rho = o["lr"]
            scale = max(o["eps2"], self._rms(x)) if o["scale_parameter"] else 1.0
            alpha = rho * scale
            factored = p.dim() >= 2
            if factored:
                r = st.setdefault("r", torch.zeros(p.shape[:-1] + (1,), dtype=torch.float64))
                c = st.setdefault("c", torch.zeros(p.shape[:-2] + (1, p.shape[-1]),
                                                   dtype=torch.float64))
            else:
                v = st.setdefault("v", torch.zeros(p.shape, dtype=torch.float64))
            if o["variant"] == "torch":
                w = t ** o["beta2_decay"]  # 1 - beta2_t
                g2 = g * g
                if factored:
                    r += w * (g2.mean(-1, keepdim=True) - r)
                    c += w * (g2.mean(-2, keepdim=True) - c)
                    V = r * c / r.mean(-2, keepdim=True).clamp(min=eps1)
                else:
                    v += w * (g2 - v)
                    V = v
                U = g / V.clamp(min=eps1 * eps1).sqrt()
            else:
                beta2 = 1.0 - t ** o["beta2_decay"]
                q = g * g + eps1
                if factored:
                    r.mul_(beta2).add_((1 - beta2) * q.mean(-1, keepdim=True))
                    c.mul_(beta2).add_((1 - beta2) * q.mean(-2, keepdim=True))
                    V = r * c / r.mean(-2, keepdim=True)
                else:
                    v.mul_(beta2).add_((1 - beta2) * q)
                    V = v
                U = g / V.sqrt()
            U = U / max(1.0, self._rms(U) / o["d"])
            U = alpha * U
            if o["beta1"] is not None:
                m = st.setdefault("m", torch.zeros(p.shape, dtype=torch.float64))
                m.mul_(o["beta1"]).add_((1 - o["beta1"]) * U)
                U = m
            if o["weight_decay"]:
                decay = o["lr"] * o["weight_decay"] if o["variant"] == "torch" \
                    else o["weight_decay"] * alpha
                x = x * (1 - decay)
            p.copy_(x - U)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    denom = max(b.norm().item(), 1e-300)
    return (a - b).norm().item() / denom
