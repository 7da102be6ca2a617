"""The artifact loaded by torch itself in this process, and RuntimeMirror: the Python mirror of what
the C++ runtime runs at each input shape, so that verify and bench can compare the two bit for bit."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from torchbridge._warnings import expected_deprecations
from torchbridge.artifact import artifact_format, load_manifest
from torchbridge.compare import max_errors, run_module
from torchbridge.graph_passes import fold_fused_layer_weights, rewrite_channels_last, rewrite_rowwise


def load_in_python(
    path: str | os.PathLike, optimized_from_batch: int = 0, fuse: bool = True, runtime=None
) -> tuple[str, Callable[..., Any]]:
    """The artifact loaded by torch itself in this process, as (path name, callable):
    ('torchscript', torch.jit.load) or ('aoti', torch._inductor.aoti_load_package).

    optimized_from_batch: mirror what the C++ runtime does at load (`Runtime.optimized_from_batch`):
    0 runs the module as loaded; N >= 1 runs batches of N or more as the runtime does on the CPU in
    fp32 (RuntimeMirror: the same variant per input shape, made with the same LibTorch code) and
    smaller ones as loaded, so that the two can be compared bit for bit; `fuse` as given to the
    Runtime (the manifest's runtime.fuse / runtime.optimize, set at export, turn passes off here as
    they do there). `runtime`: the torchbridge.Runtime to follow (its choice of variant at each shape it has
    met). Ignored for a .pt2."""
    path = Path(path)
    if artifact_format(path) == "aoti":
        from torchbridge.aoti import load_package

        return "aoti", load_package(path)

    def load():
        with expected_deprecations():
            return torch.jit.load(str(path)).eval()

    manifest = runtime.manifest if runtime is not None else load_manifest(path)
    # Passes export found to crash LibTorch on this model are off in the runtime: here too.
    passes = (manifest or {}).get("runtime", {})
    if optimized_from_batch < 1 or passes.get("optimize") is False:
        return "torchscript", load()
    fuse = fuse and passes.get("fuse") is not False
    rtol = manifest["tolerance"]["rtol"] if manifest else 1e-5
    order, large = passes.get("variants"), passes.get("large_batches")
    mirror = RuntimeMirror(load, optimized_from_batch, fuse=fuse, runtime=runtime, rtol=rtol, order=order, large=large)
    if not mirror.variants:  # export measured the module as loaded fastest: the runtime runs it
        return "torchscript", mirror.loaded
    return "torchscript", mirror


def dense(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` contiguous with the canonical strides, as the C++ runtime passes inputs to a model
    (a contiguous tensor may carry any stride on a dimension of size 1)."""
    tensor = tensor.contiguous()
    strides, step = [], 1
    for size in reversed(tensor.shape):
        strides.append(step)
        step *= max(size, 1)
    strides = tuple(reversed(strides))
    return tensor if tensor.stride() == strides else tensor.as_strided(tensor.shape, strides)


