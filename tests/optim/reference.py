"""Straightforward dense re-implementations of ALGORITHMS.md, in float64, one parameter at a time.

Each function takes the initial parameter and the list of gradients and returns the parameter
after every step. No blocking, no packing, no scaling tricks: just the formulas.
"""

from __future__ import annotations


import torch


def _gradient_and_decay(grad, w, lr, weight_decay, weight_decay_mode, maximize):
    """maximize negates G; "adam" mode adds wd * W to G; "adamw" mode scales W by 1 - lr * wd."""
    g = grad.double().clone()
    if maximize:
        g = -g
    if weight_decay and weight_decay_mode == "adam":
        g = g + weight_decay * w
    if weight_decay and weight_decay_mode == "adamw":
        w = w * (1 - lr * weight_decay)
    return g, w


def _smmf_factorize(matrix):
    rows, cols = matrix.shape
    r, c = matrix.sum(1), matrix.sum(0)
    if rows < cols:
        total = r.sum()
        r = r / total if total > 0 else r
    else:
        total = c.sum()
        c = c / total if total > 0 else c
    return r, c


def smmf(param, grads, layout, lr=1e-3, beta1=0.9, eps=1e-8, weight_decay=0.0, decay_rate=-0.5,
         growth_rate=0.999, weight_decay_mode="adamw", maximize=False):
    w = param.detach().double().clone()
    history = []
    if layout is None:  # unfactored vector
        m = torch.zeros_like(w)
        v = torch.zeros_like(w)
    else:
        n, k = layout
        r_m, c_m, signs = torch.zeros(n, dtype=torch.float64), torch.zeros(k, dtype=torch.float64), torch.zeros(n, k, dtype=torch.bool)
        r_v, c_v = torch.zeros(n, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    for t, grad in enumerate(grads, start=1):
        g, w = _gradient_and_decay(grad, w, lr, weight_decay, weight_decay_mode, maximize)
        beta2_t = 1 - t ** decay_rate
        beta1_t = None if beta1 is None else beta1 * growth_rate ** (t - 1)
        if layout is None:
            v = beta2_t * v + (1 - beta2_t) * g * g
            if beta1_t is not None:
                m = beta1_t * m + (1 - beta1_t) * g
            update = (g if beta1_t is None else m) / (v.sqrt() + eps)
            w = w - lr * update
        else:
            gm = g.reshape(n, k)
            v_prev = torch.outer(r_v, c_v)
            v_t = beta2_t * v_prev + (1 - beta2_t) * gm * gm
            if beta1_t is not None:
                m_prev = torch.where(signs, 1.0, -1.0) * torch.outer(r_m, c_m)
                m_t = beta1_t * m_prev + (1 - beta1_t) * gm
                update = m_t / (v_t.sqrt() + eps)
                signs = m_t > 0
                r_m, c_m = _smmf_factorize(m_t.abs())
            else:
                update = gm / (v_t.sqrt() + eps)
            r_v, c_v = _smmf_factorize(v_t)
            w = w - lr * update.reshape(w.shape)
        history.append(w.clone())
    return history


def extreme_tensoring(param, grads, index, lr=1e-2, eps=1e-8, beta2=None, momentum=0.0, weight_decay=0.0,
                      weight_decay_mode="adamw", maximize=False):
    w = param.detach().double().clone()
    p = len(index)
    sums = [torch.zeros(d, dtype=torch.float64) for d in index]
    buffer = torch.zeros_like(w)
    history = []
    for grad in grads:
        g, w = _gradient_and_decay(grad, w, lr, weight_decay, weight_decay_mode, maximize)
        gt = g.reshape(index)
        for axis in range(p):
            others = tuple(a for a in range(p) if a != axis)
            slice_sums = (gt * gt).sum(dim=others) if others else gt * gt
            sums[axis] = slice_sums + sums[axis] if beta2 is None else beta2 * sums[axis] + (1 - beta2) * slice_sums
        product = torch.ones(index, dtype=torch.float64)
        for axis in range(p):
            shape = [1] * p
            shape[axis] = index[axis]
            product = product * sums[axis].reshape(shape)
        delta = (eps + product) ** (-1.0 / (2 * p))
        update = (delta * gt).reshape(w.shape)
        if momentum:
            buffer = momentum * buffer + update
            update = buffer
        w = w - lr * update
        history.append(w.clone())
    return history


def et_infinity(param, grads, lr=1e-2, eps=1e-8):
    w = param.detach().double().clone()
    total = torch.zeros((), dtype=torch.float64)
    history = []
    for grad in grads:
        g = grad.double()
        total = total + (g * g).sum()
        w = w - lr * g / torch.sqrt(eps + total)
        history.append(w.clone())
    return history


def sm3(param, grads, view, lr=0.1, momentum=0.0, eps=1e-30, variant="II"):
    w = param.detach().double().clone()
    p = len(view)
    mu = [torch.zeros(d, dtype=torch.float64) for d in view]
    buffer = torch.zeros_like(w)
    history = []

    def broadcast_min(vectors):
        result = None
        for axis, vector in enumerate(vectors):
            shape = [1] * p
            shape[axis] = view[axis]
            piece = vector.reshape(shape)
            result = piece if result is None else torch.minimum(result, piece)
        return result.expand(view)

    def slice_max(tensor, axis):
        others = tuple(a for a in range(p) if a != axis)
        return tensor.amax(dim=others) if others else tensor

    for grad in grads:
        g = grad.double().reshape(view)
        if variant == "I":
            mu = [mu[axis] + slice_max(g * g, axis) for axis in range(p)]
            nu = broadcast_min(mu)
        else:
            nu = broadcast_min(mu) + g * g
            mu = [slice_max(nu, axis) for axis in range(p)]
        update = g / torch.sqrt(nu + eps)
        if momentum:
            buffer = momentum * buffer + (1 - momentum) * update.reshape(w.shape)
            step = buffer
        else:
            step = update.reshape(w.shape)
        w = w - lr * step
        history.append(w.clone())
    return history
