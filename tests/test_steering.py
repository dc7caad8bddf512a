"""Attribute directions from labels (``aevb.steering``) and ``aevb edit``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from aevb.images import read_image, write_image
from aevb.steering import SteeringError, label_direction, labelled_codes, mean_difference, steer

from .vizmodels import aevb as aevb_cli
from .vizmodels import digits_run

CODES = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 4.0], [3.0, 4.0], [10.0, -8.0]])
LABELS = torch.tensor([0, 0, 1, 1, 2])


def test_mean_difference_of_two_subsets():
    toward = torch.tensor([False, False, True, True, False])
    away = torch.tensor([True, True, False, False, False])
    assert mean_difference(CODES, toward, away).tolist() == [1.0, 4.0]  # (2, 4) - (1, 0)


def test_label_direction_against_the_rest_and_against_one_label():
    rest = label_direction(CODES, LABELS, toward=[1])
    assert rest.vector.tolist() == pytest.approx([2 - 4, 4 - (-8 / 3)])  # (2, 4) - mean of (0,0), (2,0), (10,-8)
    assert (rest.n_toward, rest.n_away, rest.away) == (2, 3, None)
    pair = label_direction(CODES, LABELS, toward=[1], away=[0])
    assert pair.vector.tolist() == [1.0, 4.0] and (pair.n_toward, pair.n_away) == (2, 2)
    union = label_direction(CODES, LABELS, toward=[1, 2], away=[0])
    assert union.vector.tolist() == pytest.approx([14 / 3 - 1, 0.0])  # any labelled subsets
    assert pair.to_dict()["norm"] == pytest.approx(17**0.5)


def test_steering_the_away_mean_by_one_lands_on_the_toward_mean():
    d = label_direction(CODES, LABELS, toward=[2], away=[0])
    assert steer(torch.tensor([1.0, 0.0]), d, 1.0).tolist() == [10.0, -8.0]
    assert steer(torch.zeros(3, 2), d, torch.tensor([[0.0], [0.5], [-1.0]])).tolist() == [[0, 0], [4.5, -4], [-9, 8]]


@pytest.mark.parametrize("kw,message", [({"toward": [7]}, "toward: no image has label 7; the labels are 0, 1, 2"),
                                        ({"toward": [1], "away": [5]}, "away: no image has label 5"),
                                        ({"toward": [1], "away": [1, 0]}, "share label"),
                                        ({"toward": [0, 1, 2]}, "nothing to steer away from")])
def test_directions_that_cannot_be_made(kw, message):
    with pytest.raises(SteeringError, match=message):
        label_direction(CODES, LABELS, **kw)


def test_labelled_codes_are_the_embeddings_and_need_labels():
    run = digits_run(2)
    test = run.dataset().test
    codes, labels = labelled_codes(run.model, test, n=50)
    assert codes.shape == (50, 2) and torch.equal(labels, test.y[:50])
    with torch.no_grad():
        assert torch.allclose(codes, run.model.embed(test.x[:50]))
    with pytest.raises(SteeringError, match="has none"):
        labelled_codes(run.model, type(test)(test.x, None))
    with pytest.raises(SteeringError, match="conditional"):
        labelled_codes(digits_run(2, conditional=True).model, test)


def test_steering_a_zero_toward_one_looks_more_like_a_one():
    run = digits_run(2)
    test = run.dataset().test
    codes, labels = labelled_codes(run.model, test)
    d = label_direction(codes, labels, toward=[1], away=[0])
    zeros, ones = test.x[test.y == 0], test.x[test.y == 1]
    with torch.no_grad():
        z = run.model.embed(zeros)
        before = run.model.decode(z).mean
        after = run.model.decode(steer(z, d, 1.0)).mean
    mean_one = ones.mean(0)
    dist = lambda imgs: (imgs - mean_one).pow(2).flatten(1).sum(1)  # noqa: E731
    assert (dist(after) < dist(before)).float().mean().item() > 0.9  # nearly every 0 moved toward the 1s


def test_edit_writes_the_steered_decoding(tmp_path, capsys):
    run = digits_run(2)
    test = run.dataset().test
    image = write_image(test.x[test.y == 0][0], tmp_path / "zero.png")
    rc, out, err = aevb_cli(capsys, "edit", run.dir, "--image", image, "--toward", "1", "--away", "0",
                            "--amount", "0.8")
    assert rc == 0, err
    summary = json.loads(out.splitlines()[0])
    assert summary["toward"] == [1] and summary["away"] == [0] and summary["amount"] == 0.8
    assert summary["n_toward"] == int((test.y == 1).sum()) and summary["split"] == "test"
    codes, labels = labelled_codes(run.model, test, n=10000)
    d = label_direction(codes, labels, [1], [0])
    with torch.no_grad():
        want = run.model.decode(steer(run.model.embed(read_image(image, (1, 8, 8))[None]), d, 0.8)).mean[0, 0]
    got = np.asarray(Image.open(tmp_path / "zero-toward-1.png"), dtype=np.float32) / 255
    assert np.abs(got - want.numpy()).max() <= 0.5 / 255 + 1e-6


def test_edit_strip_and_errors(tmp_path, capsys):
    run = digits_run(2)
    image = write_image(run.dataset().test.x[0], tmp_path / "x.png")
    rc, _, err = aevb_cli(capsys, "edit", run.dir, "--image", image, "--toward", "3,5", "--steps", "4",
                          "--out", tmp_path / "strip.png")
    assert rc == 0, err
    assert Image.open(tmp_path / "strip.png").size == (5 * 9 - 1, 8)  # the input, then 4 amounts
    rc, _, err = aevb_cli(capsys, "edit", run.dir, "--image", image, "--toward", "12")
    assert rc == 1 and "--toward: no image has label 12" in err and err.count("\n") == 1
    rc, _, err = aevb_cli(capsys, "edit", run.dir, "--image", image, "--toward", "x")
    assert rc == 2 and "--toward" in err
    rc, _, err = aevb_cli(capsys, "edit", digits_run(2, conditional=True).dir, "--image", image, "--toward", "1")
    assert rc == 1 and "conditional" in err
