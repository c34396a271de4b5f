"""LAMB (You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", 2020,
Algorithm 2), on torch._foreach ops.

Per parameter: m, v as Adam's (with bias correction); the update u = m_hat / (sqrt(v_hat) + eps) +
weight_decay * p; the layer-wise trust ratio r = ||p|| / ||u|| (1 where either norm is 0); p -= lr * r * u.
Norms of sharded parameters (FSDP2's DTensors) are taken over the whole parameter.
"""
from __future__ import annotations

import torch


def _norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    norms = torch._foreach_norm(tensors)
    return [n.full_tensor() if hasattr(n, "full_tensor") else n for n in norms]


class Lamb(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps > 0 or weight_decay < 0:
            raise ValueError(f"eps must be > 0 and weight_decay >= 0, got {eps}, {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            beta1, beta2 = group["betas"]
            grads, ms, vs = [], [], []
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                grads.append(p.grad)
                ms.append(state["exp_avg"])
                vs.append(state["exp_avg_sq"])
            step = self.state[params[0]]["step"]
            torch._foreach_lerp_(ms, grads, 1 - beta1)
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
            bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, bias2 ** 0.5)
            torch._foreach_add_(denom, group["eps"])
            updates = torch._foreach_div(ms, denom)
            torch._foreach_div_(updates, bias1)
            if group["weight_decay"]:
                torch._foreach_add_(updates, params, alpha=group["weight_decay"])
            p_norms, u_norms = _norms(params), _norms(updates)
            for p, u, pn, un in zip(params, updates, p_norms, u_norms):
                trust = torch.where((pn > 0) & (un > 0), pn / un, torch.ones_like(pn))
                p.add_(u * (-group["lr"] * trust).to(u.dtype))
        return loss
