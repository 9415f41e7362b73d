"""One Great Expectations run over many drops gives each drop exactly its own findings."""

import numpy as np
import pandas as pd
import pytest

from lacrima.codebook import load_codebook
from lacrima.study import load_site
from lacrima.synth import simulate
from lacrima.validate import run_suite, run_suite_many


def _drops(study):
    """Good and bad drops of three sites: (frame, row numbers, codebook) each."""
    out = []

    def add(code, frame):
        out.append((frame, list(range(4, 4 + len(frame))), load_codebook(load_site(code))))

    for code in ("us", "it", "il"):
        add(code, simulate(load_site(code), study, 30, 7))             # clean
    us = load_site("us")
    same_ids = simulate(us, study, 30, 8)                               # same IDs as drop 0
    add("us", same_ids)
    dup = simulate(us, study, 30, 9)
    dup.loc[[3, 17], "participant_id"] = dup.loc[5, "participant_id"]   # one ID three times
    dup.loc[11, "wai_01"] = 9
    add("us", dup)
    it = simulate(load_site("it"), study, 25, 10)
    it.loc[2, "gender"] = "robot"
    it.loc[6, "participant_id"] = pd.NA
    non_crier = int(np.flatnonzero((it["cried_in_therapy"] == False).fillna(False))[0])  # noqa: E712
    it.loc[non_crier, "cry_sessions"] = 3
    add("it", it)
    add("il", simulate(load_site("il"), study, 1, 11))                   # one row
    il = simulate(load_site("il"), study, 30, 7)                        # same IDs as drop 2
    il.loc[0, "participant_id"] = il.loc[1, "participant_id"]
    add("il", il)
    return out


@pytest.fixture(scope="module")
def drops(study):
    return _drops(study)


@pytest.fixture(scope="module")
def alone(drops, study):
    return [run_suite(f, study, rows, cb) for f, rows, cb in drops]


def _batched(drops, study, **kw):
    frames, rows, codebooks = zip(*drops)
    return run_suite_many(frames, study, rows, codebooks, **kw)


def test_batched_findings_equal_findings_of_each_drop_alone(drops, alone, study):
    assert _batched(drops, study) == alone
    # the mix is what the test claims: clean drops pass, planted errors are found
    assert [bool(f) for f in alone] == [False, False, False, False, True, True, False, True]


def test_uniqueness_stays_per_drop(drops, alone, study):
    # drop 3 repeats drop 0's IDs, drop 7 drop 2's: no finding from that, in either mode
    assert drops[3][0]["participant_id"].tolist() == drops[0][0]["participant_id"].tolist()
    assert alone[3] == [] and alone[0] == []
    dup = {f.check: f for f in alone[4]}
    assert dup["unique_ids"].rows == (4 + 3, 4 + 5, 4 + 17)
    assert dup["value_range"].rows == (4 + 11,)
    assert [(f.check, f.rows) for f in alone[7]] == [("unique_ids", (4, 5))]
    it = {f.check: f for f in alone[5]}
    assert set(it) == {"ids_present", "allowed_codes", "value_range"}
    assert it["ids_present"].rows == (4 + 6,)


def test_groups_split_by_rows_give_the_same_findings(drops, alone, study):
    # several GX runs (at most 40 participant rows each) instead of one
    assert _batched(drops, study, max_rows=40) == alone


def test_inputs_are_not_changed_and_must_line_up(drops, study):
    frames, rows, codebooks = zip(*drops)
    before = [f.copy() for f in frames]
    run_suite_many(frames[:2], study, rows[:2], codebooks[:2])
    for f, b in zip(frames, before):
        pd.testing.assert_frame_equal(f, b)
    with pytest.raises(ValueError, match="one row_numbers and one codebook per frame"):
        run_suite_many(frames[:2], study, rows[:1], codebooks[:2])
    assert run_suite_many([], study, [], []) == []


def test_validate_drop_with_batched_suite_equals_validate_drop_alone(drops, study):
    # What intake does: one run_suite_many for the drops with rows, then validate_drop per
    # drop with its share of the findings.
    from lacrima.native import NativeDrop
    from lacrima.validate import validate_drop

    frames, rows, codebooks = zip(*drops)
    read = [NativeDrop(frame=f, row_numbers=tuple(r), findings=(), identifying_dropped=(),
                       n_rows=len(f)) for f, r in zip(frames, rows)]
    read.append(NativeDrop(frame=frames[0].iloc[:0], row_numbers=(), findings=(),
                           identifying_dropped=(), n_rows=0))   # no rows: no suite; completion
    codebooks = [*codebooks, codebooks[0]]
    checked = [i for i, d in enumerate(read) if len(d.frame)]
    suites = dict(zip(checked, run_suite_many([read[i].frame for i in checked], study,
                                              [read[i].row_numbers for i in checked],
                                              [codebooks[i] for i in checked])))
    batched = [validate_drop(d, study, cb, "x", f"f{i}", str(i), suite=suites.get(i))
               for i, (d, cb) in enumerate(zip(read, codebooks))]
    alone = [validate_drop(d, study, cb, "x", f"f{i}", str(i))
             for i, (d, cb) in enumerate(zip(read, codebooks))]
    assert batched == alone
    assert [r.valid for r in alone] == [True, True, True, True, False, False, True, False, False]
    assert [f.check for f in alone[-1].errors] == ["completion"]


def test_a_failure_not_pinned_to_a_drop_falls_back_to_one_run_per_drop(drops, alone, study,
                                                                       monkeypatch):
    from lacrima import validate

    real, runs = validate._suite_run, []

    def unpinned_when_stacked(frames, study):
        runs.append(len(frames))
        return None if len(frames) > 1 else real(frames, study)

    monkeypatch.setattr(validate, "_suite_run", unpinned_when_stacked)
    assert _batched(drops, study) == alone
    assert runs == [len(drops)] + [1] * len(drops)
