"""``madkit demo RUN``: a trained model in the browser (Gradio, the optional ``demo`` extra).

Two tabs: Generate (seed, steps, guidance and class) streams the image as it is generated, one
frame per finished block, from a generator function; Complete takes an uploaded image and keeps
its first K blocks (a slider) and generates the rest (``Pipeline.complete``). Everything runs in
this process on its device; nothing is fetched from the network: no analytics, no share link, no
web fonts (the theme uses the system's), no server-side rendering (which would need Node).

Gradio is imported only by ``build_demo``/``launch``, so madkit works without the extra.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

import torch

from madkit.api import Pipeline
from madkit.errors import require_package
from madkit.interfaces import GenerationObserver

SHOW_SIDE = 256  # the streamed images are enlarged (nearest pixels) to about this many pixels
_DONE = object()


def offline_environment() -> None:
    """What keeps Gradio from calling home; set before it is imported."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("GRADIO_SERVER_NAME", "127.0.0.1")
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


def _picture(image: torch.Tensor):
    """[3, H, W] in [-1, 1] -> an enlarged PIL image."""
    from PIL import Image

    from madkit.generation import to_uint8_hwc

    scale = max(1, SHOW_SIDE // image.shape[-2])
    return Image.fromarray(to_uint8_hwc(image.repeat_interleave(scale, -2).repeat_interleave(scale, -1)).numpy())


class _Streamer(GenerationObserver):
    """A generation observer that puts a picture of the image so far into a queue per finished block."""

    def __init__(self, pipe: Pipeline, out: queue.Queue):
        from madkit.generation import block_pixels

        self.pipe, self.out = pipe, out
        self.blocks = block_pixels(pipe.model, pipe.image_shape[1:])

    def block_finished(self, block: int, latents: torch.Tensor) -> None:
        image = self.pipe.experiment.codec.decode(latents[:1]).float().clamp(-1, 1).cpu()[0]
        self.out.put(_picture(image * (self.blocks <= block)))


def stream_generation(pipe: Pipeline, seed: int, steps: int, guidance: float, label: int | None) -> Iterator[Any]:
    """Yield a PIL picture after every finished block; the last one is the image. Generation runs in
    a worker thread (the model calls the observer; a Gradio generator must yield)."""
    pictures: queue.Queue = queue.Queue()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            conditional = pipe.model.class_conditional  # labelled data alone does not make a model use labels
            labels = [int(label)] if conditional and label is not None else None
            with pipe._autocast():  # per thread: a bf16 pipe computes in bf16 here as in pipe.generate
                _generate(pipe, seed, steps, guidance, labels, conditional, pictures)
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)
        finally:
            pictures.put(_DONE)

    threading.Thread(target=work, daemon=True, name="madkit-demo-generate").start()
    while (picture := pictures.get()) is not _DONE:
        yield picture
    if failure:
        raise failure[0]


def _generate(pipe: Pipeline, seed, steps, guidance, labels, conditional: bool, pictures: queue.Queue) -> None:
    pipe.experiment.generate(
        1, steps=int(steps), seed=int(seed), guidance=float(guidance) if conditional else None,
        model=pipe.model, labels=labels, observer_for=lambda idx: _Streamer(pipe, pictures),
    )


def complete_upload(pipe: Pipeline, image, keep: int, num: int, seed: int, steps: int):
    """original | kept blocks | completions of one uploaded PIL image, as one enlarged picture."""
    from madkit.completion import rows

    if image is None:
        raise ValueError("upload an image first")
    result = pipe.complete([image], keep=int(keep), num=int(num), seed=int(seed), steps=int(steps), resize=True)
    row = rows(result)[0]  # [2 + num, 3, H, W]
    pad = torch.ones(row.shape[0], 3, row.shape[2], 1)  # a white line between pictures
    return _picture(torch.cat([torch.cat([x, p], -1) for x, p in zip(row, pad)], -1))


def build_demo(pipe: Pipeline):
    """The Gradio Blocks app for ``pipe`` (not launched)."""
    offline_environment()
    gr = require_package("gradio", "demo", "madkit demo")
    from madkit.generation import num_blocks

    sampler = pipe.experiment.sampler
    conditional = bool(pipe.num_classes) and pipe.model.class_conditional
    total = num_blocks(pipe.model)
    with gr.Blocks(title="madkit demo", analytics_enabled=False) as demo:
        gr.Markdown(f"### madkit: {pipe.source}\n{total} blocks of a {pipe.image_shape[2]}x{pipe.image_shape[1]} "
                    "image, each generated conditioned on the finished ones.")
        with gr.Tab("Generate"):
            with gr.Row():
                seed = gr.Number(0, label="seed", precision=0, elem_id="seed")
                steps = gr.Slider(1, max(100, sampler.steps), value=sampler.steps, step=1, label="steps per block",
                                  elem_id="steps")
                guidance = gr.Slider(1.0, 10.0, value=sampler.guidance, step=0.5, label="guidance",
                                     interactive=conditional)
                label = gr.Dropdown(list(range(pipe.num_classes)) or [0], value=0, label="class",
                                    interactive=conditional)
            run = gr.Button("Generate", variant="primary", elem_id="generate")
            picture = gr.Image(label="image (streams block by block)", format="png", elem_id="picture",
                               buttons=["download", "fullscreen"])
            run.click(lambda *a: (yield from stream_generation(pipe, *a)), [seed, steps, guidance, label], picture,
                      api_name="generate")
        with gr.Tab("Complete"):
            with gr.Row():
                upload = gr.Image(type="pil", label="image to complete", sources=["upload", "clipboard"])
                keep = gr.Slider(0, total - 1, value=total // 2, step=1, label="blocks to keep (K)")
                num = gr.Slider(1, 8, value=4, step=1, label="completions")
                cseed = gr.Number(0, label="seed", precision=0)
            go = gr.Button("Complete", variant="primary", elem_id="complete")
            done = gr.Image(label="original | kept | completions", format="png", buttons=["download", "fullscreen"])
            go.click(lambda im, k, n, s: complete_upload(pipe, im, k, n, s, sampler.steps),
                     [upload, keep, num, cseed], done, api_name="complete")
    return demo


def launch(pipe: Pipeline, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Serve the demo; prints and returns the local URL. ``block=False`` returns at once (tests)."""
    demo = build_demo(pipe)
    gr = require_package("gradio", "demo", "madkit demo")
    theme = gr.themes.Base(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    demo.queue()
    _, url, _ = demo.launch(
        server_name=host, server_port=port, share=False, show_error=True, prevent_thread_lock=True, quiet=True, ssr_mode=False,
        theme=theme, footer_links=[], mcp_server=False, pwa=False, enable_monitoring=False,
    )
    print(f"madkit demo of {pipe.source}: {url}", flush=True)
    if block:
        demo.block_thread()
    return demo, url
