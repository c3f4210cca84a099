"""Training-time augmentation (fflib.augment) and its use by fit()."""
import numpy as np
import pytest

import fflib
from fflib import models
from fflib.augment import Augment, parse


def batch(b=16, c=3, h=9, w=7):
    return np.random.default_rng(1).random((b, c, h, w), dtype=np.float32)


def test_parse_specs():
    assert parse(None) is None and parse("none") is None and parse("crop0") is None
    a = parse("crop4+flip")
    assert (a.crop, a.flip) == (4, True) and repr(a) == "crop4+flip"
    assert repr(parse("FLIP, crop2")) == "crop2+flip"
    for bad in ("rotate", "crop", "crop-1", "flip+scale2"):
        with pytest.raises(ValueError, match="augment"):
            parse(bad)
    with pytest.raises(TypeError, match="augment"):
        parse(4)


def test_flip_mirrors_about_half_the_images_exactly():
    x = batch(b=400)
    y = Augment(flip=True)(x.copy(), np.random.default_rng(0))
    same = np.all(y == x, axis=(1, 2, 3))
    mirrored = np.all(y == x[..., ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored) and 150 < mirrored.sum() < 250


def test_crop_is_a_zero_filled_shift_of_at_most_p_pixels():
    x, p = batch(), 3
    y = Augment(crop=p)(x.copy(), np.random.default_rng(0))
    shifts = set()
    for i in range(len(x)):
        padded = np.pad(x[i], ((0, 0), (p, p), (p, p)))
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if np.array_equal(padded[:, dy:dy + 9, dx:dx + 7], y[i])]
        assert hits, f"image {i} is not a shifted window of its padded original"
        shifts.add(hits[0])
    assert len(shifts) > 3                      # the shifts are random, not one fixed offset


def test_augmentation_is_reproducible_and_rejects_bad_batches():
    x = batch()
    a = parse("crop2+flip")
    assert np.array_equal(a(x.copy(), np.random.default_rng(5)), a(x.copy(), np.random.default_rng(5)))
    with pytest.raises(ValueError, match="B, C, H, W"):
        a(x.reshape(16, -1), np.random.default_rng(0))
    with pytest.raises(ValueError, match="smaller than the image"):
        Augment(crop=7)(x.copy(), np.random.default_rng(0))


def test_fit_with_augmentation_trains_and_is_deterministic():
    x, y = fflib.datasets.load_sample(True)
    x, y = x[:256].reshape(256, -1), y[:256]

    def run():
        m = models.build("cwcomp", "mnist", channels=(10, 20, 20, 40))
        h = fflib.fit(m, x, y, epochs=2, batch_size=64, augment="crop2", random_state=3, progress=False)
        return m, h

    (m1, h1), (m2, h2) = run(), run()
    assert np.isfinite(h1["epochs"][-1]["block_loss"]).all()
    assert h1["epochs"][-1]["block_loss"] == h2["epochs"][-1]["block_loss"]
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert np.array_equal(a, b), k
    m3 = models.build("cwcomp", "mnist", channels=(10, 20, 20, 40))
    h3 = fflib.fit(m3, x, y, epochs=2, batch_size=64, random_state=3, progress=False)
    assert h3["epochs"][-1]["block_loss"] != h1["epochs"][-1]["block_loss"]   # it did change the data


def test_fit_refuses_augmentation_for_flat_models():
    x, y = fflib.datasets.load_sample(True)
    m = fflib.FFModel(fflib.mlp([784, 20]), 784, 10)
    with pytest.raises(ValueError, match="image model"):
        fflib.fit(m, x[:64].reshape(64, -1), y[:64], epochs=1, augment="flip", progress=False)
