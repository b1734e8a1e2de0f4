"""Per-sample parameter gradients of an eval-mode network from one batched forward and backward.

What DP libraries do (Opacus's grad samplers): record each layer's input a and the gradient delta of the summed
loss with respect to its output, then form each sample's weight gradient from the two. For a convolution that is
delta_i (C_out x L) times unfold(a_i) (L x C_in k k), one batched matmul; a linear layer's is the outer product;
an eval-mode batch-norm's gamma gradient is sum over positions of delta x_hat, its beta gradient sum of delta.
Only the activation gradients are back-propagated, so the cost is that of one batched forward and backward plus
the batched matmuls; ``vmap(grad)`` instead turns every per-sample convolution gradient into a grouped
convolution. Measured on the 2-core CPU (``benchmarks/ats_scores.py``), materialising the unfolded inputs of the
28x28 layers costs more than vmap's grouped convolutions (ConvNet width 16: 2.8x the floor against vmap's 1.7x),
so S_pri uses vmap by default and this path on request. Layers other than Conv2d (groups 1), Linear and eval-mode BatchNorm2d, a module called twice in
one forward, or a parameter owned by anything else raise :class:`Unsupported`; callers fall back to ``vmap``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Unsupported(Exception):
    """The network has a layer (or use of one) these formulas do not cover."""


_SUPPORTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)


def supported_layers(model: nn.Module) -> list[nn.Module]:
    layers = []
    owned = set()
    for module in model.modules():
        direct = list(module.parameters(recurse=False))
        if not direct:
            continue
        if not isinstance(module, _SUPPORTED):
            raise Unsupported(f"{type(module).__name__} has parameters")
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"):
            raise Unsupported("grouped or non-zero-padded convolution")
        if isinstance(module, nn.BatchNorm2d) and (module.training or not module.track_running_stats):
            raise Unsupported("batch-norm in training mode")
        layers.append(module)
        owned.update(id(p) for p in direct)
    if any(id(p) not in owned for p in model.parameters()):
        raise Unsupported("a parameter outside the supported layers")
    return layers


def per_sample_gradients(model: nn.Module, inputs: Tensor, labels: Tensor, create_graph: bool = False) -> list[Tensor]:
    """Each sample's gradient of its own cross-entropy, (M, numel) per parameter, in ``model.parameters()`` order.

    ``model`` must be in eval mode (samples independent); equals ``vmap(grad(loss))`` over the samples.
    ``create_graph``: the result stays differentiable with respect to ``inputs`` (gradient inversion's double
    backward)."""
    layers = supported_layers(model)
    recorded: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {layer: [] for layer in layers}

    def record(layer, args, output):
        recorded[layer].append((args[0] if create_graph else args[0].detach(), output))

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        with torch.enable_grad():
            x = inputs if create_graph and inputs.requires_grad else inputs.detach().requires_grad_(True)
            logits = model(x)
            loss = F.cross_entropy(logits, labels, reduction="sum")  # per-sample losses: their deltas are unscaled
            if any(len(v) != 1 for v in recorded.values()):
                raise Unsupported("a layer is called more than once in a forward")
            outputs = [recorded[layer][0][1] for layer in layers]
            deltas = torch.autograd.grad(loss, outputs, create_graph=create_graph)
    finally:
        for handle in handles:
            handle.remove()
    by_parameter: dict[int, Tensor] = {}
    count = inputs.shape[0]
    for layer, delta in zip(layers, deltas):
        a = recorded[layer][0][0]
        if isinstance(layer, nn.Conv2d):
            unfolded = F.unfold(a, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
            delta = delta.flatten(2)  # (M, C_out, L)
            by_parameter[id(layer.weight)] = torch.bmm(delta, unfolded.transpose(1, 2)).flatten(1)
            if layer.bias is not None:
                by_parameter[id(layer.bias)] = delta.sum(2)
        elif isinstance(layer, nn.Linear):
            a, delta = a.reshape(count, -1, a.shape[-1]), delta.reshape(count, -1, delta.shape[-1])
            by_parameter[id(layer.weight)] = torch.bmm(delta.transpose(1, 2), a).flatten(1)
            if layer.bias is not None:
                by_parameter[id(layer.bias)] = delta.sum(1)
        else:  # eval-mode batch-norm: y = gamma x_hat + beta
            shape = (1, -1, 1, 1)
            x_hat = (a - layer.running_mean.view(shape)) / torch.sqrt(layer.running_var.view(shape) + layer.eps)
            if layer.weight is not None:
                by_parameter[id(layer.weight)] = (delta * x_hat).sum((2, 3))
            if layer.bias is not None:
                by_parameter[id(layer.bias)] = delta.sum((2, 3))
    return [by_parameter[id(p)] for p in model.parameters()]


#: how many elements of per-sample convolution weight gradients one grouped convolution backward forms at once
#: (each sample one group): small enough to stay in cache, large enough that one call amortises its overhead
#: on small layers (``benchmarks/ats_scores.py``)
CONV_CHUNK_ELEMENTS = 2 ** 18


def _conv_weight_gradients(layer: nn.Conv2d, a: Tensor, delta: Tensor) -> Tensor:
    """Each sample's weight gradient of a (groups 1) convolution, (M, numel): one grouped convolution backward with
    the samples as groups -- the kernel oneDNN runs for the summed gradient, without the sum over samples and
    without materialising unfolded inputs."""
    count = a.shape[0]
    weight = layer.weight.detach()
    shape = weight.shape
    grouped = weight.expand(count, *shape).reshape(count * shape[0], *shape[1:])
    _, gradient, _ = torch.ops.aten.convolution_backward(
        delta.reshape(1, -1, *delta.shape[2:]), a.reshape(1, -1, *a.shape[2:]), grouped, None,
        layer.stride, layer.padding, layer.dilation, False, [0, 0], count, [False, True, False])
    return gradient.view(count, -1)


def _as_slice(index: Tensor):
    """``index`` as a slice where it is a run of consecutive integers (indexing by a slice does not copy)."""
    if len(index) and bool((index == torch.arange(int(index[0]), int(index[0]) + len(index), device=index.device)).all()):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index


def gradient_statistics(model: nn.Module, inputs: Tensor, labels: Tensor, references: Tensor,
                        chunk_elements: int = CONV_CHUNK_ELEMENTS) -> tuple[Tensor, Tensor]:
    """Per parameter tensor, each sample's gradient (of its own cross-entropy) dotted with the gradient of the
    sample ``references[i]`` and its own squared norm: two (tensors, M) tables, tensors in ``model.parameters()``
    order -- all a cosine between two samples' gradients needs.

    One batched forward and backward to the layers' outputs (as :func:`per_sample_gradients`); then, layer by
    layer, the per-sample weight gradients of ``chunk`` samples at a time (convolutions: one grouped convolution
    backward per chunk, :func:`_conv_weight_gradients`), each reduced at once to its dot product with its
    reference's and its squared norm, so at most ``chunk`` of them per layer are ever held. ``model`` must be in
    eval mode; the references' own gradients are formed once."""
    layers = supported_layers(model)
    count = inputs.shape[0]
    references = torch.as_tensor(references, device=inputs.device)
    if references.shape != (count,) or int(references.min()) < 0 or int(references.max()) >= count:
        raise ValueError(f"references must index the {count} samples, one per sample")
    recorded: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {layer: [] for layer in layers}

    def record(layer, args, output):
        recorded[layer].append((args[0].detach(), output))

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        with torch.enable_grad():
            logits = model(inputs.detach())
            loss = F.cross_entropy(logits, labels, reduction="sum")  # per-sample losses: their deltas are unscaled
            if any(len(v) != 1 for v in recorded.values()):
                raise Unsupported("a layer is called more than once in a forward")
            deltas = torch.autograd.grad(loss, [recorded[layer][0][1] for layer in layers])
    finally:
        for handle in handles:
            handle.remove()
    unique, slot = torch.unique(references, return_inverse=True)  # slot[i]: where sample i's reference sits in unique
    others = torch.ones(count, dtype=torch.bool, device=inputs.device)
    others[unique] = False
    rest = others.nonzero().flatten()
    own_slots = slot[unique]
    unique_at = _as_slice(unique)
    dots: dict[int, Tensor] = {}
    squares: dict[int, Tensor] = {}

    def whole(parameter: nn.Parameter, gradients: Tensor) -> None:
        """Every sample's (M, numel) gradients at once: biases, batch-norm, linear layers (small)."""
        dots[id(parameter)] = torch.linalg.vecdot(gradients, gradients[references])
        squares[id(parameter)] = torch.linalg.vecdot(gradients, gradients)

    def chunked(parameter: nn.Parameter, form, chunk: int) -> None:
        """``form(index)``: the (len(index), numel) gradients of the samples ``index``; the references' first."""
        dot, square = inputs.new_empty(count), inputs.new_empty(count)
        own = form(unique_at)
        dot[unique_at] = torch.linalg.vecdot(own, own[own_slots])
        square[unique_at] = torch.linalg.vecdot(own, own)
        for start in range(0, len(rest), chunk):
            index = rest[start : start + chunk]
            at = _as_slice(index)
            gradients = form(at)
            dot[at] = torch.linalg.vecdot(gradients, own[slot[index]])
            square[at] = torch.linalg.vecdot(gradients, gradients)
        dots[id(parameter)], squares[id(parameter)] = dot, square

    for layer, delta in zip(layers, deltas):
        delta = delta.detach()
        a = recorded[layer][0][0]
        if isinstance(layer, nn.Conv2d):
            chunk = max(1, chunk_elements // layer.weight.numel())
            chunked(layer.weight, lambda at: _conv_weight_gradients(layer, a[at], delta[at]), chunk)
            if layer.bias is not None:
                whole(layer.bias, delta.sum((2, 3)))
        elif isinstance(layer, nn.Linear):
            a, delta = a.reshape(count, -1, a.shape[-1]), delta.reshape(count, -1, delta.shape[-1])
            whole(layer.weight, torch.bmm(delta.transpose(1, 2), a).flatten(1))
            if layer.bias is not None:
                whole(layer.bias, delta.sum(1))
        else:  # eval-mode batch-norm, y = gamma x_hat + beta: gamma's gradient sum_p delta x_hat without forming x_hat
            summed = delta.sum((2, 3))
            if layer.weight is not None:
                moment = torch.linalg.vecdot(delta.flatten(2), a.flatten(2))  # sum_p delta a
                whole(layer.weight, (moment - layer.running_mean * summed) / torch.sqrt(layer.running_var + layer.eps))
            if layer.bias is not None:
                whole(layer.bias, summed)
    parameters = list(model.parameters())
    return torch.stack([dots[id(p)] for p in parameters]), torch.stack([squares[id(p)] for p in parameters])
