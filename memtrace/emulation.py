"""Make a step on meta tensors allocate what the same step allocates on the target device.

Meta tensors carry shapes, dtypes and strides but no data, and PyTorch runs them through
"meta" kernels. Four things a real run does are lost on that road; this module puts each
back, following the library code it imitates, and nothing else:

1. Autocast. PyTorch has no autocast for the meta device (`torch.autocast("meta")` raises and
   transformers' `maybe_autocast` turns into a no-op), yet autocast decides which tensors
   autograd keeps: under CUDA autocast `F.linear` on an fp32 LoRA weight saves a bf16 copy of
   it. `Autocast` re-implements the cast policies of ATen's `autocast_mode.h` (lists
   `AT_FORALL_LOWER_PRECISION_FP`, `AT_FORALL_FP32`, `AT_FORALL_FP32_SET_OPT_DTYPE`,
   `AT_FORALL_PROMOTE` for CUDA; the `AutocastCPU` registrations for the CPU) as a
   `TorchFunctionMode`, which sits above autograd exactly where autocast does, including the
   cache of lower-precision copies of fp32 leaf weights (cleared when the outermost autocast
   region exits, as `torch.autocast.__exit__` does through `torch.clear_autocast_cache`).
   Its on/off switch and dtype are the CPU autocast state (`torch.autocast("cpu", ...)`): that
   state does nothing to meta tensors by itself, and `torch.utils.checkpoint` saves and
   restores it around every recomputation, as a CUDA run restores CUDA autocast.

2. Attention kernels. `F.scaled_dot_product_attention` picks a kernel per device
   (`_fused_sdp_choice`); for meta it picks the math kernel, which materialises the
   (batch, heads, s, s) score matrix that flash and memory-efficient kernels never hold.
   `choose_cuda_attention` / `choose_cpu_attention` follow `select_sdp_backend` of
   `sdp_utils.cpp` / `sdp_utils_cpp.cpp` and `at::scaled_dot_product_attention`
   (`attention.cpp`: boolean masks become additive masks in the query dtype, flash pads the
   head dimension to a multiple of 8), then call the chosen ATen kernel op, whose meta
   implementation returns exactly the output and log-sum-exp a real kernel returns.

3. Dropout. `at::dropout` on CUDA runs the fused `native_dropout`, which keeps a 1-byte bool
   mask; on the CPU (and on meta) it multiplies by a noise tensor of the input's dtype and
   keeps that. For a CUDA target the CUDA kernel is called.

4. Data-dependent Python in transformers (see `meta_patches`).

Plus bitsandbytes' `gemm_4bit` dispatch (see `gemm_4bit_substitute`).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

Target = str  # "cuda" or "cpu": the device whose kernels the trace models

# -- 1. autocast policies ----------------------------------------------------------------

_LOWER_COMMON: tuple[Callable, ...] = (
    F.linear,
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.Tensor.__rmatmul__,
    torch.mm,
    torch.Tensor.mm,
    torch.bmm,
    torch.Tensor.bmm,
    torch.baddbmm,
    torch.Tensor.baddbmm,
    torch.addmm,
    torch.Tensor.addmm,
    torch.addbmm,
    torch.Tensor.addbmm,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.prelu,
    F.scaled_dot_product_attention,
)
# CUDA's lower-precision list also has addmv, addr, mv, einsum, chain_matmul, multi_dot.
_LOWER_CUDA_ONLY: tuple[Callable, ...] = (
    torch.mv,
    torch.Tensor.mv,
    torch.addmv,
    torch.addr,
    torch.einsum,
    torch.chain_matmul,
    torch.linalg.multi_dot,
)
# Ops CUDA autocast runs in fp32 (AT_FORALL_FP32). The CPU's fp32 list is about losses and
# linear algebra; the entries shared with CUDA are the losses.
_FP32_LOSSES: tuple[Callable, ...] = (
    F.nll_loss,
    F.mse_loss,
    F.l1_loss,
    F.smooth_l1_loss,
    F.huber_loss,
    F.kl_div,
    F.binary_cross_entropy_with_logits,
    F.poisson_nll_loss,
    F.margin_ranking_loss,
    F.hinge_embedding_loss,
    F.soft_margin_loss,
    F.multilabel_margin_loss,
    F.multi_margin_loss,
    F.triplet_margin_loss,
    F.cosine_embedding_loss,
    torch.cdist,
)
_FP32_CUDA_ONLY: tuple[Callable, ...] = (
    torch.exp,
    torch.Tensor.exp,
    torch.expm1,
    torch.log,
    torch.Tensor.log,
    torch.log10,
    torch.log2,
    torch.log1p,
    torch.Tensor.log1p,
    torch.reciprocal,
    torch.Tensor.reciprocal,
    torch.rsqrt,
    torch.Tensor.rsqrt,
    torch.pow,
    torch.Tensor.pow,
    torch.Tensor.__pow__,
    torch.Tensor.__rpow__,
    torch.acos,
    torch.asin,
    torch.cosh,
    torch.sinh,
    torch.tan,
    torch.erfinv,
    F.softplus,
    F.layer_norm,
    F.group_norm,
    F.cosine_similarity,
    torch.dist,
    F.pdist,
    torch.renorm,
    torch.logsumexp,
    torch.Tensor.logsumexp,
    # cross_entropy_loss is composite on CUDA: log_softmax (fp32_set_opt_dtype) + nll_loss
    # (fp32), so it computes in fp32 as a whole.
    F.cross_entropy,
)
_FP32_CPU_ONLY: tuple[Callable, ...] = (F.cross_entropy, torch.prod, torch.Tensor.prod)
# AT_FORALL_FP32_SET_OPT_DTYPE: reductions that accumulate in fp32 (CUDA only).
_SET_OPT_FP32_CUDA: tuple[Callable, ...] = (
    torch.softmax,
    torch.Tensor.softmax,
    F.softmax,
    torch.log_softmax,
    torch.Tensor.log_softmax,
    F.log_softmax,
    torch.cumsum,
    torch.Tensor.cumsum,
    torch.cumprod,
    torch.Tensor.cumprod,
    torch.prod,
    torch.Tensor.prod,
    torch.sum,
    torch.Tensor.sum,
    torch.linalg.vector_norm,
    torch.linalg.matrix_norm,
    torch.linalg.norm,
)
_PROMOTE: tuple[Callable, ...] = (
    torch.addcdiv,
    torch.Tensor.addcdiv,
    torch.addcmul,
    torch.Tensor.addcmul,
    torch.atan2,
    F.bilinear,
    torch.cross,
    torch.dot,
    torch.Tensor.dot,
    torch.vdot,
    F.grid_sample,
    torch.tensordot,
    torch.scatter_add,
    torch.Tensor.scatter_add,
    torch.Tensor.index_put,
)


def _policies(target: Target) -> dict[Callable, str]:
    table: dict[Callable, str] = {}
    for f in _PROMOTE:
        table[f] = "promote"
    if target == "cuda":
        for f in _SET_OPT_FP32_CUDA:
            table[f] = "fp32_set_opt_dtype"
        for f in (*_FP32_LOSSES, *_FP32_CUDA_ONLY):
            table[f] = "fp32"
        for f in (*_LOWER_COMMON, *_LOWER_CUDA_ONLY):
            table[f] = "lower"
    else:
        for f in (*_FP32_LOSSES, *_FP32_CPU_ONLY):
            table[f] = "fp32"
        for f in _LOWER_COMMON:
            table[f] = "lower"
    return table


def _eligible(t: Any) -> bool:
    """autocast_mode.h `is_eligible`: a floating tensor that is not double."""
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        mapped = [_map_tensors(fn, v) for v in value]
        return type(value)(mapped) if isinstance(value, tuple) else mapped
    return value


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (list, tuple)):
            for v in value:
                if isinstance(v, torch.Tensor):
                    return v
    return None


# -- 2. attention kernels -----------------------------------------------------------------


def _bool_mask_to_additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """attention.cpp `convert_boolean_attn_mask`: where(!mask, -inf, 0) in the query dtype."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.where(
        mask.logical_not(), -math.inf, torch.scalar_tensor(0.0, dtype=dtype, device=mask.device)
    )


