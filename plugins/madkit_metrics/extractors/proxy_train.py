"""Training the proxy extractor: a small classifier fitted to a data source's labels.

Images reach the network exactly as they do at evaluation: the data source's [-1, 1] floats are
quantized to uint8 first (what generated images look like once saved), then ``ProxyNet.preprocess``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from madkit.engine.evaluation.evaluate import deterministic_dataset, to_uint8
from madkit.interfaces import DataSource
from madkit_metrics.extractors.proxy_net import ProxyNet


def load_labelled(
    source: DataSource, net: ProxyNet, max_images: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed images [n, 3, r, r] and labels [n]; a seeded random subset when ``max_images`` cuts."""
    dataset: Dataset = deterministic_dataset(source)  # the proxy's own augmentation is seeded
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        order = torch.randperm(len(dataset), generator=generator)
        if max_images:
            order = order[:max_images]
        dataset = Subset(dataset, order.tolist())
    images, labels, seen = [], [], 0
    for batch_images, batch_labels in DataLoader(dataset, batch_size=256, num_workers=0):
        images.append(net.preprocess(to_uint8(batch_images)))
        labels.append(torch.as_tensor(batch_labels, dtype=torch.long))
        seen += len(batch_labels)
        if max_images and seen >= max_images:  # iterable datasets: the first max_images
            break
    if not images:
        raise ValueError(f"data source {source.describe()} yielded no images to train the proxy extractor on")
    x, y = torch.cat(images), torch.cat(labels)
    if max_images:
        x, y = x[:max_images], y[:max_images]
    return x, y


def _shift(x: torch.Tensor, max_shift: float, generator: torch.Generator) -> torch.Tensor:
    """Random translations of up to ``max_shift`` pixels per image (edges repeated): a cheap augmentation
    that keeps the classifier from keying on exact pixel positions."""
    n, _, h, w = x.shape
    offsets = (torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = offsets[:, 0] * 2 / w
    theta[:, 1, 2] = offsets[:, 1] * 2 / h
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.no_grad()
def accuracy(net: ProxyNet, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    if len(y) == 0:
        return float("nan")
    correct = sum(
        (net.head(net.embed(x[i : i + batch])).argmax(-1) == y[i : i + batch]).sum().item()
        for i in range(0, len(y), batch)
    )
    return correct / len(y)


def train_proxy(
    source: DataSource,
    *,
    width: int,
    resolution: int,
    epochs: int,
    batch: int,
    lr: float,
    seed: int,
    max_images: int,
    device: torch.device,
    log: Callable[[str], None] = lambda message: None,
) -> tuple[ProxyNet, dict[str, float | int]]:
    """Fit a ``ProxyNet`` to ``source``'s labels; returns it (eval mode, on the CPU) and its accuracies.

    10% of the images (when there are at least 20) are held out to measure how well the features
    separate the classes; the figure goes into the checkpoint so users can judge the proxy.
    """
    num_classes = int(getattr(source, "num_classes", 0) or 0)
    if num_classes < 2:
        raise ValueError(
            f"the proxy extractor learns its features by classifying the data's labels, but data source "
            f'{source.describe()} has num_classes = {num_classes}; use labelled data (e.g. kind "openmoji") '
            f"or the 'inception' extractor"
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ProxyNet(num_classes, width, resolution)
    x, y = load_labelled(source, net, max_images, generator)
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(
            f"data source {source.describe()} yielded labels in [{int(y.min())}, {int(y.max())}] but declares "
            f"num_classes = {num_classes}"
        )
    n_val = len(y) // 10 if len(y) >= 20 else 0
    x_val, y_val, x_train, y_train = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    log(f"training on {len(y_train)} images, {num_classes} classes, holding out {n_val}, {epochs} epochs")

    net.to(device).train()
    x_train, y_train = x_train.to(device), y_train.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(y_train) / batch)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20)
    # linear warmup then cosine decay to zero: stable at a high learning rate, converges in few epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    )
    max_shift = resolution / 16
    # a bar on a terminal, and one plain line per epoch everywhere: training takes minutes on a CPU
    bar = tqdm(total=total, unit="step", desc="proxy extractor", disable=None, file=sys.stderr)
    for epoch in range(epochs):
        # summed on the device: a .item() per step would wait for every step to finish on a GPU
        running, seen = torch.zeros((), dtype=torch.float64, device=device), 0
        for idx in torch.randperm(len(y_train), generator=generator).split(batch):
            idx = idx.to(device)
            xb = _shift(x_train[idx], max_shift, generator)
            loss = F.cross_entropy(net.head(net.embed(xb)), y_train[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running, seen = running + loss.detach().double() * len(idx), seen + len(idx)
            bar.update(1)
        bar.clear()
        log(f"epoch {epoch + 1}/{epochs}: loss {float(running) / max(seen, 1):.4f}")
    bar.close()
    net.eval().requires_grad_(False)
    stats = {
        "train_images": len(y_train),
        "val_images": n_val,
        "num_classes": num_classes,
        "train_accuracy": accuracy(net, x_train, y_train),
        "val_accuracy": accuracy(net, x_val.to(device), y_val.to(device)),
    }
    return net.cpu(), stats
