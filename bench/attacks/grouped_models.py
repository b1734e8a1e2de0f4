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
  they run unchanged (``Normalize`` with its statistics repeated K times).

So a K-model training step is one forward + backward of the usual kernels, not K small ones and
not functorch's batching rules (``vmap`` over ``functional_call``), whose per-layer rewrites cost
1.2-1.7x a plain step over K x B inputs on the CPU (``benchmarks/shadow_training.py``).
:func:`grouped_network` builds the program for a module whose forward is one ``nn.Sequential`` of
these layers and says why not otherwise; :class:`ShadowModels` then checks it against the copies'
own forwards before using it and falls back to ``vmap`` when they differ.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.networks.layers import Normalize

#: layers that act on each element (or each channel's plane) alone: a batch of K models' channels is the same layer
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh,
               nn.Identity)
POOLING = (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)

Step = Callable[[dict[str, Tensor], dict[str, Tensor], Tensor, bool], Tensor]


def to_grouped_images(x: Tensor) -> Tensor:
    """(K, B, C, H, W) -> (B, K * C, H, W), channels-last: model k's channels are block k."""
    count, batch, channels, height, width = x.shape
    return x.transpose(0, 1).reshape(batch, count * channels, height, width).contiguous(memory_format=torch.channels_last)


def _sequential_network(module: nn.Module) -> tuple[str, Optional[nn.Sequential]]:
    """The ``nn.Sequential`` that holds every parameter of ``module`` (itself, or one child), with its name prefix."""
    if isinstance(module, nn.Sequential):
        return "", module
    total = sum(1 for _ in module.parameters())
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential) and sum(1 for _ in child.parameters()) == total:
            return f"{name}.", child
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
        return F.conv2d(h, params[weight].flatten(0, 1), params[bias].flatten() if bias else None, layer.stride,
                        layer.padding, layer.dilation, layer.groups * count)
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


def _flatten(h: Tensor, count: int) -> Tensor:
    batch = h.shape[0]
    return h.reshape(batch, count, -1).transpose(0, 1)  # (K, B, C * H * W), each model's C, H, W order


def grouped_network(module: nn.Module, image_shape: tuple[int, ...]) -> Union[Callable, str]:
    """The grouped forward of ``module``'s copies (params, buffers, x (K, B, *image_shape), train) -> (K, B, classes),
    or why it has none (its forward is no ``nn.Sequential`` of the layers above)."""
    prefix, network = _sequential_network(module)
    if network is None:
        return "its parameters are not all in one nn.Sequential"
    images = len(image_shape) == 3
    steps: list[tuple[str, Step]] = []  # (layout the step needs, step)
    layout = "images" if images else "vectors"
    for name, layer in _leaves(prefix, network):
        kind = type(layer).__name__
        if isinstance(layer, Normalize) and layout == "images":
            steps.append(("images", _normalize(name)))
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
        count = x.shape[0]
        h = to_grouped_images(x) if images else x
        for needs, step in steps:
            h = _flatten(h, count) if needs == "flatten" else step(params, buffers, h, train)
        return h

    return forward