def _aligned(t: torch.Tensor, alignment: int) -> bool:
    return all(s % alignment == 0 for s in t.stride()[:-1]) and t.stride(-1) == 1


def _pad_last(t: torch.Tensor, alignment: int, slice_back: bool) -> torch.Tensor:
    size = t.size(-1)
    if size % alignment == 0:
        return t
    padded = F.pad(t, (0, alignment - size % alignment))
    return padded[..., :size] if slice_back else padded


def _scale(query: torch.Tensor, scale: float | None) -> float:
    return scale if scale is not None else 1.0 / math.sqrt(query.size(-1))


def choose_cuda_attention(q, k, v, mask, dropout_p, is_causal, enable_gqa) -> str:
    """`select_sdp_backend` (sdp_utils.cpp) for an sm80+ card with the default priority
    order flash > memory-efficient > math. (On sm90/sm100 with cuDNN > 9.15, torch puts
    cuDNN attention first; it keeps the same output and log-sum-exp as flash, so the
    memory is the same.)"""
    half = q.dtype in (torch.float16, torch.bfloat16)
    e_q, e_k, e_v = q.size(-1), k.size(-1), v.size(-1)
    same_dims = e_q == e_k == e_v
    heads_ok = q.size(-3) % k.size(-3) == 0 and q.size(-3) % v.size(-3) == 0
    flash = (
        half
        and mask is None
        and same_dims
        and e_q <= 256
        and heads_ok
        and (not is_causal or q.size(-2) == k.size(-2))
    )
    if flash:
        return "flash"
    alignment = 8 if half else 4  # minimum_gemm_alignment on sm80+
    if e_q == e_k and e_q % alignment == 0 and e_v % alignment == 0 and heads_ok:
        return "efficient"
    return "math"


