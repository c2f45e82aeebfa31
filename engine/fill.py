"""Checkpoint tensors into a model built on the meta device: each copied straight into
its parameter (or its rows of a fused one), and on a CPU each layer the load quantizes
(engine/layers/cpu_quant.py: ``CpuWeightPlan``) built and quantized alone, so that loading
peaks near the quantized model's size rather than the dense model's."""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

from engine.errors import ModelLoadError
from engine.layers.cpu_quant import CpuWeightPlan, int8_table, int8_table_layers, quantized_linear
from engine.weights import CheckpointReader, TensorEntry, check_shape, file_order

logger = logging.getLogger(__name__)


def fill_parameters(
    model: nn.Module,
    entries: list[TensorEntry],
    tensors: Iterable[tuple[str | None, torch.Tensor]] = (),
    plan: CpuWeightPlan | None = None,
) -> None:
    """Copy the safetensors ``entries`` and the in-memory ``tensors`` (named as the
    model's checkpoint names them; None: a tensor it does not use) into ``model``, each
    module ``plan`` quantizes as soon as it is complete; raise if any weight is left
    unfilled."""
    filler = _Filler(model, plan)
    with CheckpointReader() as reader:
        for entry in sorted(entries, key=filler.order):
            filler.fill(
                entry.name,
                entry.shape,
                lambda target, entry=entry: reader.read_into(entry, target),
                lambda start, stop, entry=entry: reader.read_rows(entry, start, stop),
            )
    for name, tensor in tensors:
        if name is not None:
            filler.fill(
                name,
                tuple(tensor.shape),
                lambda target, name=name, tensor=tensor: _copy(name, tensor, target),
                lambda start, stop, tensor=tensor: tensor[start:stop],
            )
    missing = sorted(filler.unfilled)
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ModelLoadError(f"the checkpoint lacks {len(missing)} weights: {shown}")


def _copy(name: str, tensor: torch.Tensor, target: torch.Tensor) -> None:
    check_shape(name, tuple(tensor.shape), target.shape)
    target.copy_(tensor)


