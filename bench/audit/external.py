"""A classifier trained elsewhere, as a :class:`~bench.modules.base.PrivacyModule` the black-box attacks run on.

The user types a factory (``PKG.MODULE:FACTORY``, or ``torchvision:NAME``) that builds a plain ``torch.nn.Module``
taking images in [0, 1] of shape (N, C, H, W) and returning class logits; its weights come from a file read with
``torch.load(weights_only=True)`` and loaded strictly. Shadow and reference models are rebuilt from the same factory
(:meth:`ExternalClassifier.fresh_copy`) and trained by a recipe: the user's ``train(model, dataset) -> model``
(typed as ``PKG.MODULE:FUNCTION``), or the declared default (cross-entropy, Adam at ``lr``, each attack's
``shadow_epochs`` and ``batch_size``), which the record lists as an assumption.

Nothing read from a file chooses code: the factory and the recipe are only what the command line named.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from bench.datamodules.base import ImagePool, split_indices
from bench.errors import BenchError, regular_file
from bench.modules.base import PrivacyModule
from bench.threat_models import ThreatModel

#: the default recipe's optimizer when the user gives no train function
DEFAULT_LR = 1e-3


# ---------------------------------------------------------------------- what the user typed
def import_typed(spec: str, option: str) -> Callable:
    """The callable ``PKG.MODULE:NAME`` that the user typed after ``option`` (imported because they typed it)."""
    module_name, colon, attribute = str(spec).partition(":")
    if not colon or not module_name or not attribute:
        raise BenchError(f"{option} {spec}: give PKG.MODULE:NAME (a module path, a colon, a function or class)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise BenchError(f"{option} {spec}: cannot import {module_name} ({error}); check PYTHONPATH") from None
    target = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise BenchError(f"{option} {spec}: {module_name} has no {attribute}")
    if not callable(target):
        raise BenchError(f"{option} {spec}: {attribute} is a {type(target).__name__}, not a function or class")
    return target


def network_factory(spec: str, num_classes: int) -> Callable[[], nn.Module]:
    """A no-argument factory from ``--model``: ``PKG.MODULE:FACTORY`` or ``torchvision:NAME`` (untrained, sized for
    the data's classes)."""
    if str(spec).startswith("torchvision:"):
        import torchvision

        name = spec.partition(":")[2]
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise BenchError(f"--model {spec}: torchvision has no classifier '{name}' (torchvision.models.list_models)")
        return lambda: torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return import_typed(spec, "--model")


def build_network(factory: Callable[[], nn.Module], name: str, option: str = "--model") -> nn.Module:
    """What the user's factory (typed after ``option``) builds, which must be a ``torch.nn.Module``."""
    try:
        network = factory()
    except Exception as error:  # the user's code: whatever it raises is one line
        raise BenchError(f"{option} {name}: the factory failed ({type(error).__name__}: {error})") from None
    if not isinstance(network, nn.Module):
        raise BenchError(f"{option} {name}: the factory returned a {type(network).__name__}, not a torch.nn.Module")
    return network


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_weights(network: nn.Module, path: str, name: str, option: str = "--model") -> None:
    """``path``'s state dict into ``network``: ``weights_only`` (no pickle runs code) and strict (every name, every
    shape). A Lightning checkpoint's ``state_dict`` is taken as is; a file that does not fit is one line."""
    file = regular_file(path, "--weights")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BenchError(f"--weights {path}: not a weights-only torch file ({first[:200]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BenchError(f"--weights {path}: expected a state dict (parameter name -> tensor)")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        problem = " ".join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise BenchError(f"--weights {path} does not fit {option} {name}: {problem[:300]}") from None


# ---------------------------------------------------------------------- the adapter
class ExternalClassifier(PrivacyModule):
    """A user's ``nn.Module`` classifier, attacked through its outputs (threat model ``black_box_outputs``).

    Not registered: it is built by ``bench audit`` from what the command line named, never from a file.

    Args:
        data_spec: the data's spec (classes, image shape).
        factory: builds the untrained network (no arguments).
        factory_name: what the user typed for it (for the record).
        train_function: the user's recipe ``train(model, dataset) -> model`` (None: the default recipe).
        recipe_name: what the user typed for it.
        lr: the default recipe's Adam learning rate.
    """

    threat_models = (ThreatModel.BLACK_BOX_OUTPUTS,)
    display_name = "external"

    def __init__(
        self,
        data_spec: Any,
        factory: Callable[[], nn.Module],
        factory_name: str,
        train_function: Optional[Callable] = None,
        recipe_name: Optional[str] = None,
        lr: float = DEFAULT_LR,
    ) -> None:
        super().__init__(data_spec=data_spec, lr=lr)
        for key in ("factory", "train_function"):  # code, not hyper-parameters: never written to a record or file
            self.hparams.pop(key, None)
        self._factory, self._train_function = factory, train_function
        self.network = build_network(factory, factory_name)
        self._trained_by_function = False
        # without the user's function, training_step is the default cross-entropy step: shadows may train batched
        self.plain_training_step = train_function is None
        if train_function is not None:
            # the whole recipe is the user's function, called once per fit (on_train_start); the Trainer's own
            # steps do nothing, and the shadows are trained "by the target's recipe" (not the batched plain one)
            self.automatic_optimization = False

    @property
    def label(self) -> str:
        return str(self.hparams["factory_name"])  # the leaderboard marks it external

    @property
    def network_name(self) -> str:
        return str(self.hparams["factory_name"])

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    def fresh_copy(self) -> "ExternalClassifier":
        return type(self)(
            self.spec,
            self._factory,
            self.hparams["factory_name"],
            self._train_function,
            self.hparams.get("recipe_name"),
            self.hparams.get("lr", DEFAULT_LR),
        )

    # ------------------------------------------------------------------ the user's recipe
    def on_train_start(self) -> None:
        super().on_train_start()
        if self._train_function is not None and not self._trained_by_function:
            self.network = run_train_function(
                self._train_function, self.network, self.trainer.datamodule.pool("train"), self.hparams["recipe_name"]
            )
            self._trained_by_function = True

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Optional[Tensor]:
        if self._train_function is not None:
            return None  # trained once, by the user's function, when the fit started
        return super().training_step(batch, batch_idx)


def run_train_function(train: Callable, network: nn.Module, dataset, name: Optional[str]) -> nn.Module:
    try:
        trained = train(network, dataset)
    except Exception as error:
        raise BenchError(f"--train {name}: the recipe failed ({type(error).__name__}: {error})") from None
    if not isinstance(trained, nn.Module):
        raise BenchError(f"--train {name}: train(model, dataset) returned a {type(trained).__name__}, not the model")
    return trained


def check_recipe(module: ExternalClassifier, images: Tensor, labels: Tensor) -> None:
    """The recipe trains, and what it trains answers logits of the data's classes: checked on a fresh copy and a few
    attacker samples before any shadow model is trained, so that a recipe that cannot train is one line."""
    probe = module.fresh_copy()
    name = probe.hparams["factory_name"]
    with torch.random.fork_rng():
        if probe._train_function is not None:
            network = run_train_function(
                probe._train_function, probe.network, ImagePool((images * 255).round().to(torch.uint8), labels), None
            )
        else:
            network = probe.network
            try:
                optimizer = torch.optim.Adam(network.parameters(), lr=probe.hparams.get("lr", DEFAULT_LR))
                loss = nn.functional.cross_entropy(network.train()(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            except Exception as error:
                raise BenchError(
                    f"--model {name}: one step of the default recipe (Adam, cross-entropy) failed on "
                    f"{tuple(images.shape)} images ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                ) from None
        with torch.no_grad():
            try:
                logits = network.eval()(images)
            except Exception as error:
                raise BenchError(
                    f"--model {name}: the network cannot classify {tuple(images.shape)} images in [0, 1] "
                    f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                ) from None
    expected = (len(images), module.spec.num_classes)
    if not isinstance(logits, Tensor) or tuple(logits.shape) != expected:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise BenchError(f"--model {name}: the network answers {shape} for {len(images)} images; expected {expected}")


# ---------------------------------------------------------------------- members
def read_members(path: str, total: int) -> Tensor:
    """The member indices from ``--members``: a .npy of indices or a boolean mask of length ``total``, or a .txt of
    one index per line; out-of-range or duplicate indices are one line."""
    file = regular_file(path, "--members")
    try:
        if file.suffix == ".npy":
            values = np.load(file, allow_pickle=False)
        else:
            values = np.loadtxt(file, dtype=np.int64, ndmin=1)
    except (ValueError, OSError) as error:
        raise BenchError(f"--members {path}: cannot read it ({str(error).splitlines()[0][:200]})") from None
    if values.dtype == np.bool_:
        if values.shape != (total,):
            raise BenchError(
                f"--members {path}: a boolean mask must have one entry per example ({total}), got {values.shape}"
            )
        values = np.flatnonzero(values)
    elif values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise BenchError(
            f"--members {path}: expected 1-D integer indices or a boolean mask, got {values.dtype} {values.shape}"
        )
    if values.size == 0:
        raise BenchError(f"--members {path}: no members")
    if values.min() < 0 or values.max() >= total:
        raise BenchError(f"--members {path}: indices must lie in [0, {total}), got [{values.min()}, {values.max()}]")
    unique, counts = np.unique(values, return_counts=True)
    if (counts > 1).any():
        raise BenchError(f"--members {path}: index {int(unique[counts > 1][0])} is listed {int(counts.max())} times")
    if len(unique) == total:
        raise BenchError(f"--members {path}: every example is a member; the audit needs non-members")
    return torch.as_tensor(unique, dtype=torch.long)


def source_size(datamodule) -> int:
    """How many examples the data's (training) source holds: what ``--members`` indexes."""
    if datamodule.download:
        datamodule.prepare_data()
    return int(datamodule.load_sources()["train"][0].shape[0])


def assign_member_pools(datamodule, members: Tensor) -> None:
    """Make ``members`` (indices into the data's training source) the train pool; the other examples of that source
    are split into the remaining pools in the DataModule's own proportions (from its seed), and an official test (or
    validation) split stays what it is. ``pool_limit`` caps every pool as usual (a random subset of the members is
    still members)."""
    sources = datamodule.load_sources()
    datamodule._check_shapes(sources)
    images, labels = sources["train"]
    official = [split for split in ("val", "test") if split in sources]
    if "test" in sources:
        defaults = (
            datamodule.default_fractions_with_val_test if "val" in sources else datamodule.default_fractions_with_test
        )
    else:
        defaults = datamodule.default_fractions_single
    fractions = {pool: share for pool, share in dict(datamodule.fractions or defaults).items() if pool not in official}
    fractions.pop("train", None)
    total_share = sum(fractions.values())
    if total_share <= 0:
        raise BenchError(f"{datamodule.name}: the pools beside the members have no share in fractions")
    outside = torch.ones(len(images), dtype=torch.bool)
    outside[members] = False
    rest = outside.nonzero().squeeze(1)
    parts = {split: (sources[split], torch.arange(len(sources[split][0]))) for split in official}
    parts["train"] = ((images, labels), members)
    shares = {pool: share / total_share for pool, share in fractions.items()}
    for pool, index in split_indices(len(rest), shares, datamodule.seed).items():
        parts[pool] = ((images, labels), rest[index])
    empty = [
        pool
        for pool in ("train", "val", "test", "nonmember", "attacker")
        if pool not in parts or not len(parts[pool][1])
    ]
    if empty:
        raise BenchError(f"{datamodule.name}: with these members, pool(s) {empty} would be empty; give fewer members")
    limiter = torch.Generator().manual_seed(datamodule.seed + 1)
    pools = {}
    for pool, ((pool_images, pool_labels), index) in parts.items():
        if datamodule.pool_limit is not None and len(index) > datamodule.pool_limit:
            index = index[torch.randperm(len(index), generator=limiter)[: datamodule.pool_limit]].sort().values
        pools[pool] = ImagePool(pool_images[index], pool_labels[index])
    datamodule._pools = pools  # setup() keeps pools it already has
