"""The lean build (flashsr_tasks/model/lean_build.py) against the library's own constructor, with
random weights of the real architecture: the same modules and every parameter and buffer equal,
bit for bit, without a forward pass (the forward itself is compared in test_batching_real.py).

Each build runs in its own process and reports digests, so the test process never holds a model.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.model_fixtures import model_extra_missing
from tests.services import REPO

pytestmark = pytest.mark.model

if model_extra_missing():
    pytest.skip(model_extra_missing(), allow_module_level=True)

_DIGESTS = r"""
import hashlib, json, sys
import torch
from flashsr_tasks.model.fast_path import drop_unused_hifigan
from flashsr_tasks.model.lean_build import build_lean_model
from flashsr_tasks.model.library import build_model, import_library
from flashsr_tasks.model.weights import weights_in_folder

way, folder = sys.argv[1], sys.argv[2]
flashsr_class, _ = import_library()
build = build_lean_model if way == "lean" else build_model
model = build(flashsr_class, weights_in_folder(folder))
torch_load_restored = torch.load.__module__ == "torch.serialization"
lsd_restored = torch.nn.Module.load_state_dict.__qualname__ == "Module.load_state_dict"
had_hifigan = hasattr(model.vae.autoencoder, "vocoder")
freed = drop_unused_hifigan(model)

def digests(module):
    out = {}
    # named_buffers includes non-persistent buffers, which no checkpoint restores
    for name, t in (*module.named_parameters(), *module.named_buffers()):
        t = t.detach().contiguous()
        out[name] = [str(t.dtype), list(t.shape), t.requires_grad,
                     hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()]
    return out

print(json.dumps({
    "model": digests(model), "autoencoder": digests(model.vae.autoencoder),
    "modules": [[n, type(m).__name__] for n, m in model.named_modules()],
    "autoencoder_modules": [[n, type(m).__name__] for n, m in model.vae.autoencoder.named_modules()],
    "had_hifigan": had_hifigan, "freed": freed, "training": model.vae.autoencoder.training,
    "restored": torch_load_restored and lsd_restored,
}))
"""


def build(way: str, folder: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _DIGESTS, way, str(folder)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_lean_build_loads_every_weight_the_library_loads_bit_for_bit(random_model_dir: Path) -> None:
    library, lean = build("library", random_model_dir), build("lean", random_model_dir)
    assert library["had_hifigan"] and library["freed"] > 700e6  # the library builds the 0.76 GB HiFi-GAN
    assert not lean["had_hifigan"] and lean["freed"] == 0       # the lean build never does
    assert lean["modules"] == library["modules"] and lean["autoencoder_modules"] == library["autoencoder_modules"]
    assert lean["model"].keys() == library["model"].keys() and len(lean["model"]) > 1000
    assert lean["model"] == library["model"]
    assert lean["autoencoder"] == library["autoencoder"]
    assert lean["training"] is library["training"] is False
    assert lean["restored"] and library["restored"]  # torch.load and load_state_dict are torch's own again
