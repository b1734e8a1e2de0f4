r"""Algorithm 1 of ATS (Gao et al., CVPR 2021): random search for privacy-preserving transformation policies.

Sample C_max policies of up to 3 library transformations; drop those whose accuracy score S_acc
(on a randomly initialised model M^r) is below T_acc; keep the n with the lowest privacy score S_pri
(on a semi-trained model M^s: trained on 10% of the training set). The result is written to a policy
file: the n policies with their scores, and the hybrid (section 4.4) of the best policies that share
no transformation, which ``--model.policy <file>`` loads into ``Collaborative``. Policies are dataset
independent, so a file searched on one dataset is used on another (the paper's transferability).

Run it (progress is printed for every policy)::

    python -m bench.ats.search --data Digits --c_max 50 --output policies/digits.json
    python -m bench.ats.search --data LocalFolder --data_dir ../shared/datasets/mnist --t_acc -12 \
        --output policies/mnist.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.ats.scores import (
    REFERENCE_OFFSET,
    REFERENCE_POINTS,
    REFERENCE_WINDOW,
    Batches,
    accuracy_score,
    accuracy_score_loop,
    class_representatives,
    privacy_score,
    privacy_score_loop,
)
from bench.errors import BenchError
from bench.transforms.policy import Policy, random_policy


@dataclass
class Scored:
    policy: Policy
    s_acc: float
    s_pri: Optional[float] = None


@dataclass
class SearchResult:
    selected: list[Scored]  # the top-n, lowest S_pri first
    evaluated: list[Scored]  # every sampled policy, in sampling order
    seconds: float
    settings: dict = field(default_factory=dict)

    @property
    def policies_per_minute(self) -> float:
        return 60.0 * len(self.evaluated) / max(self.seconds, 1e-9)

    def hybrid(self, size: int = 2) -> Policy:
        """The best policies (by S_pri) that share no transformation, up to ``size`` of them (section 4.4)."""
        chosen: list[tuple[int, ...]] = []
        for entry in self.selected:
            for policy in entry.policy.policies:
                if len(chosen) < size and not any(set(policy) & set(other) for other in chosen):
                    chosen.append(policy)
        return Policy(chosen)

    def to_json(self, hybrid_size: int = 2) -> dict:
        return {
            "policy": str(self.hybrid(hybrid_size)),
            "policies": [{"policy": str(s.policy), "s_pri": s.s_pri, "s_acc": s.s_acc} for s in self.selected],
            "evaluated": len(self.evaluated),
            "seconds": round(self.seconds, 3),
            "policies_per_minute": round(self.policies_per_minute, 3),
            "settings": self.settings,
        }


def search(
    privacy_model: nn.Module,
    accuracy_model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batches: Batches,
    *,
    c_max: int = 1500,
    n: int = 10,
    t_acc: float = -12.0,
    points: int = REFERENCE_POINTS,
    max_length: int = 3,
    generator: Optional[torch.Generator] = None,
    vectorized: bool = True,
    reduction: str = "sum",
    score_variant: str = "reference",
    crop_flip: bool = True,
    transform_variant: str = "reference",
    progress: Optional[Callable[[int, Scored, list[Scored]], None]] = None,
) -> SearchResult:
    """Algorithm 1. ``images``/``labels`` score S_pri on ``privacy_model`` (M^s); ``batches`` (R, N, C, H, W, or a
    list of rounds: :func:`bench.ats.scores.class_representatives`) score S_acc on ``accuracy_model`` (M^r), on
    the scale ``reduction`` (``sum``: the reference's, where the paper's T_acc apply). Stops after ``c_max``
    policies even when fewer than ``n`` passed T_acc."""
    if c_max < 1 or n < 1 or points < 1 or max_length < 1:
        raise BenchError(
            f"c_max, n, points and max_length must be at least 1, got {c_max}, {n}, {points}, {max_length}"
        )
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    score_pri = privacy_score if vectorized else privacy_score_loop
    score_acc = accuracy_score if vectorized else accuracy_score_loop
    selected: list[Scored] = []
    evaluated: list[Scored] = []
    started = time.perf_counter()
    for i in range(c_max):
        policy = random_policy(generator, max_length, crop_flip, transform_variant)  # line 2
        entry = Scored(
            policy, float(score_acc(accuracy_model, policy, batches, generator, reduction))
        )  # line 3, Eq. 10
        if entry.s_acc >= t_acc:  # line 4
            # lines 5-11 (S_pri is computed for the first n too: line 9 compares against them)
            entry.s_pri = float(
                score_pri(privacy_model, policy, images, labels, points, generator=generator, variant=score_variant)
            )  # Eq. 7
            if len(selected) < n:
                selected.append(entry)
            else:
                worst = max(range(len(selected)), key=lambda k: selected[k].s_pri)
                if entry.s_pri < selected[worst].s_pri:
                    selected[worst] = entry
        evaluated.append(entry)
        if progress is not None:
            progress(i, entry, selected)
    selected.sort(key=lambda s: s.s_pri)
    sizes = [len(b) for b in batches]
    passed = sum(1 for e in evaluated if e.s_acc >= t_acc)
    settings = {
        "c_max": c_max,
        "n": n,
        "t_acc": t_acc,
        "passed_t_acc": passed,
        "points": points,
        "max_length": max_length,
        "images": len(images),
        "rounds": len(sizes),
        "rows_per_round": sizes,
        "s_acc_reduction": reduction,
        "s_pri_variant": score_variant,
        "crop_flip": crop_flip,
        "transform_variant": transform_variant,
        "vectorized": vectorized,
    }
    return SearchResult(selected, evaluated, time.perf_counter() - started, settings)


def semi_train(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 0.1,
    generator: Optional[torch.Generator] = None,
) -> nn.Module:
    """M^s: ``model`` trained for ``epochs`` on a small subset (the paper: 10% of the training set, 50 epochs),
    with the collaborative training's SGD (momentum 0.9, weight decay 5e-4)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2:  # batch-norm needs two samples
                continue
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images[index]), labels[index]).backward()
            optimizer.step()
    return model.eval()


