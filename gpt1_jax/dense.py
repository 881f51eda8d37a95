"""`dot_general` for Flax's Dense layers, with a backward pass that keeps the layouts.

Pass it as `nn.Dense(..., dot_general=dense.dot_general)` (or to `nn.DenseGeneral`): the
parameters, their initialisation and the forward product are Flax's own; only the
gradient is written out.

Why: JAX differentiates `y = x @ W` into a weight gradient computed as `(dy^T x)` followed
by a transpose to W's shape. XLA:CPU turns that transpose into a physical copy of the
[tokens, features] output gradient before the matmul (a `copy_bitcast_fusion` per layer,
64 ms of a 1.4 s step on the bench's small shape). Written directly as `x^T dy`, a
contraction over the leading (token) axes of both operands with W's axes in order, the
matmul reads both operands as they lie. The sums are the same; only their order may
differ in the last bits, as between any two matmul kernels.
"""
import math

import jax
from jax import lax


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`lax.dot_general`, differentiated without transposes when `lhs` is [..., in] and
    `rhs` [in, out] (the trailing axes of `lhs` contracted with the leading ones of `rhs`,
    no batch axes), as in every Dense layer; any other product is `lax.dot_general`'s."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    n_in = len(lhs_contract)
    if (lhs_batch or rhs_batch
            or tuple(lhs_contract) != tuple(range(lhs.ndim - n_in, lhs.ndim))
            or tuple(rhs_contract) != tuple(range(n_in))):
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
    return _dense(n_in, precision, preferred_element_type, lhs, rhs)


def _contract(n_in, precision, preferred_element_type, x, w):
    dims = ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ()))
    return lax.dot_general(x, w, dims, precision=precision, preferred_element_type=preferred_element_type)


def _dense_fwd(n_in, precision, preferred_element_type, x, w):
    return _contract(n_in, precision, preferred_element_type, x, w), (x, w)


def _dense_bwd(n_in, precision, preferred_element_type, residuals, dy):
    del preferred_element_type
    x, w = residuals
    n_lead, n_out = x.ndim - n_in, w.ndim - n_in
    # dx [lead..., in...]: dy's output axes against W's output axes.
    dx = lax.dot_general(dy, w, ((tuple(range(n_lead, n_lead + n_out)), tuple(range(n_in, w.ndim))),
                                 ((), ())), precision=precision)
    # dW [in..., out...]: x's and dy's token axes contracted, nothing transposed. Merged
    # into one leading axis first (a free reshape): with several contracting axes XLA:CPU
    # copies x into a transposed layout instead.
    n_tokens = math.prod(x.shape[:n_lead])
    dw = lax.dot_general(x.reshape(n_tokens, *x.shape[n_lead:]), dy.reshape(n_tokens, *dy.shape[n_lead:]),
                         (((0,), (0,)), ((), ())), precision=precision)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_dense = jax.custom_vjp(_contract, nondiff_argnums=(0, 1, 2))
_dense.defvjp(_dense_fwd, _dense_bwd)