class ChannelsLast:
    """A module run as the runtime's "channels_last" variant runs it: 4-d floating inputs in
    channels-last, outputs made contiguous."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *inputs):
        inputs = [to_channels_last(t) for t in inputs]
        return torch.utils._pytree.tree_map(
            lambda t: t.contiguous() if isinstance(t, torch.Tensor) else t, self.module(*inputs)
        )


def to_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dim() == 4 and tensor.is_floating_point():
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor


#: The variants export times on the CPU in fp32 and writes to the manifest's runtime.variants,
#: fastest first. "frozen" (the runtime's last resort in its built-in order) is not timed: for a
#: model without 4-d weights "channels_last" is freeze with its SiLUs and linear layers through
#: torchbridge's kernels, and for one with them the other two are the frozen module plus passes
#: made for convolutions; each timed variant costs export runs.
#: "rowwise" (freeze, then linear layers and LSTMs through torchbridge::packed_linear and
#: rowwise_lstm, the runtime's kernels for inputs of a few rows, and layer norm, GELU and attention
#: through its kernels for small inputs) is timed only for a model with such layers, on a CPU that
#: runs the kernels (elsewhere it is freeze alone).
CPU_VARIANTS = ("onednn_graph", "optimize_for_inference", "channels_last", "rowwise")


def tried(order: list[str]) -> list[str]:
    """The variants of a measured order the runtime tries: those before "as_loaded" (the C++
    runtime cuts the manifest's order the same way, in torchscript_backend.cpp)."""
    return order[: order.index("as_loaded")] if "as_loaded" in order else list(order)


class RuntimeMirror:
    """What the C++ runtime runs for a float TorchScript model on the CPU in fp32 (runtime.cpp,
    TorchScriptBackend), done by torch in this process. Batches below `from_batch` run the module as
    loaded. At every other input shape one variant runs, chosen on the first call there: the first
    that runs there and matches the module as loaded within `rtol` of its largest output, else
    "as_loaded", in the manifest's measured `order` (runtime.variants; those after "as_loaded" are
    never tried) or else the built-in one: "onednn_graph" (a frozen copy fused by oneDNN Graph on
    its first two calls, through the runtime's own OneDnnFusionScope; the first _C.FUSED_SHAPES
    shapes only, none with fuse=False), "optimize_for_inference" (freeze + optimize_for_inference),
    "frozen". "channels_last" (freeze with channels-last weights, 4-d inputs in channels-last,
    SiLUs, global average poolings, first, 1x1 and depthwise convolutions and linear layers through
    torchbridge's kernels) runs only where the order names it. `large`
    (runtime.large_batches, {"from": N, "variants": [...]}): batches of N or more follow that order
    instead. With a `runtime`, the variant is the one the runtime chose at that shape, so both run
    the same graphs. `load` returns a fresh module as loaded (eval mode)."""

    def __init__(
        self,
        load: Callable[[], Any],
        from_batch: int = 1,
        fuse: bool = True,
        runtime=None,
        rtol=1e-5,
        order=None,
        large=None,
    ):
        from torchbridge import _C

        self._C = _C
        self._load = load
        self.from_batch = from_batch
        self.fuse = fuse
        self.runtime = runtime
        self.rtol = rtol
        self.order = list(order) if order else None
        self.large_from = int(large["from"]) if large and self.order else 0
        self.large_order = list(large["variants"]) if self.large_from else []
        # Resolved once: __call__ consults them on every call (bench times this mirror as the bare
        # LibTorch forward).
        if self.order is None:
            self._small = (["onednn_graph"] if fuse else []) + ["optimize_for_inference", "frozen"]
        else:
            self._small = self._known(self.order)
        self._large = self._known(self.large_order) if self.large_from >= 2 and self._small else self._small
        self.loaded = load()  # the reference, and what runs as loaded; a bad file fails here
        self.by_shape: dict[tuple[int, ...], tuple[str, Any]] = {}  # shape key -> (variant, module)
        self.fused_shapes = 0
        self.rejected: set[str] = set()
        self._frozen_module = None
        self._optimized_module = None
        self._channels_last_module = None
        self._rowwise_module = None

    @property
    def variants(self) -> list[str]:
        """The variants tried at small batches (all batches without `large`), in order; [] where
        the order puts the module as loaded first (the runtime then runs it at every batch)."""
        return self._small

    def variants_for(self, batch: int) -> list[str]:
        return self._large if self.large_from >= 2 and batch >= self.large_from else self._small

    def _known(self, order: list[str]) -> list[str]:
        available = [v for v in (*CPU_VARIANTS, "frozen") if self.fuse or v != "onednn_graph"]
        return list(dict.fromkeys(v for v in tried(order) if v in available))

    def _freeze(self, inference: bool = True):
        # The runtime freezes once at load, outside inference mode ("frozen" runs that module), and
        # makes oneDNN Graph's and optimize_for_inference's modules from a clone of it within a
        # call, in inference mode. On attention models a module frozen or cloned in inference mode
        # rounds differently from one made outside it (1e-7 to 2e-6: nn.TransformerDecoder,
        # nn.MultiheadAttention), and verify's TorchScript-vs-C++ check is exact: each variant's
        # copy is frozen here in the mode the runtime makes it in.
        with expected_deprecations(), torch.inference_mode(inference):
            module = self._load()
            # An artifact exported frozen has no `training` attribute and is used as it is, as in C++.
            return torch.jit.freeze(module) if module._c.hasattr("training") else module

    def _frozen(self):
        if self._frozen_module is None:
            self._frozen_module = self._freeze(inference=False)
        return self._frozen_module

    def _make(self, variant: str, inputs) -> tuple[Any, list[torch.Tensor]]:
        """The variant's module, run at these inputs as the runtime runs it: (module, outputs)."""
        if variant == "as_loaded":
            return self.loaded, run_module(self.loaded, inputs)
        if variant == "onednn_graph":
            module = self._freeze()  # a copy of its own per shape
            with self._C.OneDnnFusionScope():
                module(*inputs)  # profiled
                return module, run_module(module, inputs)  # optimized with the pass: oneDNN Graph compiles
        if variant == "channels_last":
            if self._channels_last_module is None:
                # Made on first need, within a call, as the runtime makes it: in inference mode.
                with expected_deprecations(), torch.inference_mode():
                    module = self._load()
                    for parameter in module.parameters():
                        if parameter.dim() == 4 and parameter.is_floating_point():
                            parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
                    frozen = torch.jit.freeze(module) if module._c.hasattr("training") else module
                fold_fused_layer_weights(frozen)
                rewrite_channels_last(frozen.graph)
                self._channels_last_module = ChannelsLast(frozen)
            module = self._channels_last_module
            module(*inputs)
            return module, run_module(module, inputs)
        if variant == "rowwise":
            if self._rowwise_module is None:
                frozen = self._freeze()  # the runtime clones its frozen module within a call
                fold_fused_layer_weights(frozen)
                rewrite_rowwise(frozen.graph)
                self._rowwise_module = frozen
            module = self._rowwise_module
        elif variant == "optimize_for_inference":
            if self._optimized_module is None:
                frozen = self._freeze()
                with torch.inference_mode():  # as in the runtime, within a call
                    self._optimized_module = torch.jit.optimize_for_inference(frozen)
            module = self._optimized_module
        else:
            module = self._frozen()
        module(*inputs)
        return module, run_module(module, inputs)

    def _choose(self, inputs) -> tuple[str, Any]:
        expected = run_module(self.loaded, inputs)
        batch = inputs[0].shape[0] if inputs and inputs[0].dim() > 0 else 1
        for variant in self.variants_for(batch):
            if variant in self.rejected or (variant == "onednn_graph" and self.fused_shapes >= self._C.FUSED_SHAPES):
                continue
            try:
                module, actual = self._make(variant, inputs)
                if len(actual) == len(expected) and all(
                    max_errors(a, e)[1] <= self.rtol for a, e in zip(actual, expected)
                ):
                    return variant, module
            except Exception:
                pass
            self.rejected.add(variant)  # raised or differed: not tried at further shapes, as in the runtime
        return "as_loaded", self.loaded

    def variant_at(self, *inputs) -> str | None:
        entry = self.by_shape.get(self._key(inputs))
        return entry[0] if entry else None

    @staticmethod
    def _key(inputs) -> tuple[int, ...]:
        return tuple(n for t in inputs for n in (t.dim(), *t.shape))

    def __call__(self, *inputs):
        inputs = tuple(dense(t) for t in inputs)  # as the runtime passes them
        batch = inputs[0].shape[0] if inputs and inputs[0].dim() > 0 else 1
        if (self.from_batch > 1 and batch < self.from_batch) or not self.variants_for(batch):
            return self.loaded(*inputs)
        key = self._key(inputs)
        entry = self.by_shape.get(key)
        if entry is None:
            if len(self.by_shape) >= self._C.CHECKED_SHAPES:
                return self.loaded(*inputs)
            variant = self.runtime._native.variant_at([t.__dlpack__() for t in inputs]) if self.runtime else ""
            if variant:
                entry = (variant, self._make(variant, inputs)[0])
            else:
                entry = self._choose(inputs)
            if entry[0] == "onednn_graph":
                self.fused_shapes += 1
            self.by_shape[key] = entry
        return entry[1](*inputs)
