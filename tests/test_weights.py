"""Locating FlashSR's weights: explicit folders, the Hub cache, and every way a download fails.

No network exists here, so the failures are real (offline mode, a closed loopback port, a
loopback server answering 401), and the download path runs against a small loopback server
speaking the part of the Hub's HTTP API that `snapshot_download` uses.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from flashsr_tasks.model import weights as W
from flashsr_tasks.model.weights import WEIGHT_FILES, ModelUnavailable, download_weights, locate_weights

hub_constants = pytest.importorskip("huggingface_hub.constants")

REPO = "someone/FlashSR_weights"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {name: f"fake {name}\n".encode() * 100 for name in WEIGHT_FILES}
FILES["README.md"] = b"not one of the weights: must not be downloaded\n"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("FLASHSR_MODEL_DIR", "FLASHSR_WEIGHTS_REPO", "FLASHSR_WEIGHTS_REVISION",
                 "HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLASHSR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no user token or cache leaks in
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: start every test online, whatever the
    # environment of the test run; tests that want offline mode set the variable, which
    # flashsr_tasks.model.weights reads at call time.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)


def make_model_dir(folder: Path, names: tuple[str, ...] = WEIGHT_FILES) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return folder


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


# ---------------------------------------------------------------------------- explicit folders

def test_folder_with_the_three_files(tmp_path: Path) -> None:
    folder = make_model_dir(tmp_path / "flashsr-v1")
    found = locate_weights(str(folder))
    assert found.folder == folder and found.label == "flashsr-v1"  # the name, never a path
    assert found.path("vae.pth") == folder / "vae.pth"


def test_folder_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_model_dir(tmp_path / "weights")
    monkeypatch.setenv("FLASHSR_MODEL_DIR", str(folder))
    assert locate_weights().label == "weights"


def test_folder_missing_a_file(tmp_path: Path) -> None:
    folder = make_model_dir(tmp_path / "partial", ("student_ldm.pth", "vae.pth"))
    with pytest.raises(ModelUnavailable) as err:
        locate_weights(str(folder))
    message = str(err.value)
    assert "lacks sr_vocoder.pth" in message and "FLASHSR_MODEL_DIR" in message
    assert "\n" not in message


def test_folder_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="does not exist"):
        locate_weights(str(tmp_path / "nowhere"))


# ---------------------------------------------------------------------------- unreachable Hub

def test_offline_without_weights_fails_fast_and_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        locate_weights()
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and "--model_dir" in message and "FLASHSR_MODEL_DIR" in message
    assert "flashsr-download" in message and "\n" not in message


def test_closed_port_fails_fast_without_retrying(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    start = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        locate_weights()
    assert time.monotonic() - start < 10  # no retry loop, no 60 s back-off
    message = str(err.value)
    assert "could not be downloaded" in message and "FLASHSR_MODEL_DIR" in message
    assert "flashsr-download" in message and "\n" not in message


# ---------------------------------------------------------------------------- a loopback Hub

class FakeHub:
    """Answers repo info, the file tree and file downloads for one repo (a dataset repo unless
    `repo_type="model"`; `files` may name paths in sub-folders), counting requests."""

    def __init__(self, status: int = 200, error_code: str = "", delay_s: float = 0.0,
                 repo_type: str = "dataset", files: dict[str, bytes] = FILES) -> None:
        self.status, self.error_code, self.delay_s = status, error_code, delay_s
        api = f"/api/{repo_type}s/{REPO}"
        resolve = f"/datasets/{REPO}/resolve/" if repo_type == "dataset" else f"/{REPO}/resolve/"
        self.downloads: list[str] = []
        self.requests = 0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(body=False)

            def do_GET(self) -> None:
                self.answer(body=True)

            def send(self, status: int, payload: bytes, headers: dict[str, str], body: bool) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if body:
                    self.wfile.write(payload)

            def answer(self, body: bool) -> None:
                hub.requests += 1
                path = self.path.split("?")[0]
                if hub.status != 200:
                    headers = {"Content-Type": "application/json"}
                    if hub.error_code:
                        headers["X-Error-Code"] = hub.error_code
                    self.send(hub.status, json.dumps({"error": "refused by the fake hub"}).encode(), headers, body)
                elif path.startswith(f"{api}/revision/"):
                    info = {"id": REPO, "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]}
                    self.send(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
                elif path.startswith(f"{api}/tree/"):
                    tree = [{"type": "file", "path": n, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                            for n, data in files.items()]
                    self.send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
                elif path.startswith(resolve) and path[len(resolve):].split("/", 1)[-1] in files:
                    name = path[len(resolve):].split("/", 1)[1]  # after the revision
                    data = files[name]
                    headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
                    if body:
                        hub.downloads.append(name)
                        time.sleep(hub.delay_s)  # keeps a first download in flight while a second process starts
                    self.send(200, data, headers, body)
                elif path.startswith("/api/"):  # as the Hub answers for a repo it does not have
                    self.send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
                else:
                    self.send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FLASHSR_WEIGHTS_REPO", REPO)
    yield


@pytest.mark.usefixtures("hub_env")
def test_download_once_then_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        first = locate_weights()
        assert sorted(hub.downloads) == sorted(WEIGHT_FILES)  # only the three files, not README.md
        assert first.label == f"{REPO}@{COMMIT}"             # the exact commit behind "main"
        assert all(first.path(n).read_bytes() == FILES[n] for n in WEIGHT_FILES)
        requests = hub.requests
        again = locate_weights()  # idempotent: found in the cache, no request at all
        assert again == first and hub.requests == requests
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert locate_weights() == first  # and usable offline afterwards


@pytest.mark.usefixtures("hub_env")
def test_two_processes_download_once(tmp_path: Path) -> None:
    code = "from flashsr_tasks.model.weights import locate_weights; print(locate_weights().label)"
    with FakeHub(delay_s=0.5) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url}
        procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert [out.strip() for out, _ in results] == [f"{REPO}@{COMMIT}"] * 2
    assert sorted(hub.downloads) == sorted(WEIGHT_FILES)  # each file fetched once in all (the locks)


@pytest.mark.usefixtures("hub_env")
@pytest.mark.parametrize("error_code, expected", [("GatedRepo", "gated"), ("RepoNotFound", "401"), ("", "HF_TOKEN")])
def test_refused_access_names_hf_token(monkeypatch: pytest.MonkeyPatch, error_code: str, expected: str) -> None:
    with FakeHub(status=401, error_code=error_code) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(ModelUnavailable) as err:
            locate_weights()
        assert hub.requests <= 3  # asked, refused, done: no retry loop
    message = str(err.value)
    assert expected in message and "HF_TOKEN" in message and "FLASHSR_MODEL_DIR" in message
    assert "\n" not in message


def test_label_for_a_plain_local_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flashsr-download --local-dir DIR: a plain folder for --model_dir, found again without a request."""
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    folder = make_model_dir(tmp_path / "air-gapped")
    assert download_weights(local_dir=str(folder)).folder == folder


