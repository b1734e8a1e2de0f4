"""The ATS transformation library (Table 5) and policies: shape, dtype, range, parsing, seeded determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.errors import BenchError
from bench.transforms import LIBRARY, MAGNITUDES, load_policy, parse_policy, random_policy
from bench.transforms.library import MAGNITUDES_BY_VARIANT, pil_shift

SHAPES = [(6, 1, 8, 8), (6, 1, 28, 28), (6, 3, 32, 32), (6, 3, 17, 23)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[1:])))
def test_every_transformation_keeps_shape_dtype_and_range(shape):
    images = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    signs = torch.tensor([1, -1, 1, -1, 1, -1])
    for transformation in LIBRARY:
        out = transformation(images, signs)
        assert out.shape == images.shape and out.dtype == images.dtype, transformation
        assert out.min() >= 0 and out.max() <= 1, transformation
    assert torch.equal(images, torch.rand(shape, generator=torch.Generator().manual_seed(0)))  # inputs untouched


def test_the_library_is_table_5_on_autoaugments_scale():
    assert len(LIBRARY) == 50
    assert [(t.operation, t.level) for t in LIBRARY[:4]] == [
        ("invert", 7),
        ("contrast", 6),
        ("rotate", 2),
        ("translateX", 9),
    ]
    assert (LIBRARY[18].operation, LIBRARY[18].level, LIBRARY[43].operation) == ("contrast", 7, "translateY")
    assert LIBRARY[3].magnitude == pytest.approx(150 / 331) and LIBRARY[2].magnitude == pytest.approx(30 * 2 / 9)
    assert MAGNITUDES["posterize"][0] == 8 and MAGNITUDES["posterize"][-1] == 4


# The reference's definitions (gaow0007/ATSPrivacy, autoaugment.py: SubPolicy), written out here as facts: its
# magnitude ranges, and each operation as the PIL call it makes (rotation: counter-clockwise by +m, composited
# over grey 128; shears bicubic; translations nearest; enhance factors 1 +- m; fill black).
REFERENCE_RANGES = {
    "shearX": np.linspace(0, 0.3, 10),
    "shearY": np.linspace(0, 0.3, 10),
    "translateX": np.linspace(0, 150 / 331, 10),
    "translateY": np.linspace(0, 150 / 331, 10),
    "rotate": np.linspace(0, 30, 10),
    "color": np.linspace(0.0, 0.5, 10),
    "posterize": np.round(np.linspace(8, 4, 10), 0).astype(int),
    "solarize": np.linspace(256, 0, 10),
    "contrast": np.linspace(0.0, 0.5, 10),
    "sharpness": np.linspace(0.0, 0.5, 10),
    "brightness": np.linspace(0.0, 0.5, 10),
}


def _reference_render(image, operation, level, sign):
    from PIL import Image, ImageEnhance, ImageOps

    m = REFERENCE_RANGES[operation][level] if operation in REFERENCE_RANGES else 0
    affine = {
        "shearX": (1, m * sign, 0, 0, 1, 0),
        "shearY": (1, 0, 0, m * sign, 1, 0),
        "translateX": (1, 0, m * image.size[0] * sign, 0, 1, 0),
        "translateY": (1, 0, 0, 0, 1, m * image.size[1] * sign),
    }
    if operation.startswith("shear"):
        return image.transform(image.size, Image.AFFINE, affine[operation], Image.BICUBIC, fillcolor=0)
    if operation.startswith("translate"):
        return image.transform(image.size, Image.AFFINE, affine[operation], fillcolor=0)
    if operation == "rotate":
        turned = image.convert("RGBA").rotate(m)
        return Image.composite(turned, Image.new("RGBA", turned.size, (128,) * 4), turned).convert(image.mode)
    enhance = {
        "color": ImageEnhance.Color,
        "contrast": ImageEnhance.Contrast,
        "sharpness": ImageEnhance.Sharpness,
        "brightness": ImageEnhance.Brightness,
    }
    if operation in enhance:
        return enhance[operation](image).enhance(1 + m * sign)
    if operation == "posterize":
        return ImageOps.posterize(image, int(m))
    if operation == "solarize":
        return ImageOps.solarize(image, m)
    return {"autocontrast": ImageOps.autocontrast, "equalize": ImageOps.equalize, "invert": ImageOps.invert}[operation](
        image
    )


def _fixed_image():
    """A 28x28 digit-like 8-bit image: a textured stroke block and a bar on black."""
    pixels = np.zeros((28, 28), np.uint8)
    pixels[6:22, 9:19] = np.random.default_rng(0).integers(60, 250, (16, 10))
    pixels[10:14, 3:25] = 200
    return pixels


#: how far (on the 0-255 scale) our float result may sit from PIL's 8-bit one: PIL rounds every enhance blend
#: and autocontrast LUT to 8 bits; grid_sample's bicubic kernel (a = -0.75) is not PIL's (a = -0.5)
TOLERANCE = {"contrast": 1.5, "sharpness": 1.5, "brightness": 1.5, "autocontrast": 1.5, "shearX": 12.0, "shearY": 12.0}


@pytest.mark.parametrize("transformation", LIBRARY, ids=lambda t: f"{t.index}-{t.operation}-{t.level}")
def test_every_operation_renders_as_the_reference_defines_it(transformation):
    pytest.importorskip("PIL")
    from PIL import Image

    pixels = _fixed_image()
    image = torch.from_numpy(pixels.copy()).double().div(255).view(1, 1, 28, 28)
    for sign in (1, -1):
        ours = transformation(image, torch.tensor([sign]))[0, 0] * 255
        reference = torch.from_numpy(
            np.asarray(
                _reference_render(Image.fromarray(pixels, "L"), transformation.operation, transformation.level, sign)
            ).astype(np.float64)
        )
        difference = (ours - reference).abs()
        assert difference.max() <= TOLERANCE.get(transformation.operation, 0.5), (sign, difference.max())
        if transformation.operation.startswith("shear"):
            assert difference.mean() <= 1.5
            other = transformation(image, torch.tensor([-sign]))[0, 0] * 255
            assert (other - reference).abs().mean() > 3 * difference.mean()  # the direction is the reference's


def test_the_reference_magnitudes_shifts_and_factors():
    image = torch.from_numpy(_fixed_image().copy()).double().div(255).view(1, 1, 28, 28)
    # translateX 9: 150/331 of 28 pixels = 12.69, nearest: floor(12.69 + 0.5) = 13 whole pixels, left for +1
    shifted = LIBRARY[3](image, torch.tensor([1]))
    assert torch.equal(shifted[..., :15], image[..., 13:]) and torch.equal(shifted[..., 15:], torch.zeros(1, 1, 28, 13))
    assert pil_shift(LIBRARY[21].magnitude * 28) == 7 and pil_shift(LIBRARY[3].magnitude * 32) == 15
    # the enhance family tops out at a factor 1.5 (reference), 1.9 (AutoAugment)
    assert MAGNITUDES["brightness"][9] == pytest.approx(0.5) and MAGNITUDES_BY_VARIANT["autoaugment"]["brightness"][
        9
    ] == pytest.approx(0.9)
    torch.testing.assert_close(LIBRARY[15](image, torch.tensor([1])), (1.5 * image).clamp(0, 1))
    torch.testing.assert_close(LIBRARY[15](image, torch.tensor([-1])), 0.5 * image)
    torch.testing.assert_close(LIBRARY[15](image, torch.tensor([1]), "autoaugment"), (1.9 * image).clamp(0, 1))
    # rotation: one direction whatever the sign in the reference; both in AutoAugment
    assert torch.equal(LIBRARY[2](image, torch.tensor([1])), LIBRARY[2](image, torch.tensor([-1])))
    assert not torch.equal(
        LIBRARY[2](image, torch.tensor([1]), "autoaugment"), LIBRARY[2](image, torch.tensor([-1]), "autoaugment")
    )
    # its uncovered corners are grey 128 in the reference, black in AutoAugment
    corner = LIBRARY[2](torch.ones(1, 1, 28, 28), torch.tensor([1]))[0, 0, 0, 0]
    assert corner.item() == pytest.approx(128 / 255, abs=1e-6)
    assert LIBRARY[2](torch.ones(1, 1, 28, 28), torch.tensor([1]), "autoaugment")[0, 0, 0, 0].item() == 0.0


def test_a_policy_first_crops_with_padding_4_and_flips_as_the_reference_pipeline():
    images = torch.rand(64, 1, 12, 12, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.1  # no black pixel
    out = parse_policy("29")(images, torch.Generator().manual_seed(3))  # invert, after crop and flip
    restored = 1 - out  # undo invert: the black padding is black again
    found = 0
    for image, result in zip(images, restored):
        padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
        candidates = [padded[:, dy : dy + 12, dx : dx + 12] for dy in range(9) for dx in range(9)]
        candidates += [c.flip(-1) for c in candidates]
        found += any(torch.allclose(result, c) for c in candidates)
    assert found == len(images)
    moved = (restored - images).abs().flatten(1).amax(1) > 0
    assert 40 < moved.sum() <= 64  # most draws move or mirror the image (1/162 keep it)
    torch.testing.assert_close(
        parse_policy("29", crop_flip=False)(images, torch.Generator().manual_seed(3)), 1 - images
    )


def test_policies_parse_print_and_reject_bad_strings():
    policy = parse_policy("3-1-7+43-18-18")
    assert policy.policies == ((3, 1, 7), (43, 18, 18)) and str(policy) == "3-1-7+43-18-18"
    assert parse_policy(" 3 - 1 - 7 ") == parse_policy("3-1-7")
    for bad in ["3--1", "3-1-", "a-b", "3-50"]:
        with pytest.raises(BenchError):
            parse_policy(bad)
    assert load_policy(None) is None and load_policy("none") is None


def test_policies_apply_deterministically_with_a_seed():
    images = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    policy = parse_policy("3-1-7+43-18-18")
    first = policy(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, policy(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, policy(images, torch.Generator().manual_seed(6)))
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1


def test_a_hybrid_picks_one_policy_per_sample():
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    hybrid = parse_policy("29+31", crop_flip=False)  # invert, or autocontrast
    out = hybrid(images, torch.Generator().manual_seed(0))
    inverted = torch.isclose(out, 1 - images).flatten(1).all(1)
    stretched = torch.isclose(out, LIBRARY[31](images, torch.ones(64))).flatten(1).all(1)
    assert (inverted ^ stretched).all()  # each sample got exactly one of the two
    assert 10 < inverted.sum() < 54


def test_policy_files_load(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"policy": "3-1-7+43-18-18", "policies": []}))
    assert load_policy(str(path)) == parse_policy("3-1-7+43-18-18")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(BenchError, match="'policy'"):
        load_policy(str(tmp_path / "bad.json"))


def test_random_policies_stay_in_the_search_space():
    generator = torch.Generator().manual_seed(0)
    lengths = {len(random_policy(generator).policies[0]) for _ in range(60)}
    assert lengths == {1, 2, 3}
