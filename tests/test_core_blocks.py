"""The block-based C core: blocks owning their loss, errors written by the checker, checked
sizes, safe constructors, gradient views that cost nothing, and a directional gradient check
of every kind of block."""
import numpy as np
import pytest

import fflib
from fflib import _core, models


def _mlp(**kw):
    return fflib.FFModel(fflib.mlp([20, 16, 12]), 20, 4, seed=1, **kw)


def _batch(rng, n=8, d=20, k=4):
    return rng.random((n, d), dtype=np.float32), rng.integers(0, k, n)


def test_enum_tables_come_from_the_core():
    assert _core.LOSSES == {"ff": 0, "symba": 1, "cwc": 2, "pvn": 3, "xent": 4, "df": 5, "ae": 6,
                            "df-cwc": 7}
    assert _core.LAYER_KINDS["conv2d"] == 1 and _core.LAYER_KINDS["lennorm"] == 6
    assert _core.LABEL_ENCODINGS["none"] == 3 and _core.OPTIMIZERS == {"sgd": 0, "adam": 1, "adamw": 2}
    assert fflib.nn.LOSSES == _core.LOSSES and fflib.nn.NORMS == _core.NORMS
    assert (_core.HEAD, _core.EMBEDDING) == (-1, -2)


@pytest.mark.parametrize("shape", [(1073741829, 2, 2), (2**24 + 1, 1, 1), (4096, 4096, 4096)])
def test_oversized_input_shapes_are_refused_in_c(shape):
    # C*H*W once wrapped around in 32-bit int and a predict wrote out of bounds
    with pytest.raises((ValueError, OverflowError), match="input_shape"):
        _core.Net(shape, 4, 0)


def test_seed_out_of_range_and_bad_classes():
    with pytest.raises(ValueError, match="seed must be an int in"):
        _core.Net((3, 1, 1), 2, 2**64)
    with pytest.raises(ValueError, match="num_classes must be in"):
        _core.Net((3, 1, 1), 1, 0)
    with pytest.raises(ValueError, match="num_classes is out of range"):
        _core.Net((3, 1, 1), 2**40, 0)


def test_private_constructors_cannot_crash():
    bare = _core.Net.__new__(_core.Net)
    for call in (bare.info, bare.blocks, bare.get_config, lambda: bare.param(0, 0), bare.zero_grad):
        with pytest.raises(RuntimeError, match="not initialised"):
            call()
    m = _mlp()
    w = m.layers[1].weight
    with pytest.raises(RuntimeError, match="cannot be called again"):
        m._net.__init__((20, 1, 1), 4, 0)
    assert np.isfinite(w).all()            # the view still points at live memory


def test_errors_are_written_where_they_are_checked():
    with pytest.raises(ValueError, match=r"groups must divide the input channels \(3\) and out_channels \(5\)"):
        fflib.FFModel([fflib.Conv2d(3, 5, 3, groups=2), fflib.ReLU()], (3, 8, 8), 4)
    with pytest.raises(ValueError, match="label_encoding '?fourier'? needs an image input"):
        fflib.FFModel(fflib.mlp([20, 8]), 20, 4, label_encoding="fourier")
    net = _core.Net((20, 1, 1), 4, 0)          # the core's own message, below Python's check
    with pytest.raises(ValueError, match="label_encoding fourier needs an image input"):
        net.set_label_encoding(_core.LABEL_ENCODINGS["fourier"])
    m = _mlp()
    with pytest.raises(ValueError, match=r"block 0 = \[0, 0\) is empty"):
        m.set_block_ranges([(0, 0), (0, 6)])
    with pytest.raises(IndexError, match="layer 7 does not exist"):
        m._net.get_opt(7)


def test_a_loss_that_does_not_fit_is_refused_at_construction():
    with pytest.raises(ValueError, match="not divisible by 10"):
        fflib.FFModel(fflib.mlp([784, 32, 16]), 784, 10, loss="cwc", label_encoding="none")
    # the core's own guard, below the Python layer's check, leaves the net as it was
    net = _core.Net((784, 1, 1), 10, 0)
    net.set_label_encoding(_core.LABEL_ENCODINGS["none"])
    for out in (40, 16):
        net.add_linear(out)
        net.add_relu()
    net.finalize()
    with pytest.raises(ValueError, match=r"loss cwc reads 10 channel groups, but block 1 ends in layer 3 \(relu\) "
                                         r"with 16 channels"):
        net.set_config(loss=_core.LOSSES["cwc"])
    assert net.get_config()["loss"] == _core.LOSSES["ff"]
    net.set_config(loss=_core.LOSSES["symba"])   # fits: it then trains on explicit negatives only
    x = np.zeros((2, 784), np.float32)
    with pytest.raises(ValueError, match="label_encoding is none: pass explicit negatives"):
        net.train_step(x, np.zeros(2, np.int64))
    net.train_step(x, None, x_neg=x + 1)


