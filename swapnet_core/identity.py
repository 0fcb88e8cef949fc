"""What makes a store the one a configuration asks for: everything that changes its bytes or its trace.

A store converted from one model reference can still hold other weights (random ones, another
checkpoint), another dtype, or a trace of another input shape. Reusing it then serves the wrong
weights without a word, so a cached store is reused only when all of these match.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .pretrained import DEFAULT, describe

RANDOM_SEED = 0  # convert() seeds random weights with it, so they are reproducible


def weights_record(weights: str | os.PathLike | tuple | None) -> dict:
    """How a manifest names the weights a store was converted from: random, one file, or several (a
    model folder's safetensors shards), each by path, size, mtime and sha256."""
    if weights is None:
        return {"source": "random", "seed": RANDOM_SEED}
    if isinstance(weights, (tuple, list)):
        files = [weights_record(w) for w in weights]
        return {"source": [f["source"] for f in files], "files": files}
    path = Path(weights).resolve()
    st = path.stat()
    return {"source": str(path), "sha256": file_sha256(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def weights_summary(recorded: dict) -> str:
    """A manifest's weights record, in words."""
    source = recorded.get("source")
    if source == "random":
        return f"random weights (seed {recorded.get('seed', RANDOM_SEED)})"
    if isinstance(source, list) and source:
        return f"the weights of {Path(source[0]).parent} ({len(source)} safetensors file{'s' * (len(source) > 1)})"
    return f"the weights of {source}" if source else "weights it does not record"


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
    if isinstance(weights, (tuple, list)):
        files = recorded.get("files")
        return isinstance(files, list) and len(files) == len(weights) and all(
            isinstance(r, dict) and same_weights(r, w) for r, w in zip(files, weights))
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
    if it is. weights as convert takes them (DEFAULT, or None for the reference's own or random ones);
    input_spec, dtype and slicing left None are not compared."""
    if store.ref != ref:
        return f"it holds {store.ref}, not {ref}"
    if weights is None or weights == DEFAULT:  # what convert would load: the cached file, a folder's own
        from .models import resolve

        weights = resolve(ref).weights_for(weights)
    recorded = store.manifest.get("weights", {})
    if not same_weights(recorded, weights):
        return f"it holds {weights_summary(recorded)}, not {describe(weights)}"
    if input_spec is not None and store.default_input != input_spec:
        return f"it was traced with {store.default_input}, not {input_spec}"
    if dtype is not None and store.dtype != dtype:
        return f"it stores {store.dtype}, not {dtype}"
    if slicing is not None and store.slicing.get("mode", "off") != str(slicing):
        return f"its layers were sliced {store.slicing.get('mode', 'off')!r}, not {str(slicing)!r}"
    return None
