"""Training routines as ways of cutting a model's layers into locally trained blocks.

A *unit* is one FF layer of the model's default cut (a Linear/Conv2d with the LenNorm /
BatchNorm2d / Flatten before it and the ReLU / MaxPool2d after it).  The survey's routines
group units into blocks; gradients flow inside a block and never between blocks:

- ``greedy``: every unit alone (Hinton's original FF);
- ``chunked``: non-overlapping chunks of ``n`` consecutive units;
- ``overlapping``: chunks of ``n`` units, each starting at the previous chunk's last unit
  (that unit is trained by both chunks' losses);
- ``backprop``: one block holding the whole network (the end-to-end baseline, trained by the
  same loss at its output).

With ``alternate=True`` the chunking shifts by one unit every iteration (chunks starting at
unit 0, then chunks after a first chunk of one unit), so that no chunk boundary stays fixed.
The two chunkings may have different block counts (4 units in chunks of 2: units 0-1 and 2-3,
then 0, 1-2 and 3); :func:`fflib.fit` keeps one loss record per chunking.
"""

ROUTINES = ("greedy", "chunked", "overlapping", "backprop")


def unit_ranges(model):
    """The (first, last) layer range of every unit."""
    ends = model.default_blocks()
    return [(ends[i - 1] if i else 0, e) for i, e in enumerate(ends)]


def block_ranges(model, routine="greedy", chunk_size=2, shift=0):
    """Block ranges for ``routine`` (see the module docstring); ``shift`` = 1 gives the
    alternate chunking (a first chunk of one unit)."""
    units = unit_ranges(model)
    n_units = len(units)
    if routine not in ROUTINES:
        raise ValueError(f"routine must be one of {ROUTINES}, got {routine!r}")
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    n = int(chunk_size)
    if routine == "greedy" or n_units == 1:
        return units
    if routine == "backprop":
        return [(0, units[-1][1])]
    if routine == "overlapping":
        if n < 2:
            raise ValueError("overlapping chunks need chunk_size >= 2")
        groups, start = [], 0
        while True:
            stop = min(start + n, n_units)
            groups.append((start, stop))
            if stop == n_units:
                break
            start = stop - 1
    else:  # chunked
        bounds = [0] + list(range(1 if shift % 2 and n > 1 else n, n_units, n)) + [n_units]
        bounds = sorted(set(bounds))
        groups = list(zip(bounds[:-1], bounds[1:]))
    return [(units[a][0], units[b - 1][1]) for a, b in groups]
