"""DP-SGD (Abadi et al. 2016) through Opacus's own pieces inside a LightningModule.

The differential-privacy reference of the black-box tables (MCMIA Table I): every heuristic defense is
judged against it at equal accuracy. The pieces are Opacus's, as ``PrivacyEngine.make_private`` puts
them together (its reference usage; the test checks the first steps against it to 1e-6):

* the network made private by ``ModuleValidator.fix`` (batch norm becomes group norm: per-sample
  gradients are undefined across a batch-norm layer); the record says what was replaced;
* per-sample gradients from Opacus's hooks (``grad_sample_mode="hooks"``), its ``torch.func`` path
  (``"functorch"``) or ghost clipping (``"ghost"``: per-sample gradient *norms* only, then a second,
  re-weighted backward: ``GradSampleHooksFastGradientClipping`` + ``DPLossFastGradientClipping``);
* ``DPOptimizer`` (``DistributedDPOptimizer`` under DDP: the ranks' clipped sums are all-reduced and
  rank 0 alone adds the noise) clipping to ``max_grad_norm``, adding N(0, sigma^2 C^2) and dividing
  by the expected batch size;
* ``DPDataLoader`` over the DataModule's ``train`` pool: Poisson sampling at rate q = world size x
  batch / members (one independent draw per member; under DDP each rank draws its own shard's with
  its own generator), the pool's training transform applied per sample;
* an Opacus accountant (RDP) fed by the optimizer's step hook, for the sampler that ran.

The Lightning batches only clock the steps (one DP step per training batch; the DataModule gives a method that
``draws_own_batches`` its batches' sample positions alone, so nothing is loaded or augmented for them); the
private batches come from the ``DPDataLoader``. Tuning these hyper-parameters on the data the model trains on spends
privacy that no accountant here counts (the shipped frontier sweep is such a non-private tuning).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from bench.datamodules.base import DataSpec, collate_batch
from bench.deprecation import keep_current_names
from bench.errors import BenchError
from bench.modules.base import PrivacyModule
from bench.networks.registry import Role, build_network, resolve_network
from bench.threat_models import ThreatModel

# Opacus's full backward hooks on a first layer whose input (the images) needs no gradient: harmless, and said every fit
warnings.filterwarnings(
    "ignore", message="Full backward hook is firing when gradients are computed with respect to module outputs"
)

#: Renyi orders of the accountant: Opacus's defaults reach 63; few steps with large noise need higher ones
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [2**k for k in range(6, 13)]
#: Opacus's ways to the per-sample gradients (or, for ghost clipping, their norms)
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ghost")
#: precisions DP-SGD trains in: Opacus's clipping and noise bypass Lightning's precision plugins
FULL_PRECISIONS = ("32-true", "32", "64-true", "64")


def private_network(name: str, spec: DataSpec) -> tuple[torch.nn.Module, list[str]]:
    """The classifier ``name`` made private by ``ModuleValidator.fix``, and what was replaced ("layer: Old -> New").

    In-place activations become out-of-place too: Opacus's backward hooks cannot see through an in-place
    op on a hooked layer's output (torchvision's MobileNetV2 and ResNet-18 use them).
    """
    from opacus.validators import ModuleValidator

    network = build_network(name, Role.CLASSIFIER, spec)
    replaced: list[str] = []
    if not ModuleValidator.is_valid(network):
        fixed = ModuleValidator.fix(network)
        problems = ModuleValidator.validate(fixed, strict=False)
        if problems:
            raise BenchError(
                f"Opacus cannot make '{name}' private ({problems[0]}); use a network of plain convolutional, "
                "linear and normalisation layers (e.g. --model.network lenet5)"
            )
        before = dict(network.named_modules())
        replaced = [
            f"{layer}: {type(before[layer]).__name__} -> {type(module).__name__}"
            for layer, module in fixed.named_modules()
            if layer in before and type(before[layer]) is not type(module)
        ]
        network = fixed
    for layer, module in network.named_modules():
        if getattr(module, "inplace", False) is True and len(list(module.children())) == 0:
            module.inplace = False
            replaced.append(f"{layer}: in-place {type(module).__name__} -> out-of-place")
    return network, replaced


class _PerSamplePool(Dataset):
    """A pool for Opacus's ``DPDataLoader``: its transform per sample, and empty Poisson batches shaped right."""

    def __init__(self, pool) -> None:
        self.pool = pool

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.pool[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        if len(indices) == 0:  # a Poisson batch can be empty: shaped like one transformed sample
            images, labels = self.pool.__getitems__([0])
            return images[:0], labels[:0]
        return self.pool.__getitems__(indices)


class DPSGD(PrivacyModule):
    """DP-SGD with Opacus's ``GradSampleModule`` hooks, ``DPOptimizer``, ``DPDataLoader`` (Poisson) and accountant.

    The record's cost says the epsilon spent at ``delta`` by Opacus's RDP accountant fed by the optimizer's
    step hook (``dp_epsilon``, the one the noise is calibrated with) and by its PRV accountant
    (``dp_epsilon_prv``, tighter), both for the Poisson sampler that ran (``dp_poisson_steps`` steps at
    ``dp_sample_rate``); ``dp_secure_noise`` (1: the noise and the sampling came from a cryptographically
    secure generator) and ``dp_replaced_layers`` (layers ``ModuleValidator.fix`` replaced, listed in the
    record's method ``dp`` entry).

    Args:
        network: a classifier of :mod:`bench.networks.registry`; batch norm is replaced by group norm.
        lr / momentum: SGD.
        max_grad_norm: the clipping norm C.
        noise_multiplier: sigma (noise std = sigma * C); None: calibrated at fit start so that the
            whole fit spends ``target_epsilon`` (the paper's MNIST setting: 6.28).
        target_epsilon / delta: the privacy budget (epsilon, delta).
        grad_sample_mode: ``hooks`` (Opacus's default), ``functorch`` or ``ghost`` (ghost clipping: faster and
            leaner at large batches; one process only).
        secure_mode: noise and sampling from ``torchcsprng``'s generator (Opacus's ``secure_mode``).
    """

    threat_models = (ThreatModel.BLACK_BOX_OUTPUTS,)
    display_name = "DP-SGD"
    #: the training batches are the DPDataLoader's Poisson draws: the DataModule's loader only counts the steps
    draws_own_batches = True
    label_hparams = ("target_epsilon",)
    headline_cost = ("dp_epsilon",)

    def __init__(
        self,
        network: str = "lenet5",
        lr: float = 0.05,
        momentum: float = 0.9,
        max_grad_norm: float = 1.0,
        noise_multiplier: Optional[float] = None,
        target_epsilon: Optional[float] = 6.28,
        delta: float = 1e-5,
        grad_sample_mode: str = "hooks",
        secure_mode: bool = False,
        data_spec: Optional[DataSpec] = None,
    ) -> None:
        self._check_settings(max_grad_norm, delta, noise_multiplier, target_epsilon, momentum, grad_sample_mode)
        if secure_mode:
            _secure_generator()  # refused now, not at fit time, when torchcsprng is missing
        network = resolve_network(network, Role.CLASSIFIER, "DPSGD")
        super().__init__(data_spec=data_spec, lr=lr)
        keep_current_names(self.hparams, DPSGD, network=network)
        self.network, self.replaced_layers = private_network(network, self.spec)
        self.automatic_optimization = False
        # the accountant's inputs, saved with the weights so that a restored model reports its epsilon
        self.register_buffer(
            "dp_noise_multiplier",
            torch.tensor(-1.0 if noise_multiplier is None else noise_multiplier, dtype=torch.float64),
        )
        self.register_buffer("dp_sample_rate", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("dp_steps", torch.tensor(0, dtype=torch.long))
        self.accountant = None  # Opacus's RDPAccountant, fed by the DPOptimizer's step hook during a fit
        self.private_loader = None  # the DPDataLoader that ran
        self._sampler_generator: Optional[torch.Generator] = None  # its Poisson draws; saved with checkpoints
        self._resumed_sampler_state: Optional[Tensor] = None
        self._private_batches: Optional[Iterator] = None
        self._grad_sampler = None
        self._dp_loss = None

    @staticmethod
    def _check_settings(max_grad_norm, delta, noise_multiplier, target_epsilon, momentum, grad_sample_mode) -> None:
        if max_grad_norm <= 0 or not 0 < delta < 1:
            raise BenchError(f"need max_grad_norm > 0 and 0 < delta < 1, got {max_grad_norm}, {delta}")
        if noise_multiplier is None and (target_epsilon is None or target_epsilon <= 0):
            raise BenchError("give DP-SGD a noise_multiplier or a positive target_epsilon to calibrate it from")
        if noise_multiplier is not None and noise_multiplier < 0:
            raise BenchError(f"noise_multiplier must be non-negative, got {noise_multiplier}")
        if not 0 <= momentum < 1:
            raise BenchError(f"momentum must lie in [0, 1), got {momentum}")
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise BenchError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES}, got '{grad_sample_mode}'")

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    # ------------------------------------------------------------------ Opacus's pieces, put together at fit start
    def setup(self, stage: str) -> None:
        super().setup(stage)
        precision = str(self.trainer.precision)
        if stage == "fit" and precision not in FULL_PRECISIONS:
            raise BenchError(
                f"DP-SGD trains in full precision (--trainer.precision 32-true), got '{precision}': Opacus's "
                "per-sample clipping and noise bypass Lightning's precision plugin (its loss scaling, its autocast)"
            )
        if stage == "fit" and self.hparams.grad_sample_mode == "ghost" and self.trainer.world_size > 1:
            raise BenchError(
                "ghost clipping's two backward passes run in one process only; under DDP use "
                "--model.grad_sample_mode hooks"
            )

    def configure_optimizers(self):
        from opacus.accountants import RDPAccountant
        from opacus.data_loader import DPDataLoader
        from opacus.grad_sample.utils import prepare_module
        from opacus.optimizers import get_optimizer_class

        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "pool"):
            raise BenchError("DPSGD needs a bench PrivacyDataModule: it Poisson-samples the members of its train pool")
        pool, world, mode = datamodule.pool("train"), self.trainer.world_size, self.hparams.grad_sample_mode
        self.dp_sample_rate.fill_(min(1.0, world * datamodule.batch_size / len(pool)))
        sample_rate = float(self.dp_sample_rate)
        if self.dp_noise_multiplier < 0:
            self.dp_noise_multiplier.fill_(self._calibrated_noise(sample_rate))
        secure = _secure_generator() if self.hparams.secure_mode else None
        sampler_generator = secure or torch.Generator().manual_seed(
            int(torch.randint(2**62, (1,))) + self.trainer.global_rank
        )
        self._sampler_generator = None if secure is not None else sampler_generator  # a secure one cannot be saved
        self.private_loader = DPDataLoader(
            _PerSamplePool(pool),
            sample_rate=sample_rate,
            collate_fn=collate_batch,
            generator=sampler_generator,
            distributed=world > 1,
        )
        ghost = {"max_grad_norm": self.hparams.max_grad_norm, "use_ghost_clipping": True} if mode == "ghost" else {}
        self._grad_sampler = prepare_module(self.network, mode, False, batch_first=True, loss_reduction="mean", **ghost)
        self._probe_hooks(pool)
        optimizer_class = get_optimizer_class(clipping="flat", distributed=world > 1, grad_sample_mode=mode)
        optimizer = optimizer_class(
            torch.optim.SGD(self.network.parameters(), lr=self.hparams.lr, momentum=self.hparams.momentum),
            noise_multiplier=float(self.dp_noise_multiplier),
            max_grad_norm=self.hparams.max_grad_norm,
            expected_batch_size=sample_rate * len(pool) / world,
            loss_reduction="mean",
            generator=secure,
            secure_mode=bool(self.hparams.secure_mode),
        )
        self.accountant = RDPAccountant()
        optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
        if mode == "ghost":
            from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

            self._dp_loss = DPLossFastGradientClipping(
                self._grad_sampler, optimizer, torch.nn.CrossEntropyLoss(), "mean"
            )
        return optimizer

    def _probe_hooks(self, pool) -> None:
        """One forward and backward through Opacus's hooks on two members: a network they cannot serve fails now."""
        images, labels = pool.__getitems__([0, min(1, len(pool) - 1)])
        try:
            with torch.random.fork_rng():
                F.cross_entropy(self.network(images.to(self.device)), labels.to(self.device)).backward()
        except RuntimeError as error:
            self._grad_sampler.cleanup()
            reason = str(error).split(".")[0]
            raise BenchError(
                f"Opacus cannot compute per-sample gradients of '{self.hparams.network}' ({reason}); "
                "its forward modifies a hooked layer's output in place: use lenet5, cnn4, vgg16 or mobilenet_v2"
            ) from None
        self._grad_sampler.set_grad_sample_to_none()
        self.network.zero_grad(set_to_none=True)

    def _calibrated_noise(self, sample_rate: float) -> float:
        from opacus.accountants.utils import get_noise_multiplier

        steps = int(self.trainer.estimated_stepping_batches)
        epsilon, delta = self.hparams.target_epsilon, self.hparams.delta
        try:
            return get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=max(steps, 1),
                accountant="rdp",
                alphas=RDP_ORDERS,
            )
        except ValueError as error:
            raise BenchError(
                f"DP-SGD cannot reach epsilon {epsilon} at delta {delta} in {steps} steps at sampling rate "
                f"{sample_rate:.3g} ({error}); raise target_epsilon or delta, or train fewer steps"
            ) from None

    # ------------------------------------------------------------------ resuming: the straight run's batches, epsilon
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._sampler_generator is not None:
            checkpoint["bench"]["dp_sampler_state"] = self._sampler_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        info = checkpoint.get("bench") if isinstance(checkpoint.get("bench"), dict) else {}
        state = info.get("dp_sampler_state")
        self._resumed_sampler_state = state if isinstance(state, Tensor) and state.dtype == torch.uint8 else None

    def on_train_start(self) -> None:
        super().on_train_start()
        if self._resumed_sampler_state is not None and self._sampler_generator is not None:
            self._sampler_generator.set_state(self._resumed_sampler_state)  # Poisson draws continue where they were
            self._resumed_sampler_state = None
        steps = int(self.dp_steps)
        if steps and self.accountant is not None and not self.accountant.history:
            # a resumed fit's accountant starts from the steps already taken, not from zero: its epsilon is the run's
            self.accountant.history.append((float(self.dp_noise_multiplier), float(self.dp_sample_rate), steps))

    def on_fit_end(self) -> None:
        if self._grad_sampler is not None:  # the trained network leaves without Opacus's hooks and per-sample tensors
            self._grad_sampler.cleanup()
            self._grad_sampler = self._dp_loss = None
        self._private_batches = None

    def private_batch(self) -> tuple[Tensor, Tensor]:
        """The next Poisson batch of the ``DPDataLoader`` (a new pass over the pool when one ends)."""
        for _ in range(2):
            if self._private_batches is None:
                self._private_batches = iter(self.private_loader)
            try:
                images, labels = next(self._private_batches)
                return images.to(self.device), labels.to(self.device)
            except StopIteration:
                self._private_batches = None
        raise BenchError("the DP-SGD loader yielded no batch")  # pragma: no cover - a DPDataLoader has >= 1 step

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        optimizer = self.optimizers()
        images, labels = self.private_batch()  # the Lightning batch (sample positions, nothing loaded) is the clock
        optimizer.zero_grad(set_to_none=True)
        logits = self.network(images)
        if self._dp_loss is not None:  # ghost clipping: Opacus's loss runs its own two backward passes
            loss = self._dp_loss(logits, labels)
            loss.backward()
            loss = loss.loss_per_sample.detach().mean()
        else:
            loss = F.cross_entropy(logits, labels)
            self.manual_backward(loss)
        optimizer.step()
        self.dp_steps.fill_(sum(steps for _, _, steps in self.accountant.history))
        if self.logging_step and len(images):
            self.log_dict(
                {"train/loss": self.check_finite(loss.detach()), "train/poisson_batch": float(len(images))},
                prog_bar=True,
            )

    # ------------------------------------------------------------------ the privacy spent
    def epsilon(self, accountant: str = "rdp") -> float:
        """The epsilon spent so far at ``delta`` by Opacus's ``rdp`` or ``prv`` accountant (0 untrained, inf noiseless).

        The history is the step hook's (a restored model's: the saved sigma, sampling rate and step count).
        """
        steps, sigma = int(self.dp_steps), float(self.dp_noise_multiplier)
        if steps == 0:
            return 0.0
        if sigma <= 0:
            return math.inf
        from opacus.accountants import PRVAccountant, RDPAccountant

        history = (
            list(self.accountant.history)
            if self.accountant is not None and self.accountant.history
            else [(sigma, float(self.dp_sample_rate), steps)]
        )
        if accountant == "prv":
            prv = PRVAccountant()
            prv.history = history
            return float(prv.get_epsilon(self.hparams.delta))
        rdp = RDPAccountant()
        rdp.history = history
        return float(rdp.get_epsilon(self.hparams.delta, alphas=RDP_ORDERS))

    def training_report(self) -> dict[str, Any]:
        report = {
            **super().training_report(),
            "dp_delta": self.hparams.delta,
            "dp_noise_multiplier": float(self.dp_noise_multiplier),
            "dp_steps": int(self.dp_steps),
            # the cost holds numbers only: the sampler and the accountants are in the names
            "dp_sample_rate": float(self.dp_sample_rate),
            "dp_poisson_steps": int(self.dp_steps),
            "dp_secure_noise": int(bool(self.hparams.secure_mode)),
            "dp_replaced_layers": len(self.replaced_layers),
        }
        for name, key in (("rdp", "dp_epsilon"), ("prv", "dp_epsilon_prv")):
            try:
                epsilon = self.epsilon(name)
            except (ValueError, RuntimeError):  # the PRV accountant's domain excludes some (sigma, q, steps)
                epsilon = math.nan
            report[key] = epsilon if math.isfinite(epsilon) else None
        return report

    def describe(self) -> dict[str, Any]:
        description = super().describe()
        description["dp"] = {
            "library": "opacus",
            "grad_sample_mode": self.hparams.grad_sample_mode,
            "sampler": "poisson (DPDataLoader)",
            "accountant": "rdp (step hook); prv reported",
            "secure_noise": bool(self.hparams.secure_mode),
            "replaced_layers": list(self.replaced_layers),
            "tuning_spent_privacy": "not accounted: hyper-parameters tuned on the data are not private",
        }
        return description


def _secure_generator():
    """Opacus's secure generator (``torchcsprng`` over /dev/urandom), or one clear error when it is not installed."""
    try:
        import torchcsprng
    except ImportError:
        raise BenchError(
            "DP-SGD's secure_mode draws noise and batches from torchcsprng, which is not installed "
            "(pip install torchcsprng, or leave secure_mode false: the record says dp_secure_noise 0)"
        ) from None
    return torchcsprng.create_random_device_generator("/dev/urandom")
