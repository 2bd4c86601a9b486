"""Deferred initialisation: build a model on the meta device, then give each of its tensors, one at a
time, exactly the value an ordinary build on a real device would have given it.

Why: a sharded run (fsdp.py) keeps one slice of every parameter per rank, but building the model
first on a real device makes every rank hold all of it (and of its EMA copy) before sharding. Built
on the meta device the model has shapes and no memory; it is sharded there, and each rank then
allocates and fills only its own slices.

Why the values come out the same. A model's initial weights are whatever its constructor does:
modules draw their defaults from the device's global generator as they are made, then the model may
draw some again (xavier, normal, zeros), in a fixed order, so the n-th draw depends on every draw
before it. ``record`` runs the construction on the meta device under a dispatch mode that writes
down every ATen operation touching a meta tensor (shapes, no values). ``InitProgram.replay`` runs
that list again on the real device in the same order: each random draw consumes the generator as
the ordinary build did, so every value is bit-identical, buffers (RoPE tables) included.

Memory stays near one tensor. A storage is allocated when an operation first needs it and released
right after the last operation that needs its current value; in particular a value that the next
operation on it overwrites whole without reading it (a default init the model draws again) dies at
once. The final value of each parameter or buffer goes to ``deliver`` (which keeps this rank's
slice) the moment its last operation has run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

aten = torch.ops.aten
# operations that overwrite all of their first argument without reading it
_OVERWRITES = {
    aten.uniform_, aten.normal_, aten.zero_, aten.fill_, aten.random_, aten.bernoulli_, aten.exponential_,
    aten.geometric_, aten.log_normal_, aten.cauchy_, aten.copy_,
}  # fmt: skip
# operations that change which memory a tensor is, which a replay by storage cannot follow
_UNSUPPORTED = {aten.set_, aten.resize_, aten.resize_as_, aten._local_scalar_dense}


class DeferredInitError(RuntimeError):
    """The model's construction did something a replay cannot reproduce (then it is built whole)."""


@dataclass(frozen=True)
class _Ref:
    """A meta tensor of the recording: a view of one of its storages."""

    storage: int
    dtype: torch.dtype
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


@dataclass
class _Op:
    func: Any  # an OpOverload
    args: Any  # args and kwargs flattened: _Ref for meta tensors; real tensors and other values as they were
    spec: Any  # their tree structure
    outputs: list[_Ref | None]  # the flattened outputs, None where not a meta tensor
    touches: set[int]  # storages it reads or writes
    writes: set[int]  # storages it creates or mutates
    kills: int | None = None  # a storage it overwrites whole without reading


@dataclass
class InitProgram:
    """What a construction did to its meta tensors, and which storages hold each final tensor."""

    ops: list[_Op]
    nbytes: list[int]  # per storage
    finals: dict[str, _Ref] = field(default_factory=dict)  # parameter and buffer names -> their meta views
    constants: dict[str, torch.Tensor] = field(default_factory=dict)  # ones made on a real device
    generator_state: torch.Tensor | None = None  # the device generator's state when the build began

    def replay(self, device: torch.device, deliver: Callable[[str, torch.Tensor], None] | None,
               only: set[str] | None = None) -> int:
        """Run the recorded operations on ``device``, handing each final tensor's full value to
        ``deliver(name, tensor)`` once complete (the tensor is freed after the call). ``only``: just
        the operations those names depend on (e.g. the buffers, when a checkpoint has the weights).
        None as ``deliver`` runs everything for its effect on the generator alone. Returns the most
        bytes of storage it held at once."""
        ops = self.ops if only is None else _slice(self.ops, {self.finals[n].storage for n in only if n in self.finals})
        wanted = self.finals if only is None else {n: r for n, r in self.finals.items() if n in only}
        by_storage: dict[int, list[tuple[str, _Ref]]] = {}
        for name, ref in wanted.items():
            by_storage.setdefault(ref.storage, []).append((name, ref))
        env: dict[int, torch.UntypedStorage] = {}
        peak = 0
        with torch.no_grad():
            for op, released in zip(ops, _release_plan(ops)):
                if op.kills is not None and op.kills not in env:
                    env[op.kills] = torch.empty(self.nbytes[op.kills], dtype=torch.uint8, device=device).untyped_storage()
                args, kwargs = tree_unflatten([_real(a, env, device) for a in op.args], op.spec)
                real, _ = tree_flatten(op.func(*args, **kwargs))
                for ref, value in zip(op.outputs, real):
                    if ref is not None and ref.storage not in env:
                        env[ref.storage] = value.untyped_storage()
                peak = max(peak, sum(self.nbytes[s] for s in env))
                for s, final in released:
                    for name, ref in by_storage.get(s, ()) if final and deliver is not None else ():
                        deliver(name, _view(ref, env, device))
                    env.pop(s, None)
            for name, value in self.constants.items():
                if deliver is not None and (only is None or name in only):
                    deliver(name, value.to(device))
        return peak


def record(build: Callable[[], nn.Module | Any], model_of: Callable[[Any], nn.Module] = lambda m: m):
    """``(build(), program)``: ``build`` makes its model on the meta device (e.g. ``build_experiment(...,
    meta=True)``) and is recorded; ``model_of(result)`` is the module whose parameters and buffers are
    the program's finals."""
    recorder = _Recorder()
    cpu_draws = torch.random.get_rng_state()
    with recorder:
        result = build()
    if not torch.equal(cpu_draws, torch.random.get_rng_state()):
        # a real tensor drawn on the CPU while building (a random block order, a fixed random projection)
        # comes from each rank's own generator, seeded per rank: the ranks' models would differ
        raise DeferredInitError("the model draws random numbers on the CPU while it is built, which the replay "
                                "cannot give every rank alike")
    model = model_of(result)
    program = InitProgram(recorder.ops, recorder.nbytes)
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, tensor in tensors:
        if tensor.device.type != "meta":
            program.constants[name] = tensor.detach().clone()
            continue
        key = recorder.keys.get(tensor.untyped_storage()._cdata)
        if key is None:
            raise DeferredInitError(f"{name} was not made while the model was being built")
        program.finals[name] = _ref_of(tensor, key)
    return result, program


