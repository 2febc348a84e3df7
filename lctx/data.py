"""grain input pipeline: conversation records -> chat tokens -> packed, static-shape batches.

    ArrayRecord shards (`lctx.conversation/v1` JSON)
      -> one global stream: `epochs` epochs (or endless), each a seeded permutation of all
         records; process p of P takes elements p, p+P, p+2P, ... (every record once per
         epoch); a finite stream ends, and the iterator with it, after its last epoch
      -> render with the chat format: (ids, loss_mask); loss only on assistant answers
      -> next-token pairs per document: inputs = ids[:-1], targets = ids[1:],
         weights = loss_mask[1:] (so a document's last token never predicts the next one)
      -> overlong documents truncated or dropped (by config; counted in `stats`)
      -> first-fit packing (or padding: one document a row) to `seq_len`, with segment ids
         (0 = padding) and per-document positions
      -> batch of `batch_size // process_count` rows
      -> the ring's token layout along T when the mesh has a context axis > 1 (zigzag, or
         balanced per row: `lctx.layout`; ring load balance)

Every batch is a dict of int32 / float32 numpy arrays of shape [B, T] with keys
`inputs`, `targets`, `weights`, `segment_ids`, `positions`. Iterators are grain
`DatasetIterator`s: `get_state()` / `set_state()` round-trip exactly and are saved with the
model by `lctx.checkpoint`.
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
from typing import Callable

import grain
import numpy as np

from lctx import layout
from lctx import records as records_lib

# render(messages) -> (ids, loss_mask): the chat format (lctx.tokenizer.ChatFormat.render).
RenderFn = Callable[[list[dict[str, str]]], tuple[list[int], list[int]]]
KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


class DataError(ValueError):
    """Bad data configuration or input; the message names the field and the fix."""


@dataclasses.dataclass
class Stats:
    """Per-process document counters since the pipeline was built (not checkpointed)."""
    documents: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    loss_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def resolve_paths(path: str) -> list[str]:
    """Expands `data.path` (a glob or comma-separated globs) into sorted shard paths."""
    if not path:
        raise DataError("data.path is empty: set --config.data.path to a glob of ArrayRecord "
                        "shards")
    paths = sorted({p for pat in path.split(",") for p in glob.glob(os.path.expanduser(pat))})
    if not paths:
        raise DataError(f"data.path={path!r} matches no files; check the path or generate "
                        "the data first (datagen)")
    return paths


class _Render(grain.transforms.Map):
    """Record bytes -> next-token document arrays (inputs, targets, weights)."""

    def __init__(self, render: RenderFn, seq_len: int, overlong: str, stats: Stats,
                 num_records: int):
        self.render, self.seq_len, self.overlong, self.stats = render, seq_len, overlong, stats
        # Dropping every record of a whole epoch would make the endless stream spin forever.
        self.num_records, self.dropped_in_a_row = num_records, 0

    def map(self, data: bytes) -> dict[str, np.ndarray] | None:
        rec = records_lib.decode(data)
        if not records_lib.has_assistant_turn(rec):
            raise records_lib.RecordError(
                f"record {rec['id']!r} has no non-empty assistant turn, so it has no tokens "
                "to train on (loss is on answers only); fix or remove it in the data")
        ids, mask = self.render(rec["messages"])
        ids_T = np.asarray(ids, np.int32)
        w_T = np.asarray(mask, np.float32)
        self.stats.documents += 1
        if len(ids_T) - 1 > self.seq_len:
            if self.overlong == "drop":
                self.stats.dropped += 1
                self.dropped_in_a_row += 1
                if self.dropped_in_a_row >= self.num_records:
                    raise DataError(
                        f"all {self.num_records} records are longer than the stage length "
                        f"seq_len={self.seq_len} (+1) with data.overlong='drop': nothing to "
                        "train on; use overlong='truncate' or a longer stage")
                return None
            self.stats.truncated += 1
            ids_T, w_T = ids_T[: self.seq_len + 1], w_T[: self.seq_len + 1]
        self.dropped_in_a_row = 0
        doc = {"inputs": ids_T[:-1], "targets": ids_T[1:], "weights": w_T[1:]}
        self.stats.tokens += len(doc["inputs"])
        self.stats.loss_tokens += int(doc["weights"].sum())
        return doc


def _finish_packed(ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"inputs": ex["inputs"], "targets": ex["targets"], "weights": ex["weights"],
            "segment_ids": ex["inputs_segment_ids"], "positions": ex["inputs_positions"]}


def _pad_one(seq_len: int) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    def pad(doc):
        n = len(doc["inputs"])
        out = {k: np.zeros(seq_len, v.dtype) for k, v in doc.items()}
        for k, v in doc.items():
            out[k][:n] = v
        out["segment_ids"] = (np.arange(seq_len) < n).astype(np.int32)
        out["positions"] = np.where(out["segment_ids"] > 0, np.arange(seq_len), 0).astype(np.int32)
        return out
    return pad


def make_dataset(paths: list[str], render: RenderFn, *, seq_len: int, batch_size: int,
                 seed: int = 0, pack: bool = True, packing_bins: int = 8,
                 overlong: str = "truncate", context_shards: int = 1,
                 ring_layout: str = "zigzag", ring_blocks: tuple[int, int] = (512, 512),
                 process_index: int = 0, process_count: int = 1,
                 stats: Stats | None = None, read_threads: int = 2,
                 read_buffer: int = 32, epochs: int | None = None) -> grain.IterDataset:
    """Builds the per-process batch dataset described in the module docstring.

    Args:
      paths: ArrayRecord shard paths.
      render: chat-format renderer, messages -> (ids, loss_mask).
      seq_len: T, tokens per row (the stage length).
      batch_size: global batch (rows per step over all processes).
      seed: shuffle seed (epoch e is reshuffled from it).
      pack: first-fit pack several documents a row; else one document a row, padded.
      packing_bins: rows packed at once (more bins, less padding).
      overlong: 'truncate' or 'drop' documents longer than seq_len + 1 tokens.
      context_shards: size of the mesh's context axis; > 1 applies the ring's layout.
      ring_layout: that layout, 'zigzag' | 'balanced' (`lctx.layout.batch_layout`).
      ring_blocks: the ring's configured (block_q, block_k); 'balanced' moves whole blocks.
      process_index, process_count: this JAX process among all.
      stats: optional counters filled while iterating (in this process).
      read_threads, read_buffer: records read and rendered ahead by that many threads, at
        most `read_buffer` ahead (grain.ReadOptions; the order does not depend on them).
      epochs: passes over the records before the iterator ends (None: endless). The first
        batches do not depend on it: the stream is the same until it ends.
    """
    if overlong not in ("truncate", "drop"):
        raise DataError(f"data.overlong={overlong!r}; expected 'truncate' or 'drop'")
    if read_threads < 0 or read_buffer < 0:
        raise DataError(f"data.read_threads={read_threads} and data.read_buffer={read_buffer} "
                        "must be >= 0 (0: read in the consuming thread, no read-ahead)")
    if epochs is not None and epochs < 1:
        raise DataError(f"data.epochs={epochs} must be >= 1")
    if batch_size % process_count:
        raise DataError(f"data.batch_size={batch_size} must be divisible by the number of "
                        f"JAX processes ({process_count})")
    source = grain.sources.ArrayRecordDataSource(paths)
    n = len(source)
    if n < process_count:
        raise DataError(f"{n} records in {paths[:3]}... cannot be shared by "
                        f"{process_count} processes")
    stats = stats if stats is not None else Stats()
    records_ds = grain.MapDataset.source(source)

    # One global stream of epochs, each a permutation of all records seeded by (seed, epoch);
    # process p takes stream elements p, p + P, p + 2P, ... With pack=False a global batch
    # then holds the same documents whatever the number of processes.
    def pick(i: int, _) -> bytes:
        g = i * process_count + process_index
        j = grain.experimental.index_shuffle(g % n, max_index=n - 1, seed=seed + g // n,
                                             rounds=4)
        return records_ds[j]

    if epochs is None:
        ds = grain.MapDataset.range(n).repeat(None)
    else:  # this process's share of the n * epochs stream elements
        ds = grain.MapDataset.range((n * epochs - process_index + process_count - 1)
                                    // process_count)
    ds = ds.map_with_index(pick)
    ds = ds.map(_Render(render, seq_len, overlong, stats, n)).filter(lambda d: d is not None)
    # grain's default read-ahead (16 threads, 500 records) polls every buffered record on each
    # read; on a 2-core CPU that cost the demo's training steps 30% (configs/common.py).
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=read_buffer))
    if pack:
        lengths = {"inputs": seq_len, "targets": seq_len, "weights": seq_len}
        it = grain.experimental.FirstFitPackIterDataset(
            it, length_struct=lengths, num_packing_bins=packing_bins, seed=seed,
            shuffle_bins=False).map(_finish_packed)
    else:
        it = it.map(_pad_one(seq_len))
    it = it.batch(batch_size // process_count, drop_remainder=True)
    try:
        permute = layout.batch_layout(ring_layout, seq_len, context_shards, *ring_blocks)
    except ValueError as e:
        raise DataError(f"ring layout {ring_layout!r} over {context_shards} context shards: "
                        f"{e}") from e
    return it if permute is None else it.map(permute)


def count_rows(paths: list[str], render: RenderFn, *, seq_len: int, packing_bins: int = 8,
               overlong: str = "truncate") -> int:
    """Packed rows of `seq_len` tokens that one epoch of the records fills (one process)."""
    it = make_dataset(paths, render, seq_len=seq_len, batch_size=1, pack=True,
                      packing_bins=packing_bins, overlong=overlong, epochs=1)
    return sum(1 for _ in it)


def render_fn_from_tokenizer(tokenizer_path: str) -> RenderFn:
    """The Llama-3 chat format over the tokenizer at `tokenizer_path` (SP model or HF dir)."""
    from lctx.tokenizer import ChatFormat, load_tokenizer
    return ChatFormat(load_tokenizer(tokenizer_path)).render


def log_batch_summary(batch: dict[str, np.ndarray]) -> None:
    seg = batch["segment_ids"]
    logging.info("data: batch %s, non-pad %.1f%%, loss tokens %d, documents %d",
                 {k: (v.shape, str(v.dtype)) for k, v in batch.items()},
                 100.0 * (seg > 0).mean(), int(batch["weights"].sum()),
                 int(sum(len(np.unique(r[r > 0])) for r in seg)))
