"""Multi-label tasks through the suite (CelebA's attributes) and the two DataModules of the complex-valued
paper's last rows, on small fake copies of the real layouts written here (as torchgeo's tests do)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import datasets

from bench import registry
from bench.attacks import FeatureInversion, LossThreshold, PhaseInversion
from bench.datamodules import CUB200, POOLS, CelebA, DataSpec, Digits
from bench.datamodules.cub import crop_to_box
from bench.errors import BenchError
from bench.harness import build_record, evaluate
from bench.metrics.utility import task_loss, utility_from_batches
from bench.modules import MCMIA, ComplexNet, ComplexNetBaseline
from bench.records import validate_record
from tests.helpers import quiet_trainer

ATTRIBUTES = [f"Attribute_{i}" for i in range(40)]
# torchvision's CelebA verifies these files' MD5 sums; the fake copies below pass the same check with no sum
UNCHECKED_FILES = [(file_id, None, filename) for file_id, _, filename in datasets.CelebA.file_list]


class UncheckedCelebA(datasets.CelebA):
    """torchvision's CelebA without the MD5 sums of the real annotation files (which fake files cannot match).

    ``_check_integrity`` passes a file whose listed MD5 is None when it exists (``check_integrity(path, None)``),
    so overriding the class's ``file_list`` is the supported way to read a copy that is not the original.
    """

    file_list = UNCHECKED_FILES


def attribute_code(index: int) -> list[int]:
    """A 0/1 attribute vector unique to image ``index`` (its bits), so pools can be traced back to files."""
    return [(index >> bit) & 1 for bit in range(40)]


def write_fake_celeba(root: Path, splits: list[int], size: tuple[int, int] = (20, 24)) -> list[list[int]]:
    """img_align_celeba/*.jpg and the five annotation files in torchvision's layout; returns the attributes."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"{i + 1:06d}.jpg" for i in range(len(splits))]
    codes = [attribute_code(i) for i in range(len(splits))]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            folder / "img_align_celeba" / name
        )
    sign = lambda bit: "1" if bit else "-1"  # noqa: E731  (the file's {-1, 1})
    (folder / "list_attr_celeba.txt").write_text(
        f"{len(names)}\n"
        + " ".join(ATTRIBUTES)
        + " \n"
        + "".join(f"{name}  " + "  ".join(sign(b) for b in code) + "\n" for name, code in zip(names, codes))
    )
    (folder / "list_eval_partition.txt").write_text("".join(f"{name} {split}\n" for name, split in zip(names, splits)))
    (folder / "identity_CelebA.txt").write_text("".join(f"{name} {i % 3 + 1}\n" for i, name in enumerate(names)))
    (folder / "list_bbox_celeba.txt").write_text(
        f"{len(names)}\nimage_id x_1 y_1 width height\n" + "".join(f"{name} 1 2 10 12\n" for name in names)
    )
    (folder / "list_landmarks_align_celeba.txt").write_text(
        f"{len(names)}\n"
        "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
        + "".join(f"{name} " + " ".join(["5"] * 10) + "\n" for name in names)
    )
    return codes


@pytest.fixture
def unchecked(monkeypatch):
    monkeypatch.setattr(CelebA, "dataset_class", UncheckedCelebA)


SPLITS = [0] * 20 + [1] * 4 + [2] * 6  # official train / valid / test


def _codes_of(pool) -> set[tuple[int, ...]]:
    return {tuple(row) for row in pool.labels.tolist()}


def test_celeba_pools_come_from_the_official_splits(tmp_path, unchecked):
    codes = write_fake_celeba(tmp_path, SPLITS)
    data = CelebA(data_dir=str(tmp_path), image_size=16, download=False, seed=3)
    by_split = {split: {tuple(codes[i]) for i, s in enumerate(SPLITS) if s == split} for split in (0, 1, 2)}
    assert _codes_of(data.pool("test")) == by_split[2]
    assert _codes_of(data.pool("val")) == by_split[1]
    drawn = [_codes_of(data.pool(name)) for name in ("train", "nonmember", "attacker")]
    assert all(pool <= by_split[0] for pool in drawn)
    assert sum(map(len, drawn)) == len(set().union(*drawn))  # disjoint
    assert data.pool_sizes() == {"train": 12, "val": 4, "test": 6, "nonmember": 4, "attacker": 4}  # 60/20/20 % of 20
    images, labels = data.pool("train").tensors()
    assert images.shape[1:] == (3, 16, 16) and 0 <= images.min() and images.max() <= 1
    assert labels.shape == (12, 40) and set(labels.unique().tolist()) <= {0, 1}
    spec = data.spec
    assert (spec.task, spec.num_classes, spec.image_shape) == ("multilabel", 40, (3, 16, 16))
    assert data.label_names == tuple(ATTRIBUTES)
    assert DataSpec.coerce(spec.as_dict()) == spec
    again = CelebA(data_dir=str(tmp_path), image_size=16, download=False, seed=3)
    assert torch.equal(again.pool("train").labels, data.pool("train").labels)  # deterministic in the seed


def test_celeba_without_files_says_where_and_how(tmp_path):
    with pytest.raises(BenchError, match=r"data_dir='.*'.*download is off.*--data.download true"):
        CelebA(data_dir=str(tmp_path), download=False).setup()


def test_celeba_keeps_torchvisions_md5_check(tmp_path):
    write_fake_celeba(tmp_path, SPLITS)  # annotation files that are not the originals
    with pytest.raises(BenchError, match="MD5"):
        CelebA(data_dir=str(tmp_path), image_size=16, download=False).setup()


# ---------------------------------------------------------------------- CUB-200-2011
def test_crop_to_box_keeps_exactly_the_box():
    image = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    assert torch.equal(crop_to_box(image, (5.0, 7.0, 20.0, 11.0)), image[:, 7:18, 5:25])
    # fractional boxes keep every pixel they touch; boxes past the border are clipped to the image
    assert torch.equal(crop_to_box(image, (4.5, 6.2, 10.0, 3.1)), image[:, 6:10, 4:15])
    assert torch.equal(crop_to_box(image, (30.0, 20.0, 25.0, 25.0)), image[:, 20:, 30:])
    with pytest.raises(BenchError, match="outside"):
        crop_to_box(image, (50.0, 0.0, 5.0, 5.0))


def write_fake_cub(root: Path, count: int = 10) -> list[dict]:
    """CUB_200_2011/ with images/ and the four index files; inside each box one colour, outside black."""
    archive = root / "CUB_200_2011"
    rows = []
    for i in range(count):
        image_id, label = i + 1, i % 4 + 1  # ids and classes are 1-based in the archive
        width, height = 30 + 3 * i, 24 + 2 * i
        box = (2 + i % 3, 3 + i % 2, 12 + i, 9 + i)  # x, y, width, height
        colour = 40 + (20 * i) % 200
        pixels = np.zeros((height, width, 3), dtype=np.uint8)
        pixels[box[1] : box[1] + box[3], box[0] : box[0] + box[2]] = colour
        path = f"{label:03d}.Species_{label}/Bird_{image_id}.png"
        (archive / "images" / path).parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(pixels)
        (image.convert("L") if i == 0 else image).save(archive / "images" / path)  # a few CUB images are grey
        rows.append({"id": image_id, "path": path, "label": label, "box": box, "colour": colour, "train": i % 3 != 0})
    (archive / "images.txt").write_text("".join(f"{r['id']} {r['path']}\n" for r in rows))
    (archive / "image_class_labels.txt").write_text("".join(f"{r['id']} {r['label']}\n" for r in rows))
    (archive / "train_test_split.txt").write_text("".join(f"{r['id']} {int(r['train'])}\n" for r in rows))
    (archive / "bounding_boxes.txt").write_text(
        "".join(f"{r['id']} " + " ".join(f"{v:.1f}" for v in r["box"]) + "\n" for r in rows)
    )
    return rows


def test_cub_crops_every_image_to_its_box_and_keeps_the_official_split(tmp_path):
    rows = write_fake_cub(tmp_path)
    data = CUB200(
        data_dir=str(tmp_path),
        image_size=8,
        fractions={"train": 0.5, "val": 1 / 6, "nonmember": 1 / 6, "attacker": 1 / 6},
    )
    sources = data.load_sources()
    for split, is_training in (("train", True), ("test", False)):
        images, labels = sources[split]
        expected = [r for r in rows if r["train"] == is_training]
        assert images.shape == (len(expected), 3, 8, 8)
        assert labels.tolist() == [r["label"] - 1 for r in expected]  # 0-based, in image-id order
        for image, row in zip(images, expected):
            # one row or column of black outside the box would darken the resized border by far more than 1
            assert (image.int() - row["colour"]).abs().max() <= 1, row
    assert data.pool_sizes()["test"] == sum(not r["train"] for r in rows)
    assert set(data.pool_sizes()) == set(POOLS) and all(size > 0 for size in data.pool_sizes().values())
    assert data.spec.task == "multiclass" and data.spec.num_classes == 200


def test_cub_without_the_archive_says_where_to_get_it_and_put_it(tmp_path):
    with pytest.raises(BenchError, match=r"data_dir='.*'.*vision.caltech.edu/datasets/cub_200_2011.*extract it into"):
        CUB200(data_dir=str(tmp_path)).setup()


# ---------------------------------------------------------------------- the multi-label utility and loss
MULTILABEL = DataSpec("attributes", (3, 8, 8), 3, (0.5,) * 3, (0.25,) * 3, task="multilabel")


def test_mean_attribute_error_is_the_hand_computed_one():
    # logits inside [0, 1] too: a logit of 0.3 is a positive prediction (sigmoid 0.57), not a probability of 0.3
    logits = torch.tensor([[2.0, -1.0, 0.3], [-0.5, 0.2, -3.0], [1.0, 0.4, 0.1], [-2.0, -0.1, 0.6]])
    targets = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 0]])
    predicted = (logits > 0).long()
    errors = [(predicted[:, a] != targets[:, a]).float().mean().item() for a in range(3)]  # 1/2, 0, 1/2
    utility = utility_from_batches([(logits[:2], targets[:2]), (logits[2:], targets[2:])], MULTILABEL, ["x", "y", "z"])
    assert utility["mean_attribute_error"] == pytest.approx(sum(errors) / 3)
    assert utility["accuracy"] == pytest.approx(1 - sum(errors) / 3)
    assert [utility[f"attribute_accuracy/{n}"] for n in "xyz"] == pytest.approx([1 - e for e in errors])
    single = DataSpec("classes", (3, 8, 8), 3, (0.5,) * 3, (0.25,) * 3)
    assert utility_from_batches([(logits, torch.tensor([0, 1, 2, 2]))], single) == {"accuracy": 0.75}  # top-1: 3 of 4


def test_attribute_loss_is_binary_cross_entropy_on_every_attribute():
    logits, targets = torch.randn(5, 3), torch.randint(0, 2, (5, 3))
    expected = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none").mean(1)
    assert torch.allclose(task_loss(logits, targets, MULTILABEL, reduction="none"), expected)
    assert torch.allclose(task_loss(logits, targets, MULTILABEL), expected.mean())


def test_spec_task_defaults_to_multiclass_and_is_checked():
    old = {"name": "mnist", "image_shape": [1, 28, 28], "num_classes": 10, "mean": [0.1], "std": [0.3]}
    assert DataSpec.coerce(old).task == "multiclass"  # checkpoints from before `task`
    with pytest.raises(BenchError, match="task"):
        DataSpec("x", (1, 8, 8), 2, (0.5,), (0.5,), task="regression")


def test_a_method_that_trains_on_classes_only_refuses_attributes():
    with pytest.raises(BenchError, match="MCMIA trains on multiclass targets, but attributes has multilabel targets"):
        MCMIA(data_spec=MULTILABEL)


class _DigitAttributes(Digits):
    """The 8x8 digits with three binary attributes of their class instead of the class.

    A learnable multi-label task.
    """

    name = "digit_attributes"
    task = "multilabel"
    num_classes = 3
    label_names = ("even", "above_four", "has_a_loop")

    def load_sources(self):
        images, digits = super().load_sources()["train"]
        loops = torch.tensor([0, 6, 8, 9])
        attributes = torch.stack([digits % 2 == 0, digits > 4, torch.isin(digits, loops)], dim=1).long()
        return {"train": (images, attributes)}


@pytest.mark.parametrize("name", sorted(registry.methods()))
def test_every_method_learns_attributes_or_refuses_them_in_one_line(name):
    method = registry.methods()[name]
    data = _DigitAttributes(batch_size=32, pool_limit=400)
    if "multilabel" not in method.tasks:
        with pytest.raises(
            BenchError, match=f"{name} trains on multiclass targets, but digit_attributes has multilabel"
        ):
            method(data_spec=data.spec)
        return
    torch.manual_seed(0)
    module = method(data_spec=data.spec)
    untrained = evaluate(module, data, []).utility
    quiet_trainer(max_epochs=10).fit(module, datamodule=data)
    trained = evaluate(module, data, []).utility
    assert set(trained) == {"accuracy", "mean_attribute_error", *(f"attribute_accuracy/{n}" for n in data.label_names)}
    # the loss is the attributes' own: training lifts every attribute well above what an untrained network gets
    # (always predicting the majority of each attribute scores about 0.53 here; NoisyInput learns least, ~0.66)
    assert trained["accuracy"] > 0.6 and trained["accuracy"] > untrained["accuracy"] + 0.1, (untrained, trained)


# ---------------------------------------------------------------------- end to end
def test_complex_alexnet_fits_and_is_evaluated_on_fake_celeba(tmp_path, unchecked):
    write_fake_celeba(tmp_path, SPLITS)
    data = CelebA(data_dir=str(tmp_path), image_size=32, batch_size=6, download=False)
    torch.manual_seed(0)
    model = ComplexNet(network="alexnet", n_critic=1, data_spec=data.spec)
    assert model.decryption[-1].out_features == 40
    quiet_trainer(max_epochs=1).fit(model, datamodule=data)
    attacks = [
        FeatureInversion(decoder="upsampling", epochs=1, batch_size=4, progress=False),
        PhaseInversion(decoder="upsampling", epochs=1, critic_epochs=1, grid=8, batch_size=4, progress=False),
        LossThreshold(shadow_epochs=1),
    ]
    evaluation = evaluate(model, data, attacks)
    utility = evaluation.utility
    assert utility["accuracy"] == pytest.approx(1 - utility["mean_attribute_error"])
    per_attribute = [utility[f"attribute_accuracy/{name}"] for name in ATTRIBUTES]
    assert utility["accuracy"] == pytest.approx(sum(per_attribute) / 40)
    assert all(abs(a * 6 - round(a * 6)) < 1e-6 for a in per_attribute)  # each a fraction of the 6 test images
    ran = {entry["attack"]: entry["metrics"] for entry in evaluation.privacy}
    assert set(ran) == {"feature_inversion", "phase_inversion"}
    assert 0 <= ran["phase_inversion"]["angle_error"] <= math.pi and 0 <= ran["phase_inversion"]["server_accuracy"] <= 1
    # membership inference reads one true class per image: skipped, and the record says why
    assert [(s["attack"], s["threat_model"]) for s in evaluation.skipped] == [("loss_threshold", "black_box_outputs")]
    assert "multilabel" in evaluation.skipped[0]["reason"]
    record = build_record(evaluation, model, data, config={}, seed=0, evaluation_seed=0).to_dict()
    validate_record(record)
    assert record["skipped_attacks"] == evaluation.skipped and record["dataset"]["spec"]["task"] == "multilabel"


def test_the_complex_papers_baseline_trains_on_attributes(tmp_path, unchecked):
    write_fake_celeba(tmp_path, SPLITS)
    data = CelebA(data_dir=str(tmp_path), image_size=16, batch_size=6, download=False)
    model = ComplexNetBaseline(network="lenet5", variant="original", data_spec=data.spec)
    before = [p.detach().clone() for p in model.parameters()]
    quiet_trainer(max_epochs=1).fit(model, datamodule=data)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert set(evaluate(model, data, []).utility) >= {
        "accuracy",
        "mean_attribute_error",
        "attribute_accuracy/Attribute_0",
    }


@pytest.mark.slow
def test_the_tiny_celeba_config_runs_through_the_cli_and_the_leaderboard(tmp_path, monkeypatch, unchecked):
    from bench.cli import load_checkpoint, main
    from bench.records import load_records

    write_fake_celeba(tmp_path / "data", SPLITS)
    monkeypatch.chdir(tmp_path)
    attacks = (
        '[{"class_path": "FeatureInversion", "init_args": {"decoder": "upsampling", "epochs": 1, "progress": false}},'
        ' {"class_path": "LossThreshold", "init_args": {"shadow_epochs": 1}}]'
    )
    main(
        [
            "fit",
            "--config",
            "complex/alexnet_celeba_tiny",
            "--data.download",
            "false",
            "--data.num_workers",
            "0",
            "--data.batch_size",
            "6",
            "--trainer.max_epochs",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--evaluation.attacks",
            attacks,
        ]
    )
    record = load_records([tmp_path / "runs" / "leaderboard" / "records"]).records[0]
    assert record["dataset"]["name"] == "celeba" and record["dataset"]["spec"]["task"] == "multilabel"
    assert record["utility"]["accuracy"] == pytest.approx(1 - record["utility"]["mean_attribute_error"])
    assert [entry["attack"] for entry in record["privacy"]] == ["feature_inversion"]
    assert [entry["attack"] for entry in record["skipped_attacks"]] == ["loss_threshold"]
    assert "celeba" in (tmp_path / "runs" / "leaderboard" / "README.md").read_text()

    # `bench evaluate` rebuilds the multi-label model and the CelebA pools from the checkpoint alone
    restored, data, _ = load_checkpoint(record["training"]["checkpoint"], device="cpu")
    assert restored.spec.task == "multilabel" and restored.spec.num_classes == 40
    assert data.image_shape == (3, 64, 64) and data.pool_sizes() == record["dataset"]["pool_sizes"]


@pytest.mark.slow
def test_the_cub_config_reads_the_archive_through_the_cli(tmp_path, monkeypatch):
    from bench.cli import main
    from bench.records import load_records

    rows = write_fake_cub(tmp_path / "data", count=12)
    monkeypatch.chdir(tmp_path)
    main(
        [
            "fit",
            "--config",
            "complex/vgg16_cub200",
            "--data.image_size",
            "32",
            "--data.num_workers",
            "0",
            "--data.batch_size",
            "4",
            "--data.fractions",
            '{"train": 0.5, "val": 0.125, "nonmember": 0.125, "attacker": 0.25}',
            "--model.n_critic",
            "1",
            "--trainer.max_epochs",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--evaluation.attacks",
            '[{"class_path": "FeatureInversion", '
            '"init_args": {"decoder": "upsampling", "epochs": 1, "progress": false}}]',
            "--evaluation.leaderboard_dir",
            "null",
        ]
    )
    record = load_records([tmp_path / "runs" / "leaderboard" / "records"]).records[0]
    assert record["dataset"]["name"] == "cub200" and record["dataset"]["spec"]["task"] == "multiclass"
    assert record["dataset"]["pool_sizes"]["test"] == sum(not r["train"] for r in rows)
    # one class per image: top-1 accuracy, no attribute entries (beside it only the chance-level check)
    assert (
        set(record["utility"]) - {"degenerate", "chance_accuracy"} == {"accuracy"}
        and record["paper"]["accuracy"] == 0.215
    )
