"""The ATS transformation library (Table 5) and policies: shape, dtype, range, parsing, seeded determinism."""

from __future__ import annotations

import json

import pytest
import torch

from bench.errors import BenchError
from bench.transforms import LIBRARY, MAGNITUDES, load_policy, parse_policy, random_policy

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
    assert [(t.operation, t.level) for t in LIBRARY[:4]] == [("invert", 7), ("contrast", 6), ("rotate", 2), ("translateX", 9)]
    assert (LIBRARY[18].operation, LIBRARY[18].level, LIBRARY[43].operation) == ("contrast", 7, "translateY")
    assert LIBRARY[3].magnitude == pytest.approx(150 / 331) and LIBRARY[2].magnitude == pytest.approx(30 * 2 / 9)
    assert MAGNITUDES["posterize"][0] == 8 and MAGNITUDES["posterize"][-1] == 4


def test_operations_do_what_they_say():
    image = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    signs = torch.tensor([1, -1])
    torch.testing.assert_close(LIBRARY[29](image, signs), 1 - image)  # invert
    shifted = LIBRARY[3](image, signs)  # translateX 9: 4 of 8 columns shifted in, filled with black
    assert torch.equal(shifted[0, ..., :4], torch.zeros(1, 8, 4)) and torch.equal(shifted[0, ..., 4:], image[0, ..., :4])
    assert torch.equal(shifted[1, ..., 4:], torch.zeros(1, 8, 4)) and torch.equal(shifted[1, ..., :4], image[1, ..., 4:])
    assert torch.equal(LIBRARY[28](image, signs), image)  # solarize at level 0: threshold above every pixel
    brighter = LIBRARY[15](image, torch.tensor([1, 1]))  # brightness 9, factor 1.9
    torch.testing.assert_close(brighter, (1.9 * image).clamp(0, 1))


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
    hybrid = parse_policy("29+31")  # invert, or autocontrast
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
