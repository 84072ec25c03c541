"""Follow every tensor storage a training step creates and frees, and find the peak.

`StorageTracker` is a `TorchDispatchMode`: every aten op (on meta tensors or on real ones)
passes through it, and each tensor it returns is looked at once per storage. A storage seen
for the first time is new memory: it gets a record with its size and the event number of
its birth; `weakref.finalize` on the storage object closes the record when the storage is
freed (PyTorch keeps one Python object per storage, so the finalizer fires exactly when the
last tensor or view of it dies). Views, in-place results and aliases share a storage that is
already counted, so they add nothing: parameters count once, tied embeddings count once.

The records form a timeline. Two live totals run along it: the raw bytes, and the bytes the
CUDA caching allocator would hand out (each allocation rounded up to a 512-byte block, which
is what `torch.cuda.max_memory_allocated` counts). After the run, the live records at the peak
event are sorted into parameters, adapters, gradients, optimizer state and the rest
(activations and temporaries) with what the caller learned along the way: which storages
became `.grad`, which are optimizer state.

What it cannot see: memory a kernel allocates internally without returning it as a tensor
(cuBLAS workspaces, the CUDA context), and allocations outside PyTorch's allocator
(bitsandbytes' paged optimizer state lives in CUDA unified memory). The caller accounts for
those separately.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# The CUDA caching allocator rounds every request up to a multiple of 512 bytes (kMinBlockSize
# in c10/cuda/CUDACachingAllocator.cpp); a zero-byte tensor allocates nothing.
CUDA_BLOCK = 512

KINDS = ("weights", "adapter", "gradients", "optimizer", "activations")


def cuda_block_bytes(nbytes: int) -> int:
    """Bytes the CUDA caching allocator counts for a request of `nbytes`."""
    if nbytes <= 0:
        return 0
    return -(-nbytes // CUDA_BLOCK) * CUDA_BLOCK


@dataclass
class _Record:
    birth: int
    nbytes: int
    phase: str
    death: int | None = None
    kind: str | None = None  # fixed kinds (weights, adapter); gradients/optimizer set later


@dataclass
class Peak:
    """The moment of highest live memory, by one way of counting bytes."""

    bytes: int = 0
    event: int = -1
    phase: str = ""


@dataclass
class PeakReport:
    """What was live at a peak, by kind, in bytes."""

    total: int
    phase: str
    by_kind: dict[str, int] = field(default_factory=dict)


class StorageTracker(TorchDispatchMode):
    """Records the birth and death of every storage returned by an aten op.

    Use as a context manager around the code to measure; call `register` first for tensors
    that exist before it (parameters, buffers, quantization constants), and set `phase` as
    the step moves on. `substitutions` maps an op to a function that runs instead of it with
    the tracker still active, so the function's own allocations are seen (used to model a
    kernel the way another device runs it).
    """

    def __init__(
        self,
        substitutions: dict | None = None,
        count_device: str = "meta",
        host_outputs: dict | None = None,
    ) -> None:
        super().__init__()
        # Outputs (by position) that the modelled device's kernel creates in host memory
        # while the meta kernel creates them on meta: never counted.
        self.host_outputs = host_outputs or {}
        # Only storages on this device are memory of the modelled card: a meta trace also
        # creates CPU tensors where a CUDA run does (AdamW's step counters), which are not.
        self.count_device = count_device
        self._meta = count_device == "meta"
        self.phase = "setup"
        self.events = 0
        self.ops = 0
        self.records: list[_Record] = []
        self._open: dict[int, _Record] = {}
        self.live_raw = 0
        self.live_cuda = 0
        self.peak_raw = Peak()
        self.peak_cuda = Peak()
        self.substitutions = substitutions or {}
        self._substituting = False
        self._gradient_records: set[int] = set()
        self._optimizer_records: set[int] = set()
        self._meta_cache = MetaOpCache()

    # -- seeing storages ------------------------------------------------------------------

    def _see(self, t: torch.Tensor, kind: str | None = None) -> _Record | None:
        if self._meta:
            if not t.is_meta:
                return None
        elif t.device.type != self.count_device:
            return None
        storage = t.untyped_storage()
        key = storage._cdata
        record = self._open.get(key)
        if record is not None:
            if kind is not None and record.kind is None:
                record.kind = kind
            return record
        nbytes = storage.nbytes()
        self.events += 1
        record = _Record(self.events, nbytes, self.phase, kind=kind)
        self.records.append(record)
        self._open[key] = record
        self.live_raw += nbytes
        self.live_cuda += cuda_block_bytes(nbytes)
        if self.live_raw > self.peak_raw.bytes:
            self.peak_raw = Peak(self.live_raw, self.events, self.phase)
        if self.live_cuda > self.peak_cuda.bytes:
            self.peak_cuda = Peak(self.live_cuda, self.events, self.phase)
        weakref.finalize(storage, self._free, key, record)
        return record

    def _free(self, key: int, record: _Record) -> None:
        self.events += 1
        record.death = self.events
        self.live_raw -= record.nbytes
        self.live_cuda -= cuda_block_bytes(record.nbytes)
        if self._open.get(key) is record:
            del self._open[key]

    def register(self, tensors: Iterable[torch.Tensor], kind: str) -> None:
        """Count tensors that already exist (parameters, buffers) as `kind`."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._see(t, kind)

    def mark(self, tensors: Iterable[torch.Tensor | None], kind: str) -> None:
        """Say that these tensors' storages are gradients or optimizer state."""
        target = self._gradient_records if kind == "gradients" else self._optimizer_records
        for t in tensors:
            if isinstance(t, torch.Tensor):
                record = self._see(t)
                if record is not None:
                    target.add(id(record))

    # -- the mode -------------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        kwargs = kwargs or {}
        substitute = None if self._substituting else self.substitutions.get(func)
        if substitute is not None:
            # Run the stand-in with this mode active again, so its allocations are tracked;
            # the op itself, called from the stand-in, runs as it is.
            self._substituting = True
            try:
                with self:
                    out = substitute(*args, **kwargs)
            finally:
                self._substituting = False
        elif self.count_device == "meta":
            out = self._meta_cache.run(func, args, kwargs)
        else:
            out = func(*args, **kwargs)
        host = self.host_outputs.get(func)
        if host is not None and isinstance(out, tuple):
            for i, t in enumerate(out):
                if i not in host and isinstance(t, torch.Tensor):
                    self._see(t)
            return out
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._see(t)
        return out

    # -- reading the result ---------------------------------------------------------------

    def report(self, cuda: bool = True) -> PeakReport:
        """The live storages at the peak, by kind (raw bytes or CUDA-rounded bytes)."""
        peak = self.peak_cuda if cuda else self.peak_raw
        size = cuda_block_bytes if cuda else (lambda n: n)
        by_kind = dict.fromkeys(KINDS, 0)
        for record in self.records:
            if record.birth > peak.event:
                break
            if record.death is not None and record.death <= peak.event:
                continue
            by_kind[self._kind(record)] += size(record.nbytes)
        return PeakReport(total=peak.bytes, phase=peak.phase, by_kind=by_kind)

    def _kind(self, record: _Record) -> str:
        if record.kind is not None:
            return record.kind
        if id(record) in self._gradient_records:
            return "gradients"
        if id(record) in self._optimizer_records:
            return "optimizer"
        return "activations"

    def live_bytes(self, cuda: bool = True) -> int:
        return self.live_cuda if cuda else self.live_raw


