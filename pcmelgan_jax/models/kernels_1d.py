"""The fast 1-d forms of ``kernels``: grouped convolutions as batched matmuls or polyphase
stride-1 convolutions, and MelGAN's transposed convolution as stride-1 polyphase convolutions.
Each computes the same function as XLA's grouped or transposed convolution.
"""

from __future__ import annotations

import math
from functools import partial, reduce
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# --------------------------------------------------------------------------- grouped 1-d


def grouped_conv1d(x: Array, kernel: Array, stride: int, padding: int, groups: int) -> Array:
    """``lax.conv_general_dilated(..., feature_group_count=groups)`` of a 1-d input with that
    stride and symmetric zero padding, in the form that is fast on each platform.

    x (B, T, C_in), kernel (k, C_in / groups, C_out) -> (B, T', C_out) with
    T' = (T + 2 padding - k) // stride + 1. On CPU: ``grouped_conv1d_blocks`` (batched
    matmuls over the groups); elsewhere ``grouped_conv1d_polyphase`` (XLA's grouped
    convolution at stride 1 and its gradients).
    """
    return jax.lax.platform_dependent(
        x,
        kernel,
        cpu=partial(grouped_conv1d_blocks, stride=stride, padding=padding, groups=groups),
        default=partial(grouped_conv1d_polyphase, stride=stride, padding=padding,
                        groups=groups),
    )


