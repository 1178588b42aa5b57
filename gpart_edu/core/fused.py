"""GPart's training forward: y = x (W0 + Delta W)^T + b in one matmul, Delta W = (P theta)[a:b] never kept.

Why a custom autograd function: autograd through ``F.linear(x, W0 + (P theta).view(W0.shape))`` would keep
the (out, in) Delta W and the summed weight alive until backward, and build d L / d theta with a (D,)
scatter per layer. Here forward saves only x and the (d,) scaled theta; backward rebuilds W0 + Delta W for
grad_x and reduces the full weight gradient straight into (d,) with one index_add:

    d L / d theta_s = sum over positions i in [a, b) of group g(i):  (d L / d W)_i      (theta_s = theta / sqrt(n))

(the chain rule of ``P theta = theta_s[g(i)]``: P^T's 1/sqrt(n_j) is applied by the caller's ``P.scaled``).
Under autocast, the matmuls run in the autocast dtype and the reduction accumulates in theta's dtype.
Orientation: ``is_linear`` -> nn.Linear, W (out, in), y = x W^T + b; else HF Conv1D, W (in, out), y = x W + b.
Tested equal to the pure map (``methods.GPart.delta_weights`` and ``reference``) in float64, values and
gradients, for every assignment and chunk size (tests/test_methods.py, tests/test_reference.py).
Taught in notebooks/00_quickstart.ipynb, section "4 · Train for a few steps" (what a GPart step runs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def weight_plus_delta(weight, theta_s, P, a: int, b: int) -> torch.Tensor:
    """W0 + Delta W for positions [a, b) of the partition, in weight's dtype and shape (one fresh tensor)."""
    w0 = weight.reshape(-1)                                                   # (out * in,)
    w = torch.empty_like(w0)
    for i, j, ids in P.index_chunks(a, b):                                    # ids: (j - i,) group ids
        torch.add(w0[i:j], theta_s.index_select(0, ids).to(w0.dtype), out=w[i:j])
    return w.view_as(weight)                                                  # (out, in) or (in, out)


class GPartLinearFn(torch.autograd.Function):
    """y = x (W0 + Delta W)^T + b with Delta W = (P theta)[a:b], one matmul, Delta W not kept alive."""

    @staticmethod
    def forward(ctx, x, weight, bias, theta_s, P, a, b, is_linear):
        # x (..., in); weight (out, in) [Linear] or (in, out) [Conv1D]; theta_s (d,); positions [a, b) of P
        dev = x.device.type
        cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype
        with torch.autocast(dev, enabled=False):
            w = weight_plus_delta(weight, theta_s, P, a, b).to(cdt)
            b_c = None if bias is None else bias.to(cdt)
            if is_linear:  # the very kernels of nn.Linear / Conv1D: theta = 0 reproduces the base bit-for-bit
                y = F.linear(x.to(cdt), w, b_c)                               # (..., out)
            else:
                x2 = x.reshape(-1, x.shape[-1]).to(cdt)                       # (N, in)
                y = (x2 @ w if b_c is None else torch.addmm(b_c, x2, w)).reshape(*x.shape[:-1], w.shape[-1])
        ctx.save_for_backward(x, weight, theta_s)
        ctx.P, ctx.a, ctx.b, ctx.is_linear, ctx.cdt = P, a, b, is_linear, cdt
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, theta_s = ctx.saved_tensors
        P, a, b, is_linear, cdt = ctx.P, ctx.a, ctx.b, ctx.is_linear, ctx.cdt
        g2 = grad_y.reshape(-1, grad_y.shape[-1]).to(cdt)                     # (N, out)
        x2 = x.reshape(-1, x.shape[-1]).to(cdt)                               # (N, in)
        need_x, need_theta = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        grad_x = grad_w = grad_b = grad_theta = gw = w = None
        if ctx.needs_input_grad[1] or need_theta:
            gw = g2.t() @ x2 if is_linear else x2.t() @ g2                    # dL/dW in stored orientation
            if ctx.needs_input_grad[1]:
                grad_w = gw.to(weight.dtype)
        if (need_x or need_theta) and torch.is_grad_enabled():
            # create_graph=True (double backward): out-of-place ops only, so that autograd can record them
            index = P.index(a, b)                                             # (out * in,) group ids
            if need_x:
                w = weight + theta_s.index_select(0, index).view_as(weight).to(weight.dtype)
            if need_theta:                                                    # (d,) = P_slice^T-sum of dL/dW
                grad_theta = torch.zeros_like(theta_s).index_add(0, index, gw.reshape(-1).to(theta_s.dtype))
        elif need_x or need_theta:
            # one pass over the group ids (hashed: generated once, chunk by chunk) serves both the rebuilt
            # W0 + Delta W and the reduction of the weight gradient into theta
            w0 = weight.reshape(-1)
            if need_x:
                w = torch.empty_like(w0)
            if need_theta:
                grad_theta = torch.zeros_like(theta_s)                        # (d,)
                gflat = gw.reshape(-1)                                        # (out * in,)
            for i, j, ids in P.index_chunks(a, b):
                if need_x:
                    torch.add(w0[i:j], theta_s.index_select(0, ids).to(w0.dtype), out=w[i:j])
                if need_theta:
                    grad_theta.index_add_(0, ids, gflat[i:j].to(theta_s.dtype))
        if need_x:
            w = w.view_as(weight).to(cdt)
            gx = g2 @ w if is_linear else g2 @ w.t()                          # (N, in)
            grad_x = gx.reshape(x.shape).to(x.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)                                                # (out,)
        return grad_x, grad_w, grad_b, grad_theta, None, None, None, None
