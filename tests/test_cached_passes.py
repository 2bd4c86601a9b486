"""How cached generation runs: the preallocated KV cache, batched guidance, the reference's scheme, and
the compiled / CUDA-graph passes (slow and GPU tests), each checked against the plain eager path."""

from __future__ import annotations

import pytest
import torch
from madkit_layers.attention import LayerCache
from madkit_models.blockwise import BlockwiseSession, cached_teacher_forced, generate_blocks
from madkit_models.passes import BlockSteps
from model_helpers import TINY_UNET, batch, build
from test_generation import VARIANTS, _close, _sampler

from madkit import rng


def _blocks(model, num=2, steps=3, seed=7, sampler=None, **options):
    generators = [rng.generator(seed, "sample", i) for i in range(num)]
    labels = torch.arange(num) % model.num_classes if model.num_classes else None
    return generate_blocks(model, sampler or _sampler(steps=steps), generators, labels=labels, steps=steps, **options)


@pytest.mark.parametrize("name", ["tiles", "class", "condition-only"])
def test_the_cache_is_allocated_once_and_holds_exactly_what_later_blocks_read(name, monkeypatch):
    model = build(**VARIANTS[name])
    sessions, pointers = [], []
    original = BlockSteps.__call__

    def record(steps, xt, mt):  # every denoising step sees the same buffers
        session = sessions[-1]
        pointers.append({i: (c.k.data_ptr(), c.v.data_ptr()) for i, c in session.caches.items()})
        return original(steps, xt, mt)

    original_init = BlockwiseSession.__init__

    def keep(session, *args, **kwargs):
        original_init(session, *args, **kwargs)
        sessions.append(session)

    monkeypatch.setattr(BlockSteps, "__call__", record)
    monkeypatch.setattr(BlockwiseSession, "__init__", keep)
    _blocks(model, num=2, steps=3, guidance=2.0 if model.num_classes else None)
    (session,) = sessions
    context = 1 if model.has_context else 0
    assert session.caches, "the model attends cached keys"
    for cache in session.caches.values():
        assert cache.capacity == context + model.T * model.B
        # what later queries read: the context and T - 1 clean blocks, or the T noised AR blocks of one stream
        assert cache.length == context + (model.T if model.single_stream else model.T - 1) * model.B
        assert cache.k.shape[0] == (4 if model.num_classes else 2)  # guidance: conditional + unconditional rows
    assert len(pointers) == model.T * 3 and all(p == pointers[0] for p in pointers)


def test_a_window_past_the_capacity_is_refused():
    cache = LayerCache(1, 2, 8, 4, torch.float32, "cpu")
    cache.commit(6)
    keys, _ = cache.window(2)
    assert keys.shape == (1, 2, 8, 4) and keys.data_ptr() == cache.k.data_ptr() and not keys.is_contiguous()
    with pytest.raises(RuntimeError, match="capacity of 8"):
        cache.window(3)


@pytest.mark.parametrize("name", ["class", "class+condition-only"])
def test_batched_guidance_gives_the_images_of_separate_passes(name):
    model = build(**VARIANTS[name])
    batched = _blocks(model, guidance=3.0, batch_guidance=True)
    separate = _blocks(model, guidance=3.0, batch_guidance=False)
    assert _close(batched, separate, 1e-5)
    assert not torch.allclose(batched, _blocks(model, guidance=1.0)), "guidance must change the images"


@pytest.mark.parametrize("name", ["tiles", "class", "local", "raster"])
def test_the_reference_scheme_recomputes_the_same_keys(name):
    model = build(**VARIANTS[name])
    guidance = 2.0 if model.num_classes else None
    cached = _blocks(model, guidance=guidance)
    assert _close(_blocks(model, guidance=guidance, recompute_clean=True), cached, 1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "block-sparse", "flex"])
def test_every_attention_backend_gives_the_cached_images(attention):
    """The training forward under each backend equals the cached passes (teacher-forced), and cached,
    reference-scheme and uncached generation give the same images."""
    model = build(**VARIANTS["class"], attention=attention)
    x0, xt, mt = batch(model)
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        train, _, _ = model.forward_blocks(x0, xt, mt, labels)
    assert (train - cached_teacher_forced(model, x0, xt, mt, labels)).abs().max().item() <= 1e-5
    cached = _blocks(model, guidance=2.0)
    assert _close(_blocks(model, guidance=2.0, recompute_clean=True), cached, 1e-5)
    assert _close(_blocks(model, guidance=2.0, use_cache=False), cached, 1e-4)


def test_uncached_generation_never_builds_flex_masks():
    """FlexAttention compiles per sequence length, and every block has another one: the uncached
    path uses block-sparse SDPA groups instead (dense masks when the spec asks for sdpa)."""
    model = build("tiles")
    object.__setattr__(model.cfg, "attention", "flex")  # frozen config: switch backend for this test only
    try:
        _blocks(model, use_cache=False, steps=1)
    finally:
        object.__setattr__(model.cfg, "attention", "auto")
    assert model._plans and all(key[-1] == "block-sparse" for key in model._plans)


def _compiled_equals_eager(model, mode: str, device: str, **options):
    model = model.to(device)
    model.denoise_step = "eager"
    eager = _blocks(model, **options)
    model.denoise_step = mode
    try:
        return eager, _blocks(model, **options)
    finally:
        model.denoise_step = "eager"


@pytest.mark.slow
def test_compiled_passes_give_the_eager_images_and_stop_recompiling():
    from torch._dynamo.utils import counters

    model = build(**VARIANTS["class"])
    before = counters["stats"]["unique_graphs"]
    eager, compiled = _compiled_equals_eager(model, "compiled", "cpu", guidance=2.0, steps=3)
    assert _close(compiled, eager, 1e-4)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs - before <= 3, "each pass compiles once: the cache length is dynamic"
    model.denoise_step = "compiled"
    try:
        again = _blocks(model, guidance=2.0, steps=3, seed=8)  # other noise, same shapes: no new graph
    finally:
        model.denoise_step = "eager"
    assert counters["stats"]["unique_graphs"] == graphs
    assert torch.isfinite(again).all()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("mode", ["cuda-graph", "compiled+cuda-graph"])
@pytest.mark.parametrize("name", ["class", "unet+class", "condition-only", "mlp-head"])
def test_cuda_graph_steps_give_the_eager_images(mode, name):
    model = build(**VARIANTS[name])
    eager, graphed = _compiled_equals_eager(model, mode, "cuda", guidance=2.0, steps=4)
    assert _close(graphed, eager, 1e-4)


@pytest.mark.gpu
@requires_cuda
def test_cuda_graph_steps_under_bf16_autocast_match_eager():
    model = build("tiles", embedder=TINY_UNET, latent_shape=(4, 8, 8)).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager, graphed = _compiled_equals_eager(model, "cuda-graph", "cuda", steps=4)
    assert torch.isfinite(graphed).all()
    assert _close(graphed, eager, 1e-3)