def _padded_blocks(x: Array, padding: int, block: int, blocks: int, groups: int) -> Array:
    """x (B, T, C_in) zero-padded by ``padding`` samples on the left and cut or padded on the
    right to ``blocks * block`` samples -> (B, blocks, block, groups, C_in / groups)."""
    batch, length, c_in = x.shape
    # lax.pad: the right padding may be negative (samples that no output reaches)
    right = block * blocks - length - padding
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (padding, right, 0), (0, 0, 0)))
    return x.reshape(batch, blocks, block, groups, c_in // groups)


def _output_blocks(length: int, k: int, stride: int, padding: int) -> tuple[int, int, int, int]:
    """(T', q, n_b, V) of ``grouped_conv1d_blocks``: output length, outputs per block, input
    blocks per output block, output blocks."""
    out = (length + 2 * padding - k) // stride + 1
    q = math.ceil(math.ceil(k / stride) / 3)  # a third of the polyphase taps
    span = stride * q  # input samples per block
    return out, q, math.ceil((stride * (q - 1) + k) / span), math.ceil(out / q)


def _toeplitz_kernel(kernel: Array, stride: int, q: int, n_b: int) -> Array:
    """The block-Toeplitz kernel of ``grouped_conv1d_blocks``: (k, C_in / groups, C_out) ->
    (n_b, S, q, C_in / groups, C_out), entry [m, c, r] = kernel[S m + c - s r] (zero outside
    0..k-1), S = s q."""
    k, per_group, c_out = kernel.shape
    span = stride * q
    tap = (span * np.arange(n_b)[:, None, None] + np.arange(span)[None, :, None]
           - stride * np.arange(q))  # (n_b, S, q): the kernel tap each entry holds
    tap = np.where((tap >= 0) & (tap < k), tap, k)  # k: the appended zero tap
    return jnp.concatenate([kernel, jnp.zeros((1, per_group, c_out), kernel.dtype)])[tap]


def _grouped_blocks_form(
    length: int, c_in: int, c_out: int, k: int, stride: int, padding: int
) -> Literal["patches", "shifted"]:
    """Which matmul ``grouped_conv1d_blocks`` runs: "shifted" (outputs) where n_b copies of
    the output are fewer elements than n_b copies of the input, else "patches" (input)."""
    _, q, n_b, v = _output_blocks(length, k, stride, padding)
    return "shifted" if (v + n_b - 1) * q * c_out < v * stride * q * c_in else "patches"


def grouped_conv1d_blocks(
    x: Array, kernel: Array, stride: int, padding: int, groups: int
) -> Array:
    """``grouped_conv1d`` as one batched matmul over the groups (plain jnp; autodiff gives
    two more batched matmuls as its gradients).

    XLA:CPU runs a grouped convolution as one small convolution per group, slow for the
    MelGAN discriminator's layers with 64 and 256 groups of 4 input channels. Here the
    outputs are taken in blocks of q consecutive samples (q = ceil(n / 3) of the
    n = ceil(k / s) polyphase taps; q = 4 for kernel 41, stride 4): with S = s q, output
    block v reads the n_b input blocks x_p[S (v + m) : S (v + m + 1)], m < n_b, of the
    zero-padded input x_p, and
    y[b, q v + r, (g, o)] = sum_{m, c, i} x_p[b, S (v + m) + c, (g, i)] W[g, (m, c, i), (r, o)]
    with the block-Toeplitz kernel W[g, (m, c, i), (r, o)] = kernel[S m + c - s r, i, (g, o)]
    (zero outside 0..k-1): n_b S / k = 1.56x the convolution's multiply-adds for the
    discriminator. The matmul takes one of two forms, whichever moves less data:

    - input patches: per group a (B V, n_b S C_in/groups) x (n_b S C_in/groups, q C_out/groups)
      matmul of the patch matrix, which holds the input n_b times;
    - shifted outputs: per group a (B V', S C_in/groups) x (S C_in/groups, n_b q C_out/groups)
      matmul of the input blocks themselves (V' = V + n_b - 1), whose n_b partial outputs
      per block are then summed shifted by m blocks: the intermediate holds the output n_b
      times. It wins where the output is smaller than the input (the discriminator's
      1024 -> 1024 layer).
    """
    batch, length, c_in = x.shape
    k, per_group, c_out = kernel.shape
    out_per_group = c_out // groups
    out, q, n_b, v = _output_blocks(length, k, stride, padding)
    span = stride * q
    blocks = v + n_b - 1
    x = _padded_blocks(x, padding, span, blocks, groups).transpose(3, 0, 1, 2, 4)
    w = _toeplitz_kernel(kernel, stride, q, n_b).reshape(
        n_b, span, q, per_group, groups, out_per_group
    )
    dtype = jnp.result_type(x, kernel)
    batched_matmul = partial(jax.lax.dot_general, dimension_numbers=(((2,), (1,)), ((0,), (0,))),
                             preferred_element_type=jnp.float32)
    if _grouped_blocks_form(length, c_in, c_out, k, stride, padding) == "shifted":
        w = w.transpose(4, 1, 3, 0, 2, 5).reshape(groups, span * per_group, -1)
        z = batched_matmul(x.reshape(groups, batch * blocks, -1), w).astype(dtype)
        z = z.reshape(groups, batch, blocks, n_b, q * out_per_group)
        y = reduce(jnp.add, [z[:, :, m:m + v, m] for m in range(n_b)])
    else:  # input patches
        patches = jnp.concatenate([x[:, :, m:m + v] for m in range(n_b)], axis=3)
        patches = patches.reshape(groups, batch * v, n_b * span * per_group)
        w = w.transpose(4, 0, 1, 3, 2, 5).reshape(groups, n_b * span * per_group, -1)
        y = batched_matmul(patches, w).astype(dtype)
    y = y.reshape(groups, batch, v * q, out_per_group).transpose(1, 2, 0, 3)
    return y[:, :out].reshape(batch, out, c_out)


def grouped_conv1d_polyphase(
    x: Array, kernel: Array, stride: int, padding: int, groups: int
) -> Array:
    """``grouped_conv1d`` as a stride-1 grouped convolution of the polyphase input.

    With s = stride and n = ceil(k / s) taps, the zero-padded input x_p is folded to
    x'[b, u, (g, r, i)] = x_p[b, s u + r, (g, i)], (B, T' + n - 1, s C_in),
    and the kernel to w'[a, (r, i), o] = w[s a + r, i, o] (zero where s a + r >= k),
    (n, s C_in / groups, C_out); then y = ``conv1d_valid(x', w')``. XLA computes
    the forward and input gradient of this stride-1 form several times faster than those of
    the strided convolution. Its kernel gradient is XLA's (a batch-grouped convolution),
    which on GPU was faster than a custom VJP computing it as a grouped convolution over
    (batch x groups) channels.
    """
    k, per_group, c_out = kernel.shape
    batch, length, c_in = x.shape
    s, taps = stride, -(-k // stride)
    folded_length = (length + 2 * padding - k) // s + taps  # T' + n - 1
    x = _padded_blocks(x, padding, s, folded_length, groups).transpose(0, 1, 3, 2, 4)
    kernel = jnp.pad(kernel, ((0, s * taps - k), (0, 0), (0, 0)))
    return conv1d_valid(
        x.reshape(batch, folded_length, s * c_in),
        kernel.reshape(taps, s * per_group, c_out),
        groups,
    )


def conv1d_valid(x: Array, kernel: Array, groups: int = 1) -> Array:
    """Unpadded stride-1 grouped conv1d.

    x (B, L, C_in), kernel (k, C_in / groups, C_out) -> (B, L - k + 1, C_out).
    """
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (1,),
        "VALID",
        dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=groups,
    )


# --------------------------------------------------------------------------- transposed 1-d


def transposed_padding(stride: int) -> tuple[int, int]:
    """MelGAN's (padding, output_padding) for kernel 2*stride: (r//2 + r%2, r%2)."""
    return stride // 2 + stride % 2, stride % 2


def polyphase_kernel(kernel: Array, stride: int) -> Array:
    """Rewrites a (2r, C_in, C_out) transposed-conv kernel as a (3, C_in, r * C_out) kernel.

    With padding p = r//2 + r%2, output sample t = q*r + j (phase j) of the transposed
    convolution is x[q+a] w[b] + x[q+a-1] w[r+b], a, b = divmod(j + p, r). Over the input
    zero-padded by one sample on each side this is a stride-1, 3-tap convolution whose output
    channel j*C_out + c holds phase j of channel c.
    """
    r = stride
    k, c_in, c_out = kernel.shape
    if k != 2 * r:
        raise ValueError(f"polyphase form needs kernel 2*stride, got kernel {k}, stride {r}")
    p, _ = transposed_padding(r)
    zero = jnp.zeros((c_in, c_out), kernel.dtype)
    phases = []
    for j in range(r):
        a, b = divmod(j + p, r)
        taps = [kernel[r + b], kernel[b], zero] if a == 0 else [zero, kernel[r + b], kernel[b]]
        phases.append(jnp.stack(taps))  # (3, C_in, C_out)
    return jnp.stack(phases, axis=2).reshape(3, c_in, r * c_out)


def two_tap_phases(x: Array, kernel: Array, stride: int) -> Array:
    """MelGAN's transposed convolution as two 2-tap stride-1 convolutions.

    x (B, L, C_in), kernel (2r, C_in, C_out) -> (B, rL, C_out). In ``polyphase_kernel``'s
    terms, the phases j with a = 0 (the first r - p) read x[q-1], x[q] and the others x[q],
    x[q+1]: each group is a 2-tap convolution without the zero taps, and their outputs,
    concatenated over channels, are the phases in order.
    """
    r = stride
    batch, length, c_in = x.shape
    k, _, c_out = kernel.shape
    if k != 2 * r or r < 2:
        raise ValueError(f"two_tap_phases needs kernel 2*stride and stride >= 2, got kernel {k}, "
                         f"stride {r}")
    p, _ = transposed_padding(r)

    def taps(bs):  # (2, C_in, len(bs) C_out): for phase b, taps kernel[r + b], kernel[b]
        return jnp.stack([jnp.stack([kernel[r + b], kernel[b]]) for b in bs], axis=2).reshape(
            2, c_in, -1)

    def conv(w, pad):
        return jax.lax.conv_general_dilated(
            x, w, (1,), [pad], dimension_numbers=("NWC", "WIO", "NWC")
        )

    y = jnp.concatenate([conv(taps(range(p, r)), (1, 0)), conv(taps(range(p)), (0, 1))], axis=-1)
    return y.reshape(batch, length * r, c_out)
