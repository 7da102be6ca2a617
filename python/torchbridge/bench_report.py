"""What tb.bench reports: the per-path figures (PathInfo), the report with its text and markdown
tables and JSON (BenchReport), and the optional chart (write_png)."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torchbridge.timing import Latency


def cpu_name() -> str:
    """The CPU's model name as lscpu prints it ("AMD EPYC", "Intel(R) Xeon(R) ..."), from /proc/cpuinfo;
    platform's processor or machine where that file has none."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"

#: Every path tb.bench can measure, in the order reports list them.
PATHS = ("eager", "torchscript", "libtorch", "cpp", "cli", "onnxruntime", "pt2")


@dataclass
class PathInfo:
    """One path in a BenchReport: what runs, on which file, and its isolated-process figures.

    load_ms, first_call_ms (per batch size) and the RSS figures come from a fresh process running
    only this path (cli: torchbridge-run's own JSON); None, with `note` saying why, when that
    process could not run it.
    """

    path: str
    what: str
    artifact: str | None = None
    artifact_bytes: int | None = None
    import_ms: float | None = None
    load_ms: float | None = None
    first_call_ms: dict[int, float] = field(default_factory=dict)
    rss_after_import_mb: float | None = None
    peak_rss_mb: float | None = None
    #: VmHWM after the calls at each batch size, in the order run (for cli: one process per size)
    peak_rss_by_batch_mb: dict[int, float] = field(default_factory=dict)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["first_call_ms"] = {str(b): v for b, v in self.first_call_ms.items()}
        data["peak_rss_by_batch_mb"] = {str(b): v for b, v in self.peak_rss_by_batch_mb.items()}
        return data


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(digits - 1, 1)}f}"


def _size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "-"
    if num_bytes >= 1024 * 1024:
        return f"{num_bytes / (1024 * 1024):.1f} MiB"
    return f"{num_bytes / 1024:.1f} KiB"


