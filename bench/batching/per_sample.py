"""Per-sample parameter gradients of an eval-mode network from one batched forward and backward.

What DP libraries do (Opacus's grad samplers): record each layer's input a and the gradient delta of the summed
loss with respect to its output, then form each sample's weight gradient from the two. For a convolution that is
delta_i (C_out x L) times unfold(a_i) (L x C_in k k), one batched matmul; a linear layer's is the outer product;
an eval-mode batch-norm's gamma gradient is sum over positions of delta x_hat, its beta gradient sum of delta.
Only the activation gradients are back-propagated, so the cost is that of one batched forward and backward plus
forming the per-sample weight gradients.

Two uses here:

* :func:`per_sample_gradients`: every per-sample gradient, by unfold + batched matmul for convolutions
  (differentiable: gradient inversion's double backward). Measured on the 2-core CPU
  (``benchmarks/ats_scores.py``), materialising the unfolded inputs of the 28x28 layers costs more than vmap's
  grouped convolutions (ConvNet width 16: 2.7x the floor against vmap's 1.7-1.9x);
* :func:`gradient_statistics`: only what cosines between samples' gradients need -- each sample's dot product
  with a reference sample's gradient and its squared norm per parameter tensor -- formed layer by layer during
  the backward, convolutions' per-sample weight gradients a chunk at a time by one grouped convolution backward
  (oneDNN's weight-gradient kernel with the samples as groups: about as fast per element as the summed
  gradient on the 28x28 layers, 1.3-2.4x on the 14x14 and 7x7 ones). ATS's S_pri uses this: 1.2-1.3x the floor.
  Ghost norms (Gram matrices of the unfolded inputs and of the output gradients, as DP libraries use for
  linear layers) cost L^2 (C_in k^2 + C_out) per sample against C_out C_in k^2 L for the gradient itself: more on
  every convolution of these networks (L = 49 to 784 positions) except about break-even at 7x7, so none is used.

Layers other than Conv2d (groups 1), Linear and eval-mode BatchNorm2d, a module called twice in one forward, or a
parameter owned by anything else raise :class:`Unsupported`; callers fall back to ``vmap``.
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
            unfolded = F.unfold(
                a, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride
            )
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
CONV_CHUNK_ELEMENTS = 2**21
#: parameter tensors up to this size have their per-sample dot products formed against a gathered copy of the
#: references' gradients in one call; larger ones by one matrix-vector product per reference (no copy)
SMALL = 1024


def _conv_weight_gradients(layer: nn.Conv2d, a: Tensor, delta: Tensor, grouped: dict[int, Tensor]) -> Tensor:
    """Each sample's weight gradient of a (groups 1) convolution, (M, numel): one grouped convolution backward with
    the samples as groups -- the kernel oneDNN runs for the summed gradient, without the sum over samples and
    without materialising unfolded inputs. The weight gradient does not depend on the weight, which gives only the
    shape: a stride-0 view of one zero stands in for the M-fold weight (``grouped`` caches it per M)."""
    count = a.shape[0]
    if count not in grouped:
        weight = layer.weight
        grouped[count] = weight.new_zeros(()).expand(count * weight.shape[0], *weight.shape[1:])
    _, gradient, _ = torch.ops.aten.convolution_backward(
        delta.reshape(1, -1, *delta.shape[2:]),
        a.reshape(1, -1, *a.shape[2:]),
        grouped[count],
        None,
        layer.stride,
        layer.padding,
        layer.dilation,
        False,
        [0, 0],
        count,
        [False, True, False],
    )
    return gradient.view(count, -1)


def _as_slice(index: Tensor):
    """``index`` as a slice where it is a run of consecutive integers (indexing by a slice does not copy)."""
    if len(index) and bool(
        (index == torch.arange(int(index[0]), int(index[0]) + len(index), device=index.device)).all()
    ):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index


def gradient_statistics(
    model: nn.Module, inputs: Tensor, labels: Tensor, references: Tensor, chunk_elements: int = CONV_CHUNK_ELEMENTS
) -> tuple[Tensor, Tensor]:
    """Per parameter tensor, each sample's gradient (of its own cross-entropy) dotted with the gradient of the
    sample ``references[i]``, and its own squared norm: two (tensors, M) tables, tensors in ``model.parameters()``
    order -- all a cosine between two samples' gradients needs; the per-sample gradients themselves are never
    all held.

    One batched forward and one backward of the summed loss (activation gradients only, as
    :func:`per_sample_gradients`). Each layer's statistics are formed in a hook the moment the gradient of its
    output arrives, from that gradient and the layer's input, and both are let go at once, so the backward holds
    no more memory than a plain one (holding every layer's output gradient to the end made the 2-core CPU spend
    more time page-faulting fresh memory than computing). Convolutions: the per-sample weight gradients of a
    chunk of samples (about ``chunk_elements`` elements) by one grouped convolution backward
    (:func:`_conv_weight_gradients`), the references' first, each chunk reduced at once to its dots and squared
    norms; linear layers, biases and eval-mode batch-norm: all samples at once (small). ``model`` must be in eval
    mode (samples independent)."""
    layers = supported_layers(model)
    count = inputs.shape[0]
    references = torch.as_tensor(references, device=inputs.device)
    if references.shape != (count,) or int(references.min()) < 0 or int(references.max()) >= count:
        raise ValueError(f"references must index the {count} samples, one per sample")
    accumulator = _StatisticsAccumulator(inputs, references, chunk_elements)
    calls = {layer: 0 for layer in layers}

    def record(layer, args, output):
        calls[layer] += 1
        held = [args[0].detach()]  # let go of in the hook: the graph keeps its hooks to the end, not their inputs

        def on_gradient(delta: Tensor) -> None:
            accumulator.add_layer(layer, held.pop(), delta.detach())

        output.register_hook(on_gradient)

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        with torch.enable_grad():
            x = inputs.detach().requires_grad_(True)  # the backward to x runs every layer's hook
            loss = F.cross_entropy(model(x), labels, reduction="sum")  # per-sample losses: their deltas are unscaled
            if any(n != 1 for n in calls.values()):
                raise Unsupported("a layer is called more than once in a forward")
            torch.autograd.grad(loss, x)
    finally:
        for handle in handles:
            handle.remove()
    accumulator.reduce_pending()
    return accumulator.tables(list(model.parameters()))


def _squared_norms(gradients: Tensor) -> Tensor:
    return torch.linalg.vector_norm(gradients, dim=1).square()


class _StatisticsAccumulator:
    """The state of one :func:`gradient_statistics` call: per parameter tensor (by ``id``), each sample's gradient
    dotted with its reference's, and its squared norm, filled in layer by layer as the backward reaches them."""

    def __init__(self, inputs: Tensor, references: Tensor, chunk_elements: int):
        self.inputs, self.references, self.chunk_elements = inputs, references, chunk_elements
        self.count = count = inputs.shape[0]
        unique, slot = torch.unique(
            references, return_inverse=True
        )  # slot[i]: where sample i's reference sits in unique
        is_reference = torch.zeros(count, dtype=torch.bool, device=inputs.device)
        is_reference[unique] = True
        self.unique_at, self.own_slots = _as_slice(unique), slot[unique]
        # the other samples by reference (a dot product with one vector is a matrix-vector product: no gathered copies)
        dependents = [
            (r, _as_slice((slot == r).logical_and(~is_reference).nonzero().flatten())) for r in range(len(unique))
        ]
        self.dependents = [(r, members) for r, members in dependents if not isinstance(members, Tensor) or len(members)]
        self.dots: dict[int, Tensor] = {}
        self.squares: dict[int, Tensor] = {}
        self.pending: list[tuple[nn.Parameter, Tensor]] = []  # small tensors' gradients, reduced together at the end

    def whole(self, parameter: nn.Parameter, gradients: Tensor) -> None:
        """Every sample's (M, numel) gradients at once."""
        if gradients.shape[1] <= SMALL:
            self.pending.append((parameter, gradients))
            return
        dot = gradients.new_empty(self.count)
        own = gradients[self.unique_at]
        dot[self.unique_at] = torch.linalg.vecdot(own, own[self.own_slots])
        for r, members in self.dependents:
            dot[members] = gradients[members] @ own[r]
        self.dots[id(parameter)], self.squares[id(parameter)] = dot, _squared_norms(gradients)

    def chunked(self, parameter: nn.Parameter, form, chunk: int) -> None:
        """``form(at)``: the (samples, numel) gradients of the samples ``at`` (a slice or an index), the references'
        first, then each reference's dependents in chunks of at most ``chunk``."""
        if chunk >= self.count:
            self.whole(parameter, form(slice(0, self.count)))
            return
        dot, square = self.inputs.new_empty(self.count), self.inputs.new_empty(self.count)
        own = form(self.unique_at)
        dot[self.unique_at] = torch.linalg.vecdot(own, own[self.own_slots])
        square[self.unique_at] = _squared_norms(own)
        for r, members in self.dependents:
            runs = range(members.start, members.stop) if isinstance(members, slice) else members
            for start in range(0, len(runs), chunk):
                at = runs[start : start + chunk]
                at = slice(at.start, at.stop) if isinstance(at, range) else _as_slice(at)
                gradients = form(at)
                dot[at] = gradients @ own[r]
                square[at] = _squared_norms(gradients)
        self.dots[id(parameter)], self.squares[id(parameter)] = dot, square

    def add_layer(self, layer: nn.Module, a: Tensor, delta: Tensor) -> None:
        """The statistics of ``layer``'s parameters from its input ``a`` and the gradient ``delta`` of its output."""
        if isinstance(layer, nn.Conv2d):
            self._add_conv(layer, a, delta)
        elif isinstance(layer, nn.Linear):
            self._add_linear(layer, a, delta)
        elif layer.weight is not None:
            self._add_batch_norm(layer, a, delta)

    def _add_conv(self, layer: nn.Conv2d, a: Tensor, delta: Tensor) -> None:
        chunk, grouped = max(1, self.chunk_elements // layer.weight.numel()), {}
        self.chunked(layer.weight, lambda at: _conv_weight_gradients(layer, a[at], delta[at], grouped), chunk)
        if layer.bias is not None:
            self.whole(layer.bias, delta.sum((2, 3)))

    def _add_linear(self, layer: nn.Linear, a: Tensor, delta: Tensor) -> None:
        count = self.count
        a, delta = a.reshape(count, -1, a.shape[-1]), delta.reshape(count, -1, delta.shape[-1])
        self.whole(layer.weight, torch.bmm(delta.transpose(1, 2), a).flatten(1))
        if layer.bias is not None:
            self.whole(layer.bias, delta.sum(1))

    def _add_batch_norm(self, layer: nn.Module, a: Tensor, delta: Tensor) -> None:
        """Eval-mode batch-norm y = gamma x_hat + beta: sum_p delta x_hat and sum_p delta per (sample, channel), in
        one batch-norm backward that takes the samples' channels as one sample's."""
        count = self.count
        statistics_of = lambda t: t.detach().repeat(count)  # noqa: E731
        shape = (1, -1, *a.shape[2:])
        _, gamma, beta = torch.ops.aten.native_batch_norm_backward(
            delta.reshape(shape),
            a.reshape(shape),
            statistics_of(layer.weight),
            statistics_of(layer.running_mean),
            statistics_of(layer.running_var),
            None,
            None,
            False,
            layer.eps,
            [False, True, True],
        )
        self.whole(layer.weight, gamma.view(count, -1))
        self.whole(layer.bias, beta.view(count, -1))

    def reduce_pending(self) -> None:
        """The small tensors' statistics in one product for all: (M, total) elementwise, then a sum per tensor's
        segment of the columns."""
        if not self.pending:
            return
        pending, count, device = self.pending, self.count, self.inputs.device
        gradients = torch.cat([g for _, g in pending], 1)
        sizes = torch.tensor([g.shape[1] for _, g in pending], device=device)
        segments = torch.repeat_interleave(torch.arange(len(pending), device=device), sizes)
        small_dots = gradients.new_zeros(count, len(pending)).index_add_(
            1, segments, gradients * gradients[self.references]
        )
        small_squares = gradients.new_zeros(count, len(pending)).index_add_(1, segments, gradients.square())
        for k, (parameter, _) in enumerate(pending):
            self.dots[id(parameter)], self.squares[id(parameter)] = small_dots[:, k], small_squares[:, k]

    def tables(self, parameters: list[nn.Parameter]) -> tuple[Tensor, Tensor]:
        """The (tensors, M) dot and squared-norm tables in the order of ``parameters``."""
        zeros = self.inputs.new_zeros(self.count)  # a layer whose output the loss does not use: gradient 0
        return (
            torch.stack([self.dots.get(id(p), zeros) for p in parameters]),
            torch.stack([self.squares.get(id(p), zeros) for p in parameters]),
        )