_PLAIN = (bool, int, float, str, torch.dtype, torch.device, torch.memory_format, torch.layout)


class MetaOpCache:
    """Skip the meta kernel of an op already run on inputs of the same metadata.

    Many meta kernels are Python reference implementations (`torch._refs`, `torch._meta_
    registrations`) that cost a few hundred microseconds a call; a 7B step runs tens of
    thousands of ops, most of them on the same few shapes. On meta tensors an op's outputs
    are a function of its inputs' metadata (shape, stride, dtype, offset) and its other
    arguments. When an op neither mutates nor aliases its inputs (its schema says so), its
    outputs are fresh storages fully described by their metadata, so the second call
    recreates them with `empty_strided` instead of running the kernel. Anything else (views,
    in-place ops, outputs whose storage is larger than their strides need, outputs sharing a
    storage) always runs the kernel. The same idea as `FakeTensorMode`'s dispatch cache.
    """

    def __init__(self) -> None:
        self._entries: dict = {}
        self._uncacheable: set = set()
        self._in_place: dict = {}
        self.hits = 0

    @staticmethod
    def _key(value):
        if isinstance(value, torch.Tensor):
            if not value.is_meta:
                raise TypeError("not a meta tensor")
            return (value.dtype, value.shape, value.stride(), value.storage_offset())
        if isinstance(value, (list, tuple)):
            key = MetaOpCache._key
            return (type(value), *[key(v) for v in value])
        if isinstance(value, dict):
            key = MetaOpCache._key
            return tuple([(k, key(v)) for k, v in value.items()])
        if value is None or isinstance(value, _PLAIN):
            return (type(value), value)
        raise TypeError(f"no cache key for {type(value).__name__}")

    @staticmethod
    def _cacheable(func) -> bool:
        schema = getattr(func, "_schema", None)
        if schema is None or schema.is_mutable:
            return False
        if any(a.alias_info is not None for a in schema.arguments):
            return False
        if any(r.alias_info is not None for r in schema.returns):
            return False
        return torch.Tag.dynamic_output_shape not in func.tags

    def run(self, func, args, kwargs):
        alias = self._in_place.get(func)
        if alias is None:
            alias = self._in_place[func] = _in_place_kind(func)
        if alias != "no" and args and _all_meta(args[0]):
            # An in-place op on meta tensors changes no metadata (shape, stride and dtype
            # of `self` stay; view-changing in-place ops are excluded): its result is
            # `self`, or nothing. Its meta kernel would only check shapes.
            self.hits += 1
            return args[0] if alias == "self" else None
        if func in self._uncacheable:
            return func(*args, **kwargs)
        try:
            key = (func, self._key(args), self._key(kwargs))
        except TypeError:
            return func(*args, **kwargs)
        spec = self._entries.get(key)
        if spec is not None:
            self.hits += 1
            return _rebuild(spec)
        out = func(*args, **kwargs)
        if not self._cacheable(func) or _shares_input_storage(out, args, kwargs):
            # Some ops alias an input without saying so in their schema (_unsafe_view).
            self._uncacheable.add(func)
            return out
        spec = _describe(out)
        if spec is not None:
            self._entries[key] = spec
        return out


