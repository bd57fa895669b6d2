"""The soak's own logic, without the dev cloud: plans are reproducible from the
seed, a case keeps its sub-seed when run alone, and frozen spans are measured
conservatively."""

from tests.chaos import run


def test_the_same_seed_draws_the_same_cases():
    a = run.Run(42, 30).plan()
    assert a == run.Run(42, 30).plan()
    assert a != run.Run(43, 30).plan()
    assert {k for _, _, k in run.Run(1, 400).plan()} == set(run.CATALOGUE)


def test_a_case_keeps_its_sub_seed_in_a_longer_run():
    assert run.Run(7, 10).plan() == run.Run(7, 1000).plan()[:10]


def test_kinds_filter_draws_only_those_kinds():
    plan = run.Run(5, 50, kinds={"td_second_host_gc", "rg_cgroup_kill"}).plan()
    assert {k for _, _, k in plan} == {"td_second_host_gc", "rg_cgroup_kill"}


def test_an_unanswered_sample_does_not_end_a_frozen_span():
    samples = [(0.0, "thawed", False), (1.0, "frozen", False), (2.0, "unknown", None),
               (8.0, "unknown", None), (9.5, "thawed", False)]
    assert run.longest_span(samples, run._frozen) == 8.5


def test_a_span_still_open_at_the_end_counts_to_the_last_sample():
    samples = [(0.0, "frozen", False), (3.0, "frozen", False), (7.0, "frozen", True)]
    assert run.longest_span(samples, run._frozen) == 7.0
    assert run.longest_span(samples, run._paused) == 0.0


def test_a_case_parameters_do_not_follow_from_its_kind(tmp_path):
    seeds = [s for _, s, k in run.Run(3, 400).plan() if k == "td_thaw_fails_n"]
    runner = run.Run(3, 1)
    runner.workdir = str(tmp_path)
    ns = {run.Case(runner, i, s, "td_thaw_fails_n").rng.randint(1, 7)
          for i, s in enumerate(seeds)}
    assert len(ns) >= 4


def _enter_later(turns, alone, entered, hold=0.0):
    import threading
    import time

    def go():
        with turns.turn(alone):
            entered.append(time.monotonic())
            time.sleep(hold)
    t = threading.Thread(target=go)
    t.start()
    return t


def test_a_shared_kind_runs_alone_across_jobs(tmp_path):
    import time
    turns = run.Turns(str(tmp_path))
    entered = []
    with turns.turn(alone=True):
        t = _enter_later(turns, False, entered)
        time.sleep(0.3)
        assert entered == [], "an ordinary case ran beside a shared one"
        left = time.monotonic()
    t.join(5)
    assert entered and entered[0] >= left


def test_a_waiting_shared_kind_is_not_starved_by_ordinary_cases(tmp_path):
    import time
    turns = run.Turns(str(tmp_path))
    writer, late_reader = [], []
    with turns.turn(alone=False):
        w = _enter_later(turns, True, writer, hold=0.3)
        time.sleep(0.2)                      # the shared case now waits at the turnstile
        r = _enter_later(turns, False, late_reader)
        time.sleep(0.2)
        assert late_reader == [], "a new ordinary case overtook a waiting shared one"
    w.join(5)
    r.join(5)
    assert writer and late_reader and late_reader[0] >= writer[0] + 0.3


def test_shards_split_the_plan_without_overlap():
    plans = []
    for k in range(3):
        r = run.Run(9, 20, shard=(k, 3))
        plans.append({i for i, _, _ in r.plan() if r.mine(i)})
    assert set.union(*plans) == set(range(20))
    assert sum(len(p) for p in plans) == 20


def test_without_jobs_nothing_is_locked():
    turns = run.Turns(None)
    with turns.turn(alone=True):
        with turns.turn(alone=True):
            pass


def test_an_agent_confirmed_thaw_counts_only_where_the_harness_saw_nothing():
    samples = [(0.0, "frozen", False), (4.0, "unknown", None), (6.0, "unknown", None),
               (7.0, "thawed", False)]
    assert run.longest_span(run.with_agent_confirmations(samples, [4.1]), run._frozen) == 4.1
    # the harness saw it still frozen after the record's time: the record is ignored
    seen_frozen = samples[:2] + [(5.0, "frozen", False)] + samples[2:]
    assert run.longest_span(run.with_agent_confirmations(seen_frozen, [4.1]),
                            run._frozen) == 7.0
    # no confirmation: the unknown run extends the span to the first thawed sample
    assert run.longest_span(run.with_agent_confirmations(samples, []), run._frozen) == 7.0


def test_an_agent_confirmed_thaw_after_a_frozen_sample_ends_the_span():
    samples = [(0.0, "frozen", False), (4.0, "frozen", False), (4.5, "unknown", None),
               (6.9, "thawed", False)]
    assert run.longest_span(run.with_agent_confirmations(samples, [4.1]), run._frozen) == 4.1


def test_a_worker_past_the_run_budget_is_stopped_and_reported(tmp_path):
    import subprocess
    import sys
    import time
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    t0 = time.monotonic()
    rcs = run._wait_all([quick, stuck], budget=2)
    assert rcs == [0, 124]
    assert stuck.poll() is not None
    assert time.monotonic() - t0 < 30