def default_generator(device: torch.device) -> torch.Generator:
    """The generator ordinary random operations on ``device`` draw from."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    if device.type == "cpu":
        return torch.default_generator
    raise DeferredInitError(f"no default generator known for device {device}")


# --------------------------------------------------------------------------- recording
class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[_Op] = []
        self.nbytes: list[int] = []
        self.keys: dict[int, int] = {}  # storage address -> index
        self._kept: list[torch.Tensor] = []  # every storage stays alive, so no address is reused meanwhile

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in _UNSUPPORTED and _any_meta((args, kwargs)):
            raise DeferredInitError(f"the model's construction calls {func} on a meta tensor")
        out = func(*args, **kwargs)
        flat, spec = tree_flatten((args, kwargs))
        outs, _ = tree_flatten(out)
        if not _any_meta(flat) and not _any_meta(outs):
            return out
        touches, writes = set(), set()
        refs = []
        for i, a in enumerate(flat):
            if _is_meta(a):
                key = self.keys.get(a.untyped_storage()._cdata)
                if key is None:
                    raise DeferredInitError(f"{func} reads a meta tensor made before the model's construction")
                refs.append(_ref_of(a, key))
                touches.add(key)
            else:  # a value made on a real device (an index table): kept as it is now
                refs.append(a.detach().clone() if isinstance(a, torch.Tensor) else a)
        writes |= {refs[i].storage for i in _mutated(func, flat, spec) if isinstance(refs[i], _Ref)}
        op = _Op(func, refs, spec, [], touches, writes)
        for o in outs:
            if not _is_meta(o):
                op.outputs.append(None)
                continue
            cdata = o.untyped_storage()._cdata
            if cdata not in self.keys:
                self.keys[cdata] = len(self.nbytes)
                self.nbytes.append(o.untyped_storage().nbytes())
                self._kept.append(o)
                writes.add(self.keys[cdata])
            op.outputs.append(_ref_of(o, self.keys[cdata]))
            touches.add(self.keys[cdata])
        target = refs[0] if refs else None
        if func.overloadpacket in _OVERWRITES and isinstance(target, _Ref) and self._whole(flat[0]):
            others = {r.storage for r in refs[1:] if isinstance(r, _Ref)}
            op.kills = None if target.storage in others else target.storage
        self.ops.append(op)
        return out

    def _whole(self, t: torch.Tensor) -> bool:
        return t.storage_offset() == 0 and t.is_contiguous() and t.numel() * t.element_size() == t.untyped_storage().nbytes()


def _mutated(func, flat: list, spec) -> list[int]:
    """Positions in ``flat`` of the arguments ``func`` writes to (by its schema)."""
    names = [a.name for a in func._schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    if not names:
        return []
    args, kwargs = tree_unflatten(list(range(len(flat))), spec)  # positions in place of the values
    positional = {a.name: i for i, a in enumerate(func._schema.arguments)}
    found = []
    for name in names:
        pos = positional[name]
        where = args[pos] if pos < len(args) else kwargs.get(name)
        found += [i for i in tree_flatten(where)[0] if isinstance(i, int)]
    return found


# --------------------------------------------------------------------------- replaying
def _release_plan(ops: list[_Op]) -> list[list[tuple[int, bool]]]:
    """For each operation, the storages whose value no later operation needs once it has run, each
    with whether that value is its final one: after their last operation (final), or after the one
    before an operation that overwrites them whole (not final: the value is dropped)."""
    last: dict[int, int] = {}
    plan: list[list[tuple[int, bool]]] = [[] for _ in ops]
    for i, op in enumerate(ops):
        if op.kills is not None and op.kills in last:
            plan[last[op.kills]].append((op.kills, False))
        for s in op.touches:
            last[s] = i
    for s, i in last.items():
        plan[i].append((s, True))
    return plan


def _slice(ops: list[_Op], needed: set[int]) -> list[_Op]:
    """The operations that the final values of the ``needed`` storages depend on, in order."""
    keep = []
    needed = set(needed)
    for op in reversed(ops):
        if not (op.writes & needed):
            continue
        keep.append(op)
        if op.kills is not None:
            needed.discard(op.kills)
        needed |= op.touches - ({op.kills} if op.kills is not None else set())
    return keep[::-1]


def _real(a: Any, env: dict[int, torch.UntypedStorage], device: torch.device) -> Any:
    if isinstance(a, _Ref):
        return _view(a, env, device)
    if isinstance(a, torch.device) and a.type == "meta":
        return device
    return a


def _view(ref: _Ref, env: dict[int, torch.UntypedStorage], device: torch.device) -> torch.Tensor:
    if ref.storage not in env:
        raise DeferredInitError("replaying the model's construction read a tensor before it was made")
    return torch.empty(0, dtype=ref.dtype, device=device).set_(env[ref.storage], ref.offset, ref.size, ref.stride)


def _ref_of(t: torch.Tensor, key: int) -> _Ref:
    return _Ref(key, t.dtype, tuple(t.shape), tuple(t.stride()), t.storage_offset())


def _is_meta(a: Any) -> bool:
    return isinstance(a, torch.Tensor) and a.device.type == "meta"


def _any_meta(tree: Any) -> bool:
    return any(_is_meta(a) for a in tree_flatten(tree)[0])

