"""scripts/gpu_check.sh, the prepared check a GPU machine runs, runs its CPU side here: from the source
tree, with a given Python, writing one JSON that says which torch and device it ran on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_its_cpu_side_and_writes_one_json(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path))
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out"), "--quick"],
                          capture_output=True, text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert result["ok"] and result["environment"]["torch"] == torch.__version__
    assert result["environment"]["cuda_available"] == torch.cuda.is_available()
    rows = result["benchmark"]
    assert {r["budget_fraction"] for r in rows} == {"1/2", "1/4"}
    for r in rows:
        assert r["max_abs_diff"] == 0 and r["peak_resident_weight_bytes"] <= r["budget_bytes"]
        assert r["memory_kind"] == ("cpu" if not torch.cuda.is_available() else r["memory_kind"])
