"""A real Prometheus server for the tests (Debian's `prometheus` package; .ci/run installs it):
started on a free loopback port, scraping the given targets every second, queried through its
HTTP API; and `promtool`."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tests.services import free_port, stop_process

SCRAPE_INTERVAL_S = 1


def prometheus_missing() -> str:
    """Why a real Prometheus cannot run here ("" when it can): a reason for pytest.skip."""
    missing = [tool for tool in ("prometheus", "promtool") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed (.ci/run installs Debian's prometheus)" if missing else ""


@dataclass
class PrometheusServer:
    port: int
    process: subprocess.Popen
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        """`/api/v1/<path>`'s `data`; AssertionError with Prometheus' own error otherwise."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:  # a bad expression: 400 with Prometheus' own error
            body = json.loads(exc.read() or b"{}")
        assert body.get("status") == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises AssertionError on a bad expression)."""
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float:
        """The single value of an expression that returns one sample (NaN when it returns none)."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else float("nan")

    def wait_for(self, expr: str, expected: float, timeout: float = 60) -> float:
        """Poll until `expr`'s single value equals `expected`; returns it (AssertionError at the deadline)."""
        deadline = time.monotonic() + timeout
        value = float("nan")
        while time.monotonic() < deadline:
            try:
                value = self.value(expr)
            except OSError:
                pass  # still starting
            if value == expected:
                return value
            time.sleep(0.5)
        raise AssertionError(f"{expr} = {value}, not {expected}, after {timeout} s")

    def stop(self) -> None:
        stop_process(self.process)


def start_prometheus(workdir: Path, targets: Sequence[str], job: str = "flashsr-workers",
                     rule_files: Sequence[Path] = (), timeout: float = 30) -> PrometheusServer:
    """Prometheus scraping `targets` ("127.0.0.1:PORT") every second under `job`, its data in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
    }))
    port = free_port()
    process = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "prometheus.log", "wb"))
    server = PrometheusServer(port, process, workdir)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"prometheus did not start: {(workdir / 'prometheus.log').read_text()[-2000:]}")
        time.sleep(0.2)