# ---------------------------------------------------------------------- entry point
#: glibc's mallopt parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_MAX
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc serve every allocation from its heap and never hand freed memory back to the kernel, as
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` do, for the rest of the process. A search repeats the
    same large short-lived tensors thousands of times; with glibc's defaults each is a fresh mmap that page-faults
    on first touch (tens of thousands of minor faults per S_pri call: docs/ats.md), up to 1.4x of S_pri's wall
    time on ResNet-20. The cost: the process keeps its peak heap. Returns False (and changes nothing) where the C
    library is not glibc."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ats.search",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", default="Digits", help="a DataModule's short name (bench list)")
    parser.add_argument("--data_dir", default=None, help="the DataModule's data_dir")
    parser.add_argument("--pool_limit", type=int, default=None, help="cap every pool (quick runs)")
    parser.add_argument(
        "--network", default="convnet", help="a gradient-sharing target of bench.networks.registry (convnet, resnet20)"
    )
    parser.add_argument("--width", type=int, default=None, help="network width (default: the paper's)")
    parser.add_argument("--c_max", type=int, default=1500, help="policies sampled (C_max)")
    parser.add_argument("--n", type=int, default=10, help="policies kept (top-n by S_pri)")
    parser.add_argument(
        "--t_acc",
        type=float,
        default=-12.0,
        help="accuracy threshold T_acc on the --acc_reduction scale (appendix A, on the sum scale: -10 and "
        "-12 on F-MNIST, -80 and -85 on CIFAR-100; with N = 10 classes S_acc <= -10, so -10 keeps none)",
    )
    parser.add_argument(
        "--acc_reduction",
        default="sum",
        choices=["sum", "mean"],
        help="S_acc's scale: the reference's sum over one image per class, or Eq. 10's 1/N mean over --batch_size",
    )
    parser.add_argument(
        "--score_variant",
        default="reference",
        choices=["reference", "paper"],
        help="S_pri: the reference's layer-mean cosine and trapezoid, or Eq. 5-7 as printed",
    )
    parser.add_argument("--transform_variant", default="reference", choices=["reference", "autoaugment"])
    parser.add_argument("--no_crop_flip", action="store_true", help="policies without the reference's crop and flip")
    parser.add_argument(
        "--points", type=int, default=REFERENCE_POINTS, help="interpolation intervals K (the reference's bin_num)"
    )
    parser.add_argument("--images", type=int, default=100, help="images S_pri is averaged over (validation pool)")
    parser.add_argument("--rounds", type=int, default=10, help="S_acc rounds")
    parser.add_argument(
        "--acc_window",
        type=int,
        default=REFERENCE_WINDOW,
        help="sum scale: each round takes one image per class from this many validation images",
    )
    parser.add_argument("--batch_size", type=int, default=128, help="mean scale: S_acc mini-batch size")
    parser.add_argument("--semi_fraction", type=float, default=0.1, help="share of the training pool M^s trains on")
    parser.add_argument("--semi_epochs", type=int, default=50, help="M^s's epochs")
    parser.add_argument("--max_length", type=int, default=3, help="transformations per policy, at most")
    parser.add_argument("--hybrid_size", type=int, default=2, help="policies in the written hybrid")
    parser.add_argument("--loop", action="store_true", help="score with the per-image loops instead of torch.func")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--allocator",
        default="heap",
        choices=["heap", "system"],
        help="heap: glibc keeps freed memory for reuse (faster on the CPU, keeps the peak heap: "
        "keep_freed_memory); system: glibc's defaults",
    )
    parser.add_argument("--output", default="policies/ats_policy.json", help="the policy file to write")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> SearchResult:
    from bench import registry
    from bench.networks.registry import Role, build_network, resolve_network

    args = _parser().parse_args(argv)
    args.network = resolve_network(args.network, Role.COLLABORATIVE, "bench.ats.search")
    if args.allocator == "heap":
        keep_freed_memory()
    datamodules = registry.datamodules()
    if args.data not in datamodules:
        raise BenchError(f"unknown DataModule '{args.data}'; choose one of {sorted(datamodules)}")
    kwargs = {"pool_limit": args.pool_limit, "seed": args.seed}
    if args.data_dir is not None:
        kwargs["data_dir"] = args.data_dir
    datamodule = datamodules[args.data](**kwargs)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train_images, train_labels = datamodule.pool("train").tensors()
    subset = torch.randperm(len(train_images), generator=generator)[
        : max(2, int(args.semi_fraction * len(train_images)))
    ]
    print(f"ats search: training M^s on {len(subset)} images for {args.semi_epochs} epochs", flush=True)
    privacy_model = semi_train(
        build_network(args.network, Role.COLLABORATIVE, datamodule.spec, width=args.width),
        train_images[subset],
        train_labels[subset],
        args.semi_epochs,
        generator=generator,
    )
    accuracy_model = build_network(
        args.network, Role.COLLABORATIVE, datamodule.spec, width=args.width
    ).eval()  # M^r: never trained
    # S_pri on validation images (the attack's targets are test images, as the paper keeps its first 100 apart)
    val_images, val_labels = datamodule.pool("val").tensors()
    pick = torch.randperm(len(val_images), generator=generator)[: args.images]
    if args.acc_reduction == "sum":
        # the reference: one image per class from windows of validation images; the windows start after the
        # first images (which it keeps for the attack) when the pool allows, else at 0
        offset = REFERENCE_OFFSET if len(val_images) >= REFERENCE_OFFSET + args.rounds * args.acc_window else 0
        batches = class_representatives(val_images, val_labels, args.rounds, args.acc_window, offset)
    else:
        if args.batch_size > len(train_images):
            raise BenchError(f"--batch_size {args.batch_size} exceeds the {len(train_images)} training images")
        # each round's mini-batch without repeats: a repeated image makes two Jacobian rows equal (a zero eigenvalue)
        batches = torch.stack(
            [
                train_images[torch.randperm(len(train_images), generator=generator)[: args.batch_size]]
                for _ in range(args.rounds)
            ]
        )

    def progress(i: int, entry: Scored, selected: list[Scored]) -> None:
        s_pri = "filtered" if entry.s_pri is None else f"S_pri {entry.s_pri:.4f}"
        best = ", ".join(f"{s.policy}" for s in sorted(selected, key=lambda s: s.s_pri)[:3])
        print(
            f"ats search [{i + 1}/{args.c_max}] {str(entry.policy):<9} S_acc {entry.s_acc:9.3f} "
            f"{s_pri:<15} best: {best}",
            flush=True,
        )

    result = search(
        privacy_model,
        accuracy_model,
        val_images[pick],
        val_labels[pick],
        batches,
        c_max=args.c_max,
        n=args.n,
        t_acc=args.t_acc,
        points=args.points,
        max_length=args.max_length,
        generator=generator,
        vectorized=not args.loop,
        reduction=args.acc_reduction,
        score_variant=args.score_variant,
        crop_flip=not args.no_crop_flip,
        transform_variant=args.transform_variant,
        progress=progress,
    )
    if not result.selected:
        raise BenchError(f"no policy reached T_acc = {args.t_acc}; lower --t_acc (see the S_acc values printed above)")
    content = result.to_json(args.hybrid_size)
    content["settings"].update(
        data=args.data,
        network=args.network,
        width=args.width,
        seed=args.seed,
        semi_fraction=args.semi_fraction,
        semi_epochs=args.semi_epochs,
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(content, indent=2) + "\n")
    print(
        f"ats search: {result.settings['passed_t_acc']} of {len(result.evaluated)} policies passed T_acc = {args.t_acc}"
    )
    print(
        f"ats search: {len(result.evaluated)} policies in {result.seconds:.1f} s ({result.policies_per_minute:.1f} "
        f"policies/minute, {'loop' if args.loop else 'vectorized'} scores); hybrid {content['policy']} -> {output}"
    )
    return result


if __name__ == "__main__":
    main()
