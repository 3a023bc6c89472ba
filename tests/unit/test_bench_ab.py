"""benchmarks/ab.py: the pairs alternate which code runs first, each figure is read the right way
round, and the sign test says how likely the wins are from the spells alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks import ab


def msgs_run(delivered: int, cpu: float, p99: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"delivered": delivered, "cpu": {"server_cpu_s": cpu}}
    if p99 is not None:
        row["open_loop"] = {"latency_ms": {"p99": p99}}
    return {"phases": {"msgs": {"tcp": row}}}


def test_the_sign_test_matches_the_binomial_tails() -> None:
    assert ab.sign_test(6, 0) == pytest.approx(2 / 64)
    assert ab.sign_test(0, 6) == pytest.approx(2 / 64)
    assert ab.sign_test(5, 1) == pytest.approx(2 * 7 / 64)
    assert ab.sign_test(3, 3) == 1.0 and ab.sign_test(0, 0) == 1.0


def test_each_figure_is_compared_the_right_way_round_and_ties_and_gaps_are_left_out() -> None:
    runs = [  # (base, change)
        (msgs_run(10_000, 0.40, p99=60.0), msgs_run(10_000, 0.32, p99=40.0)),  # 25,000 -> 31,250
        (msgs_run(10_000, 0.50, p99=50.0), msgs_run(10_000, 0.40, p99=50.0)),  # p99 tied
        (msgs_run(10_000, 0.30, p99=30.0), msgs_run(10_000, 0.40, p99=45.0)),  # worse both ways
        (msgs_run(10_000, 0.40), {"phases": {}}),  # the change's run gave no figure
    ]
    per_cpu, p99 = (ab.compare(figure, runs) for figure in ab.msgs_figures(runs[0][0]))
    assert per_cpu.name == "msgs.tcp per daemon CPU-second" and len(per_cpu.pairs) == 3
    assert (per_cpu.wins, per_cpu.losses) == (2, 1)
    assert per_cpu.median_ratio == pytest.approx(1.25)
    assert p99.name == "msgs.tcp open loop p99 ms"
    assert (p99.wins, p99.losses) == (1, 1)  # lower is better; the tie counts for neither
    assert "better in 2 of 3 pairs" in ab.report([per_cpu])
    path = ab.parse_figure("phases.msgs.tcp.open_loop.latency_ms.p99:lower")
    assert path.lower_is_better and path.read(runs[0][1]) == 40.0 and path.read({"phases": 1}) is None


def test_the_pairs_alternate_which_code_runs_first(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    ran: list[str] = []

    def bench(tree: Path, arguments: list[str]) -> dict[str, Any]:
        assert arguments == ["--phases", "msgs"]
        which = "change" if tree == ab.ROOT else "base"
        ran.append(which)
        return msgs_run(10_000, 0.30 if which == "change" else 0.40)

    git: list[list[str]] = []
    monkeypatch.setattr(ab, "bench", bench)
    monkeypatch.setattr(ab.subprocess, "run", lambda command, **kwargs: git.append(command))
    ab.main(["--base", "HEAD~1", "--pairs", "4", "--", "--phases", "msgs"])
    assert ran == ["base", "change", "change", "base", "base", "change", "change", "base"]
    assert [command[:3] for command in git] == [["git", "worktree", "add"], ["git", "worktree", "remove"]]
    assert "better in 4 of 4 pairs (sign test p = 0.125)" in capsys.readouterr().err