def test_blocks_own_their_loss(rng):
    x, y = _batch(rng)
    neg = (y + 1) % 4
    a, b = _mlp(loss="ff"), _mlp(loss="ff")
    b._net.set_block_loss(1, fflib.nn.LOSSES["symba"], fflib.nn.GOODNESS["sum"], 2.0, 4.0, 0.0)
    la = a.train_step(x, y, neg_labels=neg)
    lb = b.train_step(x, y, neg_labels=neg)
    assert la[0] == lb[0]                      # block 0 kept the net's FF loss
    gpos, gneg = b._net.goodness_labeled(x, y), b._net.goodness_labeled(x, neg)
    # block 1's own loss is SymBa: softplus(-alpha (g+ - g-)) averaged (before the update
    # above changed block 1, so recompute on a fresh copy)
    c = _mlp(loss="ff")
    gp, gn = c._net.goodness_labeled(x, y)[:, 1], c._net.goodness_labeled(x, neg)[:, 1]
    want = np.mean(np.logaddexp(0, -4.0 * (gp.astype(np.float64) - gn)))
    assert lb[1] == pytest.approx(want, rel=1e-5)
    assert np.isfinite(gpos).all() and np.isfinite(gneg).all()
    with pytest.raises(ValueError, match="builds its rows differently"):
        b._net.set_block_loss(0, fflib.nn.LOSSES["cwc"], 0, 2.0, 4.0, 0.0)


def test_block_thresholds_give_each_block_its_own_theta(rng, tmp_path):
    """FFModel(block_thresholds=[t0, t1]): block b's FF loss uses t_b.  Block b's loss and
    update equal those of a model whose one threshold is t_b (the other block inactive); the
    thresholds survive set_config, save/load and a re-cut into as many blocks, and a cut into
    another number of blocks is refused."""
    x, y = _batch(rng)
    neg = (y + 1) % 4
    for b, theta in ((0, 5.0), (1, 0.5)):
        active = np.eye(2, dtype=np.uint8)[b]
        two, one = _mlp(loss="ff", block_thresholds=[5.0, 0.5]), _mlp(loss="ff", threshold=theta)
        l2 = two.train_step(x, y, neg_labels=neg, active=active)
        l1 = one.train_step(x, y, neg_labels=neg, active=active)
        assert l2[b] == l1[b]
        for p2, p1 in zip(two.parameters(), one.parameters()):
            np.testing.assert_array_equal(p2, p1)
    plain = _mlp(loss="ff")
    assert plain.train_step(x, y, neg_labels=neg)[1] != _mlp(loss="ff", block_thresholds=[2.0, 0.5]).train_step(
        x, y, neg_labels=neg)[1]
    m = _mlp(loss="ff", block_thresholds=[5.0, 0.5])
    m.set_config(alpha=3.0)                       # a set_config keeps them (the C core resets blocks)
    assert m.config["block_thresholds"] == [5.0, 0.5]
    m2 = fflib.FFModel.load(m.save(tmp_path / "m.npz"))
    assert m2.config["block_thresholds"] == [5.0, 0.5]
    a, b = _mlp(loss="ff", threshold=0.5), m2
    m2.set_blocks(m2.default_blocks())            # a re-cut into as many blocks re-applies them
    act = np.array([0, 1], np.uint8)
    assert a.train_step(x, y, neg_labels=neg, active=act)[1] == b.train_step(x, y, neg_labels=neg, active=act)[1]
    with pytest.raises(ValueError, match="block_thresholds has 2 values but the model has 1 blocks"):
        m2.set_blocks([m2.default_blocks()[-1]])
    assert len(m2.blocks) == 2
    with pytest.raises(ValueError, match="one threshold per block"):
        _mlp(block_thresholds=[1.0])
    for bad in ("12", [], [1.0, float("nan")]):
        with pytest.raises((ValueError, TypeError), match="block_thresholds"):
            _mlp(block_thresholds=bad)
    c, d = _mlp(loss="ff", threshold=0.5), _mlp(loss="ff", block_thresholds=[2.0, 0.5])
    d._net.set_share_labels(False)               # recompiling the plans keeps the blocks' own losses
    assert c.train_step(x, y, neg_labels=neg, active=act)[1] == pytest.approx(
        d.train_step(x, y, neg_labels=neg, active=act)[1], rel=1e-5)    # unshared: equal up to rounding
    m2.set_config(block_thresholds=None)
    assert m2.config["block_thresholds"] is None
    m2.set_blocks([m2.default_blocks()[-1]])      # free to re-cut again


def test_gradient_views_do_not_change_memory(rng):
    x, y = _batch(rng)
    m = _mlp()
    assert m.layers[1].grad_weight is None     # nothing allocated by reading
    m.train_step(x, y)
    assert m.layers[1].grad_weight is None     # a fused step keeps no full gradient arena
    ws = m.workspace_bytes
    m.compute_grads(x, y)
    g = m.layers[1].grad_weight
    assert g is not None and np.abs(g).sum() > 0
    before = g.copy()
    m.train_step(x, y)                         # lean again: the arena keeps compute_grads' values
    np.testing.assert_array_equal(m.layers[1].grad_weight, before)
    assert m.workspace_bytes == ws


