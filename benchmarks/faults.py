"""Faults of the infrastructure against real servers and real workers: what each costs a run.

Each fault of issue 14's table is tried on a fresh private redis-server (with or without its
append-only file), real `celery worker -Q cpu -c 2` processes, and N real 8 kHz calls of 1-3 s.
The run is the real command line (`python -m orchestrator_hooks.flashsr_extension`); after it
ends, or past a cap, the table says: its exit status, seconds to completion and from the fault
to completion, sources with exactly one ok record, missing, duplicated, falsely failed (every
input is a good file, so any failed record is false), temporary files left, and lines of
traceback on its stderr. Faults that the run cannot be expected to survive alone (a full disk)
are followed by the same command once the cause is gone, as a user would.

    python benchmarks/faults.py                # every fault, 200 files
    python benchmarks/faults.py --quick        # a few cheap faults, 20 files (tests run this)
    python benchmarks/faults.py --only aof-5s  # one fault
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cgroups import NoMemoryGroup, memory_group_or_raise  # noqa: E402
from tests.services import RedisServer, Worker, kill_tree, start_redis, start_worker, worker_env  # noqa: E402
from tests.signals import speech_like, write  # noqa: E402

CAP_S = 240  # a run still going after this is stopped and reported as hung


@dataclass
class Result:
    fault: str
    status: object = None
    total_s: float = 0.0
    after_fault_s: Optional[float] = None
    ok: int = 0
    missing: int = 0
    duplicated: int = 0
    falsely_failed: int = 0
    tmp_left: int = 0
    traceback_lines: int = 0
    note: str = ""


@dataclass
class Stage:
    tmp: Path
    files: int
    redis: Optional[RedisServer] = None
    workers: list[Worker] = field(default_factory=list)
    fault_at: Optional[float] = None

    @property
    def root(self) -> Path:
        return self.tmp / "stage"

    def start(self, aof: bool = True, workers: int = 2, broker: Optional[str] = None, **env: str) -> None:
        self.redis = start_redis(self.tmp / "redis", aof=aof)
        self.broker = broker or self.redis.url
        self.env = env
        for _ in range(workers):
            self.add_worker()

    def add_worker(self, wrap: Optional[Callable[[list[str]], list[str]]] = None, **env: str) -> Worker:
        all_env = worker_env(self.broker, FLASHSR_RESULT_BACKEND=self.redis.url, **{**self.env, **env})
        worker = start_worker("cpu", self.broker, self.tmp, concurrency=2, env=all_env, wrap=wrap)
        self.workers.append(worker)
        return worker

    def write_calls(self, root: Optional[Path] = None) -> None:
        root = root or self.root
        for i in range(self.files):
            rate = 8000
            write(root / f"d{i % 10}" / f"call_{i:05d}.wav", speech_like(rate, 1 + (i % 3), seed=i), rate)

    def command(self, *args: str, wrap: Callable[[list[str]], list[str]] = list, in_process: bool = False,
                **env: str) -> subprocess.Popen:
        full = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}
        if not in_process:
            full.update(FLASHSR_BROKER_URL=self.broker, FLASHSR_RESULT_BACKEND=self.redis.url)
        full.update(env)
        self.stderr = self.tmp / f"stderr-{time.monotonic_ns()}"
        return subprocess.Popen(wrap([sys.executable, "-m", "orchestrator_hooks.flashsr_extension", "--input",
                                      str(self.root), "--device", "cpu", "--quiet", *args]), cwd=REPO, env=full,
                                stdout=subprocess.DEVNULL, stderr=open(self.stderr, "wb"), preexec_fn=_hear_ctrl_c)

    def fault(self) -> None:
        self.fault_at = time.monotonic()

    def stop(self) -> None:
        for worker in self.workers:
            worker.kill()
        if self.redis is not None:
            self.redis.kill()


def _hear_ctrl_c() -> None:
    """A benchmark started in the background (`… &`) ignores SIGINT, and so would its runs."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def outputs(stage: Stage) -> int:
    return len(list(stage.root.rglob("*_flashsr.wav")))


