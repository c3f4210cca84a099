"""End to end on the real MNIST (../shared/data or $FFLIB_DATA): the survey's networks reach
stated test-error bars within the CI time budget.  Marked slow; every one trains for real."""
import time

import pytest

import fflib
from fflib import models, recipes

pytestmark = pytest.mark.slow

# Budgets that fit CI (2 cores, 30 minutes for everything); the conv nets run on fflib's
# default threads (all CPUs; under the README's `pytest -n auto` a worker's share of them, so the
# CNN and CwComp trainings below run side by side on a core each).  The settings are the recipes' (fflib.recipes: what
# `python -m fflib train --dataset mnist --model M` runs), so these tests check what users get.
# Measured on the full MNIST test set (one-pass / multi-pass): the CNN recipe with uniform negatives 1.36 / 1.58 % (12
# epochs, this test; 1.35 / 1.64 by reproduce.py; 1.29 / 1.96 after 10, 1.59 / 2.14 at 4e-3 for 8); with the head on blocks 2-3 only
# 3.03 / 3.05 after 4 epochs and 2.72 / 2.32 after 6; the CwComp recipe on a slimmed CwComp
# (20/40/80/160 channels) for 6 epochs with one step at epoch 4: 0.85 / 1.42 % (1.06 / 1.72 after
# 4 without the shifts).
CWC_CHANNELS = (20, 40, 80, 160)
CWC_EPOCHS = 6
CWC_MILESTONES = [4]


def recipe(name):
    return recipes.get(name).resolved()


def train_mlp(mnist, name):
    x, y, xt, yt = mnist
    s = recipe(name)
    threshold = s["threshold"] if s["threshold"] is not None else 1.0   # the CLI's default for mean goodness
    model = fflib.FFModel(fflib.mlp([784] + s["layers"], norm=s["norm"]), 784, 10, goodness=s["goodness"],
                          loss=s["loss"], threshold=threshold, norm=s["norm"], label_encoding=s["label_encoding"],
                          seed=s["seed"])
    opt = fflib.Adam(model, lr=s["lr"], head_lr=s["head_lr"])
    t0 = time.perf_counter()
    hist = fflib.fit(model, x, y, epochs=s["epochs"], batch_size=s["batch_size"], optimizer=opt,
                     scheduler=fflib.LinearCooldown(opt, s["epochs"]), negatives=s["negatives"],
                     random_state=s["seed"], progress=False)
    res = fflib.evaluate(model, xt, yt)
    print(f"\n{name} -> one-pass {res['one_pass']:.2f}%  multi-pass {res['multi_pass']:.2f}% "
          f"in {time.perf_counter() - t0:.0f}s")
    assert not hist["interrupted"] and len(hist["epochs"]) == s["epochs"]
    return res


@pytest.mark.slow(seconds=64)
def test_mnist_mlp_symba_under_2_percent(mnist):
    """The survey's 784-500-100 FF MLP by its recipe (10 epochs, SymBa loss, hard negatives): <= 2%
    with both inferences, the issue's target (survey: 8.0 / 7.2; this test and the recipe's full run
    1.77 / 1.76; 2.41 / 2.42 with uniform negatives)."""
    assert recipes.lookup("mlp", "mnist").name == "mnist-mlp"
    res = train_mlp(mnist, "mnist-mlp")
    assert res["one_pass"] <= 2.0 and res["multi_pass"] <= 2.0


@pytest.mark.slow(seconds=90)
def test_mnist_mlp_ff_loss_under_2_6_percent(mnist):
    """The same network with Hinton's FF loss (recipe mnist-mlp-ff: eq. 1, sum-of-squares
    goodness, theta 2000, hard negatives): <= 2.6% with both inferences (this test and the
    recipe's full run 2.36 / 2.24; 2.78 / 2.77 with uniform negatives)."""
    res = train_mlp(mnist, "mnist-mlp-ff")
    assert res["one_pass"] <= 2.6 and res["multi_pass"] <= 2.6


def fit_and_evaluate(model, mnist, epochs, lr, batch_size, scheduler="cooldown", head_lr=None, **fit_kw):
    x, y, xt, yt = mnist
    opt = fflib.Adam(model, lr=lr, head_lr=head_lr)
    sched = fflib.LinearCooldown(opt, epochs) if scheduler == "cooldown" else \
        fflib.MultiStepLR(opt, scheduler, gamma=0.1)
    t0 = time.perf_counter()
    hist = fflib.fit(model, x, y, epochs=epochs, batch_size=batch_size, optimizer=opt, scheduler=sched,
                     random_state=0, progress=False, **fit_kw)
    res = fflib.evaluate(model, xt, yt)
    print(f"\n{epochs} epochs -> one-pass {res['one_pass']:.2f}%  multi-pass {res['multi_pass']:.2f}%  "
          f"per layer {res['block_accuracy']}  in {time.perf_counter() - t0:.0f}s")
    assert len(hist["epochs"]) == epochs
    return res


@pytest.mark.slow(seconds=800)
def test_mnist_survey_cnn_under_2_percent(mnist):
    """The survey's MNIST CNN (conv 32, conv 64, linear 256x100) by its recipe: learned label
    channel, SymBa loss, random 2-pixel shifts: at most 2% test error with both inferences (the
    issue's bar; the survey reports 4.4 / 5.0).  The recipe's hard negatives and 20 epochs
    (0.92 / 0.69 by reproduce.py; 1.28 / 0.95 with 12) take about three times this test's share
    of the CI budget, so it trains 12 epochs on all 60,000 images with uniform negatives (1.36 /
    1.58 measured here)."""
    s = recipe("mnist-cnn")
    assert recipes.lookup("cnn", "mnist").name == "mnist-cnn" and s["cooldown"] and not s["milestones"]
    assert s["negatives"] == "hard" and s["epochs"] == 20   # what users get; this test trains a shorter variant
    model = models.build("cnn", "mnist", loss=s["loss"], goodness=s["goodness"], norm=s["norm"],
                         label_encoding=s["label_encoding"], head_blocks=s["head_blocks"], seed=s["seed"])
    res = fit_and_evaluate(model, mnist, epochs=12, lr=s["lr"], head_lr=s["head_lr"],
                           batch_size=s["batch_size"], augment=s["augment"], negatives="uniform")
    assert res["one_pass"] <= 2.0 and res["multi_pass"] <= 2.0


@pytest.mark.slow(seconds=530)
def test_mnist_cwcomp_under_1_percent(mnist):
    """A slimmed CwComp CNN (channel groups, CwC loss, no negatives, no label in the input) by
    the CwComp recipe's rates, batch and shifts, for 6 epochs (one step at epoch 4) instead of the
    recipe's 23 and 7 head-only epochs to fit CI: <= 1.0% with the one-pass softmax head on the last two layers (CwComp's
    own predictor; the survey: 0.8 / 0.7, CwComp 0.58) and <= 2.0% with the group goodness of the
    last two layers."""
    s = recipe("mnist-cwcomp")
    assert recipes.lookup("cwcomp", "mnist").name == "mnist-cwcomp"
    model = models.build("cwcomp", "mnist", channels=CWC_CHANNELS, loss=s["loss"], seed=s["seed"])
    res = fit_and_evaluate(model, mnist, epochs=CWC_EPOCHS, lr=s["lr"], head_lr=s["head_lr"],
                           batch_size=s["batch_size"], scheduler=CWC_MILESTONES, augment=s["augment"])
    assert res["one_pass"] <= 1.0 and res["multi_pass"] <= 2.0
