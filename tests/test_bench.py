"""Benchmarks are not tests, but their quick modes must keep working."""

import json

from tests.processes import ROOT, run_bench


def test_pipeline_quick_mode_reports_numbers() -> None:
    out = run_bench("bench.pipeline", "--quick")
    assert "100-point batches" in out and "publish → anomaly" in out
    results = json.loads((ROOT / "bench" / "results" / "pipeline-quick.json").read_text())
    for scenario in results["scenarios"]:
        assert scenario["end_to_end_eps"] > 0 and scenario["raw_ceiling_eps"] > 0
        # The node's own CPU time: a node measured as using none was not the one measured.
        assert scenario["node_cpu_us_per_event"] > 0
        assert scenario["rounds"]["end_to_end_eps"] == [scenario["end_to_end_eps"]]
    assert results["idle_latency_ms"]["p50"] > 0
    assert all(results[f"latency_ms_at_{r}eps"]["n"] > 0 for r in (20_000, 50_000, 75_000))
    # The loaded phases run at shares of the columnar maximum on 1,000 streams, and say at
    # what rate.
    (columnar,) = (
        s
        for s in results["scenarios"]
        if s["name"] == "100-point columnar" and s["streams"] == 1000
    )
    for share in (50, 90):
        phase = results[f"latency_ms_at_{share}pct"]
        assert phase["rate_eps"] == share / 100 * columnar["end_to_end_eps"]
        assert f"{share}% of max throughput (columnar, {phase['rate_eps']:,.0f} events/s)" in out


def test_pull_bench_compares_fetch_with_the_feed() -> None:
    out = run_bench("bench.pull", "--messages", "3000")
    assert "fetch" in out and "feed" in out
    results = json.loads((ROOT / "bench" / "results" / "pull.json").read_text())
    assert results["feed"] > 0 and results["fetch"] > 0


def test_lmdb_bench_compares_per_record_with_batched_commits() -> None:
    out = run_bench("bench.lmdb_commit", "--records", "3200")
    assert "fsync per record" in out
    results = json.loads((ROOT / "bench" / "results" / "lmdb_commit.json").read_text())
    assert results["fsync per record"] > 0


def test_gateway_bench_quick_mode_runs_the_gateway_command() -> None:
    out = run_bench("bench.gateway", "--quick")
    assert "ingest 100 points" in out and "anomaly query" in out
    results = json.loads((ROOT / "bench" / "results" / "gateway-quick.json").read_text())
    for row in ("ingest 100 points, node paused", "ingest 100 points", "anomaly query"):
        assert results[row]["errors"] == 0
        assert results[row]["gateway_cpu_ms_per_request"] > 0
    # What was ingested while the node was paused, it applied once resumed.
    before = results["node settled before ingest 100 points, node paused"]["points"]
    assert results["node settled before ingest 100 points"]["points"] - before >= 100 * 100


def test_alerting_bench_quick_mode_measures_latency_and_incident_rate() -> None:
    out = run_bench("bench.alerting", "--quick")
    assert "latency p50" in out and "incidents/s" in out
    results = json.loads((ROOT / "bench" / "results" / "alerting-quick.json").read_text())
    assert 0 < results["latency_ms"]["p50"] <= results["latency_ms"]["p99"]
    assert results["incidents_per_s"] > 0


def test_cluster_bench_quick_mode_measures_join_handoff_and_failover() -> None:
    out = run_bench("bench.cluster", "--quick")
    assert "handoff pause p99" in out
    results = json.loads((ROOT / "bench" / "results" / "cluster-quick.json").read_text())
    assert results["handoffs"] > 0
    assert results["join_s"] > 0
    assert results["failover_s"] > 0


def test_scale_bench_quick_mode_reports_memory_and_passivation() -> None:
    out = run_bench("bench.scale", "--quick")
    assert "LMDB per stream" in out
    results = json.loads((ROOT / "bench" / "results" / "scale-quick.json").read_text())
    assert results["active_actors_after_passivation"] == 0
    assert results["lmdb_per_stream_bytes"] > 0


def test_detect_cost_quick_mode_reports_wall_and_cpu_time() -> None:
    out = run_bench("bench.detect_cost", "--quick")
    assert "streams a call" in out and "CPU µs" in out
    results = json.loads((ROOT / "bench" / "results" / "detect_cost-quick.json").read_text())
    for scenario in (
        "one_stream_batch_100",
        "interleaved_1_point",
        "interleaved_1_point_together",
        "interleaved_10_points",
        "interleaved_10_points_together",
    ):
        measured = results[scenario]
        assert measured["us_per_stream_batch"] > 0 and measured["cpu_us_per_stream_batch"] > 0
