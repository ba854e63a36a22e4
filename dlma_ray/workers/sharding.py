"""The order of training rows and their split across Ray Train workers, fixed by the rows' content.

One worker with gradient accumulation and W workers averaging their gradients must take the same optimizer
steps: step s holds the same rows whatever W is. Two things in Ray Data's defaults break that:

- ``random_shuffle(seed)`` permutes rows *as the blocks hold them*, and the pairs table's row and block order
  depends on how many engines and scorers wrote it (whichever actor finished first wrote first);
- ``streaming_split(W, equal=True)`` hands blocks to whichever worker asks next, so which rows meet in one
  optimizer step depends on timing.

So the rows are ordered by a seeded hash of their content (a shuffle that only the seed and the rows decide),
every worker reads that whole ordered table (it is text and small next to the model), and worker r takes the
micro-batches b with ``b % W == r``: global micro-batches ``[s*A*W, (s+1)*A*W)`` form step s for every W
(A = accumulation steps per worker), exactly the micro-batches the single worker accumulates for step s.
"""

from __future__ import annotations

import hashlib

import numpy as np

ORDER_COLUMN = "_order"
# The columns that identify a training row (pairs: prompt, both responses, the negative's index; Self-Contrast's
# grouped rows: the prompt and its lists). Missing columns are skipped.
KEY_COLUMNS = ("prompt_id", "negative_index", "chosen_token_ids", "rejected_token_ids", "chosen", "rejected")


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return str(value)


def order_keys(batch: dict, seed: int) -> np.ndarray:
    """uint64 sort keys: sha256 of (seed, the row's identifying columns). Equal rows get equal keys, so ties
    can only join identical rows, whose order does not matter."""
    cols = [c for c in KEY_COLUMNS if c in batch]
    n = len(batch[cols[0]])
    keys = np.empty(n, dtype=np.uint64)
    for i in range(n):
        text = f"{seed}|" + "|".join(_text(batch[c][i]) for c in cols)
        keys[i] = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return keys


def seeded_order(ds, seed: int):
    """``ds`` sorted by its rows' seeded content hash (kept as column ``_order``, which the workers check),
    materialized: the same order whatever the block layout."""
    def add_key(table):  # pyarrow in and out: the list columns keep their Arrow types
        import pyarrow as pa

        cols = {c: table.column(c).to_pylist() for c in KEY_COLUMNS if c in table.column_names}
        return table.append_column(ORDER_COLUMN, pa.array(order_keys(cols, seed), type=pa.uint64()))

    # The sort's output blocks are its range partitions, in key order; the workers check the order they read.
    return ds.map_batches(add_key, batch_format="pyarrow").sort(ORDER_COLUMN).materialize()


def ingest_config():
    """Ray Train's DataConfig for the ordered table: not split (each worker takes its micro-batches itself),
    read in order."""
    import copy

    from ray.data import DataContext
    from ray.train import DataConfig

    options = copy.deepcopy(DataContext.get_current().execution_options)  # the driver's other stages keep theirs
    options.preserve_order = True
    return DataConfig(datasets_to_split=[], execution_options=options)


def worker_micro_batches(iterator, micro_batch_size: int, rank: int, world: int, limit: int):
    """This worker's share of one epoch: micro-batches b = rank, rank + world, ... of the ordered table
    (numpy dicts, full batches only), at most ``limit`` of them (the epoch's optimizer steps x accumulation)."""
    taken, last = 0, None
    for b, rows in enumerate(iterator.iter_batches(batch_size=micro_batch_size, batch_format="numpy",
                                                    drop_last=True)):
        if taken >= limit:
            return
        keys = rows.get(ORDER_COLUMN)
        if keys is not None:  # the ordered table must arrive in order, or ranks would mix up the steps
            if (last is not None and keys[0] < last) or np.any(np.diff(keys.astype(np.float64)) < 0):
                raise RuntimeError("training rows arrived out of their seeded order: the optimizer steps would "
                                   "depend on the number of workers")
            last = keys[-1]
        if b % world == rank:
            taken += 1
            yield rows
