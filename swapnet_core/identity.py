"""What makes a store the one a configuration asks for: everything that changes its bytes or its trace.

A store converted from one model reference can still hold other weights (random ones, another
checkpoint), another dtype, or a trace of another input shape. Reusing it then serves the wrong
weights without a word, so a cached store is reused only when all of these match.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

RANDOM_SEED = 0  # convert() seeds random weights with it, so they are reproducible


def weights_record(weights: str | os.PathLike | None) -> dict:
    """How a manifest names the weights a store was converted from."""
    if weights is None:
        return {"source": "random", "seed": RANDOM_SEED}
    path = Path(weights).resolve()
    st = path.stat()
    return {"source": str(path), "sha256": file_sha256(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def same_weights(recorded: dict, weights: str | os.PathLike | None) -> bool:
    """Whether `weights` (a checkpoint path, or None for random) are the ones recorded. A checkpoint is
    hashed only when its path, size or mtime differ from the record (a copy, a touched file)."""
    if weights is None:
        return recorded.get("source") == "random" and recorded.get("seed", RANDOM_SEED) == RANDOM_SEED
    path = Path(weights).resolve()
    if recorded.get("source") == "random" or "sha256" not in recorded or not path.is_file():
        return False  # (a missing file: the conversion that follows says so)
    st = path.stat()
    if (recorded.get("source"), recorded.get("bytes"), recorded.get("mtime_ns")) == (str(path), st.st_size, st.st_mtime_ns):
        return True
    return recorded["sha256"] == file_sha256(path)


def identity_mismatch(store, ref: str, *, weights: str | os.PathLike | None = None, input_spec: str | None = None,
                      dtype: str | None = None, slicing: str | None = None) -> str | None:
    """Why `store` is not what (ref, weights, input_spec, dtype, slicing mode) would convert to; None
    if it is. input_spec, dtype and slicing left None are not compared."""
    if store.ref != ref:
        return f"it holds {store.ref}, not {ref}"
    recorded = store.manifest.get("weights", {})
    if not same_weights(recorded, weights):
        had = "random weights" if recorded.get("source") == "random" else f"the weights of {recorded.get('source')}"
        return f"it holds {had}, not {'random weights' if weights is None else f'those of {weights}'}"
    if input_spec is not None and store.default_input != input_spec:
        return f"it was traced with {store.default_input}, not {input_spec}"
    if dtype is not None and store.dtype != dtype:
        return f"it stores {store.dtype}, not {dtype}"
    if slicing is not None and store.slicing.get("mode", "off") != str(slicing):
        return f"its layers were sliced {store.slicing.get('mode', 'off')!r}, not {str(slicing)!r}"
    return None
