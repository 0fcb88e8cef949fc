"""The `swapnet` command as a user meets it: progress, JSON, and one-line errors without tracebacks."""

import json
import os
import shutil

import pytest

from conftest import swapnet_cli


@pytest.fixture(scope="module")
def cli_store(disk_dir):
    out = disk_dir / "cli_resnet18"
    r = swapnet_cli("convert", "torchvision:resnet18", "--out", out, "--input", "random:1x3x64x64")
    assert r.returncode == 0, r.stderr
    assert "random weights" in r.stdout
    assert "convert torchvision:resnet18" in r.stderr and "%" in r.stderr  # the progress bar
    return out


def test_run_json_reports_exact_bounded_swapping(cli_store):
    r = swapnet_cli("run", cli_store, "--budget", "1/2", "--repeat", "2", "--compare-resident", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    for key in ("max_abs_diff", "swapped_ms_median", "resident_ms_median", "peak_resident_weight_bytes",
                "budget_bytes", "bytes_read", "stalls"):
        assert key in result, key
    assert result["max_abs_diff"] == 0
    assert 0 < result["peak_resident_weight_bytes"] <= result["budget_bytes"]
    # per call: every block not kept resident (pinned tensors and resident blocks were read at open)
    kept = result["resident_block_bytes"] + result["pinned_bytes"]
    assert result["bytes_read"] == result["model_weight_bytes"] - kept > 0 and result["random_weights"] is True
    assert result["plan"] == "optimal" and result["predicted_ms"] > 0


def test_run_table_and_image_input(cli_store, tmp_path):
    from PIL import Image

    img = tmp_path / "frame.png"
    Image.new("RGB", (80, 60), (200, 30, 90)).save(img)
    r = swapnet_cli("run", cli_store, "--budget", "60%", "--repeat", "1", "--compare-resident", "--io", "mmap",
                    "--input", f"{img}@64x64")
    assert r.returncode == 0, r.stderr
    assert "bit-identical" in r.stdout and "random weights" in r.stdout and "swapped/resident" in r.stdout


def one_line_error(r, *fragments):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("swapnet: error:"), r.stderr
    assert "Traceback" not in r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_input_gets_one_clear_line(cli_store, disk_dir, tmp_path):
    one_line_error(swapnet_cli("convert", "torchvision:no_such_net", "--out", tmp_path / "x"), "no_such_net")
    one_line_error(swapnet_cli("convert", "nonsense", "--out", tmp_path / "x"), "unknown model reference")
    one_line_error(swapnet_cli("convert", "torchvision:resnet18", "--out", tmp_path / "x", "--weights",
                               tmp_path / "missing.safetensors"), "not found", "missing.safetensors")
    one_line_error(swapnet_cli("run", cli_store, "--budget", "1MB"), "minimum feasible")
    one_line_error(swapnet_cli("run", cli_store, "--budget", "lots"), "not a size")
    one_line_error(swapnet_cli("run", cli_store, "--budget", "1/2", "--input", "random:1xAx3"), "random:NxCxHxW")
    one_line_error(swapnet_cli("run", tmp_path, "--budget", "1/2"), "not a block store")
    one_line_error(swapnet_cli("run", cli_store, "--budget", "1/2", "--device", "gpu0"), "device must be")
    import torch

    if not torch.cuda.is_available():
        one_line_error(swapnet_cli("run", cli_store, "--budget", "1/2", "--device", "cuda"), "no CUDA device is visible")

    corrupt = disk_dir / "cli_corrupt"
    shutil.copytree(cli_store, corrupt)
    manifest = json.loads((corrupt / "manifest.json").read_text())
    victim = manifest["units"][3]
    with open(corrupt / "weights.safetensors", "r+b") as f:
        f.seek(victim["offset"] + 100)
        b = f.read(1)
        f.seek(victim["offset"] + 100)
        f.write(bytes([b[0] ^ 1]))
    one_line_error(swapnet_cli("run", corrupt, "--budget", "1/2", "--repeat", "1"), victim["name"], "corrupt")
    one_line_error(swapnet_cli("info", corrupt, "--verify"), victim["name"])

    truncated = disk_dir / "cli_truncated"
    shutil.copytree(cli_store, truncated)
    os.truncate(truncated / "weights.safetensors", 10000)
    one_line_error(swapnet_cli("run", truncated, "--budget", "1/2"), "truncated")


def test_info_reports_minimum_budget(cli_store):
    r = swapnet_cli("info", cli_store, "--json", "--verify")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["verified"] and info["minimum_budget_bytes"] > info["minimum_budget_no_prefetch_bytes"] > 0
    below = swapnet_cli("run", cli_store, "--budget", str(info["minimum_budget_bytes"] - 1))
    one_line_error(below, str(info["minimum_budget_bytes"]))
    at = swapnet_cli("run", cli_store, "--budget", str(info["minimum_budget_bytes"]), "--repeat", "1")
    assert at.returncode == 0, at.stderr


def test_plan_prints_blocks_and_prediction(cli_store):
    r = swapnet_cli("plan", cli_store, "--budget", "1/3", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["kind"] == "optimal" and plan["arena_bytes"] <= plan["budget_bytes"]
    assert plan["prediction"]["latency_s"] > 0 and plan["planning_ms"] >= 0  # its speed is a benchmark matter
    text = swapnet_cli("plan", cli_store, "--budget", "1/3", "--plan", "uniform")
    assert text.returncode == 0 and "uniform plan" in text.stdout and "predicted latency" in text.stdout


def test_an_error_from_the_network_itself_is_one_line_and_debug_shows_where(tmp_path):
    """raft_small takes two images: traced with one, its own forward raises a TypeError. The command
    says so in one line (naming the error type, pointing at --debug); --debug adds the traceback."""
    args = ("convert", "torchvision:raft_small", "--out", tmp_path / "raft", "--input", "random:1x3x64x64", "--quiet")
    one_line_error(swapnet_cli(*args), "TypeError", "image2", "--debug")
    r = swapnet_cli("--debug", *args)
    assert r.returncode == 2 and "Traceback" in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("swapnet: error: TypeError")
    assert not (tmp_path / "raft").exists()