def choose_cpu_attention(q, k, v, mask, dropout_p, is_causal, enable_gqa) -> str:
    """`select_sdp_backend_cpp` (sdp_utils_cpp.cpp): flash for the CPU unless dropout is on
    or the head dimensions differ."""
    same_dims = q.size(-1) == k.size(-1) == v.size(-1)
    if dropout_p == 0.0 and same_dims and q.stride(-1) == 1 and k.stride(-1) == 1:
        return "flash_cpu"
    return "math"


def run_attention(kernel: str, q, k, v, mask, dropout_p, is_causal, scale, enable_gqa):
    """`at::scaled_dot_product_attention` after the choice: the same conversions, then the
    kernel op."""
    aten = torch.ops.aten
    if kernel == "flash":
        size = q.size(-1)
        out = aten._scaled_dot_product_flash_attention(
            _pad_last(q, 8, False),
            _pad_last(k, 8, False),
            _pad_last(v, 8, False),
            dropout_p,
            is_causal,
            False,
            scale=_scale(q, scale),
        )[0]
        return out[..., :size] if out.size(-1) != size else out
    if kernel == "efficient":
        if enable_gqa and k.size(-3) != q.size(-3):
            # Only reached in fp32 without a mask (transformers passes enable_gqa only
            # without one, and flash takes half precision). The meta kernels of memory-
            # efficient attention assume as many k/v heads as query heads, so k and v are
            # repeated to all heads, as the math kernel does (conservative by the k/v size).
            groups = q.size(-3) // k.size(-3)
            k = k.repeat_interleave(groups, -3)
            v = v.repeat_interleave(groups, -3)
        bias = _bool_mask_to_additive(mask, q.dtype)
        if bias is not None:
            # attention.cpp `preprocess_mask`: pad to an aligned row, then expand (a view).
            if not _aligned(bias, 8):
                bias = _pad_last(bias, 8, True)
            bias = bias.expand(q.size(0), q.size(1), q.size(2), k.size(2))
        compute_lse = torch.is_grad_enabled() and (
            q.requires_grad or k.requires_grad or v.requires_grad
        )
        return aten._scaled_dot_product_efficient_attention(
            q, k, v, bias, compute_lse, dropout_p, is_causal, scale=scale
        )[0]
    if kernel == "flash_cpu":
        return aten._scaled_dot_product_flash_attention_for_cpu(
            q,
            k,
            v,
            dropout_p,
            is_causal,
            attn_mask=_bool_mask_to_additive(mask, q.dtype),
            scale=scale,
        )[0]
    return aten._scaled_dot_product_attention_math(
        q,
        k,
        v,
        _bool_mask_to_additive(mask, q.dtype),
        dropout_p,
        is_causal,
        None,
        scale=scale,
        enable_gqa=enable_gqa,
    )[0]


# Kernels that keep the (batch, heads, s, s) score matrix for backward.
HOLDS_SCORES = {"math"}

# Without dropout, CUDA's flash and memory-efficient kernels return their philox seed and
# offset as 0-dim tensors made with `at::empty({}, at::dtype(at::kLong))`: host memory
# (flash_api.cpp `mha_fwd`, attention.cpp `_efficient_attention_forward`). Their meta
# kernels return them on meta, and autograd keeps them for backward; they are not counted.
CUDA_HOST_OUTPUTS = {
    torch.ops.aten._scaled_dot_product_flash_attention.default: (6, 7),
    torch.ops.aten._scaled_dot_product_efficient_attention.default: (2, 3),
}


