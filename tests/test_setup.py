"""scripts/setup: runtime-only by default, the test stack on request, and the right PyTorch build (checked with
--dry-run, which prints the commands instead of running them)."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup"


def dry_run(tmp_path: Path, *args: str, gpu: bool = False, cpu_index: bool = True, **env: str):
    """Run the setup script with --dry-run in a fresh (absent) venv; ``gpu`` puts a working fake nvidia-smi on
    PATH (else one that fails), ``cpu_index`` makes the CPU index reachable (a local folder) or not."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\n" + ("echo 'GPU 0: Fake GPU'\n" if gpu else "exit 9\n"))
    fake.chmod(0o755)
    root = tmp_path / "index-server"  # serves /whl/cpu/torch/ only when the CPU index is "reachable"
    root.mkdir(exist_ok=True)
    if cpu_index:
        (root / "whl" / "cpu" / "torch").mkdir(parents=True, exist_ok=True)
        (root / "whl" / "cpu" / "torch" / "index.html").write_text("<a href='torch-2.13.0+cpu.whl'>torch</a>\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VENV": str(tmp_path / "venv"),
                "BAICHUAN_TORCH_CPU_INDEX": url, **env}
    if "BAICHUAN_TORCH" not in env:
        full_env.pop("BAICHUAN_TORCH", None)
    try:
        r = subprocess.run(["bash", str(SETUP), "--dry-run", *args], capture_output=True, text=True, env=full_env,
                           timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    commands = [line[2:] for line in r.stderr.splitlines() if line.startswith("+ ")]
    return r, commands


def test_default_is_runtime_only(tmp_path):
    r, commands = dry_run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert commands[-1].endswith("pip install -q -e .")
    assert not any(".[" in c for c in commands)  # no extras, no test stack


def test_test_stack_and_extras_on_request(tmp_path):
    r, commands = dry_run(tmp_path, "--test", "--extras", "serve,web")
    assert r.returncode == 0, r.stderr
    assert commands[-1].endswith("pip install -q -e .[serve,web,test]")
    r, _ = dry_run(tmp_path, "--extras", "gpu")
    assert r.returncode == 2 and "unknown extra 'gpu'" in r.stderr


def test_no_gpu_asks_for_the_cpu_wheels(tmp_path):
    r, commands = dry_run(tmp_path)
    assert "no GPU found" in r.stderr
    torch_cmd = next(c for c in commands if "torch==" in c)
    assert "torch==2.13.0 --index-url http://127.0.0.1:" in torch_cmd and torch_cmd.endswith("/whl/cpu")


def test_unreachable_cpu_index_falls_back_to_the_plain_pin(tmp_path):
    r, commands = dry_run(tmp_path, cpu_index=False)
    assert r.returncode == 0, r.stderr
    assert "cannot be reached: falling back to 'torch==2.13.0'" in r.stderr
    torch_cmd = next(c for c in commands if "torch==" in c)
    assert torch_cmd.endswith("pip install -q torch==2.13.0")


@pytest.mark.parametrize("how", ["detected", "chosen"])
def test_gpu_gets_the_cuda_build(tmp_path, how):
    r, commands = dry_run(tmp_path, *(["--torch", "cuda"] if how == "chosen" else []), gpu=how == "detected")
    assert r.returncode == 0, r.stderr
    torch_cmd = next(c for c in commands if "torch" in c and "-e" not in c)
    assert torch_cmd.endswith("pip install -q torch==2.13.0") and "--index-url" not in torch_cmd


def test_user_choice_wins_over_detection(tmp_path):
    r, commands = dry_run(tmp_path, gpu=True, BAICHUAN_TORCH="cpu")
    assert "--index-url" in next(c for c in commands if "torch==" in c)
    r, commands = dry_run(tmp_path, "--torch", "torch>=2.3")
    assert any(c.endswith("pip install -q torch>=2.3") for c in commands)


def test_ci_installs_the_test_stack():
    assert "bash scripts/setup --test" in (ROOT / ".ci" / "run").read_text()
