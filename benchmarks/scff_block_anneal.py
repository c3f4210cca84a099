"""Do SCFF's features gain from annealing the blocks' rate inside the label-free phase?  The
``mnist-mlp-scff`` recipe keeps the blocks at a constant Adam 3e-3 for its 20 label-free epochs
(its linear cooldown covers the probe's epochs only); the SCFF authors decay layer 1's rate x0.9
every 1,000 batches and layer 2's x0.6 every 1,500 (Chen et al. 2025; docs/studies/scff-recipe.md,
section 4).  This script trains the recipe on the first 55,000 MNIST training images with the
blocks' rate multiplied by ``--decay`` every 1,000 batches (0.9: the authors' layer-1 decay, to
0.31x after 20 epochs of 550 batches) and scores the linear probe on the last 5,000 after every
probe epoch (never the test set).  The probe's epochs are the recipe's: its rate (1e-3) cooled
linearly to 0 over them, as the recipe's LinearCooldown over the whole run does.  ``--decay 1``
is the recipe itself.

    FFLIB_DATA=../shared/data python benchmarks/scff_block_anneal.py --decay 0.9 \\
        --out benchmarks/results/recipe_study/mnist-mlp-scff/block-anneal.json
"""
import fflib
from fflib import Adam, LinearCooldown
from fflib.unsupervised import scff_mlp
from scff_pair_norm import mnist_split, run_on_validation, study_parser


def main(argv=None):
    p = study_parser(__doc__)
    p.add_argument("--decay", type=float, default=0.9)
    a = p.parse_args(argv)
    if not 0.0 < a.decay <= 1.0:
        p.error(f"--decay must be in (0, 1], got {a.decay}")
    fflib.set_num_threads(a.threads)
    x, y, xv, yv = mnist_split(a.root)
    model = scff_mlp((2000, 2000), (1, 28, 28), 4.0, first_scale=2.0, seed=a.seed)
    model.set_config(head_dropout=0.2)
    opt = Adam(model, lr=3e-3, head_lr=1e-3)
    # decay per 1,000 minibatches as a factor per epoch (100 images a minibatch), restarting at the
    # full rate for the probe's linear cooldown
    sched = LinearCooldown(opt, a.epochs + a.head_epochs, start=a.epochs,
                           decay=a.decay ** (len(x) // 100 / 1000.0))
    run_on_validation(model, opt, sched, x, y, xv, yv, a.epochs, a.head_epochs, a.out,
                      {"decay_per_1000_batches": a.decay, "seed": a.seed})


if __name__ == "__main__":
    main()
