"""A change against the code before it, in `scripts/bench` runs alternated in pairs.

On the development machine the same code's figures move by 15-30% from one spell to the next
(docs/performance.md); a change of a few percent shows only against runs of the code before it
made in the same spell. This runs the benchmark on a git revision (in a temporary worktree) and on
the working tree by turns, the revision first in odd pairs and the change first in even ones, and
compares each pair's figures:

    python -m benchmarks.ab --base 0b1225a --pairs 6 -- --phases msgs --transports tcp --open-fraction 0

Without ``--figure``, each msgs transport's messages per daemon CPU-second (higher is better) and
its open loop's p99 (lower is better) are compared. ``--figure PATH`` names any number in the
runner's JSON by its dotted path (``phases.login.plain+tcp.logins_per_s``); ``PATH:lower`` when less is
better. It prints each pair, the median of the change's ratio to the base, and in how many pairs
the change was better, with the two-sided sign test's p: whether that many wins could be the
spells' luck. JSON of every run on stdout with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from math import comb
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Figure:
    """One number read from a run's JSON, and which way is better."""

    name: str
    read: Callable[[Mapping[str, Any]], float | None]
    lower_is_better: bool = False


def at_path(path: str) -> Callable[[Mapping[str, Any]], float | None]:
    def read(run: Mapping[str, Any]) -> float | None:
        value: Any = run
        for key in path.split("."):
            if not isinstance(value, Mapping) or key not in value:
                return None
            value = value[key]
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    return read


def parse_figure(text: str) -> Figure:
    path, _, direction = text.partition(":")
    if direction not in ("", "lower", "higher"):
        raise argparse.ArgumentTypeError(f"{text!r}: the direction after ':' is 'lower' or 'higher'")
    return Figure(path, at_path(path), direction == "lower")


def msgs_figures(run: Mapping[str, Any]) -> list[Figure]:
    """Per transport of the msgs phase: messages per daemon CPU-second, and the open loop's p99."""
    figures = []
    for transport, row in sorted(run.get("phases", {}).get("msgs", {}).items()):
        def per_cpu_second(run: Mapping[str, Any], transport: str = transport) -> float | None:
            delivered = at_path(f"phases.msgs.{transport}.delivered")(run)
            cpu = at_path(f"phases.msgs.{transport}.cpu.server_cpu_s")(run)
            return delivered / cpu if delivered is not None and cpu else None

        figures.append(Figure(f"msgs.{transport} per daemon CPU-second", per_cpu_second))
        if "open_loop" in row:
            figures.append(Figure(f"msgs.{transport} open loop p99 ms",
                                  at_path(f"phases.msgs.{transport}.open_loop.latency_ms.p99"), lower_is_better=True))
    return figures


def sign_test(wins: int, losses: int) -> float:
    """The two-sided sign test's p for *wins* against *losses* (ties left out): the chance that a
    change with no effect wins or loses at least this lopsidedly."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Comparison:
    name: str
    pairs: list[tuple[float, float]]  # (base, change) per pair in which both runs gave the figure
    median_ratio: float | None  # change / base
    wins: int  # pairs in which the change was better
    losses: int
    p: float


def compare(figure: Figure, runs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> Comparison:
    pairs = []
    for base_run, change_run in runs:
        base, change = figure.read(base_run), figure.read(change_run)
        if base is not None and change is not None:
            pairs.append((base, change))
    ratios = [change / base for base, change in pairs if base]
    better = [(change < base) if figure.lower_is_better else (change > base) for base, change in pairs
              if change != base]
    wins = sum(better)
    return Comparison(figure.name, pairs, statistics.median(ratios) if ratios else None, wins,
                      len(better) - wins, sign_test(wins, len(better) - wins))


def report(comparisons: Sequence[Comparison]) -> str:
    lines = []
    for c in comparisons:
        lines.append(c.name)
        for number, (base, change) in enumerate(c.pairs, 1):
            lines.append(f"  pair {number}: base {base:,.1f}  change {change:,.1f}  ({change / base:.3f})"
                         if base else f"  pair {number}: base {base}  change {change}")
        ratio = "n/a" if c.median_ratio is None else f"{c.median_ratio:.3f}"
        lines.append(f"  median ratio {ratio}; better in {c.wins} of {c.wins + c.losses} pairs "
                     f"(sign test p = {c.p:.3f})")
    return "\n".join(lines)


def bench(tree: Path, arguments: Sequence[str]) -> dict[str, Any]:
    """One `benchmarks.run` on *tree*'s code (its own runner, its own server), this venv's Python."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", *arguments], cwd=tree,  # noqa: S603 - our runner
                          env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the benchmark failed in {tree} (status {done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, metavar="REV", help="the git revision to compare against")
    parser.add_argument("--pairs", type=int, default=6, metavar="N", help="pairs of runs (default 6)")
    parser.add_argument("--figure", type=parse_figure, action="append", default=[], metavar="PATH[:lower]",
                        help="a number in the runner's JSON by its dotted path (repeatable)")
    parser.add_argument("--json", action="store_true", help="every run's JSON on stdout")
    parser.add_argument("bench", nargs=argparse.REMAINDER, help="after --: the benchmark's own arguments")
    args = parser.parse_args(argv)
    arguments = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="sns-xmpp-ab-") as folder:
        base_tree = Path(folder) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(base_tree), args.base],  # noqa: S603, S607
                       cwd=ROOT, check=True)
        try:
            runs: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for number in range(1, args.pairs + 1):
                order = [base_tree, ROOT] if number % 2 else [ROOT, base_tree]
                results = {tree: bench(tree, arguments) for tree in order}
                runs.append((results[base_tree], results[ROOT]))
                print(f"ab: pair {number} of {args.pairs} done", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT,  # noqa: S603, S607
                           check=False)
    figures = args.figure or msgs_figures(runs[0][1])
    if not figures:
        raise SystemExit("no figures to compare: name them with --figure (the runs had no msgs phase)")
    print(report([compare(figure, runs) for figure in figures]), file=sys.stderr)
    if args.json:
        json.dump([{"base": base, "change": change} for base, change in runs], sys.stdout, indent=1)


if __name__ == "__main__":
    main()
