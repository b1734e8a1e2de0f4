"""K copies of a sequential convolutional network run as ONE network: the batched shadow models' fast path.

The K parameter sets stay stacked along a leading model dimension (as ``torch.func.stack_module_state``
gives them), and a forward is one ordinary forward of one wider network:

* images of the K models side by side as channels, ``(B, K * C, H, W)`` in channels-last memory
  (the layout oneDNN's grouped convolutions are fastest in on the CPU);
* ``Conv2d`` as one convolution with ``groups = K * groups`` over the stacked filters (model k's
  input channels are block k, so are its output channels);
* ``Flatten`` to ``(K, B, features)``, each model's features in its own C, H, W order;
* ``Linear`` as one batched matrix product (``torch.baddbmm``) with the stacked weights;
* pooling, element-wise activations, dropout and ``Normalize`` act per channel or per element, so
  they run unchanged (``Normalize`` with its statistics repeated K times);
* eval-mode ``BatchNorm2d`` (``batch_norm=True``) as the per-channel affine map it is, with the stacked
  weights, biases and running statistics.

So a K-model training step is one forward + backward of the usual kernels, not K small ones and
not functorch's batching rules (``vmap`` over ``functional_call``), whose per-layer rewrites cost
1.2-1.7x a plain step over K x B inputs on the CPU (``benchmarks/shadow_training.py``).
:func:`grouped_network` builds the program for a module whose forward is one ``nn.Sequential`` of
these layers (or whose ``as_sequential()`` gives one) and says why not otherwise; callers check it
against the module's own forward before using it and fall back to ``vmap`` when they differ
(:class:`ShadowModels`; batched gradient inversion, where the K copies are K attacks on one model and
each copy's weight gradient is its attack's dummy gradient).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.networks.layers import Normalize

#: layers that act on each element (or each channel's plane) alone: a batch of K models' channels is the same layer
ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Identity,
)
POOLING = (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

Step = Callable[[dict[str, Tensor], dict[str, Tensor], Tensor, bool], Tensor]


def to_grouped_images(x: Tensor, channels_last: bool = True) -> Tensor:
    """(K, B, C, H, W) -> (B, K * C, H, W): model k's channels are block k. Channels-last is the faster layout for
    training steps; a double backward (gradient inversion) is faster contiguous (``benchmarks/ats_inversion.py``)."""
    count, batch, channels, height, width = x.shape
    grouped = x.transpose(0, 1).reshape(batch, count * channels, height, width)
    return grouped.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _sequential_network(module: nn.Module) -> tuple[str, Optional[nn.Sequential]]:
    """The ``nn.Sequential`` that holds every parameter of ``module`` (itself, what its ``as_sequential()`` gives, or
    the same of the one child that holds them all), with its parameters' name prefix."""
    if isinstance(module, nn.Sequential):
        return "", module
    if callable(getattr(module, "as_sequential", None)):
        return "", module.as_sequential()
    total = sum(1 for _ in module.parameters())
    for name, child in module.named_children():
        if sum(1 for _ in child.parameters()) == total:
            prefix, network = _sequential_network(child)
            return (f"{name}.{prefix}", network) if network is not None else ("", None)
    return "", None


