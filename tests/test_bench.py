"""The benchmark's pure parts: the bare statistics, target evaluation and the results page.

No timing is asserted here: speed is measured by ``make bench`` (bench/results.md).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.bare import bare_statistics, write_ready
from lacrima.vocabulary import RESULTS_COLUMNS


def test_bare_statistics_are_the_runs_statistics(demo_run, study, sites, tmp_path):
    # The yardstick must compute what a run publishes, on the data the run analysed.
    folder = write_ready(demo_run.storage, study, sites, tmp_path / "ready")
    ready = {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}
    assert sorted(ready) == sorted(s.code for s in sites)
    results, descriptives, replication = bare_statistics(ready, study, sites)
    run = demo_run.comparison.results.reindex(columns=list(RESULTS_COLUMNS))
    keys = ["family", "analysis", "site", "x", "y", "covariates", "method"]
    assert len(results) == len(run)
    got = results.sort_values(keys, ignore_index=True)
    want = run.sort_values(keys, ignore_index=True)
    pd.testing.assert_frame_equal(got[keys].astype(str), want[keys].astype(str))
    for col in ("n", "estimate", "ci_low", "ci_high", "statistic", "df", "p_value", "p_adjusted",
                "k", "tau2", "i2", "q", "q_p", "pi_low", "pi_high"):
        np.testing.assert_allclose(pd.to_numeric(got[col]).to_numpy(float),
                                   pd.to_numeric(want[col]).to_numpy(float),
                                   rtol=1e-9, equal_nan=True, err_msg=col)
    assert len(replication) == len(demo_run.comparison.replication)
    assert set(descriptives["site"]) == {s.code for s in sites}


def _runs(*seconds, peak=100.0):
    return [{"seconds": s, "peak_rss_mb": peak, "summary": {}} for s in seconds]


def _measured(full=(30.0, 31.0, 40.0), floor=(10.0, 11.0, 12.0), bare=(10.0, 12.0, 12.0),
              same=(0.5, 0.6, 0.55), new=(6.0, 6.2, 5.0), three=(12.0,), three_floor=(2.5,),
              check=(2.0, 2.5, 4.0), gx=(2.0, 2.0, 2.0),
              dask=((100, 40.0), (250, 80.0), (1000, 320.0)), dask_peak=3000.0,
              cumulative=(10.0, 11.5)):
    return {"3x": {"sites": 3, "n_per_site": 110, "full": _runs(*three),
                   "floor": _runs(*three_floor)},
            "consortium": {"sites": 125, "n_per_site": 120, "text_formats": True,
                           "new_drop_site": "us001", "full": _runs(*full), "floor": _runs(*floor),
                           "bare": _runs(*bare), "nothing_new": _runs(*same),
                           "one_new_drop": _runs(*new)},
            "check": {"site": "us", "rows": 124, "runs": _runs(*check), "import_gx": _runs(*gx)},
            "dask": [{"sites": k, "n_per_site": 1000, "run": _runs(s, peak=dask_peak)[0]}
                     for k, s in dask],
            "cumulative": {"months": 24, "n": 1000, "growth": 10, "seconds": list(cumulative),
                           "first": cumulative[0], "last": cumulative[-1],
                           "ratio": round(cumulative[-1] / cumulative[0], 2),
                           "records_new": 10, "records_held": 1220}}


def test_every_target_is_judged_from_medians_of_one_run():
    from bench.bench import evaluate_targets

    targets = evaluate_targets(_measured())
    assert len(targets) == 9
    text = {t.name: (t.measured, t.met) for t in targets}
    # medians: full 31 s, floor 11 s -> 2.82x; 3x 12 / 2.5 s; new drop 6 / 31 s; same 0.55 s
    assert text["125 x 120: `lacrima run`, drop to report, at most 3x the floor"] == (
        "31.0 s / 11.0 s = 2.82x", True)
    assert text["three real sites: `lacrima run`, drop to report, at most 6x the floor"] == (
        "12.0 s / 2.5 s = 4.80x", True)
    assert text["one new drop at one of 125 sites at most 0.2x the full run of the same 125"] \
        == ("6.0 s / 31.0 s = 0.19x", True)
    assert text["125 x 120: `lacrima run` with nothing new at most 2% of the full run"] == (
        "0.55 s = 1.8%", True)
    assert text['`lacrima check` of a 124-row drop at most 1.3x `python -c "import '
                'great_expectations"`'] == ("2.5 s / 2.0 s = 1.25x", True)
    assert text["Dask, 1,000 x 1,000: peak memory of the process tree under 3 GB"] == (
        "3,000 MB", True)
    assert text["a site's monthly cumulative exports: export 24 at most 1.2x the first"] == (
        "11.50 s / 10.00 s = 1.15x", True)
    # the overhead over lacrima's own kernels: its own labelled line, never judged
    overhead = [t for t in targets if "lacrima's own kernels" in t.name]
    assert [(t.measured, t.met) for t in overhead] == [("31.0 s / 12.0 s = 2.58x", None)]
    assert all(t.met is True for t in targets if t not in overhead)


@pytest.mark.parametrize("change, target", [
    ({"floor": (10.0, 10.0, 10.0)}, "125 x 120: `lacrima run`, drop to report"),   # 3.1x
    ({"three_floor": (1.9,)}, "three real sites"),                                 # 6.3x
    ({"new": (6.3, 6.3, 6.3)}, "one new drop"),                                    # 0.203x
    ({"same": (0.7, 0.7, 0.7)}, "nothing new"),                                    # 2.3%
    ({"check": (2.7, 2.7, 2.0)}, "lacrima check"),                                 # 1.35x
    ({"dask_peak": 3072.0}, "peak memory"),
    ({"dask": ((100, 40.0), (250, 160.0), (1000, 320.0))}, "linear"),
    ({"cumulative": (10.0, 12.5)}, "cumulative"),
])
def test_a_missed_target_is_not_met(change, target):
    from bench.bench import evaluate_targets

    missed = [t for t in evaluate_targets(_measured(**change)) if t.met is False]
    assert len(missed) == 1 and target in missed[0].name, [t.name for t in missed]


def test_without_the_floor_its_targets_say_so_and_are_not_judged():
    from bench.bench import NO_FLOOR, evaluate_targets

    m = _measured()
    del m["3x"]["floor"]
    m["consortium"]["floor"] = []
    judged = {t.name: (t.measured, t.met) for t in evaluate_targets(m)}
    assert judged["125 x 120: `lacrima run`, drop to report, at most 3x the floor"] == (
        NO_FLOOR, None)
    assert judged["three real sites: `lacrima run`, drop to report, at most 6x the floor"] == (
        NO_FLOOR, None)


def test_the_floor_is_found_beside_the_repository_or_reported_absent(tmp_path):
    from bench.bench import FLOOR, REPO, find_floor

    assert FLOOR == REPO.parent / "shared" / "bench" / "floor.py"
    assert find_floor(tmp_path / "nowhere.py") is None
    script = tmp_path / "floor.py"
    script.write_text("print('floor')\n")
    assert find_floor(script) == script


def test_targets_of_scenarios_not_run_are_left_out_and_two_dask_sizes_are_not_judged():
    from bench.bench import evaluate_targets

    m = _measured(dask=((4, 20.0), (8, 22.0)))
    del m["3x"], m["cumulative"]
    targets = evaluate_targets(m)
    assert not any("three real sites" in t.name or "cumulative" in t.name for t in targets)
    linear = next(t for t in targets if "linear" in t.name)
    assert linear.met is None and linear.measured == "needs three sizes"
    assert evaluate_targets({}) == []


def test_linear_fit_measures_the_miss_of_the_line_not_seconds_per_site():
    from bench.bench import linear_fit

    # a fixed start-up cost plus a cost per site is linear
    text, ok = linear_fit([(100, 15.0 + 0.3 * 100), (250, 15.0 + 0.3 * 250), (1000, 315.0)])
    assert ok and "a = 15.0 s, b = 0.300 s per site, largest miss 0.0%" in text
    _, ok = linear_fit([(100, 10.0), (250, 25.0), (1000, 400.0)])     # grows faster than sites
    assert not ok


def test_results_page_quotes_targets_commands_stages_and_provenance(tmp_path):
    import json

    from bench.bench import evaluate_targets, previous_results, to_markdown

    meta = {"date": "2026-11-29T20:00:00+00:00", "commit": "abc1234", "host_cpu": "AMD EPYC",
            "cores": 2, "memory_gb": 23.5, "python": "3.11.7", "argv": "python -m bench",
            "lacrima": "lacrima", "prefect_api": "the ephemeral Prefect API", "repeats": 3,
            "quick": False, "notes": ["run on a quiet machine"], "floor": "/x/floor.py"}
    m = _measured(floor=(10.0, 10.0, 10.0))
    page = to_markdown(meta, m, evaluate_targets(m))
    assert "Measured 2026-11-29T20:00:00+00:00 at commit abc1234" in page
    assert "the ephemeral Prefect API" in page and "Quick mode" not in page
    assert "`/x/floor.py`" in page and "floor is absent" not in page
    assert ("| 125 x 120: `lacrima run`, drop to report, at most 3x the floor | "
            "31.0 s / 10.0 s = 3.10x | **no** |") in page
    assert ("| 125 x 120 | `lacrima run`, drop to report | 31.00 | 30.00, 31.00, 40.00 | 100 |"
            in page)
    assert "| 125 x 120 | floor | 10.00 | 10.00, 10.00, 10.00 | 100 |" in page
    assert "| 3 real sites (mean N 110) | floor | 2.50 | 2.50 | 100 |" in page
    assert '| 124 rows (us) | `python -c "import great_expectations"` | 2.00 |' in page
    assert "| 1,000 x 1,000 | `lacrima run --runner dask` | 320.00 | 320.00 | 3,000 |" in page
    assert "- run on a quiet machine" in page and "sent CSV, not xlsx" in page
    # stage times of the median full run of both scenarios, this run's beside the previous
    m["consortium"]["full"][1]["summary"] = {"seconds": {"intake": 10.04, "report": 3.0}}
    m["3x"]["full"][0]["summary"] = {"seconds": {"plan": 0.06, "analysis": 2.0}}
    old = tmp_path / "results.json"
    old.write_text(json.dumps({"machine": meta | {"date": "2026-11-01T00:00:00+00:00",
                                                  "commit": "0ld0ld0"},
                               "measurements": m}))
    before = previous_results(old)
    page = to_markdown(meta, m, [], before)
    assert "| 125 x 120 | this run (2026-11-29, abc1234) | 31.0 |  | 10.0 |  |  | 3.0 |  |" \
        in page
    assert "| three real sites | before (2026-11-01, 0ld0ld0) | 12.0 | 0.1 |  | 2.0 |" in page
    assert previous_results(tmp_path / "missing.json") is None
    assert "Quick mode" in to_markdown(meta | {"quick": True}, m, [])
    assert "**The floor is absent**" in to_markdown(meta | {"floor": None}, m, [])


def test_a_command_is_timed_with_its_summary_and_a_failure_says_what_it_printed():
    import os
    import sys

    from bench.bench import timed

    summary = '{"accepted": 2, "sites_reused": ["a", "b", "c"], "drops": [{"file": "x"}]}'
    t = timed([sys.executable, "-c", f"print('progress'); print({summary!r})"], dict(os.environ),
              json_summary=True)
    assert t.seconds > 0 and t.peak_rss_mb >= 0
    assert t.summary == {"accepted": 2, "sites_reused": 3}          # drop lists left out
    with pytest.raises(RuntimeError, match=r"exited 3:\nno such store"):
        timed([sys.executable, "-c", "import sys; print('no such store', file=sys.stderr); "
               "sys.exit(3)"], dict(os.environ))


def _portal(api=(0.4, 0.5, 0.6), cli=(9.0, 10.0, 11.0), uploads=(0.3,) * 19 + (2.5,)):
    return {"portal": {"site": "us", "rows": 124, "start_seconds": 12.0,
                       "cli_check": [{"seconds": s, "peak_rss_mb": 300.0} for s in cli],
                       "api_check": list(api), "uploads": list(uploads),
                       "uploads_p95": sorted(uploads)[18]}}


def test_portal_targets_are_judged_within_one_run():
    from bench.bench import evaluate_targets, to_markdown

    check, uploads = evaluate_targets(_portal())
    assert (check.measured, check.met) == ("0.50 s / 10.00 s = 0.05x", True)
    assert (uploads.measured, uploads.met) == ("p95 0.30 s (slowest 2.50 s)", True)
    slow, _ = evaluate_targets(_portal(api=(1.1, 1.2, 1.3), cli=(20.0,)))    # over 1 s
    assert slow.met is False
    ratio, _ = evaluate_targets(_portal(api=(0.6,), cli=(2.0,)))              # 0.3x
    assert ratio.met is False
    _, late = evaluate_targets(_portal(uploads=(0.3,) * 18 + (2.1, 2.5)))      # p95 2.1 s
    assert late.met is False
    page = to_markdown({"date": "d", "commit": "c", "host_cpu": "x", "cores": 2,
                        "memory_gb": 1, "python": "3.11", "argv": "a", "lacrima": "l",
                        "prefect_api": "p", "repeats": 3, "quick": False}, _portal(), [])
    assert "| 124 rows (us) | portal API check, warm | 0.50 | 0.40, 0.50, 0.60 | - |" in page