@dataclass
class BenchReport:
    """What tb.bench measured: p50/p90 per path and batch size, the isolated-process figures per
    path, the paths skipped and why, and the machine it ran on."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    paths: list[PathInfo]
    latency: list[Latency]
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def batch_sizes(self) -> list[int]:
        return list(dict.fromkeys(r.batch for r in self.latency))

    def info(self, path: str) -> PathInfo | None:
        return next((p for p in self.paths if p.path == path), None)

    def p50(self, path: str, batch: int) -> float | None:
        return next((r.p50_ms for r in self.latency if r.path == path and r.batch == batch), None)

    def ratios(self) -> dict[tuple[str, int], float]:
        """p50 / the fastest path's p50 at the same batch size (the fastest: 1.0)."""
        fastest = {b: min(r.p50_ms for r in self.latency if r.batch == b) for b in self.batch_sizes}
        return {(r.path, r.batch): r.p50_ms / fastest[r.batch] for r in self.latency}

    def derived(self) -> list[dict[str, Any]]:
        """The comparisons the benchmark exists for, per batch size where they depend on it."""

        def p50_ratio(a: str, b: str) -> dict[int, float]:
            values = {}
            for batch in self.batch_sizes:
                x, y = self.p50(a, batch), self.p50(b, batch)
                if x is not None and y is not None:
                    values[batch] = x / y
            return values

        cpp = self.info("cpp")
        first = {}
        for batch in self.batch_sizes:
            p50 = self.p50("cpp", batch)
            if cpp is not None and batch in cpp.first_call_ms and p50:
                first[batch] = cpp.first_call_ms[batch] / p50
        cli, eager = self.info("cli"), self.info("eager")
        rss = {}
        if cli and eager:
            for batch in self.batch_sizes:
                a, b = cli.peak_rss_by_batch_mb.get(batch), eager.peak_rss_by_batch_mb.get(batch)
                if a and b:
                    rss[batch] = a / b
        checks = [
            (
                "cpp p50 / onnxruntime p50",
                "below 1: the C++ runtime is faster than onnxruntime",
                p50_ratio("cpp", "onnxruntime"),
            ),
            ("cpp p50 / eager p50", "below 1: the C++ runtime is faster than eager PyTorch", p50_ratio("cpp", "eager")),
            (
                "cpp p50 / libtorch p50",
                "the overhead of torchbridge's layer over the bare LibTorch forward",
                p50_ratio("cpp", "libtorch"),
            ),
            ("cpp first call / cpp p50", "near 1: the runtime's warm-up at load keeps the first call cheap", first),
            (
                "cli RSS / eager-process RSS",
                "peak RSS of torchbridge-run at that batch size over a Python process running eager up to it",
                rss,
            ),
        ]
        return [{"check": c, "meaning": m, "value": v} for c, m, v in checks]

    def _derived_lines(self) -> list[str]:
        lines = []
        for item in self.derived():
            value = item["value"]
            if isinstance(value, dict):
                text = ", ".join(f"batch {b}: {v:.2f}" for b, v in value.items()) if value else "n/a"
            else:
                text = f"{value:.2f}" if value is not None else "n/a"
            if text == "n/a":
                measured = {r.path for r in self.latency} | {p.path for p in self.paths if p.peak_rss_mb}
                missing = [p for p in item["check"].replace("/", " ").split() if p in PATHS and p not in measured]
                if missing:
                    text += f" ({missing[0]} {'skipped' if missing[0] in self.skipped else 'not measured'})"
            lines.append(f"{item['check']}: {text}  ({item['meaning']})")
        return lines

    def _rows(self) -> list[list[str]]:
        ratios = self.ratios()
        rows = []
        for batch in self.batch_sizes:
            for r in (r for r in self.latency if r.batch == batch):
                info = self.info(r.path) or PathInfo(r.path, "")
                first = info.first_call_ms.get(batch)
                rows.append(
                    [
                        str(batch),
                        r.path,
                        fmt(r.p50_ms),
                        fmt(r.p90_ms),
                        fmt(r.throughput_per_s),
                        f"{ratios[(r.path, batch)]:.2f}",
                        fmt(info.load_ms),
                        fmt(first),
                        fmt(first / r.p50_ms if first is not None else None),
                        fmt(info.peak_rss_mb),
                        _size(info.artifact_bytes),
                    ]
                )
        return rows

    HEADER = (
        "batch",
        "path",
        "p50 ms",
        "p90 ms",
        "samples/s",
        "x fastest",
        "load ms",
        "first call ms",
        "first/p50",
        "peak RSS MB",
        "artifact",
    )

    def table(self) -> str:
        """The headline table as plain text, then the derived checks."""
        rows = [list(self.HEADER), *self._rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.HEADER))]
        lines = [
            "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in rows
        ]
        lines.insert(1, "-" * len(lines[0]))
        lines.append("")
        lines += self._derived_lines()
        for path, reason in self.skipped.items():
            lines.append(f"skipped {path}: {reason}")
        lines += [note for note in self.notes if note.startswith("warning:")]
        lines.append(f"measured on {self.machine['label']}")
        return "\n".join(lines)

    def markdown(self) -> str:
        m, s = self.machine, self.settings
        out = [
            f"# Every path side by side: {s['model']}",
            "",
            f"Measured on {m['label']}, {m['date']}; load average {m['loadavg_start'][0]:.2f} at the start, "
            f"{m['loadavg_end'][0]:.2f} at the end; cores busy with other processes {fmt(m['busy_cores_start'])} "
            f"at the start, {fmt(m['busy_cores_end'])} at the end. Absolute times are this machine's; compare "
            "the ratios.",
            f"Batch sizes {', '.join(map(str, self.batch_sizes))}; {s['warmup']} warm-up calls, then {s['runs']} "
            "interleaved rounds per batch size.",
            "",
            "| " + " | ".join(self.HEADER) + " |",
            "|" + "|".join("---" if i < 2 else "---:" for i in range(len(self.HEADER))) + "|",
        ]
        out += ["| " + " | ".join(row) + " |" for row in self._rows()]
        out += ["", "x fastest: p50 / the fastest path's p50 at that batch size.", "", "## Derived checks", ""]
        out += [f"- `{line.split(': ', 1)[0]}`: {line.split(': ', 1)[1]}" for line in self._derived_lines()]
        out += ["", "## Paths", "", "| path | what runs | artifact | import ms | RSS after import MB | note |"]
        out += ["|---|---|---|---:|---:|---|"]
        for p in self.paths:
            artifact = f"{Path(p.artifact).name} ({_size(p.artifact_bytes)})" if p.artifact else "-"
            out.append(
                f"| {p.path} | {p.what} | {artifact} | {fmt(p.import_ms)} | {fmt(p.rss_after_import_mb)} "
                f"| {p.note or ''} |"
            )
        if self.skipped:
            out += ["", "## Skipped", ""] + [f"- {path}: {reason}" for path, reason in self.skipped.items()]
        out += ["", "## How it was measured", ""] + [f"- {note}" for note in self.notes]
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict[str, Any]:
        ratios = self.ratios()
        latency = [{**asdict(r), "ratio_to_fastest": ratios[(r.path, r.batch)]} for r in self.latency]
        derived = []
        for item in self.derived():
            value = item["value"]
            derived.append(
                {**item, "value": {str(b): v for b, v in value.items()} if isinstance(value, dict) else value}
            )
        return {
            "machine": self.machine,
            "settings": self.settings,
            "paths": [p.to_dict() for p in self.paths],
            "latency": latency,
            "derived": derived,
            "skipped": self.skipped,
            "notes": self.notes,
        }

    def write(self, out_dir: str | Path) -> list[Path]:
        """bench.json, bench.md and (with matplotlib) bench.png into `out_dir`."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        png_note = write_png(self, out_dir / "bench.png")
        if png_note:
            self.notes.append(png_note)
        (out_dir / "bench.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (out_dir / "bench.md").write_text(self.markdown())
        written = [out_dir / "bench.json", out_dir / "bench.md"]
        return written + ([out_dir / "bench.png"] if not png_note else [])


def write_png(report: BenchReport, path: str | Path) -> str | None:
    """Grouped bars of p50 per path, one panel per batch size, ratio to the fastest on each bar.
    Returns None when written, else a note saying why not (matplotlib missing)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "bench.png not written: matplotlib is not installed (pip install 'torchbridge[bench]')"
    batches = report.batch_sizes
    if not batches:
        return "bench.png not written: no path was timed"
    ratios = report.ratios()
    order = [p for p in [*PATHS, "aoti"] if any(r.path == p for r in report.latency)]
    colors = {p: f"C{i}" for i, p in enumerate(order)}
    figure = Figure(figsize=(max(6.0, 3.2 * len(batches) + 1.5), 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(batches), squeeze=False)[0]
    for ax, batch in zip(axes, batches):
        names = [p for p in order if report.p50(p, batch) is not None]
        values = [report.p50(p, batch) for p in names]
        bars = ax.bar(range(len(names)), values, color=[colors[n] for n in names])
        for bar, name in zip(bars, names):
            ax.annotate(
                f"{ratios[(name, batch)]:.2f}x",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("p50 latency (ms)")
        ax.margins(y=0.15)
    figure.suptitle(
        f"{report.settings['model']}: p50 per path (x fastest on the bars)\n{report.machine['label']}", fontsize=9
    )
    figure.savefig(path, dpi=120)
    return None