def _in_place_kind(func) -> str:
    """ "self" for an in-place op that returns its first argument, "void" for one that
    returns nothing (the foreach ops), "no" for anything else (out= variants, ops that
    mutate several arguments or change a view's metadata)."""
    schema = getattr(func, "_schema", None)
    if schema is None or torch.Tag.inplace_view in func.tags:
        return "no"
    aliased = [a for a in schema.arguments if a.alias_info is not None]
    if len(aliased) != 1 or aliased[0].name != "self" or not aliased[0].alias_info.is_write:
        return "no"
    if schema.arguments[0].name != "self" or aliased[0].kwarg_only:
        return "no"
    if not schema.returns:
        return "void"
    if len(schema.returns) == 1 and schema.returns[0].alias_info is not None:
        return "self"
    return "no"


def _shares_input_storage(out, args, kwargs) -> bool:
    inputs = {
        t.untyped_storage()._cdata
        for t in tree_flatten((args, kwargs))[0]
        if isinstance(t, torch.Tensor) and t.is_meta
    }
    return any(
        isinstance(t, torch.Tensor) and t.untyped_storage()._cdata in inputs
        for t in tree_flatten(out)[0]
    )


def _all_meta(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_meta
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, torch.Tensor) and v.is_meta for v in value)
    return False


def _describe(out):
    """The outputs as (shape, stride, dtype) descriptions, or None when some output is not a
    fresh, exactly-sized, unshared storage."""
    seen: set[int] = set()

    def one(value):
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            if value.device.type != "meta" or value.storage_offset() != 0:
                raise ValueError
            if storage._cdata in seen:
                raise ValueError
            seen.add(storage._cdata)
            probe = torch.empty_strided(
                value.shape, value.stride(), dtype=value.dtype, device="meta"
            )
            if probe.untyped_storage().nbytes() != storage.nbytes():
                raise ValueError
            return ("T", tuple(value.shape), value.stride(), value.dtype)
        if isinstance(value, (list, tuple)):
            return (type(value), [one(v) for v in value])
        return ("V", value)

    try:
        return one(out)
    except ValueError:
        return None


def _rebuild(spec):
    tag = spec[0]
    if tag == "T":
        return torch.empty_strided(spec[1], spec[2], dtype=spec[3], device="meta")
    if tag == "V":
        return spec[1]
    items = [_rebuild(s) for s in spec[1]]
    return tuple(items) if tag is tuple else items