def _leaves(prefix: str, network: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """The layers of ``network`` in order (nested Sequentials flattened), each with its parameters' name prefix."""
    layers = []
    for name, layer in network.named_children():
        if isinstance(layer, nn.Sequential):
            layers.extend(_leaves(f"{prefix}{name}.", layer))
        else:
            layers.append((f"{prefix}{name}.", layer))
    return layers


def _conv(name: str, layer: nn.Conv2d) -> Step:
    weight, bias = f"{name}weight", f"{name}bias" if layer.bias is not None else None

    def step(params, buffers, h, train):
        count = params[weight].shape[0]
        return F.conv2d(
            h,
            params[weight].flatten(0, 1),
            params[bias].flatten() if bias else None,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups * count,
        )

    return step


def _linear(name: str, layer: nn.Linear) -> Step:
    weight, bias = f"{name}weight", f"{name}bias" if layer.bias is not None else None

    def step(params, buffers, h, train):
        if bias is None:
            return torch.bmm(h, params[weight].transpose(1, 2))
        return torch.baddbmm(params[bias].unsqueeze(1), h, params[weight].transpose(1, 2))

    return step


def _normalize(name: str) -> Step:
    def step(params, buffers, h, train):
        # stacked (K, 1, C, 1, 1) -> (1, K * C, 1, 1): the channel blocks of the grouped images
        mean, std = buffers[f"{name}mean"], buffers[f"{name}std"]
        return (h - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)

    return step


def _batch_norm(name: str, layer: nn.BatchNorm2d) -> Step:
    def step(params, buffers, h, train):
        # eval mode: y = (h - running mean) / sqrt(running var + eps) * weight + bias, per channel of each copy
        scale = (buffers[f"{name}running_var"] + layer.eps).rsqrt()
        if layer.affine:
            scale = scale * params[f"{name}weight"]
        shift = -buffers[f"{name}running_mean"] * scale
        if layer.affine:
            shift = shift + params[f"{name}bias"]
        return h * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    return step


def _flatten(h: Tensor, count: int) -> Tensor:
    batch = h.shape[0]
    return h.reshape(batch, count, -1).transpose(0, 1)  # (K, B, C * H * W), each model's C, H, W order


def grouped_network(
    module: nn.Module, image_shape: tuple[int, ...], batch_norm: bool = False, channels_last: bool = True
) -> Union[Callable, str]:
    """The grouped forward of ``module``'s copies (params, buffers, x (K, B, *image_shape), train) -> (K, B, classes),
    or why it has none (its forward is no ``nn.Sequential`` of the layers above).

    ``batch_norm``: take ``BatchNorm2d`` layers with running statistics, for forwards in eval mode only (a training
    forward raises); off, they have no grouped form. ``channels_last``: the grouped images' memory layout."""
    prefix, network = _sequential_network(module)
    if network is None:
        return "its parameters are not all in one nn.Sequential"
    images = len(image_shape) == 3
    steps: list[tuple[str, Step]] = []  # (layout the step needs, step)
    has_batch_norm = False
    layout = "images" if images else "vectors"
    for name, layer in _leaves(prefix, network):
        kind = type(layer).__name__
        if isinstance(layer, Normalize) and layout == "images":
            steps.append(("images", _normalize(name)))
        elif isinstance(layer, nn.BatchNorm2d) and layout == "images" and batch_norm and layer.track_running_stats:
            steps.append(("images", _batch_norm(name, layer)))
            has_batch_norm = True
        elif isinstance(layer, nn.Conv2d) and layout == "images" and layer.padding_mode == "zeros":
            steps.append(("images", _conv(name, layer)))
        elif isinstance(layer, POOLING) and layout == "images":
            steps.append(("images", lambda params, buffers, h, train, layer=layer: layer(h)))
        elif isinstance(layer, nn.Flatten) and layout == "images" and (layer.start_dim, layer.end_dim) == (1, -1):
            steps.append(("flatten", None))
            layout = "vectors"
        elif isinstance(layer, nn.Linear) and layout == "vectors":
            steps.append(("vectors", _linear(name, layer)))
        elif isinstance(layer, ELEMENTWISE):
            steps.append(("any", lambda params, buffers, h, train, layer=layer: layer(h)))
        elif type(layer) is nn.Dropout:
            steps.append(("any", lambda params, buffers, h, train, p=layer.p: F.dropout(h, p, train)))
        else:
            return f"its layer {name.rstrip('.')} ({kind}) has no grouped form here"
    if layout != "vectors":
        return "its output is not a (batch, classes) vector"

    def forward(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, train: bool) -> Tensor:
        if train and has_batch_norm:
            raise ValueError("the grouped form of batch-norm is its eval-mode affine map; train mode has none here")
        count = x.shape[0]
        h = to_grouped_images(x, channels_last) if images else x
        for needs, step in steps:
            h = _flatten(h, count) if needs == "flatten" else step(params, buffers, h, train)
        return h

    return forward
