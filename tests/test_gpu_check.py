"""scripts/gpu-check --smoke: every section of the GPU check runs end to end on CPU and lands in the report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from baichuan13b.bench.gpu_check import Check, SectionTimeout, time_limit

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_every_section(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check"), "--smoke", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin",
                                                                          "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((tmp_path / "gpu-check.json").read_text())
    for name in ("environment", "correctness", "baichuan-13b", "llama-13b", "serving"):
        assert data[name]["status"] == "ok", (name, data[name])
    assert data["correctness"]["bf16_vs_fp32_cosine"] > 0.99
    assert data["correctness"]["paged_graphs_equal_eager"] is True and data["correctness"]["paged_tokens_compared"] == 24
    assert set(data["baichuan-13b"]["rows"]) == {"fp16", "int8", "int4"}
    assert all(row["tokens_per_s"] > 0 for row in data["baichuan-13b"]["rows"].values())
    serving = data["serving"]
    assert set(serving["levels"]) == {"1", "8", "32", "64"} and serving["slot_design_sequences"] == 8
    # issue 14's figure 5: the paged cache of 8 whole-context slots' memory holds all 64 short requests at once
    assert serving["levels"]["64"]["held_at_once"] > 8 and serving["levels"]["64"]["preemptions"] == 0
    assert all(level["errors"] == [] and level["mean_ttft_s"] > 0 for level in serving["levels"].values())
    md = (tmp_path / "gpu-check.md").read_text()
    assert "| fp16 |" in md and "## Serving engine (ok)" in md and "| held at once |" in md and "| paged_graphs_equal_eager | True |" in md


def test_a_failing_or_slow_section_does_not_lose_the_others():
    check = Check(budget_s=60)
    def slow(out):
        out["first"] = 1  # filled before the timeout: kept in the report
        __import__("time").sleep(5)

    check.section("boom", 10, lambda out: 1 / 0)
    check.section("slow", 1, slow)
    check.section("fine", 10, lambda out: out.update(x=1))
    assert check.results["boom"]["status"] == "error" and "ZeroDivisionError" in check.results["boom"]["error"]
    assert check.results["slow"]["status"] == "error" and "limit" in check.results["slow"]["error"]
    assert check.results["slow"]["first"] == 1
    assert check.results["fine"] == {"status": "ok", "x": 1, "seconds": check.results["fine"]["seconds"]}
    with pytest.raises(SectionTimeout):
        with time_limit(0.2):
            __import__("time").sleep(2)


def test_sections_past_the_budget_are_skipped():
    check = Check(budget_s=5)
    check.section("late", 100, lambda out: out.update(x=1))
    assert check.results["late"]["status"] == "skipped"
