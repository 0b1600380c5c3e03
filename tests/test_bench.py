"""The benchmark's summary arithmetic (bench/train_step.py), on made-up runs: no timing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "train_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("portanet_bench_train_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _run(framework, rnd, step_ms, gemm_ms):
    return {
        "status": "ok", "config": "mnist", "batch": 128, "dtype": "float32",
        "framework": framework, "round": rnd, "steps": 10, "warmup": 5,
        "step_ms": {"median": step_ms}, "gemm_ms": {"median": gemm_ms},
        "step_samples_ms": [step_ms] * 3,
        "memory": {"peak_rss_bytes": 1, "training_rss_bytes": 1}, "info": {},
        "loss_after_warmup": 0.5, "final_loss": 0.4,
    }


def test_vs_torch_pairs_the_runs_of_each_round(bench):
    # Round 1 ran in a slow spell that made both frameworks 3x slower. The ratios of
    # the rounds are 2, 2 and 1.5, so their median is 2; the medians over rounds (2.4
    # and 1.6) would mix rounds and say 1.5.
    runs = [_run("torch", 0, 2.0, 1.0), _run("portanet-numpy", 0, 1.0, 0.5),
            _run("torch", 1, 6.0, 3.0), _run("portanet-numpy", 1, 3.0, 1.5),
            _run("torch", 2, 2.4, 1.2), _run("portanet-numpy", 2, 1.6, 0.8)]
    rows = {r["framework"]: r for r in bench.aggregate(runs)}
    assert rows["portanet-numpy"]["vs_torch"] == pytest.approx(2.0)
    assert rows["torch"]["vs_torch"] == pytest.approx(1.0)
    assert rows["portanet-numpy"]["median_ms"] == pytest.approx(1.6)
    assert rows["portanet-numpy"]["ceiling"] == pytest.approx(0.5)


def test_paired_ratio_falls_back_to_medians_without_a_common_round(bench):
    assert bench.paired_ratio({0: 4.0, 1: 2.0, 2: 3.0}, {5: 1.0}) == pytest.approx(3.0)
    assert bench.paired_ratio({0: 4.0, 1: 2.0}, {1: 1.0, 2: 9.0}) == pytest.approx(2.0)


def test_step_breakdown_measures_each_phase_and_prints_them(capsys):
    sys.path.insert(0, str(BENCH.parent))
    try:
        import step_breakdown
    finally:
        sys.path.remove(str(BENCH.parent))
    phases = step_breakdown.measure("tiny", steps=5)
    assert set(phases) == {"forward+loss+backward", "update", "GEMMs alone"}
    assert all(ms > 0 for ms in phases.values())
    assert step_breakdown.main(["tiny", "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "update (Adam)" in out and "GEMM ceiling (GEMMs / step):" in out
