"""The run summary: what `FlashSRExtension.run()` returns and `--json` prints."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:
    from flashsr_tasks.manifest.records import Outcome

# Failures listed by name; beyond this only counted (manifest.json names every one), so the
# summary of a run over a broken archive stays small.
MAX_LISTED_FAILURES = 100


@dataclass
class RunSummary:
    root: str
    files: int = 0          # audio files found under the root
    enhanced: int = 0       # outputs written (method flashsr or resample)
    skipped: int = 0        # output current already (same input, output whole)
    unselected: int = 0     # full-band at a full rate: nothing to do
    failed: int = 0
    methods: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)  # the first MAX_LISTED_FAILURES
    full_band: list[str] = field(default_factory=list)  # the first MAX_LISTED_FAILURES left alone as full-band
    elapsed_s: float = 0.0
    mode: str = "in-process"
    chords: int = 0         # chords sent (distributed)
    waited: bool = True     # False: sent with --no-wait, outcomes not collected
    output_dir: Optional[str] = None  # --output_dir: outputs and manifest.json are there
    resampled_because: Optional[str] = None  # a cuda run resampled files: why the model did not run
    sent: int = 0           # files given to the per-file work (to workers, or in this process)
    not_done: Optional[int] = None  # --no-wait: files found without a record yet when the run returned

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def add(self, outcome: Outcome) -> None:
        kind = outcome["outcome"]
        setattr(self, kind, getattr(self, kind) + 1)
        record: Mapping[str, Any] = outcome.get("record") or {}
        if kind == "enhanced":
            method = str(record.get("method", "?"))
            self.methods[method] = self.methods.get(method, 0) + 1
        elif kind == "failed" and len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append({"source": outcome["source"], "error": str(record.get("error", "failed"))})
        elif kind == "unselected" and len(self.full_band) < MAX_LISTED_FAILURES:
            self.full_band.append(outcome["source"])  # manifest.json's full_band has them all, with edges

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if not self.waited:
            pending = f", {self.not_done} not yet done" if self.not_done is not None else ""
            return (
                f"flashsr: {self.files} files: {self.sent} sent as {self.chords} chords (not waiting){pending}, "
                f"{self.skipped} skipped; records reach {self.output_dir or self.root}/manifest.json as the workers "
                f"finish (flashsr-status {self.root} --wait waits for them)"
            )
        methods = ", ".join(f"{n} {m}" for m, n in sorted(self.methods.items()))
        return (
            f"flashsr: {self.files} files: {self.enhanced} enhanced"
            + (f" ({methods})" if methods else "")
            + f", {self.skipped} skipped, {self.unselected} full-band, {self.failed} failed"
            + f" in {self.elapsed_s:.1f} s ({self.mode}); manifest: {self.output_dir or self.root}/manifest.json"
            + (f"; resampled, not FlashSR: {self.resampled_because}" if self.resampled_because else "")
        )
