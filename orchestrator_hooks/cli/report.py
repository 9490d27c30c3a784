"""`flashsr-report ROOT --output FILE.html`: one offline page about a processed root.

Totals by status and method, every failure's sentence (the first 500), throughput, and
before/after spectrograms of a few sample files. Self-contained: the pictures are PNGs inside
the page as data: URIs, the style is inline, there is no script and nothing is fetched, so the
page can be mailed or archived and opens the same anywhere.
"""
from __future__ import annotations

import argparse
import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from orchestrator_hooks.cli import exit_status

if TYPE_CHECKING:
    from flashsr_tasks.quality.report_facts import RunFacts

DESCRIPTION = """\
Write one self-contained HTML page about a processed root (the folder holding manifest.json):
totals by status and method, the failures with their sentences, throughput, and spectrograms
of --samples files before and after (0-24 kHz, linear; a dashed cyan line at the input's band
edge), chosen by the hash of their names, so the same root gives the same samples."""


_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse}td,th{padding:.25em .8em;border-bottom:1px solid #eee;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.failure td:first-child{font-family:monospace;white-space:nowrap}
figure{margin:0 0 1.5em}figure>div{display:flex;gap:1em;flex-wrap:wrap}
figure img{image-rendering:pixelated;height:240px;border:1px solid #999}
figcaption{font-family:monospace;margin-bottom:.3em}
.axis{font-size:.85em;color:#555}
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashsr-report", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", metavar="ROOT", help="the processed root: the folder with manifest.json "
                                                     "(the --output_dir of the run, when it had one)")
    parser.add_argument("--output", required=True, metavar="FILE.html", help="the page to write")
    parser.add_argument("--samples", type=int, default=4, metavar="N",
                        help="files shown before and after (default 4; 0 for none)")
    parser.add_argument("--sources", metavar="DIR",
                        help="where the sources are, when the run wrote to an --output_dir (default: ROOT)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.samples < 0:
        parser.error("--samples must be 0 or more")
    root = Path(args.root)
    if not root.is_dir():
        parser.error(f"{args.root} is not a folder")
    from flashsr_tasks.quality.report_facts import NoManifest, run_facts

    try:
        facts = run_facts(root, args.samples)
    except NoManifest as exc:
        parser.error(str(exc))
    page = render(facts, root, Path(args.sources) if args.sources else root)
    output = Path(args.output)
    from flashsr_tasks.files.atomic import atomic_path

    with atomic_path(output) as tmp:
        tmp.write_text(page, encoding="utf-8")
    print(f"flashsr-report: wrote {output} ({len(page) // 1024} KiB, {len(facts.samples)} samples)")
    return exit_status.OK


def render(facts: RunFacts, root: Path, sources: Path) -> str:
    """The whole page as one string."""
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>flashsr report: {e(root.name)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>flashsr report: {e(root.resolve().name)}</h1>"]
    files = sum(facts.totals.values())
    parts.append(f"<h2>Totals</h2><p id=files>{files} files in manifest.json</p>"
                 "<table id=totals><tr><th>status</th><th>method</th><th>files</th></tr>")
    for (status, method), count in sorted(facts.totals.items()):
        parts.append(f"<tr><td>{e(status)}</td><td>{e(method)}</td><td class=n>{count}</td></tr>")
    parts.append("</table>")
    parts.append(_throughput(facts))
    parts.append(f"<h2>Failures</h2><p>{facts.failed} failed</p>")
    if facts.failures:
        parts.append("<table id=failures><tr><th>source</th><th>what happened</th></tr>")
        for source, error in facts.failures:
            parts.append(f"<tr class=failure><td>{e(source)}</td><td>{e(error)}</td></tr>")
        parts.append("</table>")
        if facts.failed > len(facts.failures):
            parts.append(f"<p>… and {facts.failed - len(facts.failures)} more (manifest.json names each).</p>")
    parts.append(_samples(facts, root, sources))
    parts.append("</body></html>\n")
    return "".join(parts)


def _throughput(facts: RunFacts) -> str:
    rows = [("audio enhanced", f"{facts.audio_s:,.1f} s")]
    if facts.busy_s > 0:
        rows.append(("per-file work, summed", f"{facts.busy_s:,.2f} s ({facts.audio_s / facts.busy_s:,.1f}× real time "
                                              f"per worker)"))
    wall = facts.wall_s
    if wall:
        ok = sum(n for (status, _), n in facts.totals.items() if status == "ok")
        rows.append(("first to last record", f"{wall:,.0f} s ({ok / wall:,.2f} files/s, "
                                             f"{facts.audio_s / wall:,.1f} s of audio per second)"))
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td class=n>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<h2>Throughput</h2><table id=throughput>{cells}</table>"


def _samples(facts: RunFacts, root: Path, sources: Path) -> str:
    from flashsr_tasks.quality.png import png_bytes
    from flashsr_tasks.quality.spectrogram import TOP_HZ, spectrogram_rgb

    e = html.escape
    parts = [f"<h2>Before and after</h2><p class=axis>Spectrograms: 0 Hz at the bottom, {TOP_HZ // 1000} kHz at "
             "the top (linear), time left to right, 100 dB from brightest to darkest; the dashed cyan line is the "
             "input's band edge.</p>"]
    for sample in facts.samples:
        edge = sample.band_edge_hz
        label = f"{sample.source} → {sample.output_path} ({sample.method}"
        label += f", input {sample.input_sample_rate} Hz" if sample.input_sample_rate else ""
        label += f", band edge {edge:,.0f} Hz" if edge else ""
        label += f", input kept below {sample.kept_input_band_hz:,} Hz" if sample.kept_input_band_hz else ""
        parts.append(f"<figure class=sample><figcaption>{e(label)})</figcaption><div>")
        for caption, path in (("before", sources / sample.source), ("after", root / sample.output_path)):
            try:
                picture = base64.b64encode(png_bytes(spectrogram_rgb(path, edge))).decode("ascii")
            except Exception as exc:  # a moved or unreadable file: say so, keep the page
                parts.append(f"<p class=missing>{caption}: {e(sample.source if caption == 'before' else sample.output_path)}"
                             f" cannot be read ({e(type(exc).__name__)})</p>")
                continue
            parts.append(f"<div><div class=axis>{caption}</div><img alt='{caption}: {e(str(path.name))}' "
                         f"src='data:image/png;base64,{picture}'></div>")
        parts.append("</div></figure>")
    return "".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
