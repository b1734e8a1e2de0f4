"""Gradient inversion: reconstruct a participant's training images from the gradient it shared.

Threat model: gradient sharing. The honest-but-curious server knows the model (it sent it) and
sees each participant's gradient; it searches for images whose gradient matches (ATS Eq. 1):

    x* = argmin_x' d(grad W(x', y), grad W(x, y)) + tv * TV(x')

Variants, named "optimizer+distance" as in ATS (section 5.1, Table 2): Inverting Gradients
(Geiping et al.; Adam + cosine + total variation 1e-4, signed gradients, learning rate divided by
10 at 3/8, 5/8, 7/8 of the iterations, images kept in [0, 1]); DLG (Zhu et al.; L-BFGS + L2); and
LBFGS+cosine, Adam+L1, Adam+L2, SGD+cosine. Labels are recovered from the last layer's gradient
(iDLG, Zhao et al., or by counts with repeats: bench.attacks.label_recovery) or given. Initialisation
is uniform noise or all black (ATS Table 7's adaptive attack). Reconstructions are scored by PSNR and
SSIM against the image the participant actually trained on (the transformed image: the paper's
definition) and against the original image.

Many independent attacks (targets x restarts) run as one optimisation: the dummy gradients of all
of them come from one pass with batch-norm in eval mode (the attacks as copies of one grouped network
where the model has that form, else ``vmap``), and the objective is their sum, so with an element-wise
optimizer (Adam, SGD) every attack follows the path it would follow alone.
L-BFGS's curvature history would couple them, so L-BFGS attacks run one after another.
"""

from __future__ import annotations

import copy
import weakref
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from bench.attacks.base import Attack, AttackResult
from bench.attacks.label_recovery import recover_label_counts, recover_labels
from bench.batching.grouped_networks import grouped_network
from bench.batching.per_sample import Unsupported, per_sample_gradients, supported_layers
from bench.errors import BenchError
from bench.metrics.reconstruction import (
    EXPOSURE_DIRECTIONS,
    PSNR_CAP_DB,
    per_image_details,
    per_image_metrics,
    reconstruction_metrics,
    score_reconstructions,
)
from bench.threat_models import Role, ThreatModel

OPTIMIZERS = ("adam", "sgd", "lbfgs")
DISTANCES = ("cosine", "l2", "l1")
DEFAULT_LR = {"adam": 0.1, "sgd": 0.1, "lbfgs": 1.0}  # Geiping et al.'s Adam and SGD; DLG's L-BFGS
SPACES = ("normalized", "pixel")
INITS = ("gaussian", "random", "black")  # random: uniform in [0, 1] pixels
LABELS = ("recover", "idlg", "llg", "given")
PER_SAMPLE = ("grouped", "vmap", "unfold")  # how many attacks' dummy gradients are formed together
#: inversefed's milestones: max_iterations // 2.667, // 1.6, // 1.142 ("3/8 5/8 7/8")
MILESTONE_DIVISORS = (2.667, 1.6, 1.142)