class Autocast(TorchFunctionMode):
    """Autocast, attention-kernel choice and dropout kernel of `target`, for meta tensors.

    `kernels` counts the attention kernels chosen (flash, efficient, flash_cpu, math).
    """

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.target = target
        self.policies = _policies(target)
        self.kernels: Counter[str] = Counter()
        self._cache: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    # The cached casts of fp32 leaf weights live until the outermost autocast region ends.
    def clear_cache(self) -> None:
        self._cache.clear()

    def _lower(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if not _eligible(t) or t.dtype == dtype:
            return t
        cacheable = (
            t.dtype == torch.float32
            and t.requires_grad
            and t.is_leaf
            and not t._is_view()
            and torch.is_autocast_cache_enabled()
        )
        if cacheable:
            hit = self._cache.get(id(t))
            if hit is not None and hit[0]() is t:
                return hit[1]
            cast = t.to(dtype)
            self._cache[id(t)] = (weakref.ref(t), cast)
            return cast
        return t.to(dtype)

    def _autocast(self, func, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        policy = self.policies.get(func)
        if policy is None or not torch.is_autocast_enabled("cpu"):
            return args, kwargs
        if policy == "lower":
            dtype = torch.get_autocast_dtype("cpu")

            def cast(t: torch.Tensor) -> torch.Tensor:
                return self._lower(t, dtype)

        elif policy == "fp32":

            def cast(t: torch.Tensor) -> torch.Tensor:
                return t.float() if _eligible(t) and t.dtype != torch.float32 else t

        elif policy == "fp32_set_opt_dtype":
            first = _first_tensor(args, kwargs)
            if _eligible(first) and kwargs.get("dtype") is None:
                kwargs = {**kwargs, "dtype": torch.float32}
            return args, kwargs
        else:  # promote
            floats = [
                t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor) and _eligible(t)
            ]
            if not floats:
                return args, kwargs
            widest = floats[0].dtype
            for t in floats[1:]:
                widest = torch.promote_types(widest, t.dtype)

            def cast(t: torch.Tensor) -> torch.Tensor:
                return t.to(widest) if _eligible(t) and t.dtype != widest else t

        return (
            tuple(_map_tensors(cast, a) for a in args),
            {key: _map_tensors(cast, value) for key, value in kwargs.items()},
        )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        args, kwargs = self._autocast(func, args, kwargs)
        if func is F.scaled_dot_product_attention:
            return self._attention(*args, **kwargs)
        if func is F.dropout and self.target == "cuda":
            return self._cuda_dropout(*args, **kwargs)
        return func(*args, **kwargs)

    def _attention(
        self,
        query,
        key,
        value,
        attn_mask=None,
        dropout_p=0.0,
        is_causal=False,
        scale=None,
        enable_gqa=False,
    ):
        choose = choose_cuda_attention if self.target == "cuda" else choose_cpu_attention
        kernel = choose(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa)
        self.kernels[kernel] += 1
        return run_attention(
            kernel, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
        )

    @staticmethod
    def _cuda_dropout(input, p=0.5, training=True, inplace=False):
        """`at::dropout` on CUDA: the fused `native_dropout` (bool mask) when 0 < p < 1."""
        if not training or p == 0.0 or p >= 1.0 or input.numel() == 0 or inplace:
            return F.dropout(input, p, training, inplace)
        return torch.native_dropout(input, p, True)[0]


# -- 4. data-dependent branches of transformers -------------------------------------------


@contextlib.contextmanager
def meta_patches(padded: bool, target: Target, autocast: Autocast) -> Iterator[None]:
    """Answer the few Python branches of transformers that read tensor values, from what the
    tracer knows about the batch it built, and route the process-wide hooks autocast
    emulation needs. Everything is restored on exit.

    - `masking_utils._ignore_causal_mask_sdpa` asks `padding_mask.all()` to decide whether a
      causal mask can be left to sdpa's `is_causal` (no padding: no mask, flash attention) or
      must be built as a (batch, 1, s, s) tensor. The tracer knows: one sequence per batch has
      no padding; a micro batch of several carries padding (the worker's `PadCollator` pads
      to the longest row). The original function still decides everything else (sliding
      windows, offsets).
    - `masking_utils.find_packed_sequence_indices` reads position ids to detect several
      sequences packed in one row; the worker never packs, so there are none. (Only reached
      when no attention mask is given; the worker always gives one.)
    - `torch.is_autocast_enabled()` without a device asks about CUDA autocast; peft's
      bitsandbytes LoRA layer reads it to decide whether to cast inputs to fp32 itself. For a
      CUDA target it answers with the emulated state.
    - `torch.clear_autocast_cache` also clears the emulated cache.
    """
    import transformers.masking_utils as masking

    original_ignore = masking._ignore_causal_mask_sdpa
    original_packed = masking.find_packed_sequence_indices
    original_enabled = torch.is_autocast_enabled
    original_clear = torch.clear_autocast_cache

    def ignore_causal_mask_sdpa(padding_mask, *args, **kwargs):
        if padding_mask is not None and padding_mask.device.type == "meta":
            if padded:
                return False
            padding_mask = None
        return original_ignore(padding_mask, *args, **kwargs)

    def find_packed_sequence_indices(position_ids):
        if position_ids.device.type == "meta":
            return None
        return original_packed(position_ids)

    def is_autocast_enabled(*args, **kwargs):
        if not args and not kwargs:
            return original_enabled("cpu")
        return original_enabled(*args, **kwargs)

    def clear_autocast_cache():
        autocast.clear_cache()
        original_clear()

    masking._ignore_causal_mask_sdpa = ignore_causal_mask_sdpa
    masking.find_packed_sequence_indices = find_packed_sequence_indices
    if target == "cuda":
        torch.is_autocast_enabled = is_autocast_enabled
    torch.clear_autocast_cache = clear_autocast_cache
    try:
        yield
    finally:
        masking._ignore_causal_mask_sdpa = original_ignore
        masking.find_packed_sequence_indices = original_packed
        torch.is_autocast_enabled = original_enabled
        torch.clear_autocast_cache = original_clear


# -- bitsandbytes ------------------------------------------------------------------------

# bitsandbytes' CUDA `gemm_4bit` (0.50.2, backends/cuda/ops.py, the kernel registered for
# "cuda") takes `_dequant_linear_fallback` (the 4-bit weight dequantized into a temporary in
# the input's dtype, then F.linear) when the input has more than `_gemm_4bit_custom_max_m`
# (1536) rows or K is not a multiple of the blocksize; otherwise `_gemm_4bit_use_custom_cuda
# (device, dtype, M, N, K)` decides. That heuristic keeps the fused kernel (no temporary) for
# M <= `_GEMM_4BIT_CUSTOM_FLOOR_M` (4) on every GPU, and above that follows a ladder per
# compute capability and SM count: for weights of 4Mi elements or more every architecture
# dequantizes above M = 256 (an H100/H200 above M = 64), while small weights with a short K
# keep the fused kernel up to M = 512 on an H100 or 1536 on an A100. A trace does not know
# the card, so it takes the dequantizing branch above the floor: the fallback allocates
# everything the fused kernel does plus the temporary, so no card needs more than the trace.
GEMM_4BIT_FUSED_MAX_M = 4


def cuda_gemm_4bit_fused(rows: int, k: int, blocksize: int) -> bool:
    """Whether the trace models bitsandbytes' fused CUDA kernel (no dequantized temporary)
    for an input of `rows` x `k`: only where every GPU bitsandbytes knows runs it."""
    return rows <= GEMM_4BIT_FUSED_MAX_M and k % blocksize == 0


def gemm_4bit_substitute(target: Target) -> Callable:
    """A stand-in for `bitsandbytes::gemm_4bit` on meta tensors. The op's meta kernel returns
    only the output (what the fused CUDA kernel allocates); where the target dequantizes
    (see `GEMM_4BIT_FUSED_MAX_M`), this runs the dequantize-then-linear composition:
    bitsandbytes' `_dequant_linear_fallback` on CUDA (the nested absmax in fp32, absmax +
    offset, the weight in the input's dtype, F.linear) and the `default` kernel on the CPU
    (the same tensors)."""
    ops = torch.ops.bitsandbytes

    def substitute(
        A,
        B,
        shapeB,
        absmax,
        blocksize,
        quant_type,
        bias=None,
        absmax_8bit=None,
        absmax_code=None,
        absmax_offset=None,
    ):
        if target == "cuda" and cuda_gemm_4bit_fused(
            A.numel() // A.shape[-1], A.shape[-1], blocksize
        ):
            return ops.gemm_4bit.default(
                A,
                B,
                shapeB,
                absmax,
                blocksize,
                quant_type,
                bias=bias,
                absmax_8bit=absmax_8bit,
                absmax_code=absmax_code,
                absmax_offset=absmax_offset,
            )
        held = []
        if absmax_8bit is not None:
            nested = ops.dequantize_blockwise.default(
                absmax_8bit, absmax, absmax_code, 256, torch.float32
            )
            absmax = nested + absmax_offset
            if target == "cuda":
                # `_dequant_linear_fallback` keeps the dequantized nested absmax in a local
                # (`absmax_dq`) until it returns, through F.linear; the default kernel's
                # expression frees it before dequantizing the weight.
                held.append(nested)
            del nested
        weight = ops.dequantize_4bit.default(B, absmax, blocksize, quant_type, shapeB, A.dtype)
        out = F.linear(A, weight, bias)
        del held
        return out

    return substitute
