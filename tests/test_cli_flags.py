"""Every Python-API option of ``python -m fflib train`` (and --early-exit on eval): tiny runs on
the embedded sample, in-process, each flag checked to reach the model, optimiser, fit or
evaluate, and each bad value to exit 2 with a message naming the flag."""
import json

import numpy as np
import pytest

import fflib
from fflib import cli, recipes

TINY = ["--epochs", "1", "--layers", "48,32", "--threads", "1", "--no-progress", "--seed", "1"]


def train(tmp_path, *args):
    out, save = tmp_path / "r.json", tmp_path / "m.npz"
    code = cli.main(["train", *TINY, "--out", str(out), "--save", str(save), *args])
    assert code == 0
    return json.loads(out.read_text()), fflib.FFModel.load(save)


def fails(capsys, *args):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", *TINY, *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_alpha(tmp_path, capsys):
    r, m = train(tmp_path, "--alpha", "7.5")
    assert m.config["alpha"] == 7.5 and r["config"]["alpha"] == 7.5
    assert "--alpha" in fails(capsys, "--alpha", "0")
    assert "does not apply to --loss ff" in fails(capsys, "--alpha", "2", "--loss", "ff")


def test_optimizer_sgd_momentum_weight_decay(tmp_path, capsys):
    r, m = train(tmp_path, "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "1e-4")
    opt = m.optimizer
    assert isinstance(opt, fflib.SGD) and opt.momentum == pytest.approx(0.9)
    assert opt.weight_decay == pytest.approx(1e-4)
    assert r["config"]["optimizer"] == "sgd" and r["test_error"]["multi_pass"] < 60
    r, m = train(tmp_path, "--weight-decay", "1e-3")
    assert isinstance(m.optimizer, fflib.Adam) and m.optimizer.weight_decay == pytest.approx(1e-3)
    assert "--optimizer sgd" in fails(capsys, "--momentum", "0.9")
    assert "--optimizer" in fails(capsys, "--optimizer", "rmsprop")
    assert "--weight-decay" in fails(capsys, "--weight-decay", "-1")


def test_optimizer_adamw(tmp_path, capsys):
    r, m = train(tmp_path, "--optimizer", "adamw")
    assert type(m.optimizer) is fflib.AdamW and m.optimizer.weight_decay == pytest.approx(0.01)   # torch's default
    assert r["config"]["optimizer"] == "adamw" and r["config"]["weight_decay"] == pytest.approx(0.01)
    assert all(m._net.get_opt(i)["kind"] == 2 for i in m.trainable_layers())                     # 2: AdamW in C
    assert r["test_error"]["multi_pass"] < 60
    r, m = train(tmp_path, "--optimizer", "adamw", "--weight-decay", "0.1")
    assert m.optimizer.weight_decay == pytest.approx(0.1) and r["config"]["weight_decay"] == pytest.approx(0.1)
    r, m = train(tmp_path)
    assert type(m.optimizer) is fflib.Adam and r["config"]["weight_decay"] == 0.0
    assert "--optimizer sgd" in fails(capsys, "--optimizer", "adamw", "--momentum", "0.9")


def test_block_lr(tmp_path, capsys):
    r, m = train(tmp_path, "--block-lr", "0.006,0.001", "--no-cooldown")
    lrs = {i: m._net.get_opt(i)["lr"] for i in m.trainable_layers()}
    (a0, b0), (a1, b1) = m.blocks
    assert all(lrs[i] == pytest.approx(0.006) for i in lrs if a0 <= i < b0)
    assert all(lrs[i] == pytest.approx(0.001) for i in lrs if a1 <= i < b1)
    assert lrs[-1] == pytest.approx(r["config"]["head_lr"])          # the head keeps its own rate
    assert r["config"]["block_lr"] == [0.006, 0.001] and m.optimizer.layer_lr
    assert "2 blocks" in fails(capsys, "--block-lr", "0.006")
    assert "> 0" in fails(capsys, "--block-lr", "0.006,0")


def test_loss_xent_and_label_encoding_none(tmp_path, capsys):
    assert "xent" in fflib._core.LOSSES and "none" in fflib._core.LABEL_ENCODINGS
    r, m = train(tmp_path, "--loss", "xent", "--label-encoding", "none", "--layers", "64,10")
    assert m.config["loss"] == "xent" and m.label_encoding == "none" and m.num_blocks == 1
    assert r["test_error"]["multi_pass"] < 50            # a 1-epoch softmax MLP on 8,000 images
    assert "--loss" in fails(capsys, "--loss", "hinge")
    assert "fourier" in fails(capsys, "--label-encoding", "fourier")     # needs images
    # --label-encoding none is xent's default, as --help says (it took the MLP's onehot before)
    _, m = train(tmp_path, "--loss", "xent", "--layers", "64,10")
    assert m.label_encoding == "none"


def test_recipe_hard_negatives_give_way_to_a_loss_without_them(tmp_path, capsys):
    """The MLP recipe's hard negatives run with the FF losses; a --loss that draws no wrong label
    (df, xent) takes uniform ones instead of failing; --negatives hard with it is refused."""
    r, _ = train(tmp_path)
    assert r["config"]["negatives"] == "hard" and r["config"]["loss"] == "symba"
    r, _ = train(tmp_path, "--loss", "ff")
    assert r["config"]["negatives"] == "hard"
    for extra in (["--loss", "df"], ["--loss", "xent", "--label-encoding", "none", "--layers", "64,10"]):
        r, m = train(tmp_path, *extra)
        assert r["config"]["negatives"] == "uniform" and m.config["loss"] == extra[1]
    assert "hard" in fails(capsys, "--loss", "df", "--negatives", "hard")
    assert "--negatives hard" in fails(capsys, "--loss", "xent", "--label-encoding", "none", "--layers", "64,10",
                                       "--negatives", "hard")


def test_recipe_validation_split_on_the_sample(tmp_path, monkeypatch):
    """A recipe that holds out 5,000 of MNIST's 60,000 training images holds out a tenth of the
    embedded sample (10,000) instead of half; an explicit --val-size is kept; a recipe that holds
    nothing out (val_size 0) holds nothing out of the sample."""
    out = tmp_path / "r.json"
    base = ["train", "--model", "cnn", "--epochs", "1", "--subset", "200", "--threads", "1", "--no-progress",
            "--out", str(out)]
    monkeypatch.setitem(recipes.get("mnist-cnn").settings, "val_size", 0)
    assert cli.main(base) == 0
    r = json.loads(out.read_text())
    assert r["config"]["recipe"] == "mnist-cnn" and r["config"]["val_size"] == 0
    monkeypatch.setitem(recipes.get("mnist-cnn").settings, "val_size", 5000)
    assert cli.main(base) == 0
    r = json.loads(out.read_text())
    assert r["config"]["recipe"] == "mnist-cnn" and r["config"]["val_size"] == 1000
    assert r["config"]["negatives"] == "hard" and r["epochs"][-1]["val_error"]["multi_pass"] is not None
    # each FF layer's validation accuracy alone, per epoch (the CNN's three blocks)
    acc = r["epochs"][-1]["val_block_accuracy"]
    assert len(acc) == 3 and all(0.0 <= a <= 1.0 for a in acc)
    assert cli.main(base + ["--val-size", "300"]) == 0
    assert json.loads(out.read_text())["config"]["val_size"] == 300


def test_head_refit(tmp_path, capsys):
    """--head-refit N: the head zeroed and trained again for N epochs on the frozen blocks
    (fflib.refit_head), its epochs in the JSON; the saved model and test error are after it."""
    r, m = train(tmp_path, "--head-refit", "2", "--head-refit-lr", "0.002", "--val-size", "500")
    assert r["config"]["head_refit"] == 2 and r["config"]["head_refit_lr"] == 0.002
    assert [e["epoch"] for e in r["head_refit"]] == [1, 2] and r["head_refit"][0]["lr"] == pytest.approx(0.002)
    assert "one_pass" in r["head_refit"][-1]["val_error"] and len(r["epochs"]) == 1
    xt, yt = fflib.datasets.load_sample(False)
    assert r["test_error"]["one_pass"] == pytest.approx(fflib.evaluate(m, xt.reshape(len(xt), -1), yt)["one_pass"])
    r, _ = train(tmp_path, "--head-refit", "1")
    assert r["config"]["head_refit_lr"] == 1e-4
    r, _ = train(tmp_path)
    assert r["head_refit"] is None and r["config"]["head_refit"] == 0
    assert "--head-refit" in fails(capsys, "--head-refit", "0")
    assert "give both" in fails(capsys, "--head-refit-lr", "0.01")
    assert "--head-refit-lr" in fails(capsys, "--head-refit", "1", "--head-refit-lr", "-1")
    assert "--head-blocks" in fails(capsys, "--head-refit", "1", "--head-blocks", "none")


def test_recipe_head_refit_gives_way_to_a_model_without_head(tmp_path, data_dir):
    """The FF_optimal recipe refits its head after training; with --head-blocks none there is no
    head to refit, and the run goes on without (an explicit --head-refit is refused)."""
    if not (data_dir / "cifar10").exists() and not (data_dir / "cifar-10-batches-bin").exists():
        pytest.skip("CIFAR-10 not found")
    out = tmp_path / "r.json"
    base = ["train", "--model", "ff_optimal", "--dataset", "cifar10", "--data-dir", str(data_dir), "--epochs", "1",
            "--subset", "64", "--threads", "1", "--no-progress", "--out", str(out)]
    assert cli.main(base) == 0
    r = json.loads(out.read_text())
    assert r["config"]["head_refit"] == 5 and len(r["head_refit"]) == 5
    assert cli.main(base + ["--head-blocks", "none"]) == 0
    r = json.loads(out.read_text())
    assert r["config"]["head_refit"] == 0 and r["head_refit"] is None and r["test_error"]["one_pass"] is None
    with pytest.raises(SystemExit):
        cli.main(base + ["--head-blocks", "none", "--head-refit", "2"])


def test_head_blocks(tmp_path, capsys):
    r, m = train(tmp_path, "--layers", "48,32,24", "--head-blocks=-1")
    assert m._head_layers == [m.blocks[-1][1] - 1]
    r, m = train(tmp_path, "--head-blocks", "none")
    assert not m.has_head and r["test_error"]["one_pass"] is None
    assert "--head-blocks" in fails(capsys, "--head-blocks", "last")
    assert "head_blocks" in fails(capsys, "--head-blocks", "5")


def test_cwcomp_without_head_and_with_a_label_loss(tmp_path, capsys):
    """cwcomp's recipe trains head-only epochs; --head-blocks none drops them (as it drops a
    recipe's head refit) and the run reports the multi-pass error alone, not 'one-pass nan%'.
    A loss that reads the label from the input is refused for cwcomp (it takes none) up front."""
    out = tmp_path / "r.json"
    base = ["train", "--model", "cwcomp", "--epochs", "1", "--subset", "300", "--threads", "1", "--no-progress"]
    assert cli.main(base + ["--head-blocks", "none", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["config"]["head_epochs"] == 0 and len(r["epochs"]) == 1 and r["test_error"]["one_pass"] is None
    assert "nan" not in text and f"test error: multi-pass {r['test_error']['multi_pass']:.2f}% (no one-pass head)" in text
    for loss in ("ff", "symba", "df"):
        with pytest.raises(SystemExit) as e:
            cli.main(base + ["--loss", loss])
        assert e.value.code == 2
        assert f"--loss {loss} reads the label from the input, and cwcomp takes no label" in capsys.readouterr().err


def test_multipass_blocks(tmp_path, capsys):
    r, m = train(tmp_path, "--multipass-blocks=-1")
    xt, yt = fflib.datasets.load_sample(False)
    want = fflib.evaluate(m, xt.reshape(len(xt), -1), yt, multipass_blocks=[-1])["multi_pass"]
    assert r["test_error"]["multi_pass"] == pytest.approx(want)
    assert r["config"]["multipass_blocks"] == [-1]
    assert "--multipass-blocks" in fails(capsys, "--multipass-blocks", "a")
    assert "blocks" in fails(capsys, "--multipass-blocks", "7")
    # eval takes the same block list, negative indices too (its parser took only >= 0 before)
    saved = tmp_path / "m.npz"
    m.save(str(saved))
    capsys.readouterr()
    assert cli.main(["eval", str(saved), "--multipass-blocks=-1"]) == 0
    assert f"multi-pass {want:.2f}%" in capsys.readouterr().out


def test_windows(tmp_path, capsys):
    r, m = train(tmp_path, "--windows", "0:1,1:2")
    ep = r["epochs"]
    assert len(ep) == 2 and r["config"]["windows"] == [[0, 1], [1, 2]]
    assert r["config"]["epochs"] == 2      # the run's length, not --epochs (which windows override)
    assert ep[0]["block_loss"][0] > 0 and ep[0]["block_loss"][1] == 0     # block 1 waits
    assert ep[1]["block_loss"][0] == 0 and ep[1]["block_loss"][1] > 0     # block 0 is done
    assert "START:END" in fails(capsys, "--windows", "0-1,1-2")
    assert "START < END" in fails(capsys, "--windows", "2:1,1:2")
    assert "one (start, end) per block" in fails(capsys, "--windows", "0:1")
    assert "--order" in fails(capsys, "--windows", "0:1,0:1", "--order", "layerwise")


def test_pvn_weight(tmp_path, capsys, monkeypatch):
    """A CwC model trains for minutes even on the sample, so fit and evaluate are stood in for:
    the flag must reach the model's loss settings."""
    seen = {}

    def fake_fit(model, *a, **k):
        seen["model"] = model
        return {"epochs": [], "train_seconds": 0.0, "interrupted": False}

    monkeypatch.setattr(fflib, "fit", fake_fit)
    monkeypatch.setattr(fflib, "evaluate", lambda *a, **k: {"multi_pass": 50.0, "one_pass": 50.0,
                                                            "block_accuracy": []})
    assert cli.main(["train", "--model", "cwcomp", "--pvn-weight", "0.3", "--epochs", "1", "--no-progress"]) == 0
    assert seen["model"].config["pvn_weight"] == pytest.approx(0.3) and seen["model"].config["loss"] == "cwc"
    assert "--pvn-weight" in fails(capsys, "--pvn-weight", "1.5")
    assert "does not apply to --loss symba" in fails(capsys, "--pvn-weight", "0.5")


def test_early_exit_train_and_eval(tmp_path, capsys):
    r, m = train(tmp_path, "--layers", "48,32,24", "--val-size", "1000", "--early-exit")
    out = capsys.readouterr().out
    assert "early exit (multipass, softmax)" in out and "mean blocks used" in out and "MACs saved" in out
    for mode in ("multipass", "onepass"):
        e = r["early_exit"][mode]
        assert 1 <= e["mean_blocks"] <= e["max_blocks"] and 0 <= e["macs_saved_per_image"] <= e["full_macs_per_image"]
        assert 0 <= e["test_accuracy"] <= 100
    assert "--val-size" in fails(capsys, "--early-exit")
    assert "--early-exit" in fails(capsys, "--early-exit", "entropy", "--val-size", "10")
    res = tmp_path / "e.json"
    assert cli.main(["eval", str(tmp_path / "m.npz"), "--early-exit", "lightff", "--val-size", "1000",
                     "--threads", "1", "--out", str(res)]) == 0
    assert "early exit (multipass, lightff)" in capsys.readouterr().out
    e = json.loads(res.read_text())["early_exit"]["multipass"]
    assert e["rule"] == "lightff" and np.isfinite(e["mean_blocks"])


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--pvn-weight", "--alpha", "--optimizer", "--momentum", "--weight-decay", "--loss",
                 "--label-encoding", "--head-blocks", "--multipass-blocks", "--windows", "--early-exit"):
        assert flag in text
    assert "xent" in text and "none" in text


def test_augment_reaches_the_mlp(tmp_path):
    """--augment on the MLP: it takes the images as images (fit refuses augmentation of flat
    inputs), so the shifts change its training; without --augment it stays flat."""
    r, m = train(tmp_path, "--augment", "crop2", "--subset", "1000")
    assert m.input_shape == (1, 28, 28) and r["config"]["augment"] == "crop2"
    r0, m0 = train(tmp_path, "--subset", "1000")
    assert m0.input_shape == (784, 1, 1)
    assert r["epochs"][0]["block_loss"] != r0["epochs"][0]["block_loss"]


def test_head_epochs(tmp_path, capsys):
    """--head-epochs N: N epochs of the one-pass head alone on the frozen blocks after the blocks'
    epochs (fit's head_epochs): the blocks end as without it, the head does not."""
    r0, m0 = train(tmp_path, "--no-cooldown", "--head-blocks", "0,1")
    r, m = train(tmp_path, "--no-cooldown", "--head-blocks", "0,1", "--head-epochs", "2")
    assert len(r["epochs"]) == 3 and r["config"]["head_epochs"] == 2 and r0["config"]["head_epochs"] == 0
    for a, b in zip(m0.parameters()[:-2], m.parameters()[:-2]):     # the blocks (the head is last)
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(m0.head_weight, m.head_weight)
    assert "--head-epochs" in fails(capsys, "--head-epochs", "0")
    assert "--head-epochs" in fails(capsys, "--head-epochs", "1", "--head-blocks", "none")


def test_block_thresholds(tmp_path, capsys):
    r, m = train(tmp_path, "--loss", "ff", "--block-thresholds", "3,0.5")
    assert m.config["block_thresholds"] == [3.0, 0.5] and r["config"]["block_thresholds"] == [3.0, 0.5]
    assert "one threshold per block" in fails(capsys, "--loss", "ff", "--block-thresholds", "1,2,3")
    assert "do not apply to --loss symba" in fails(capsys, "--block-thresholds", "1,2")
    assert "--block-thresholds" in fails(capsys, "--loss", "ff", "--block-thresholds", "1,nan")
    assert "does not apply to --method uff" in fails(capsys, "--method", "uff", "--block-thresholds", "1,2")


def test_norm_reaches_a_cwc_models_head_only_when_given(tmp_path):
    """--norm on a CwC model sets its one-pass head's input normalisation; without it the model
    keeps its own (cwcomp: none), not the MLP default the recipes fill in."""
    base = ["train", "--model", "cwcomp", "--epochs", "1", "--subset", "64", "--threads", "1", "--no-progress",
            "--seed", "1"]
    for extra, want in (([], "none"), (["--norm", "rms"], "rms")):
        out, save = tmp_path / "r.json", tmp_path / "m.npz"
        assert cli.main([*base, *extra, "--out", str(out), "--save", str(save)]) == 0
        assert json.loads(out.read_text())["config"]["norm"] == want
        assert fflib.FFModel.load(save).config["norm"] == want


def test_a_recipes_norm_reaches_a_cwc_models_head(tmp_path, monkeypatch):
    """A recipe that names its norm gives it as the flag does (the fashion-mnist-cwcomp run of
    session 9 asked for --norm rms through its recipe and trained without it)."""
    from fflib import recipes
    r = recipes.Recipe("test-cwcomp-rms", "cwcomp", "mnist", "test", dict(recipes._CWCOMP, norm="rms", epochs=1),
                       default=False)
    monkeypatch.setitem(recipes.RECIPES, r.name, r)
    base = ["train", "--recipe", r.name, "--dataset", "sample", "--subset", "64", "--threads", "1",
            "--no-progress"]
    for extra, want in (([], "rms"), (["--norm", "none"], "none")):
        out = tmp_path / "r.json"
        assert cli.main([*base, *extra, "--out", str(out)]) == 0
        assert json.loads(out.read_text())["config"]["norm"] == want


# bars: measured 10.05 / 12.00 (neg-mean) and 13.25 / 22.25 (neg-sum) %, mean goodness 9.25 / 8.95
@pytest.mark.parametrize("goodness, threshold, bar", [("neg-mean", -1.0, 16), ("neg-sum", -48.0, 28)])
def test_negative_goodness(tmp_path, capsys, goodness, threshold, bar):
    """--goodness neg-mean / neg-sum (Hinton's "min ssq"): the FF loss's default threshold is
    negated, and the model learns (the least active label wins multi-pass)."""
    r, m = train(tmp_path, "--goodness", goodness, "--loss", "ff", "--epochs", "3")
    assert m.config["goodness"] == r["config"]["goodness"] == goodness
    assert m.config["threshold"] == threshold
    xt, _ = fflib.datasets.load_sample(False)
    g = m.goodness(xt[:200])
    assert np.all(g <= 0)
    np.testing.assert_array_equal(m.predict_multipass(xt[:200]), g.sum(axis=2).argmax(axis=1))
    assert r["test_error"]["multi_pass"] < bar and r["test_error"]["one_pass"] < bar
    assert "--goodness" in fails(capsys, "--goodness", "max")


def test_negative_goodness_is_refused_without_labels(capsys):
    """Label-free methods train real images as positives: minus the goodness would silence the
    features the probe reads (85 % probe error on the sample against 28 %), so it is refused."""
    for method in ("scff", "hybrid"):
        assert "needs goodness 'sum' or 'mean'" in fails(capsys, "--method", method, "--goodness", "neg-mean")
    m = fflib.FFModel(fflib.mlp([784, 20]), 784, 10, label_encoding="none", loss="ff", goodness="neg-sum",
                      threshold=-3.0)
    x, y = fflib.datasets.load_sample(True)
    with pytest.raises(ValueError, match="needs goodness 'sum' or 'mean', got 'neg-sum'"):
        fflib.fit(m, x[:100].reshape(100, -1), y[:100], method="scff", epochs=1)


def test_ff_loss_on_negative_goodness_needs_a_negative_threshold(capsys):
    """Minus the goodness is <= 0: a threshold >= 0 would leave the positive rows nothing to
    reach (a silent non-learner), so FFModel and the CLI refuse it, naming the setting."""
    layers = lambda: fflib.mlp([784, 20, 20])  # noqa: E731
    with pytest.raises(ValueError, match="needs a negative threshold.*got 2.0"):
        fflib.FFModel(layers(), 784, 10, goodness="neg-mean")          # FFModel's default threshold
    with pytest.raises(ValueError, match=r"negative block_thresholds\[1\]"):
        fflib.FFModel(layers(), 784, 10, goodness="neg-sum", block_thresholds=[-1.0, 3.0])
    with pytest.raises(ValueError, match="negative threshold"):
        fflib.FFModel(layers(), 784, 10, goodness="neg-sum", threshold=1e-60)   # 0 in float32
    m = fflib.FFModel(layers(), 784, 10, goodness="neg-mean", threshold=-1.0)
    with pytest.raises(ValueError, match="negative threshold"):
        m.set_config(threshold=0.5)
    fflib.FFModel(layers(), 784, 10, goodness="neg-mean", loss="symba")      # SymBa has no threshold
    assert "needs a negative threshold" in fails(capsys, "--goodness", "neg-mean", "--loss", "ff", "--threshold", "1")


def test_channels_sets_a_channel_group_models_widths(tmp_path, capsys, monkeypatch):
    """--channels widens or narrows cwcomp and the light models from the command line as
    channels= does in Python (a wider CwComp had no command before): the JSON records the widths
    the model has (cwcomp's rounded up to multiples of 10, its blocks 2 and 4 being grouped
    convolutions), the saved model keeps them, and a recipe may name them; elsewhere it is refused."""
    from fflib import recipes
    base = ["train", "--model", "cwcomp", "--epochs", "1", "--subset", "200", "--threads", "1", "--no-progress",
            "--head-blocks", "none"]
    for extra, want in (([], [20, 80, 240, 480]), (["--channels", "10,30,50,70"], [10, 30, 50, 70]),
                        (["--channels", "15,25,35,41"], [20, 30, 40, 50])):
        out, save = tmp_path / "r.json", tmp_path / "m.npz"
        assert cli.main([*base, *extra, "--out", str(out), "--save", str(save)]) == 0
        r = json.loads(out.read_text())
        assert r["config"]["channels"] == want
        m = fflib.FFModel.load(save)
        assert [l.out_channels for l in m.layers if l.kind == "conv2d"] == want
        built = fflib.models.build("cwcomp", "mnist", channels=want, head_blocks=None)
        assert r["config"]["num_params"] == m.num_parameters() == built.num_parameters()
    capsys.readouterr()
    # a recipe's widths, and a flag over them
    rec = recipes.Recipe("test-cwcomp-narrow", "cwcomp", "mnist", "test",
                         dict(recipes._CWCOMP, channels=[10, 20, 30, 40], epochs=1), default=False)
    monkeypatch.setitem(recipes.RECIPES, rec.name, rec)
    rbase = ["train", "--recipe", rec.name, "--dataset", "sample", "--subset", "200", "--threads", "1",
             "--no-progress", "--head-blocks", "none"]
    for extra, want in (([], [10, 20, 30, 40]), (["--channels", "10,10,20,20"], [10, 10, 20, 20])):
        out = tmp_path / "r.json"
        assert cli.main([*rbase, *extra, "--out", str(out)]) == 0
        assert json.loads(out.read_text())["config"]["channels"] == want
    # the other models' runs record none
    out = tmp_path / "r.json"
    assert cli.main(["train", "--epochs", "1", "--subset", "200", "--threads", "1", "--no-progress",
                     "--out", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["channels"] is None
    capsys.readouterr()
    for args, msg in ((["--model", "mlp"], "--model mlp has its hidden sizes in --layers"),
                      (["--model", "cnn"], "--model cnn has the survey's fixed widths"),
                      (["--method", "scff"], "--model mlp has its hidden sizes in --layers"),
                      (["--model", "cwcomp", "--channels", "10,20"], "channels must be 4 positive ints"),
                      (["--model", "cwcomp", "--channels", "10,0,20,30"], "--channels: expected positive integers")):
        with pytest.raises(SystemExit) as e:
            cli.main(["train", "--epochs", "1", "--subset", "64", *(["--channels", "10,20"] if "--channels" not in args
                                                                    else []), *args])
        assert e.value.code == 2
        assert msg in capsys.readouterr().err, args