def inversefed_milestones(iterations: int) -> list[int]:
    return sorted({max(1, int(iterations // d)) for d in MILESTONE_DIVISORS})


def gradient_distance(
    dummy: dict[str, Tensor], target: dict[str, Tensor], distance: str, target_norm: Optional[Tensor] = None
) -> Tensor:
    """d(dummy, target) per attack for (A, *shape) gradients: 1 - cosine over all layers together, or L2 / L1.
    ``target_norm``: the targets' norms over all layers (A,), where the caller has them (they do not change)."""
    names = list(target)
    if distance == "cosine":
        dot = sum((dummy[n] * target[n]).flatten(1).sum(1) for n in names)
        dummy_norm = sum(dummy[n].square().flatten(1).sum(1) for n in names).sqrt()
        if target_norm is None:
            target_norm = sum(target[n].square().flatten(1).sum(1) for n in names).sqrt()
        return 1 - dot / (dummy_norm * target_norm).clamp_min(1e-12)
    if distance == "l2":
        return sum((dummy[n] - target[n]).square().flatten(1).sum(1) for n in names)
    return sum((dummy[n] - target[n]).abs().flatten(1).sum(1) for n in names)


def total_variation(images: Tensor) -> Tensor:
    """Anisotropic total variation per attack of (A, B, C, H, W) images (mean absolute neighbour difference)."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


class GradientInversion(Attack):
    """Reconstruct participants' images from their shared gradients (Inverting Gradients, DLG and variants).

    Args:
        optimizer: ``adam`` (IG), ``lbfgs`` (DLG) or ``sgd``.
        distance: gradient distance, ``cosine`` (IG), ``l2`` (DLG) or ``l1``.
        iterations: optimisation steps per attack (the paper: 4,800 for Adam/SGD, 300 for L-BFGS).
        lr: step size (None: 0.1 for Adam and SGD, 1.0 for L-BFGS), in the units of ``space``.
        tv: weight of the total-variation prior (IG: 1e-4; 0 for DLG), on the image in ``space``.
        space: ``normalized`` (inversefed's and ATS's: the image is optimised as (x - mean) / std, boxed to
            the valid range) or ``pixel`` (x in [0, 1]: bench's earlier variant, recorded as ``..._pixel``).
        restarts: independent initialisations per target; the one with the lowest final distance is kept.
        num_images: targets attacked (the first ones of the test pool: a fixed set).
        batch_size: images per shared gradient (1: the paper's strongest setting; 8 is harder).
        labels: ``recover`` (iDLG at batch size 1, LLG's count-based recovery with repeats at batch size > 1),
            ``idlg`` (the batch_size most negative rows: distinct labels), ``llg`` (the counts alone) or ``given``.
        init: ``gaussian`` (N(0, 1) in normalised space, inversefed's ``randn``; in pixel space N(0.5, 0.25^2)),
            ``random`` (uniform noise in [0, 1] pixels) or ``black`` (all zeros, ATS Table 7's adaptive attack).
            None: gaussian in normalised space, random in pixel space.
        signed: step on the sign of the image gradient (IG's choice for Adam and SGD).
        model_state: ``trained`` (the evaluated checkpoint) or ``untrained`` (the same network re-initialised
            with the evaluation seed: the stage at which gradients leak most). The paper's semi-trained stage
            (M^s: 10% of the data for 50 epochs, the cost of 5 of F-MNIST's 100 epochs) is an early checkpoint
            of the run: ``bench evaluate runs/.../checkpoints/epoch=<e>-*.ckpt`` (configs
            ``ats/mnist_shared_paper`` and ``ats/fmnist_convnet_paper`` keep every epoch's checkpoint).
        per_sample: how the dummy gradients of many attacks are formed in one pass: ``grouped`` (the default: the
            attacks as copies of one grouped network, :mod:`bench.batching.grouped_networks`, each copy's weight
            gradient its attack's dummy gradient, a plain double backward of grouped convolutions; where the model
            has such a form and it gives the model's own logits, else ``vmap``), ``vmap`` (``torch.func``; any
            network) or ``unfold`` (activations and output gradients of one batched forward/backward, weight
            gradients by unfold + batched matmul: ``bench.batching.per_sample``). ``benchmarks/ats_inversion.py``
            times them against the floor. A single attack always takes the plain double backward of its batch.
        progress: show a progress bar.
    """

    name = "gradient_inversion"  # Inverting Gradients; other variants are named e.g. gradient_inversion_lbfgs_l2
    threat_model = ThreatModel.GRADIENT_SHARING
    role = Role.ADVERSARY
    tasks = ("multiclass",)  # iDLG's label recovery and the matched cross-entropy gradient need one class per image
    metric_directions = {
        "psnr": "lower",
        "ssim": "lower",
        "mse": "higher",
        "psnr_original": "lower",
        "ssim_original": "lower",
        "label_accuracy": "lower",
        **EXPOSURE_DIRECTIONS,
    }
    primary_metric = "psnr"

    def __init__(
        self,
        optimizer: str = "adam",
        distance: str = "cosine",
        iterations: int = 200,
        lr: Optional[float] = None,
        tv: float = 1e-4,
        restarts: int = 1,
        num_images: int = 4,
        batch_size: int = 1,
        labels: str = "recover",
        init: Optional[str] = None,
        signed: bool = True,
        model_state: str = "trained",
        space: str = "normalized",
        per_sample: str = "grouped",
        progress: bool = True,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise BenchError(f"unknown optimizer '{optimizer}'; choose one of {list(OPTIMIZERS)}")
        if distance not in DISTANCES:
            raise BenchError(f"unknown distance '{distance}'; choose one of {list(DISTANCES)}")
        if iterations < 1 or restarts < 1 or num_images < 1 or batch_size < 1:
            raise BenchError(
                f"iterations, restarts, num_images and batch_size must be at least 1, got "
                f"{iterations}, {restarts}, {num_images}, {batch_size}"
            )
        if lr is not None and lr <= 0:
            raise BenchError(f"lr must be positive, got {lr}")
        if tv < 0:
            raise BenchError(f"tv (total-variation weight) must be non-negative, got {tv}")
        if labels not in LABELS:
            raise BenchError(
                f"labels must be one of {list(LABELS)} (recover: iDLG, or LLG's counts at batch size > 1), "
                f"got '{labels}'"
            )
        if per_sample not in PER_SAMPLE:
            raise BenchError(
                f"per_sample must be one of {list(PER_SAMPLE)} (grouped: one grouped network, else vmap), "
                f"got '{per_sample}'"
            )
        if space not in SPACES:
            raise BenchError(f"space must be 'normalized' (inversefed's) or 'pixel', got '{space}'")
        init = init if init is not None else ("gaussian" if space == "normalized" else "random")
        if init not in INITS:
            raise BenchError(f"init must be one of {list(INITS)}, got '{init}'")
        if model_state not in ("trained", "untrained"):
            raise BenchError(f"model_state must be 'trained' or 'untrained', got '{model_state}'")
        self.optimizer = optimizer
        self.distance = distance
        self.iterations = iterations
        self.lr = lr
        self.tv = tv
        self.restarts = restarts
        self.num_images = num_images
        self.batch_size = batch_size
        self.labels = labels
        self.init = init
        self.signed = signed
        self.model_state = model_state
        self.space = space
        self.per_sample = per_sample
        self.progress = progress
        # variants get their own name, so that one evaluation can report several (Table 2) side by side
        variant = [] if (optimizer, distance) == ("adam", "cosine") else [optimizer, distance]
        variant += [setting for setting in (init, model_state) if setting in ("black", "untrained")]
        variant += ["pixel"] if space == "pixel" else []
        variant += [f"batch{batch_size}"] if batch_size > 1 else []  # batch 1 and 8 side by side in one record
        # given labels (the paper's protocol: ATSPrivacy passes the true labels to inversefed) beside the
        # recovered ones (what the gradient alone tells the server) in one record; "recover" keeps the plain name
        variant += [] if labels == "recover" else [f"labels_{labels}"]
        self.name = "_".join(["gradient_inversion", *variant])

    @property
    def step_size(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    def pool_problem(self, sizes: dict[str, int]) -> Optional[str]:
        needed = self.num_images * self.batch_size
        if sizes.get("test", 0) < needed:
            return f"test pool {sizes.get('test', 0)} (needs num_images x batch_size = {needed})"
        return super().pool_problem(sizes)

    # ------------------------------------------------------------------ the harness entry point
    def run(self, module, datamodule, generator: torch.Generator) -> AttackResult:
        model = self.target_model(module, generator)
        images, labels = datamodule.pool("test").tensors()
        problem = self.pool_problem({"test": len(images)})
        if problem is not None:
            raise BenchError(f"{self.name}: {problem}")
        needed = self.num_images * self.batch_size
        device = next(model.parameters()).device
        shape = images.shape[1:]
        originals = images[:needed].view(self.num_images, self.batch_size, *shape).to(device)
        true_labels = labels[:needed].view(self.num_images, self.batch_size).to(device)
        shared = model.shared_gradients(originals, true_labels, generator)
        targets = {name: g.detach() for name, g in shared.gradients.items()}
        labels_mode = self.labels
        if labels_mode == "recover":
            labels_mode = "idlg" if self.batch_size == 1 else "llg"
        if labels_mode == "idlg":
            attack_labels = recover_labels(targets, module.spec.num_classes, self.batch_size)
        elif labels_mode == "llg":
            attack_labels = recover_label_counts(targets, module.spec.num_classes, self.batch_size)
        else:
            attack_labels = true_labels
        self._normalization = self._spec_normalization(module.spec, device)
        init = self.initial_images(self.num_images * self.restarts, shape, generator).to(device)
        (reconstructions, losses), reused = self._invert_or_reuse(model, targets, attack_labels, init)
        reconstructions = reconstructions.detach()
        inputs = shared.inputs.detach()
        reconstructions = self.match_order(reconstructions, inputs)
        flat = reconstructions.flatten(0, 1).cpu()
        per_image = per_image_metrics(flat, inputs.flatten(0, 1).cpu())
        metrics, exposure, examples = score_reconstructions(flat, inputs.flatten(0, 1).cpu(), datamodule, per_image)
        against_original = reconstruction_metrics(flat, originals.flatten(0, 1).cpu())
        metrics["psnr_original"], metrics["ssim_original"] = against_original["psnr"], against_original["ssim"]
        recovered = torch.sort(attack_labels, dim=1).values == torch.sort(true_labels, dim=1).values
        metrics["label_accuracy"] = recovered.float().mean().item()
        details = {
            "final_distance": losses.mean().item(),
            "images": needed,
            "model_state": self.model_state,
            "space": self.space,
            "init": self.init,
            "labels": labels_mode,
            "milestones": inversefed_milestones(self.iterations),
            "batching": self.batching,
            "lpips": "not computed: LPIPS needs pretrained AlexNet/VGG weights, not available offline",
            **({"reused_reconstructions_of": reused} if reused else {}),
            **exposure,
            **per_image_details(per_image, recovered),
        }
        details["intervals"] = {**details.get("intervals", {}), **exposure["intervals"]}
        return AttackResult(metrics, examples=examples, details=details)

    #: the last inversion run in this process (model, settings, labels, start, targets, result, attack name, batching)
    _last_inversion: Optional[tuple] = None

    def _invert_or_reuse(self, model, targets: dict[str, Tensor], labels: Tensor, init: Tensor):
        """:meth:`invert`, unless the attack run just before this one on the same model had the same targets,
        labels, start and settings (labels given, then recovered, and recovered right): the optimisation would be
        the same, so its result is reused (the record names that attack).
        Returns ((images, distances), name or None)."""
        settings = (
            self.optimizer,
            self.distance,
            self.iterations,
            self.step_size,
            self.tv,
            self.restarts,
            self.signed,
            self.space,
            self.per_sample,
            self.batch_size,
        )
        last = GradientInversion._last_inversion
        if (
            last is not None
            and last[0]() is model
            and last[1] == settings
            and torch.equal(last[2], labels)
            and torch.equal(last[3], init)
            and last[4].keys() == targets.keys()
            and all(torch.equal(last[4][name], target) for name, target in targets.items())
        ):
            self.batching = last[7]
            return last[5], last[6]
        result = self.invert(model, targets, labels, init)
        GradientInversion._last_inversion = (
            weakref.ref(model),
            settings,
            labels.clone(),
            init.clone(),
            {name: target.clone() for name, target in targets.items()},
            result,
            self.name,
            self.batching,
        )
        return result, None

    def target_model(self, module, generator: torch.Generator):
        """The model whose gradients are attacked: the module in eval mode, or a re-initialised copy of it."""
        if self.model_state == "trained":
            return module.eval()
        model = copy.deepcopy(module).eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            for layer in model.modules():
                if layer is not model and hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        return model

    @staticmethod
    def _spec_normalization(spec, device=None) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(list(spec.mean), dtype=torch.float32, device=device).view(1, 1, -1, 1, 1)
        std = torch.tensor(list(spec.std), dtype=torch.float32, device=device).view(1, 1, -1, 1, 1)
        return mean, std

    def _mean_std(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(1, 1, C, 1, 1) mean and std of the optimisation space (0 and 1 in pixel space)."""
        normalization = getattr(self, "_normalization", None)
        if self.space == "pixel" or normalization is None:
            return torch.zeros((), dtype=like.dtype, device=like.device), torch.ones(
                (), dtype=like.dtype, device=like.device
            )
        return normalization[0].to(like), normalization[1].to(like)

    def initial_images(self, count: int, shape, generator: torch.Generator) -> Tensor:
        """(count, batch_size, C, H, W) starting images in pixel units: Gaussian in the optimisation space
        (inversefed's ``randn``), uniform noise in [0, 1], or black."""
        if self.init == "black":
            return torch.zeros(count, self.batch_size, *shape)
        if self.init == "gaussian":
            noise = torch.randn(count, self.batch_size, *shape, generator=generator)
            if self.space == "pixel":
                return 0.5 + 0.25 * noise
            mean, std = self._mean_std(noise)
            return mean + std * noise
        return torch.rand(count, self.batch_size, *shape, generator=generator)

    # ------------------------------------------------------------------ the optimisation
    def invert(
        self, model: nn.Module, targets: dict[str, Tensor], labels: Tensor, init: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Reconstruct every target from ``init`` (restarts x targets, B, C, H, W, in pixel units); keep each
        target's best restart. Call :meth:`set_normalization` first to optimise in a normalised space.

        Returns reconstructions (targets, B, C, H, W) in pixel units and their final gradient distances (targets,).
        """
        count = labels.shape[0]
        restarts = init.shape[0] // count
        targets = {n: t.repeat(restarts, *[1] * (t.ndim - 1)) for n, t in targets.items()}
        labels = labels.repeat(restarts, 1)
        objective = self.objective(model, targets, labels, tuple(init.shape[2:]))
        self.batching = objective.batching
        mean, std = self._mean_std(init)
        start = (init - mean) / std  # the optimisation space
        if self.optimizer == "lbfgs":  # independent L-BFGS runs: a shared history would couple the attacks
            parts = [self._lbfgs(objective, start[i : i + 1], i) for i in range(start.shape[0])]
            images = torch.cat([p[0] for p in parts])
        else:
            images = self._first_order(objective, start)
        with torch.no_grad():
            distances = objective(images, None)[1].view(restarts, count)
        images = (images * std + mean).clamp(0, 1)
        best = distances.argmin(0)
        images = images.view(restarts, count, *images.shape[1:])[best, torch.arange(count)]
        return images, distances[best, torch.arange(count)]

    def set_normalization(self, spec) -> "GradientInversion":
        """Optimise in ``spec``'s normalised space (``run`` does this from the module's data spec)."""
        self._normalization = self._spec_normalization(spec)
        return self

    def objective(
        self,
        model: nn.Module,
        targets: dict[str, Tensor],
        labels: Tensor,
        image_shape: Optional[tuple[int, ...]] = None,
    ) -> Callable:
        """(z, which) -> (per-attack objective, per-attack gradient distance) for images z in the optimisation
        space (x = z std + mean); ``which`` picks attacks (None: all). ``image_shape`` (C, H, W) lets the attacks
        run as one grouped network (``per_sample="grouped"``); the path taken is ``objective.batching``."""
        params = {name: p.detach() for name, p in model.named_parameters() if name in targets}
        buffers = dict(model.named_buffers())
        mean, std = self._mean_std(next(iter(targets.values())))
        names = [name for name, _ in model.named_parameters()]
        leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
        every_parameter = not model.training and set(names) == set(targets)
        own_parameters = (
            [p for p in model.parameters()]
            if every_parameter and all(p.requires_grad for p in model.parameters())
            else None
        )
        attacks = labels.shape[0]
        grouped = None
        if self.per_sample == "grouped" and every_parameter and image_shape is not None and attacks > 1:
            grouped = self._checked_grouped(model, image_shape, attacks, labels.shape[1])
        # per-sample gradients by unfold + batched matmul where the layers allow (bench.batching.per_sample), else vmap
        by_unfold = self.per_sample == "unfold" and every_parameter
        if by_unfold:
            try:
                supported_layers(model)
            except Unsupported:
                by_unfold = False

        def loss(params, x, y):  # what each participant computed: the mean cross-entropy of its batch
            return F.cross_entropy(functional_call(model, (params, buffers), (x,)), y)

        dummy_gradients = vmap(grad(loss), in_dims=(None, 0, 0))
        target_norms = sum(t.square().flatten(1).sum(1) for t in targets.values()).sqrt()  # constant: once

        def evaluate(images: Tensor, which: Optional[slice]):
            chosen = slice(None) if which is None else which
            chosen_targets = {n: t[chosen] for n, t in targets.items()}
            x = images * std + mean
            differentiable = torch.is_grad_enabled()
            if x.shape[0] == 1:  # one attack: its gradient is the batch's, a plain double backward
                with torch.enable_grad():
                    if own_parameters:  # the model itself: functional_call's swap costs ~5% of a step here
                        loss_value = F.cross_entropy(model(x[0]), labels[chosen][0])
                        grads = torch.autograd.grad(loss_value, own_parameters, create_graph=differentiable)
                        dummy = {n: g.unsqueeze(0) for n, g in zip(names, grads)}
                    else:
                        loss_value = F.cross_entropy(
                            functional_call(model, (leaves, buffers), (x[0],)), labels[chosen][0]
                        )
                        grads = torch.autograd.grad(loss_value, list(leaves.values()), create_graph=differentiable)
                        dummy = {n: g.unsqueeze(0) for n, g in zip(leaves, grads)}
            elif grouped is not None and x.shape[0] == attacks:
                forward, copies, copied_buffers = grouped
                with torch.enable_grad():
                    logits = forward(copies, copied_buffers, x, False)
                    # each attack's loss is its batch's mean cross-entropy: copy a's weight gradient is attack a's
                    summed = (
                        F.cross_entropy(logits.flatten(0, 1), labels[chosen].flatten(), reduction="sum") / x.shape[1]
                    )
                    grads = torch.autograd.grad(summed, list(copies.values()), create_graph=differentiable)
                dummy = dict(zip(copies, grads))
            elif by_unfold:
                batch = x.shape[1]
                flat = per_sample_gradients(model, x.flatten(0, 1), labels[chosen].flatten(), create_graph=True)
                # each participant's loss is its batch's mean cross-entropy: the mean of its samples' gradients
                dummy = {n: g.view(x.shape[0], batch, *params[n].shape).mean(1) for n, g in zip(names, flat)}
            else:
                dummy = dummy_gradients(params, x, labels[chosen])
            distance = gradient_distance(dummy, chosen_targets, self.distance, target_norms[chosen])
            total = distance + self.tv * total_variation(images) if self.tv else distance  # TV in the optimised space
            return total, distance

        evaluate.box = ((0 - mean) / std, (1 - mean) / std)  # inversefed's boxed constraint
        evaluate.batching = (
            "single" if attacks == 1 else "grouped" if grouped is not None else "unfold" if by_unfold else "vmap"
        )
        return evaluate

    @staticmethod
    def _checked_grouped(model: nn.Module, image_shape: tuple[int, ...], attacks: int, batch: int):
        """(grouped forward, per-attack parameter copies (leaves), per-attack buffers) for ``attacks`` copies of the
        eval-mode ``model``, or None where it has no grouped form or that form does not give its own logits."""
        forward = grouped_network(model, tuple(image_shape), batch_norm=True, channels_last=False)
        if isinstance(forward, str):
            return None
        copies = {
            n: p.detach().unsqueeze(0).repeat(attacks, *[1] * p.ndim).requires_grad_(True)
            for n, p in model.named_parameters()
        }
        copied_buffers = {n: b.unsqueeze(0).repeat(attacks, *[1] * b.ndim) for n, b in model.named_buffers()}
        parameter = next(model.parameters())
        probe = torch.rand(attacks, batch, *image_shape, generator=torch.Generator().manual_seed(0)).to(parameter)
        with torch.no_grad():
            own = model(probe.flatten(0, 1)).view(attacks, batch, -1)
            try:
                logits = forward(copies, copied_buffers, probe, False)
            except (RuntimeError, ValueError, KeyError):
                return None
        # the same arithmetic in another order: float32 rounding apart, a forward that is not the Sequential differs
        if logits.shape != own.shape or not torch.allclose(logits, own, rtol=1e-4, atol=1e-5):
            return None
        return forward, copies, copied_buffers

    def _first_order(self, objective: Callable, init: Tensor) -> Tensor:
        images = init.clone().requires_grad_(True)
        if self.optimizer == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam([images], lr=self.step_size)
        else:
            optimizer = torch.optim.SGD([images], lr=self.step_size, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, inversefed_milestones(self.iterations), gamma=0.1)
        low, high = objective.box
        for _ in tqdm(
            range(self.iterations),
            desc=f"{self.name} ({self.optimizer}+{self.distance})",
            disable=not self.progress,
            leave=False,
        ):
            optimizer.zero_grad(set_to_none=True)
            total, _ = objective(images, None)
            # attacks are independent: the sum's gradient is each attack's own; with respect to the images only
            # (backward() would also form the second-order gradients of the parameters: wasted work)
            (images.grad,) = torch.autograd.grad(total.sum(), images)
            if self.signed:
                images.grad.sign_()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                images.copy_(torch.max(torch.min(images, high), low))  # boxed: x stays in [0, 1]
        return images.detach()

    def _lbfgs(self, objective: Callable, init: Tensor, index: int) -> tuple[Tensor]:
        images = init.clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [images], lr=self.step_size, max_iter=self.iterations, history_size=100, line_search_fn="strong_wolfe"
        )
        which = slice(index, index + 1)

        def closure():
            optimizer.zero_grad(set_to_none=True)
            total = objective(images, which)[0].sum()
            total.backward()
            return total

        optimizer.step(closure)
        low, high = objective.box
        return (torch.max(torch.min(images.detach(), high), low),)

    # ------------------------------------------------------------------ scoring
    @staticmethod
    def match_order(reconstructions: Tensor, inputs: Tensor) -> Tensor:
        """Within each shared batch, pair reconstructions with inputs by best total PSNR (a batch's order is
        not recoverable from its gradient)."""
        if reconstructions.shape[1] == 1:
            return reconstructions
        matched = reconstructions.clone()
        for attack in range(reconstructions.shape[0]):
            mse = (
                (reconstructions[attack].unsqueeze(1).clamp(0, 1) - inputs[attack].unsqueeze(0))
                .square()
                .flatten(2)
                .mean(2)
            )
            psnr = (-10 * torch.log10(mse.clamp_min(10 ** (-PSNR_CAP_DB / 10)))).cpu().numpy()
            rows, cols = linear_sum_assignment(-psnr)
            matched[attack, torch.as_tensor(cols)] = reconstructions[attack, torch.as_tensor(rows)]
        return matched
