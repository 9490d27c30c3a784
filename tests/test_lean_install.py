"""The lean model install: FlashSR's library without its unused requirements, its stray files
pruned, and CI, the README and the gpu image saying the same thing."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from tests.model_fixtures import model_extra_missing

REPO = Path(__file__).resolve().parent.parent
# What polflashsr declares and a real run never imports (traced: README, "The model").
NEVER_IMPORTED = ("wandb", "tensorboardX")


def test_the_model_extra_lists_what_a_run_imports_and_not_polflashsr_requirements():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["model"]
    names = {re.split(r"[<>=!~ \[]", req)[0].lower() for req in extra}
    assert {"torch", "huggingface_hub", "einops", "librosa", "matplotlib", "scikit-learn", "scipy", "pyyaml"} <= names
    assert not names & {"polflashsr", "wandb", "tensorboardx"}


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    documented = re.search(r"(?m)^python3 -m venv \.venv && \. \.venv/bin/activate && (pip install torch.+)$", readme).group(1)
    assert "pip install --no-deps polflashsr==" in documented and "prune_polflashsr" in documented
    assert documented in ci.splitlines()


def test_the_model_warning_gives_the_readmes_working_install():
    from flashsr_tasks.model.install import MODEL_INSTALL, MODEL_INSTALL_HINT

    readme = (REPO / "README.md").read_text()
    steps = [line.split("#")[0].strip() for line in readme.splitlines() if line.startswith("pip install")]
    assert MODEL_INSTALL in MODEL_INSTALL_HINT and " && ".join(steps) == MODEL_INSTALL


def test_the_gpu_image_installs_lean_and_prunes():
    gpu = (REPO / "docker" / "Dockerfile.gpu").read_text()
    assert "pip install --no-deps polflashsr==" in gpu and "python -m flashsr_tasks.model.prune_polflashsr" in gpu
    order = ["pip install --no-deps polflashsr", '.whl)[model]"', "python -m flashsr_tasks.model.prune_polflashsr"]
    assert [gpu.index(step) for step in order] == sorted(gpu.index(step) for step in order)


def test_prune_removes_exactly_the_wheels_stray_files(tmp_path: Path):
    site = tmp_path / "site"
    kept = ["FlashSR/__init__.py", "FlashSR/FlashSR.py", "TorchJaekwon/Util/UtilData.py"]
    stray = [".git/HEAD", ".git/objects/pack/p.pack", "dist/polflashsr-0.0.2.tar.gz", "Script/2_setup.sh",
             "Assets/Figure.png", "__init__.py", "setup.py", "__pycache__/setup.cpython-311.pyc",
             "FlashSR/BigVGAN/LibriTTS/train-full.txt"]
    others = ["other/__init__.py", "__pycache__/six.cpython-311.pyc"]  # another distribution's files
    for name in kept + stray + others:
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(name)
    info = site / "polflashsr-0.0.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: PolFlashSR\nVersion: 0.0.2\n")
    (info / "RECORD").write_text("".join(f"{n},sha256=x,1\n" for n in kept + stray) + f"{info.name}/RECORD,,\n")
    code = "from flashsr_tasks.model.prune_polflashsr import prune; print(len(prune()))"
    env = {**os.environ, "PYTHONPATH": f"{site}:{REPO}"}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and first.stdout.strip() == str(len(stray)), first.stderr
    assert all((site / n).is_file() for n in kept + others)
    assert not any((site / n).exists() for n in stray)
    assert not (site / ".git").exists() and not (site / "dist").exists() and not (site / "FlashSR/BigVGAN/LibriTTS").exists()
    assert (info / "RECORD").read_text().count("\n") == len(kept) + 1  # pip uninstall still finds the rest
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert again.stdout.strip() == "0"


@pytest.mark.skipif(bool(model_extra_missing()), reason=model_extra_missing() or "installed")
def test_the_library_never_imports_what_the_lean_install_leaves_out():
    code = ("import sys\n"
            "from flashsr_tasks.model.library import import_library\n"
            "import_library()\n"
            "from FlashSR import VAEWrapper; from FlashSR.SRVocoder import SRVocoder\n"
            "from TorchJaekwon.Model.Diffusion.DDPM.DDPM import DDPM\n"
            f"print(sorted(m for m in {NEVER_IMPORTED!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
