"""Validations from several threads give each drop its own findings (GX's shared context)."""

from concurrent.futures import ThreadPoolExecutor

from lacrima.study import load_site
from lacrima.synth import simulate
from lacrima.validate import run_suite


class _Codebook:
    def native_name(self, canonical):
        return canonical


def test_concurrent_validations_do_not_mix_up_drops(study):
    site = load_site("us")
    frames = []
    for seed in range(4):
        f = simulate(site, study, 40, seed)
        if seed % 2:                              # every other drop has a planted error
            f.loc[seed, "wai_01"] = 9
        frames.append(f)

    def findings(i):
        return [(x.check, x.columns, x.rows) for x in
                run_suite(frames[i], study, list(range(1, 41)), _Codebook())]

    sequential = [findings(i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(findings, list(range(4))))
    assert concurrent == sequential
    assert [bool(s) for s in sequential] == [False, True] * 2
    assert sequential[3] == [("value_range", ("wai_01",), (4,))]


def test_threads_starting_together_build_one_gx_context(study, monkeypatch):
    # Intake groups start together on the thread runner; each must not build its own context.
    import threading
    import time

    import great_expectations as gx

    from lacrima import validate

    built = []
    real = gx.get_context

    def slow_get_context(*args, **kwargs):
        built.append(threading.get_ident())
        time.sleep(0.2)       # every thread is inside a cold cache before the first returns
        return real(*args, **kwargs)

    monkeypatch.setattr(gx, "get_context", slow_get_context)
    validate._batch_definition.cache_clear()
    validate._suite_for.cache_clear()
    frame = simulate(load_site("us"), study, 20, 0)
    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(lambda _: run_suite(frame, study, list(range(1, 21)), _Codebook()),
                              range(4)))
    assert len(built) == 1
    assert found == [found[0]] * 4