class _Filler:
    """Puts checkpoint tensors where they go in ``model``. With a CPU ``plan``, a module
    it quantizes (kept on meta until then) is allocated when its first tensor comes and
    replaced by its quantized form once its last is in, and an int8 table (embedding, LM
    head) is read and quantized a few rows at a time: no dense copy of either is whole."""

    def __init__(self, model: nn.Module, plan: CpuWeightPlan | None):
        self.model = model
        self.plan = plan
        self.modules = dict(model.named_modules())
        self.fused = model.fused_layers
        params = _checkpoint_tensors(model)
        self.params = set(params)
        self.unfilled = _expected_checkpoint_names(params, self.fused)
        deferred = plan.deferred if plan is not None else []
        self.rank = {name: rank for rank, name in enumerate(deferred, start=1)}
        self.tables = plan.int8_tables if plan is not None else []
        # the checkpoint tensors each quantized linear still waits for
        self.pending: dict[str, set[str]] = {name: set() for name in plan.linears} if plan else {}
        for name in self.unfilled:
            module_name = self.locate(name)[0]
            if module_name in self.pending:
                self.pending[module_name].add(name)

    def locate(self, name: str) -> tuple[str, str, int | None] | None:
        """(module, parameter name, index among a fused layer's members) of a checkpoint
        tensor; None for one the model does not use."""
        module_name, _, param_name = name.rpartition(".")
        parent_name, _, layer_name = module_name.rpartition(".")
        if layer_name in self.fused:
            fused_name, index = self.fused[layer_name]
            target_name = f"{parent_name}.{fused_name}"
            if f"{target_name}.{param_name}" in self.params:
                return target_name, param_name, index
        # Not fused here (e.g. a vision tower's q_proj): loads by its own name.
        if name in self.params:
            return module_name, param_name, None
        return None

    def order(self, entry: TensorEntry) -> tuple[int, str, int]:
        """Tensors of allocated modules first, in file order, then each quantized
        module's together (so one at a time is dense)."""
        located = self.locate(entry.name)
        return self.rank.get(located[0], 0) if located else 0, *file_order(entry)

    def fill(
        self,
        name: str,
        shape: tuple[int, ...],
        copy_to: Callable[[torch.Tensor], None],
        read_rows: Callable[[int, int], torch.Tensor],
    ) -> None:
        located = self.locate(name)
        if located is None:
            if not name.endswith("rotary_emb.inv_freq"):
                logger.warning("ignoring checkpoint tensor %s", name)
            return
        module_name, param_name, index = located
        if module_name not in self.modules:  # quantized already: a second copy of a tensor
            logger.warning("ignoring checkpoint tensor %s: %s is loaded", name, module_name)
            return
        self.unfilled.discard(name)
        if module_name in self.tables:
            self._fill_table(name, module_name, shape, read_rows)
            return
        self._copy_into(module_name, param_name, index, copy_to)
        pending = self.pending.get(module_name)
        if pending is not None:
            pending.discard(name)
            if not pending:
                del self.pending[module_name]
                quantized = quantized_linear(self.plan, module_name, self.modules[module_name])
                self._replace(module_name, quantized)

    def _copy_into(
        self,
        module_name: str,
        param_name: str,
        index: int | None,
        copy_to: Callable[[torch.Tensor], None],
    ) -> None:
        module = self.modules[module_name]
        if module_name in self.pending and getattr(module, param_name).is_meta:
            module.to_empty(device="cpu", recurse=False)
        copy_to(
            getattr(module, param_name).data if index is None else module.shard(param_name, index)
        )

    def _fill_table(
        self,
        name: str,
        module_name: str,
        shape: tuple[int, ...],
        read_rows: Callable[[int, int], torch.Tensor],
    ) -> None:
        weight = self.modules[module_name].weight  # on meta: the model's shape and dtype
        check_shape(name, shape, weight.shape)
        table = int8_table(
            lambda start, stop: read_rows(start, stop).to(weight.dtype),
            tuple(weight.shape),
            self.plan.dtype,
        )
        for layer_name, layer in int8_table_layers(
            self.plan, module_name, table, weight.dtype
        ).items():
            self._replace(layer_name, layer)

    def _replace(self, name: str, module: nn.Module) -> None:
        parent_name, _, attr = name.rpartition(".")
        setattr(self.model.get_submodule(parent_name), attr, module)
        self.modules.pop(name, None)  # the last reference to the dense module
        _release_freed_memory()


def _release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS. glibc keeps freed memory for reuse, and
    the quantizers' temporaries (several times a layer's size, in sizes that vary layer to
    layer) leave holes between the layers kept that would otherwise stay resident: 40-290
    MiB of a Qwen2-0.5B-shaped int4 load's RSS, varying from run to run (measured)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; None where the C library has none (musl, macOS)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def _expected_checkpoint_names(
    params: dict[str, torch.Tensor], fused: dict[str, tuple[str, int]]
) -> set[str]:
    """The checkpoint tensors that fill ``params``: a fused parameter is one per member."""
    members: dict[str, list[str]] = {}
    for checkpoint_layer, (fused_layer, _) in fused.items():
        members.setdefault(fused_layer, []).append(checkpoint_layer)
    names = set()
    for name in params:
        module_name, _, param_name = name.rpartition(".")
        parent_name, _, layer_name = module_name.rpartition(".")
        for layer in members.get(layer_name, [layer_name]):
            names.add(f"{parent_name}.{layer}.{param_name}" if parent_name else name)
    return names


def _checkpoint_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers (AWQ's packed weights), by checkpoint name."""
    # NOTE: named_parameters() lists a tied LM head once, as the embedding it shares.
    tensors = dict(model.named_parameters())
    persistent = model.state_dict(keep_vars=True).keys()
    tensors.update((name, b) for name, b in model.named_buffers() if name in persistent)
    return tensors