# ---------------------------------------------------------------------------- flashsr-download

def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flashsr_tasks.model.weights", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_help_and_usage_error() -> None:
    env = dict(os.environ)
    shown = run_cli("--help", env=env)
    assert shown.returncode == 0 and "--local-dir" in shown.stdout and "--revision" in shown.stdout
    bad = run_cli("--no-such-option", env=env)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_cli_unreachable_hub_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    start = time.monotonic()
    done = run_cli("--cache-dir", str(tmp_path / "c"), env=env)
    assert time.monotonic() - start < 30
    assert done.returncode == 1 and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("flashsr-download: ")]
    assert len(errors) == 1 and "could not be downloaded" in errors[0] and "Traceback" not in done.stderr


@pytest.mark.usefixtures("hub_env")
def test_cli_downloads_into_a_local_dir(tmp_path: Path) -> None:
    with FakeHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url}
        done = run_cli("--local-dir", str(tmp_path / "weights"), env=env)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert folder == (tmp_path / "weights").resolve()
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == sorted(WEIGHT_FILES)
    # …which is then a valid --model_dir.
    assert locate_weights(str(folder)).label == "weights"


def test_weights_module_needs_neither_torch_nor_the_hub_client() -> None:
    code = ("import sys; sys.modules['torch'] = None; sys.modules['huggingface_hub'] = None\n"
            "import flashsr_tasks.model.weights as w\n"
            "try:\n    w.download_weights()\nexcept w.ModelUnavailable as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "huggingface_hub" in done.stdout and "FLASHSR_MODEL_DIR" in done.stdout
    assert W.DEFAULT_REPO == "jakeoneijk/FlashSR_weights"


# ---------------------------------------------------------------------------- mirrors

MIRROR_FILES = {f"FlashSR/checkpoints/{name}": data for name, data in FILES.items() if name in WEIGHT_FILES}
MIRROR_FILES["FlashSR/README.md"] = b"a model card\n"
MIRROR_FILES["other_model.safetensors"] = b"another model in the same repo: must not be downloaded\n"


@pytest.mark.parametrize("how", ["prefix", "type"])
def test_a_model_repo_mirror_with_the_files_in_a_sub_folder(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    if how == "prefix":
        monkeypatch.setenv("FLASHSR_WEIGHTS_REPO", f"models/{REPO}")
    else:
        monkeypatch.setenv("FLASHSR_WEIGHTS_REPO", REPO)
        monkeypatch.setenv("FLASHSR_WEIGHTS_REPO_TYPE", "model")
    with FakeHub(repo_type="model", files=MIRROR_FILES) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        found = locate_weights()
        assert sorted(hub.downloads) == sorted(f"FlashSR/checkpoints/{n}" for n in WEIGHT_FILES)
    assert found.folder.name == "checkpoints" and found.folder.parent.parent.name == COMMIT
    assert found.label == f"models/{REPO}@{COMMIT}:FlashSR/checkpoints"
    assert all(found.path(n).read_bytes() == FILES[n] for n in WEIGHT_FILES)
    # the same mirror as a dataset repo does not exist: a clear sentence, as for the original
    monkeypatch.setenv("FLASHSR_WEIGHTS_REPO", REPO)
    monkeypatch.setenv("FLASHSR_WEIGHTS_REPO_TYPE", "dataset")
    monkeypatch.setenv("FLASHSR_CACHE_DIR", str(found.folder.parents[5] / "other-cache"))
    with FakeHub(repo_type="model", files=MIRROR_FILES) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(ModelUnavailable) as err:
            locate_weights()
    assert "FLASHSR_WEIGHTS_REPO_TYPE" in str(err.value) and "\n" not in str(err.value)


def test_a_model_repo_from_the_offline_cache_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE with a cache laid out as huggingface_hub lays it out (no server at all)."""
    cache = tmp_path / "cache"
    repo_folder = cache / f"models--{REPO.replace('/', '--')}"
    (repo_folder / "refs").mkdir(parents=True)
    (repo_folder / "refs" / "main").write_text(COMMIT)
    for name, data in MIRROR_FILES.items():
        blob = repo_folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo_folder / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    monkeypatch.setenv("FLASHSR_CACHE_DIR", str(cache))
    monkeypatch.setenv("FLASHSR_WEIGHTS_REPO", f"models/{REPO}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    found = locate_weights()
    assert found.folder == repo_folder / "snapshots" / COMMIT / "FlashSR" / "checkpoints"
    assert found.label == f"models/{REPO}@{COMMIT}:FlashSR/checkpoints"
    # offline and not cached (another repo): one clear sentence, as before
    monkeypatch.setenv("FLASHSR_WEIGHTS_REPO", "models/someone/else")
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE"):
        locate_weights()


def test_a_bad_repo_type_is_one_clear_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHSR_WEIGHTS_REPO_TYPE", "space")
    with pytest.raises(ModelUnavailable, match="FLASHSR_WEIGHTS_REPO_TYPE must be dataset or model"):
        locate_weights()


def test_cli_verify_prints_each_files_size_and_sha256(tmp_path: Path) -> None:
    with FakeHub(repo_type="model", files=MIRROR_FILES) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "FLASHSR_WEIGHTS_REPO": REPO}
        done = run_cli("--repo-type", "model", "--cache-dir", str(tmp_path / "c"), "--verify", env=env)
    assert done.returncode == 0, done.stderr
    folder, *lines = done.stdout.strip().splitlines()
    assert Path(folder).name == "checkpoints"
    assert lines == [f"{n}\t{len(FILES[n])}\tsha256:{hashlib.sha256(FILES[n]).hexdigest()}" for n in WEIGHT_FILES]
    assert f"models/{REPO}@{COMMIT}:FlashSR/checkpoints" in done.stderr