@pytest.mark.parametrize("name", ["mlp_ff", "mlp_symba_head", "cnn_embedding", "cwc_embedding", "cwcomp",
                                  "overlap"])
def test_directional_gradient_check(name, rng):
    """ff_net_check_grad on every block (and the head) of each kind of network: the local
    gradient of a block's loss against a central difference along a random direction."""
    if name == "mlp_ff":
        m, (x, y) = _mlp(loss="ff", head_blocks=None), _batch(rng)
        neg = (y + 1) % 4
    elif name == "mlp_symba_head":
        m, (x, y) = _mlp(loss="symba", goodness="mean"), _batch(rng)
        neg = (y + 2) % 4
    elif name == "overlap":
        m = fflib.FFModel(fflib.mlp([20, 16, 12, 8]), 20, 4, loss="symba", seed=1)
        x, y = _batch(rng)
        m.set_block_ranges([(0, 6), (3, 9)])
        neg = (y + 3) % 4
    elif name == "cnn_embedding":
        layers = models.conv_block(2, 6, 3, padding=1, pool=2) + models.conv_block(6, 8, 3, padding=1)
        m = fflib.FFModel(layers, (1, 8, 8), 4, loss="symba", label_encoding="embedding", seed=2)
        x, y = rng.random((6, 64), dtype=np.float32), rng.integers(0, 4, 6)
        neg = (y + 1) % 4
    elif name == "cwc_embedding":
        # label-free loss: every row carries the mean label map, so each map gets 1/K of its
        # gradient (it once went to the row's own label's map)
        layers = models.conv_block(2, 8, 3, padding=1, pool=2) + models.conv_block(8, 8, 3, padding=1)
        m = fflib.FFModel(layers, (1, 8, 8), 4, loss="cwc", label_encoding="embedding", seed=2)
        x, y = rng.random((6, 64), dtype=np.float32), rng.integers(0, 4, 6)
        neg = None
    else:
        m = models.build("cwcomp", "mnist", seed=3, channels=(10, 20, 20, 30))
        x, y = rng.random((6, 784), dtype=np.float32), rng.integers(0, 10, 6)
        neg = None
    y = y.astype(np.int64)
    neg = None if neg is None else neg.astype(np.int64)
    for b in range(m.num_blocks + int(m.has_head)):
        fd, an, rel = m._net.check_grad(x, y, neg, b, 1e-3, 7 + b)
        assert abs(an) > 1e-6, f"{name} block {b}: the direction must move the loss"
        # max pooling and batch norm make the CwComp loss less smooth along the direction
        assert rel < (3e-2 if name == "cwcomp" else 1e-2), f"{name} block {b}: directional derivative {an:.6g} against {fd:.6g} ({rel:.3g})"


def test_the_binding_refuses_other_byte_orders(rng):
    m = _mlp()
    x, y = _batch(rng)
    with pytest.raises(ValueError, match="x has non-native byte order"):
        m._net.train_step(x.astype(">f4"), y)
    with pytest.raises(ValueError, match="labels has non-native byte order"):
        m._net.train_step(x, y.astype(">i8"))
    with pytest.raises(ValueError, match="x has non-native byte order"):
        m._net.goodness(x.astype(">f4"))


def test_head_layers_and_head_blocks_say_what_the_head_reads(tmp_path):
    m = fflib.FFModel(fflib.mlp([20, 16, 12, 8]), 20, 4)            # "auto": every block but the first
    assert m.head_blocks == (1, 2) and m.head_layers == tuple(m.blocks[b][1] - 1 for b in (1, 2))
    m = fflib.FFModel(fflib.mlp([20, 16, 12, 8]), 20, 4, head_blocks=[-1, 0])
    assert m.head_blocks == (0, 2) and m.head_layers == (m.blocks[0][1] - 1, m.blocks[2][1] - 1)
    assert m.has_head and m.head_weight.shape == (4, 16 + 8)
    m = fflib.FFModel(fflib.mlp([20, 16, 12, 8]), 20, 4, head_blocks=None)
    assert m.head_blocks == () and m.head_layers == () and not m.has_head
    cnn = models.build("cnn", "mnist")
    assert cnn.head_layers == tuple(cnn.blocks[b][1] - 1 for b in cnn.head_blocks) and cnn.head_blocks
    with pytest.raises(AttributeError):
        cnn.head_blocks = (0,)
    cnn.save(tmp_path / "cnn.npz")
    loaded = fflib.FFModel.load(tmp_path / "cnn.npz")
    assert loaded.head_blocks == cnn.head_blocks and loaded.head_layers == cnn.head_layers