def finish(stage: Stage, fault: str, run: subprocess.Popen, started: float, cap: float = CAP_S,
           note: str = "") -> Result:
    try:
        status: object = run.wait(max(1.0, cap - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(20)
        except subprocess.TimeoutExpired:
            kill_tree(run.pid)
        status = f"hung >{cap:.0f}s"
    ended = time.monotonic()
    result = Result(fault=fault, status=status, total_s=round(ended - started, 1), note=note,
                    after_fault_s=None if stage.fault_at is None else round(ended - stage.fault_at, 1))
    count_records(stage, result)
    text = stage.stderr.read_text(errors="replace")
    result.traceback_lines = sum("Traceback" in line or "Exception ignored" in line or line.startswith("  File ")
                                 for line in text.splitlines())
    return result


def count_records(stage: Stage, result: Result) -> None:
    sources = {str(p.relative_to(stage.root)) for p in stage.root.rglob("call_*.wav") if "_flashsr" not in p.name}
    manifest = stage.root / "manifest.json"
    entries = json.loads(manifest.read_text()).get("enhancements", []) if manifest.exists() else []
    records: dict[str, list[dict]] = {}
    for entry in entries:
        if entry.get("type") == "flashsr":
            records.setdefault(entry["source"], []).append(entry)
    journal = stage.root / ".manifest.json.journal"
    if journal.exists():  # written after the last fold: the next run folds it in, its last record per source wins
        for line in journal.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                records[entry["source"]] = [entry]
    ok: dict[str, int] = {}
    for source, kept in records.items():
        for entry in kept:
            if entry["status"] == "ok":
                ok[source] = ok.get(source, 0) + 1
            else:
                result.falsely_failed += 1
    result.ok = sum(1 for s in sources if ok.get(s) == 1)
    result.missing = sum(1 for s in sources if s not in ok)
    result.duplicated = sum(1 for s in sources if ok.get(s, 0) > 1)
    result.tmp_left = len(list(stage.root.rglob(".*.tmp")))


# The faults

def redis_outage(aof: bool, outage_s: float, while_sending: bool) -> Callable[[Stage], Result]:
    def fault(stage: Stage) -> Result:
        stage.start(aof=aof)
        stage.write_calls()
        client = stage.redis.client()
        started = time.monotonic()
        # while sending: chords of 10 files, all sent at once, so sending lasts; Redis dies at the first message
        run = stage.command(**(dict(FLASHSR_CHORD_SIZE="10", FLASHSR_MAX_IN_FLIGHT="100000") if while_sending else {}))
        if while_sending:
            wait_for(lambda: client.exists("cpu", "unacked") > 0, 60)
        else:  # files in every state: done, running, queued
            wait_for(lambda: outputs(stage) >= stage.files // 4, 120)
            time.sleep(1.1 if aof else 0)  # appendfsync everysec
        stage.fault()
        stage.redis.kill()
        time.sleep(outage_s)
        stage.redis.restart()
        return finish(stage, "", run, started, note=f"{outage_s:g} s without Redis")
    return fault


def ack_cutting_outage(outage_s: float, at: float) -> Callable[[Stage], Result]:
    """Redis (AOF) killed the moment a share `at` of the files is done, while files finish many
    times a second: the workers hold prefetched messages and are acknowledging finished ones.
    Default visibility timeout (30 min), which a message left in `unacked` would cost."""
    def fault(stage: Stage) -> Result:
        stage.start(aof=True)
        stage.write_calls()
        started = time.monotonic()
        run = stage.command()
        wait_for(lambda: outputs(stage) >= int(stage.files * at), 120)
        stage.fault()
        stage.redis.kill()
        done = outputs(stage)
        time.sleep(outage_s)
        stage.redis.restart()
        result = finish(stage, "", run, started)
        put_back = sum(int(line.split("Redis is back: ", 1)[1].split()[0])
                       for worker in stage.workers for line in worker.log_text().splitlines()
                       if "MainProcess] Redis is back: " in line)
        result.note = f"{outage_s:g} s without Redis from {done}/{stage.files} done; {put_back} messages put back"
        return result
    return fault


def lost_message(stage: Stage) -> Result:
    stage.start(workers=0)
    stage.write_calls()
    client = stage.redis.client()
    started = time.monotonic()
    run = stage.command()
    wait_for(lambda: client.llen("cpu") >= min(stage.files, 50), 60)
    stage.fault()
    client.rpop("cpu")  # popped the instant Redis died: never in unacked
    stage.add_worker()
    stage.add_worker()
    return finish(stage, "", run, started)


def silent_port(stage: Stage) -> Result:
    stage.start(workers=0)
    stage.write_calls()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        stage.broker = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        stage.redis_url_backup = stage.redis.url
        started = time.monotonic()
        stage.fault()
        full = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}
        stage.stderr = stage.tmp / "stderr-silent"
        run = subprocess.Popen([sys.executable, "-m", "orchestrator_hooks.flashsr_extension", "--input",
                                str(stage.root), "--device", "cpu", "--quiet", "--broker", stage.broker],
                               cwd=REPO, env=full, stdout=subprocess.DEVNULL, stderr=open(stage.stderr, "wb"))
        result = finish(stage, "", run, started, cap=60)
    result.note = "exit 3 expected; " + stage.stderr.read_text().strip()[:90]
    return result


def nobody_listening(stage: Stage) -> Result:
    stage.start(workers=0)
    stage.write_calls()
    started = time.monotonic()
    run = stage.command()
    stage.fault()
    noticed = wait_for(lambda: "no worker consumes" in stage.stderr.read_text(), 40)
    notice_s = time.monotonic() - started
    stage.add_worker()
    stage.add_worker()
    return finish(stage, "", run, started, note=f"notice after {notice_s:.0f} s" if noticed else "no notice in 40 s")


def give_up(stage: Stage) -> Result:
    stage.start(workers=0)
    stage.write_calls()
    started = time.monotonic()
    stage.fault()
    run = stage.command("--give-up-after", "20")
    result = finish(stage, "", run, started, cap=90)
    result.note = "exit 1 expected; " + stage.stderr.read_text().strip().splitlines()[-1][:90]
    return result


def worker_sigkill(stage: Stage) -> Result:
    stage.start()
    return _kill_a_worker_a_quarter_in(stage, note="default FLASHSR_VISIBILITY_TIMEOUT")


def _kill_a_worker_a_quarter_in(stage: Stage, note: str) -> Result:
    """On a started stage: send the run, SIGKILL the first worker once a quarter of it is done."""
    stage.write_calls()
    started = time.monotonic()
    run = stage.command()
    wait_for(lambda: outputs(stage) >= stage.files // 4, 120)
    stage.fault()
    stage.workers[0].kill()
    return finish(stage, "", run, started, cap=150, note=note)


def worker_sigterm_mid_task(stage: Stage) -> Result:
    """SIGTERM (a preemption notice), then SIGKILL 10 s later, with a task that cannot finish in time."""
    stage.start()
    stage.write_calls()
    fifo = stage.root / "d0" / "call_long.wav"
    os.mkfifo(fifo)
    started = time.monotonic()
    run = stage.command()
    wait_for(lambda: outputs(stage) >= stage.files // 2, 120)
    holder = next((w for w in stage.workers if any(_reads(pid, fifo) for pid in w.pool_pids())), stage.workers[0])
    stage.fault()
    holder.process.send_signal(signal.SIGTERM)
    time.sleep(10)
    # the long task finishes wherever it runs next: the FIFO becomes a real file
    tmp = fifo.with_name(".real.wav")
    write(tmp, speech_like(8000, 2, seed=7), 8000)
    os.replace(tmp, fifo)
    holder.kill()
    return finish(stage, "", run, started, cap=150, note="SIGKILL 10 s after SIGTERM")


def _reads(pid: int, path: Path) -> bool:
    try:
        return (Path(f"/proc/{pid}/syscall").read_text().split() or ["-"])[0] == "257"
    except OSError:
        return False


def rabbitmq(stage: Stage) -> Result:
    vhost = f"flashsr-faults-{os.getpid()}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True)
    try:
        stage.start(broker=f"amqp://guest:guest@127.0.0.1:5672/{vhost}")
        return _kill_a_worker_a_quarter_in(stage, note="a worker SIGKILLed mid-run")
    finally:
        stage.stop()
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


# A poison file: two seconds of 1024 channels, whose every block needs about 650 MiB to resample,
# where the kernel allows 300 MiB (a real cgroup memory limit, as a container's). An hour-long call
# beside it streams in a constant few tens of MiB and succeeds.
POISON_LIMIT = 300 << 20


def poison_file(in_process: bool) -> Callable[[Stage], Result]:
    def fault(stage: Stage) -> Result:
        try:
            with memory_group_or_raise(POISON_LIMIT) as group:
                # FLASHSR_MEMORY_LIMIT=off: tried and killed, not refused from its header.
                if not in_process:
                    stage.start(workers=0, FLASHSR_MEMORY_LIMIT="off")
                    stage.add_worker(wrap=group.wrap)
                stage.write_calls()
                _hour_of_call(stage.root / "long.wav")
                _wide_file(stage.root / "wide.wav")
                started = time.monotonic()
                stage.fault()
                run = stage.command(wrap=group.wrap if in_process else list, in_process=in_process,
                                    FLASHSR_MEMORY_LIMIT="off")
                result = finish(stage, "", run, started)
                kills = group.oom_kills()
        except NoMemoryGroup as exc:
            return Result(fault="", status="skipped", note=str(exc))
        entries = json.loads((stage.root / "manifest.json").read_text())["enhancements"]
        wide = next(e for e in entries if e["source"] == "wide.wav")
        long = next(e for e in entries if e["source"] == "long.wav")
        if wide["status"] == "failed":
            result.falsely_failed -= 1  # failed as it should be
        result.note = (f"{kills} OOM kills; the hour-long call: {long['status']}; "
                       f"wide.wav: {wide.get('error') or wide['status']}")[:200]
        return result
    return fault


def _hour_of_call(path: Path, rate: int = 8000) -> None:
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(7)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        for _ in range(60):
            out.write((rng.standard_normal(rate * 60) * 0.1).astype(np.float32))


def _wide_file(path: Path, channels: int = 1024, seconds: float = 2.0, rate: int = 8000) -> None:
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(3)
    sf.write(str(path), (rng.standard_normal((int(rate * seconds), channels)) * 0.1).astype(np.float32), rate,
             subtype="PCM_16")


def full_disk(stage: Stage) -> Result:
    """In-process: the output disk (a 3 MiB tmpfs) fills mid-run; then room is made and the same command runs."""
    mount = stage.tmp / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        return Result(fault="", status="skipped", note="cannot mount a tmpfs here")
    try:
        out = mount / "out"
        stage.write_calls()
        full = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}
        started = time.monotonic()
        stage.fault()
        stage.stderr = stage.tmp / "stderr-disk"
        args = [sys.executable, "-m", "orchestrator_hooks.flashsr_extension", "--input", str(stage.root),
                "--output_dir", str(out), "--device", "cpu", "--quiet"]
        first = subprocess.run(args, cwd=REPO, env=full, capture_output=True, text=True, timeout=CAP_S)
        first_status = first.returncode
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        second = subprocess.run(args, cwd=REPO, env=full, capture_output=True, text=True, timeout=CAP_S)
        stage.stderr.write_text(first.stderr + second.stderr)
        result = Result(fault="", status=f"{first_status}, then {second.returncode}",
                        total_s=round(time.monotonic() - started, 1), note="in-process; room made, same command")
        result.after_fault_s = result.total_s
        root_backup = stage.root
        stage_root_for_count = out
        _count_output_dir(stage, root_backup, stage_root_for_count, result)
        text = stage.stderr.read_text()
        result.traceback_lines = sum("Traceback" in line or "Exception ignored" in line or line.startswith("  File ")
                                     for line in text.splitlines())
        return result
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def _count_output_dir(stage: Stage, sources_root: Path, out: Path, result: Result) -> None:
    sources = {str(p.relative_to(sources_root)) for p in sources_root.rglob("call_*.wav")}
    entries = json.loads((out / "manifest.json").read_text()).get("enhancements", []) \
        if (out / "manifest.json").exists() else []
    ok: dict[str, int] = {}
    for entry in entries:
        if entry["status"] == "ok":
            ok[entry["source"]] = ok.get(entry["source"], 0) + 1
        else:
            result.falsely_failed += 1
    result.ok = sum(1 for s in sources if ok.get(s) == 1)
    result.missing = sum(1 for s in sources if s not in ok)
    result.duplicated = sum(1 for s in sources if ok.get(s, 0) > 1)
    result.tmp_left = len(list(out.rglob(".*.tmp")))


def ctrl_c_then_again(stage: Stage) -> Result:
    """Ten times the files and one worker, so that the run lasts long enough to be interrupted."""
    stage.files *= 10
    stage.start(workers=1)
    stage.write_calls()
    started = time.monotonic()
    run = stage.command(FLASHSR_CHORD_SIZE="20")
    wait_for(lambda: outputs(stage) >= stage.files // 4, 120)
    stage.fault()
    run.send_signal(signal.SIGINT)
    first_status = run.wait(30)
    client = stage.redis.client()
    wait_for(lambda: not client.llen("cpu") and not client.hlen("unacked"), 60)
    first_outputs = {p: p.stat().st_mtime_ns for p in stage.root.rglob("*_flashsr.wav")}
    done_first = len(first_outputs)
    left = [k for k in client.keys("celery-*")]
    first_err = stage.stderr.read_text()
    again = stage.command()
    result = finish(stage, "", again, started)
    redone = sum(p.stat().st_mtime_ns != mtime for p, mtime in first_outputs.items())  # written again
    result.status = f"{first_status}, then {result.status}"
    result.note = (f"interrupted at {done_first}/{stage.files}; re-run redid {max(0, redone)}; "
                   f"{len(left)} result/chord keys left after the interrupt")
    result.traceback_lines += sum("Traceback" in line for line in first_err.splitlines())
    return result


def no_wait(stage: Stage) -> Result:
    stage.start()
    stage.write_calls()
    started = time.monotonic()
    run = stage.command("--no-wait")
    run.wait(CAP_S)
    client = stage.redis.client()
    wait_for(lambda: outputs(stage) == stage.files and not client.llen("cpu") and not client.hlen("unacked"), CAP_S)
    result = finish(stage, "", run, started, note="records reach manifest.json at the next run")
    return result


FAULTS: dict[str, tuple[str, Callable[[Stage], Result]]] = {
    "aof-send": ("Redis (AOF) killed while sending, back 5 s later", redis_outage(True, 5, True)),
    "aof-5s": ("Redis (AOF) killed while waiting, 5 s outage", redis_outage(True, 5, False)),
    "aof-30s": ("Redis (AOF) killed while waiting, 30 s outage", redis_outage(True, 30, False)),
    "aof-60s": ("Redis (AOF) killed while waiting, 60 s outage", redis_outage(True, 60, False)),
    "aof-acks": ("Redis (AOF) killed while acks are in flight (a third done), 25 s outage",
                 ack_cutting_outage(25, 1 / 3)),
    "empty": ("Redis without persistence restarted empty mid-run", redis_outage(False, 1, False)),
    "lost-message": ("a message popped the instant Redis died", lost_message),
    "silent-port": ("a port that accepts TCP but never answers", silent_port),
    "nobody": ("no worker on the queue; workers start after the notice", nobody_listening),
    "give-up": ("no worker on the queue, --give-up-after 20", give_up),
    "sigkill": ("a worker killed (SIGKILL), default settings", worker_sigkill),
    "sigterm": ("a worker sent SIGTERM mid-task, SIGKILL 10 s later", worker_sigterm_mid_task),
    "rabbitmq": ("RabbitMQ broker (results in Redis), a worker SIGKILLed", rabbitmq),
    "disk": ("output disk full (in-process, 3 MiB tmpfs)", full_disk),
    "poison": ("a file that is OOM-killed on every run, and an hour-long call (worker in a 300 MiB cgroup)",
               poison_file(False)),
    "poison-in-process": ("the same, in-process (the command in the cgroup)", poison_file(True)),
    "ctrl-c": ("Ctrl-C of a distributed run at 25 %, then the same command", ctrl_c_then_again),
    "no-wait": ("--no-wait", no_wait),
}
QUICK = ("aof-5s", "lost-message", "silent-port")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK)} with 20 files")
    parser.add_argument("--only", nargs="+", choices=sorted(FAULTS), help="these faults only")
    args = parser.parse_args()
    names = list(args.only or (QUICK if args.quick else FAULTS))
    files = 20 if args.quick and args.files == 200 else args.files
    print(f"{files} calls of 1-3 s at 8 kHz per fault; two `celery worker -Q cpu -c 2`; cap {CAP_S} s per run")
    header = ("fault", "exit", "total s", "after fault s", "one ok", "missing", "dup", "false fail", "tmp",
              "traceback lines", "note")
    print(" | ".join(header))
    for name in names:
        title, fault = FAULTS[name]
        tmp = Path(tempfile.mkdtemp(prefix=f"flashsr-fault-{name}-"))
        stage = Stage(tmp=tmp, files=files)
        try:
            result = fault(stage)
        except Exception as exc:  # a benchmark row, not a crash of the whole table
            result = Result(fault="", status="error", note=f"{type(exc).__name__}: {exc}"[:120])
        finally:
            stage.stop()
        result.fault = title
        print(" | ".join(str(v) for v in (result.fault, result.status, result.total_s,
                                          "-" if result.after_fault_s is None else result.after_fault_s,
                                          result.ok, result.missing, result.duplicated, result.falsely_failed,
                                          result.tmp_left, result.traceback_lines, result.note)), flush=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
