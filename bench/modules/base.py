"""The contract every method of the suite signs: a LightningModule that declares its threat models.

A method subclasses :class:`PrivacyModule`, lists the threat models that apply to it in
``threat_models``, and implements what each of them requires (see
:class:`bench.threat_models.ThreatModel`): for feature release, ``release(x)`` (what leaves the
client), ``predict_from_release(released)`` (the server side) and ``client_network()`` (the
client part, for cost and for mirror decoders). That is everything the evaluation harness uses,
so the harness never needs to know which method it evaluates. The declaration is checked when
the class is defined: a method that declares a threat model without its methods does not import.
"""

from __future__ import annotations

import inspect
import random
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor
from torchmetrics import Metric

import bench
from bench.errors import BenchError, class_path
from bench.metrics.utility import accuracy_metric, metric_inputs, task_loss
from bench.modules.lightning_internals import loggers_write_this_step, search_unused_parameters
from bench.networks.pruning import pruned_layer_sparsity, restore_pruning
from bench.spec import TASKS, DataSpec
from bench.threat_models import Capability, ThreatModel, check_declarations
from bench.training.distributed import destroy_process_group_at_exit

if TYPE_CHECKING:
    from bench.datamodules.sampling import BatchStream


def random_state() -> dict[str, Any]:
    """The global random states (torch CPU and CUDA, NumPy, Python) as plain data a weights_only checkpoint holds."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {
            "name": numpy_state[0],
            "keys": numpy_state[1].tolist(),
            "position": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": [python_state[0], list(python_state[1]), python_state[2]],
    }


def set_random_state(state: dict[str, Any]) -> None:
    """Restore what :func:`random_state` saved.

    A malformed state (a foreign or edited checkpoint) is one clear error.
    """
    try:
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda") or []
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        numpy_state = state["numpy"]
        np.random.set_state(
            (
                numpy_state["name"],
                np.asarray(numpy_state["keys"], dtype=np.uint32),
                numpy_state["position"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise BenchError(
            f"the checkpoint's random state is malformed ({type(error).__name__}: {error}); "
            "resume from a checkpoint written by `bench fit`"
        ) from None


class PrivacyModule(L.LightningModule):
    """Base class of every method.

    Args:
        data_spec: the dataset's shape, classes and normalisation. ``bench fit`` links it from
            the DataModule (``data.spec``); in Python pass ``datamodule.spec``.
        lr: learning rate of the default Adam optimizer.
        weight_decay: weight decay of the default optimizer.
    """

    #: abstract bases set this in their own body so that the registry skips them
    abstract: ClassVar[bool] = True
    #: threat models under which the harness attacks this method
    threat_models: ClassVar[tuple[ThreatModel, ...]] = ()
    #: optional parts offered to the attacks of those threat models (see :class:`bench.threat_models.Capability`)
    capabilities: ClassVar[tuple[Capability, ...]] = ()
    #: short name in tables and plots (default: the class name)
    display_name: ClassVar[Optional[str]] = None
    #: hyper-parameters that distinguish leaderboard rows of this method, e.g. ("lam",)
    label_hparams: ClassVar[tuple[str, ...]] = ()
    #: the data spec's tasks this method trains on (see :mod:`bench.spec`). A method whose losses go through
    #: :meth:`task_loss` (as the default training step's do) may add "multilabel"
    tasks: ClassVar[tuple[str, ...]] = ("multiclass",)
    #: entries of ``training_report()`` the leaderboard shows beside utility and privacy (e.g. a DP epsilon)
    headline_cost: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_declarations(cls)
        unknown = [task for task in cls.tasks if task not in TASKS]
        if unknown or not cls.tasks:
            raise TypeError(f"{cls.__name__}.tasks must be a non-empty subset of {list(TASKS)}, got {cls.tasks!r}")

    def __init__(self, data_spec: Optional[DataSpec] = None, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__()
        if data_spec is None:
            raise BenchError(
                f"{type(self).__name__} needs a data_spec: run it through `bench fit --data ...`, "
                "or pass datamodule.spec"
            )
        if lr <= 0:
            raise BenchError(f"lr must be positive, got {lr}")
        if weight_decay < 0:
            raise BenchError(f"weight_decay must be non-negative, got {weight_decay}")
        self.spec = DataSpec.coerce(data_spec)
        if self.spec.task not in self.tasks:
            raise BenchError(
                f"{type(self).__name__} trains on {' or '.join(self.tasks)} targets, but {self.spec.name} has "
                f"{self.spec.task} targets; choose a method that supports them (`bench list`)"
            )
        self.save_hyperparameters()
        self.hparams["data_spec"] = self.spec.as_dict()  # plain types: checkpoints load with weights_only
        # the default optimizer's settings: under LightningCLI hparams hold only the subclass's own arguments
        self._default_optimizer = {"lr": lr, "weight_decay": weight_decay}
        self._nonfinite: Optional[Tensor] = None
        self._nonfinite_names: set[str] = set()
        # top-1 accuracy, or for attribute vectors the mean per-attribute accuracy (1 - mean attribute error)
        self.val_accuracy = accuracy_metric(self.spec)
        self.test_accuracy = accuracy_metric(self.spec)

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        if not self.automatic_optimization and isinstance(strategy, DDPStrategy):
            # manual optimization trains sub-networks in separate stages, so each backward leaves some
            # parameters without gradients; DDP must look for them instead of failing (set before wrapping)
            search_unused_parameters(strategy)
        destroy_process_group_at_exit()

    # ------------------------------------------------------------------ prediction
    def forward(self, x: Tensor) -> Tensor:
        """Class (or attribute) logits for images in [0, 1]: the whole pipeline, client and server."""
        return self.predict_from_release(self.release(x))

    # ------------------------------------------------------------------ training
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = self.check_finite(self.task_loss(self(images), labels), self.task_loss_name)
        if self.logging_step:  # per-step loss from this rank only: an all-reduce per step would cost more than it tells
            self.log("train/loss", loss, prog_bar=True)
        return loss

    @property
    def logging_step(self) -> bool:
        """Whether the loggers will write this step's values (every ``log_every_n_steps``).

        ``self.log`` costs about a millisecond a call; values logged on other steps are never written.
        """
        return loggers_write_this_step(self._trainer)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_accuracy, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_accuracy, "test")

    @property
    def task_loss_name(self) -> str:
        return "binary cross-entropy" if self.spec.multilabel else "cross-entropy"

    def task_loss(self, logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        """The data spec's loss: cross-entropy for classes, binary cross-entropy with logits for attributes."""
        return task_loss(logits, targets, self.spec, reduction)

    def _evaluate(self, batch: tuple[Tensor, Tensor], accuracy: Metric, stage: str) -> None:
        images, labels = batch
        logits = self(images)
        accuracy(metric_inputs(logits, self.spec), labels)
        self.log(f"{stage}/loss", self.task_loss(logits, labels), sync_dist=True)
        # a torchmetrics object is reduced across DDP ranks when the epoch ends
        self.log(f"{stage}/accuracy", accuracy, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), **self._default_optimizer)

    def manual_step(self, optimizer: Any, loss: Tensor, name: str, log: Optional[str] = None) -> None:
        """One step of manual optimization (``automatic_optimization = False``) on ``loss`` with ``optimizer``.

        Notes whether ``loss`` is finite (:meth:`check_finite`, under ``name``), zeroes the gradients,
        back-propagates through Lightning (precision scaling, DDP) and steps; on logging steps logs the loss
        under the key ``log`` when given. Every update of a method goes through here, so a test can record
        the update schedule by overriding this one method.
        """
        self.check_finite(loss, name)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        if log is not None and self.logging_step:
            self.log(log, loss.detach(), prog_bar=True)

    def check_finite(self, loss: Tensor, name: str = "loss") -> Tensor:
        """Note whether ``loss`` is NaN or infinite; training stops with one clear message if so.

        The flag stays on the device (no host sync per step); it is read every ``log_every_n_steps``
        batches and at the end of every epoch, and under DDP agreed on by all ranks, so that every
        rank stops together instead of the healthy ones waiting forever in the next all-reduce.
        """
        nonfinite = ~torch.isfinite(loss.detach()).all()
        self._nonfinite = nonfinite if self._nonfinite is None else self._nonfinite | nonfinite
        self._nonfinite_names.add(name)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            self._stop_if_nonfinite()

    def on_train_epoch_end(self) -> None:
        self._stop_if_nonfinite()

    def _stop_if_nonfinite(self) -> None:
        if self._nonfinite is None:
            return
        nonfinite = bool(self._nonfinite.item())
        if self.trainer.world_size > 1:
            nonfinite = self.trainer.strategy.reduce_boolean_decision(nonfinite, all=False)
        if nonfinite:
            raise BenchError(
                f"{type(self).__name__}: the {'/'.join(sorted(self._nonfinite_names))} loss became NaN or infinite "
                f"by step {self.global_step}; lower the learning rate (now {self.hparams.get('lr')}) "
                "or check the input data"
            )

    # ------------------------------------------------------------------ description
    @property
    def label(self) -> str:
        """The method's row label in the leaderboard."""
        name = self.display_name or type(self).__name__
        if not self.label_hparams:
            return name
        values = ", ".join(f"{key}={self.hparams[key]}" for key in self.label_hparams)
        return f"{name} ({values})"

    @property
    def network_name(self) -> str:
        return str(self.hparams.get("network", type(self).__name__))

    def describe(self) -> dict[str, Any]:
        """The method part of a result record."""
        return {
            "name": type(self).__name__,
            "class": class_path(self),
            "label": self.label,
            "network": self.network_name,
            "threat_models": [threat.value for threat in self.threat_models],
            "capabilities": [capability.value for capability in self.capabilities],
            "headline_cost": list(self.headline_cost),
            "hparams": {key: value for key, value in self.hparams.items()},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # what `bench evaluate` needs to rebuild the method without the original command line
        info = checkpoint.setdefault("bench", {})
        info.update(method_class=class_path(self), bench_version=bench.__version__)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            info["datamodule_class"] = class_path(datamodule)
            info["datamodule_hparams"] = dict(datamodule.hparams)
        # every random stream the run depends on, so that resuming reproduces the straight run
        info["random_state"] = random_state()
        info["batch_streams"] = {
            pool: stream.state_dict() for pool, stream in getattr(self, "_batch_streams", {}).items()
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a model pruned with masks (e.g. by the ADMMPruning callback) saved `weight_orig`/`weight_mask`:
        # re-create the masks so that its weights load into this fresh module
        restore_pruning(self, checkpoint.get("state_dict", {}))
        info = checkpoint.get("bench") if isinstance(checkpoint.get("bench"), dict) else {}
        # applied when training resumes (on_train_start), after everything a resumed fit does that the
        # straight run did not (restoring, the sanity check's validation with its stochastic releases)
        self._resumed_random_state = info.get("random_state")
        self._resumed_streams = dict(info.get("batch_streams") or {})

    def on_train_start(self) -> None:
        """Resuming: continue the straight run's random streams (subclasses that override this call super first)."""
        state = getattr(self, "_resumed_random_state", None)
        if state is not None:
            set_random_state(state)
            self._resumed_random_state = None

    def batch_stream(self, pool: str, batch_size: int) -> "BatchStream":
        """Endless, resumable mini-batches of one of the DataModule's pools (e.g. Min-Max's reference batches).

        Its position is saved in checkpoints: a resumed fit draws exactly the batches the straight run drew.
        """
        from bench.datamodules.sampling import BatchStream

        stream = BatchStream(self.trainer.datamodule.pool(pool), batch_size, name=pool)
        saved = getattr(self, "_resumed_streams", {}).pop(pool, None)
        if saved is not None:
            stream.load_state_dict(saved)
        self._batch_streams = {**getattr(self, "_batch_streams", {}), pool: stream}
        return stream

    # ------------------------------------------------------------------ for the attacks
    def fresh_copy(self) -> "PrivacyModule":
        """An untrained copy built from the same hyper-parameters: shadow models are trained "like the target"."""
        accepted = inspect.signature(type(self).__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        return type(self)(**{key: value for key, value in self.hparams.items() if takes_any or key in accepted})

    def training_report(self) -> dict[str, float]:
        """Numbers about how the method was trained that belong in the record's cost (e.g. DP epsilon).

        By default: the sparsity of every layer pruned with masks (``sparsity/<layer>``), none when nothing is.
        """
        return {f"sparsity/{name}": value for name, value in pruned_layer_sparsity(self).items()}
