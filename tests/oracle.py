"""Float64 NumPy reference for batch normalization, written from the paper.

Independent of bnjax: plain NumPy, two-pass statistics in float64, the
gradient from the closed-form derivative of Ioffe & Szegedy (2015), Sec. 3.
"""

import numpy as np


def _axes(ndim, axis):
    feature = sorted(a % ndim for a in ((axis,) if isinstance(axis, int) else axis))
    reduce = tuple(a for a in range(ndim) if a not in feature)
    shape = lambda x: tuple(x.shape[a] if a in feature else 1 for a in range(ndim))  # noqa: E731
    return tuple(feature), reduce, shape


def _valid(x, mask):
    return np.ones(x.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask), x.shape)


def _wide(x):
    """X in float64, or complex128 for complex input."""
    return np.asarray(x, np.complex128 if np.iscomplexobj(x) else np.float64)


def batch_stats(x, axis=-1, mask=None):
    """Returns (count, mean, biased var) per feature, keepdims, in float64.

    For complex x the mean is complex and the variance E|x − μ|², real.
    """
    x = _wide(x)
    _, reduce, _ = _axes(x.ndim, axis)
    valid = _valid(x, mask)
    count = valid.sum(axis=reduce, keepdims=True).astype(np.float64)
    mean = np.where(valid, x, 0).sum(axis=reduce, keepdims=True) / np.maximum(count, 1)
    squares = np.abs(x - mean) ** 2
    var = np.where(valid, squares, 0).sum(axis=reduce, keepdims=True) / np.maximum(count, 1)
    return count, mean, var


def normalize(x, mean, var, scale, bias, epsilon):
    """γ·(x − μ)/√(σ² + ε) + β in float64 (complex128 for complex x)."""
    x = _wide(x)
    return (x - mean) / np.sqrt(var + epsilon) * scale + bias


def reference(
    x,
    scale,
    bias,
    run_mean,
    run_var,
    train,
    *,
    axis=-1,
    momentum=0.99,
    epsilon=1e-5,
    unbiased=False,
    mask=None,
    seen=0,
):
    """One batch-norm call in float64.

    Returns (y, new_mean, new_var); scale/bias/run_mean/run_var are per-feature
    arrays (feature shape) or None for scale (1) and bias (0).
    """
    x = _wide(x)
    _, _, bshape = _axes(x.ndim, axis)

    def as_b(v, fill):
        if v is None:
            return np.full(bshape(x), fill)
        return _wide(v).reshape(bshape(x))

    scale, bias = as_b(scale, 1.0), as_b(bias, 0.0)
    rm, rv = as_b(run_mean, 0.0), as_b(run_var, 1.0)
    if not train:
        return normalize(x, rm, rv, scale, bias, epsilon), rm, rv
    count, mean, var = batch_stats(x, axis, mask)
    y = normalize(x, mean, var, scale, bias, epsilon)
    seen = np.asarray(seen, np.float64)  # batches folded in: a scalar or one per feature
    seen = seen.reshape(bshape(x)) if seen.ndim else seen
    batch_var = var * count / (count - 1) if unbiased else var
    if momentum is None:
        new_mean = (seen * rm + mean) / (seen + 1)
        new_var = (seen * rv + batch_var) / (seen + 1)
    else:
        new_mean = momentum * rm + (1 - momentum) * mean
        new_var = momentum * rv + (1 - momentum) * batch_var
    return y, new_mean, new_var


def train_gradients(x, scale, cotangent, *, axis=-1, epsilon=1e-5, mask=None):
    """(dx, dscale, dbias) of Σ cotangent·y for training mode, in float64.

    Every position is normalized with the statistics of the valid positions, so
    the sums over the cotangent run over all positions and the statistics'
    derivatives reach the valid positions only.
    """
    x = np.asarray(x, np.float64)
    g = np.asarray(cotangent, np.float64)
    _, reduce, bshape = _axes(x.ndim, axis)
    scale = (
        np.ones(bshape(x)) if scale is None else np.asarray(scale, np.float64).reshape(bshape(x))
    )
    count, mean, var = batch_stats(x, axis, mask)
    inv = 1 / np.sqrt(var + epsilon)
    xhat = (x - mean) * inv
    dbias = g.sum(axis=reduce, keepdims=True)
    dscale = (g * xhat).sum(axis=reduce, keepdims=True)
    valid = _valid(x, mask)
    dx = scale * inv * (g - valid * (dbias + xhat * dscale) / count)
    return dx, dscale, dbias


def renorm(x, params, state, r_max, d_max, axis=-1, mask=None, epsilon=1e-5):
    """Batch Renormalization (Ioffe, 2017) in float64: (γ·(x̂_B·r + d) + β, r, d)."""
    _, mean, var = batch_stats(x, axis, mask)
    shape = mean.shape
    run_mean = np.asarray(state.mean, np.float64).reshape(shape)
    sigma = np.sqrt(np.asarray(state.var, np.float64).reshape(shape) + epsilon)
    r = np.clip(np.sqrt(var + epsilon) / sigma, 1 / r_max, r_max)
    d = np.clip((mean - run_mean) / sigma, -d_max, d_max)
    xhat = (np.asarray(x, np.float64) - mean) / np.sqrt(var + epsilon)
    gamma = np.asarray(params.scale, np.float64).reshape(shape)
    beta = np.asarray(params.bias, np.float64).reshape(shape)
    return gamma * (xhat * r + d) + beta, r, d
