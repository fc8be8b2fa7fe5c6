"""The Python rank of a mixed job: torch.distributed's own default group
meets the Tcl rank's, and does what torch::distributed_data_parallel does
(rank 0's parameters broadcast as one flat buffer in parameter order; after
each backward pass the gradients summed as one flat buffer in reverse
parameter order and divided by the world size), with tcltorch.Adafactor in
the options of the Tcl rank's optimizer."""
import math
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from tcltorch import Adafactor

out = Path(sys.argv[1])
dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank, world = dist.get_rank(), dist.get_world_size()
x = torch.tensor([[math.sin(i * 4 + j + 1) for j in range(4)] for i in range(8)],
                 dtype=torch.float64).float()
y = torch.tensor([[math.cos(i), math.sin(2 * i)] for i in range(8)], dtype=torch.float64).float()
n = 8 // world
x, y = x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]

torch.manual_seed(55)  # other weights than the Tcl rank's: broadcast replaces them
net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
params = list(net.parameters())
with torch.no_grad():
    flat = torch.cat([p.reshape(-1) for p in params])
    dist.broadcast(flat, 0)
    offset = 0
    for p in params:
        p.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
opt = Adafactor(params, lr=0.05, beta2_decay=-0.8, eps=(1e-30, 1e-3), d=1.0, weight_decay=0.01,
                beta1=0.9, relative_step=False, scale_parameter=True, variant="transformers")


def record(name):
    values = [p.detach().tolist() for p in params]
    return name + " " + repr(values)


lines = [record("start")]
for _ in range(4):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(net(x), y)
    loss.backward()
    with torch.no_grad():
        flat = torch.cat([p.grad.reshape(-1) for p in reversed(params)])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for p in reversed(params):
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    opt.step()
lines.append(record("end"))
(out / f"mixed{rank}.txt").write_text("\n".join(lines) + "\n")
dist.destroy_process_group()
