"""The worker's job functions run in this process by a real RQ worker (burst mode) on a private Redis."""

from __future__ import annotations

import logging

from rq import SimpleWorker

from optimization.engine import CountEngine
from workers import records, user_jobs
from workers.queue import generation_queue, library_queue
from workers.requests import build_request


def _submit(rt, **body) -> str:
    request = build_request(rt.settings, **body)
    return user_jobs.submit(rt.connection, rt.settings, request, owner="tester").job_id


def _engine_fails_once(monkeypatch, error: BaseException) -> None:
    """The next engine call raises ``error``; the ones after it work."""
    real, calls = CountEngine.generate_many, []

    def fails_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CountEngine, "generate_many", fails_once)


def _work(rt) -> None:
    queues = [generation_queue(rt.connection, rt.settings, "reference"),
              library_queue(rt.connection, rt.settings, "reference")]
    SimpleWorker(queues, connection=rt.connection).work(burst=True, with_scheduler=False)


def test_a_bug_in_the_engine_fails_the_job_as_internal_and_the_worker_serves_the_next(runtime, monkeypatch, caplog):
    _engine_fails_once(monkeypatch, RuntimeError("an unexpected bug deep in the engine"))
    first = _submit(runtime, prompt="a photo of red circles", count=2, seed=1, budget={"max_candidates": 8})
    second = _submit(runtime, prompt="a photo of red circles", count=2, seed=2, budget={"max_candidates": 8})
    with caplog.at_level(logging.ERROR, logger="tally.worker"):
        _work(runtime)
    failed = records.job_record(runtime.connection, runtime.settings, first, "tester")
    assert failed["status"] == "failed" and failed["error"]["code"] == "internal"
    assert "RuntimeError" not in failed["error"]["message"]  # callers see a code, operators the traceback
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "an unexpected bug deep in the engine" in str(logged[0].exc_info[1])
    succeeded = records.job_record(runtime.connection, runtime.settings, second, "tester")
    assert succeeded["status"] == "succeeded" and len(succeeded["results"]) == 1


def test_bad_input_only_the_worker_can_see_fails_the_job_as_invalid_request(runtime):
    # A model whose classes are not configured leaves the object to the worker.
    settings = runtime.settings.model_copy(update={"models": [runtime.model.model_copy(update={"classes": None})]})
    job = user_jobs.submit(runtime.connection, runtime.settings,
                         build_request(settings, prompt="a photo of red hexagons", count=2), "tester").job_id
    _work(runtime)
    record = records.job_record(runtime.connection, runtime.settings, job, "tester")
    assert record["status"] == "failed" and record["error"]["code"] == "invalid_request"
    assert "no known object" in record["error"]["message"]


def test_only_a_job_that_succeeds_starts_library_learning(runtime):
    from workers import library
    from workers.queue import keys

    canceled = _submit(runtime, prompt="a photo of red circles", count=5, seed=1, policy="library",
                       budget={"max_candidates": 8})
    runtime.connection.set(keys(runtime.settings).job_cancel(canceled), 1)  # asked to stop once it runs
    _work(runtime)
    record = records.job_record(runtime.connection, runtime.settings, canceled, "tester")
    assert record["status"] == "canceled" and record["token"]["learning_scheduled"] is False
    assert library.tasks(runtime.connection, runtime.settings) == []  # it left no learning behind

    finished = _submit(runtime, prompt="a photo of red circles", count=5, seed=1, policy="library",
                       budget={"max_candidates": 2})
    runtime.settings = runtime.settings.model_copy(update={"library": runtime.settings.library.model_copy(
        update={"max_iterations": 1, "calibration_above": 0, "calibration_below": 0, "calibration_seeds": 2,
                "validation_seeds": 2})})
    _work(runtime)
    record = records.job_record(runtime.connection, runtime.settings, finished, "tester")
    assert record["status"] == "succeeded" and record["token"]["learning_scheduled"] is True
    assert [t["key"] for t in library.tasks(runtime.connection, runtime.settings)] == [record["token"]["key"]]


def test_library_learning_runs_in_slices_that_let_user_jobs_through(runtime, monkeypatch):
    from workers import library
    from workers.runtime import slices

    settings = runtime.settings.model_copy(update={
        "library": runtime.settings.library.model_copy(update={
            "max_iterations": 3, "seeds_per_iteration": 1, "validation_seeds": 2, "validate_every": 1, "min_gain": -1,
            "max_gain_p": 1}),
        "library_slice_seconds": 0.001})  # one iteration per slice
    runtime.settings = settings
    key = runtime.engine.token_key("triangle", 4).id
    assert library.schedule(runtime.connection, settings, "reference", "triangle", 4, key)
    assert not library.schedule(runtime.connection, settings, "reference", "triangle", 4, key)  # single flight
    user_jobs, real = [], slices.run_slice

    def slice_then_a_user_arrives(*args):
        out = real(*args)
        if not user_jobs:
            user_jobs.append(_submit(runtime, prompt="a photo of red circles", count=2, seed=3,
                                     budget={"max_candidates": 8}))
        return out

    monkeypatch.setattr(slices, "run_slice", slice_then_a_user_arrives)
    _work(runtime)
    [task] = library.tasks(runtime.connection, settings)
    config, engine = settings.library, runtime.engine
    numbers = len(range(max(1, 4 - config.calibration_below), min(engine.max_count, 4 + config.calibration_above) + 1))
    batches = numbers * len(engine.library_prompts("triangle", 4, 4))  # calibration: one generation batch a slice
    assert task["status"] == "stored" and task["slices"] == batches + 3 and task["iterations"] == 3
    user = records.job_record(runtime.connection, settings, user_jobs[0], "tester")
    assert user["status"] == "succeeded" and user["timings"]["started"] < task["updated"]  # between slices
    assert runtime.store.info(key)["metadata"]["iterations"] == 3


def test_a_waiting_user_job_ends_a_long_learning_slice_at_its_next_step(runtime, monkeypatch):
    from workers import library
    from workers.runtime import slices

    settings = runtime.settings.model_copy(update={
        "library": runtime.settings.library.model_copy(update={
            "max_iterations": 2, "seeds_per_iteration": 1, "validation_seeds": 2, "validate_every": 1, "min_gain": -1,
            "max_gain_p": 1}),
        "library_slice_seconds": 600.0})  # all of it in one slice, unless a user job waits
    runtime.settings = settings
    key = runtime.engine.token_key("triangle", 4).id
    assert library.schedule(runtime.connection, settings, "reference", "triangle", 4, key)
    user_jobs, real = [], slices.run_slice

    def a_user_arrives_then_slice(*args):
        if not user_jobs:
            user_jobs.append(_submit(runtime, prompt="a photo of red circles", count=2, seed=3,
                                     budget={"max_candidates": 8}))
        return real(*args)

    monkeypatch.setattr(slices, "run_slice", a_user_arrives_then_slice)
    _work(runtime)
    [task] = library.tasks(runtime.connection, settings)
    # calibration's first batch, the user job, the rest of calibration, the gradient token (2 without the user job)
    assert task["status"] == "stored" and task["slices"] == 3
    user = records.job_record(runtime.connection, settings, user_jobs[0], "tester")
    assert user["status"] == "succeeded" and user["timings"]["started"] < task["updated"]


def test_a_token_without_gain_stays_out_of_the_library_and_its_key_is_not_relearned_soon(runtime):
    from workers import library

    runtime.settings = runtime.settings.model_copy(update={
        "library": runtime.settings.library.model_copy(update={
            "max_iterations": 1, "seeds_per_iteration": 1, "validation_seeds": 2, "validate_every": 5,
            "calibration_below": 0, "calibration_above": 0}),  # calibration may only state the count itself
        "library_slice_seconds": 60.0})
    key = runtime.engine.token_key("square", 5).id
    assert library.schedule(runtime.connection, runtime.settings, "reference", "square", 5, key)
    _work(runtime)
    [task] = library.tasks(runtime.connection, runtime.settings)
    assert task["status"] == "no_gain" and task["gain"] == 0.0  # no validation after its one step: the base
    assert runtime.store.info(key) is None and runtime.store.no_gain(key)["gain"] == 0.0
    assert not library.schedule(runtime.connection, runtime.settings, "reference", "square", 5, key)


def test_prune_removes_tokens_that_do_not_beat_the_base(runtime, tally_cli):
    from optimization.count_token import CountToken

    def token(count: int, metadata: dict) -> str:
        key = runtime.engine.token_key("circle", count)
        runtime.store.put(CountToken(key, runtime.engine.word_vectors("of"), "of", metadata).to_bytes())
        return key.id

    validation = {"base": {"exact": 0.2, "mae": 1.0, "n": 8}, "token": {"exact": 0.5, "mae": 0.6, "n": 8}}
    good = token(3, {"mode": "library", "validation": validation, "gain": 0.3, "gain_p": 0.01})
    flat = token(4, {"mode": "library", "validation": validation, "gain": 0.0, "gain_p": 0.01})
    refined = token(5, {"mode": "refine"})
    lucky = token(6, {"mode": "library", "validation": validation, "gain": 0.3, "gain_p": 0.4})  # chance explains it
    legacy = token(7, {"mode": "library", "validation": validation, "gain": 0.3})  # learned before p was recorded
    env = {"TALLY_REDIS_PREFIX": runtime.settings.redis_prefix, "TALLY_TOKEN_DIR": str(runtime.settings.tokens_path)}
    assert "would remove" in tally_cli("tokens", "prune", "--dry-run", env=env).stderr
    assert len(runtime.store.list()) == 5
    result = tally_cli("tokens", "prune", env=env)
    assert result.returncode == 0, result.stderr
    assert [i["key"] for i in runtime.store.list()] == [good]
    assert flat in result.stderr and refined in result.stderr and lucky in result.stderr and legacy in result.stderr


def test_running_out_of_memory_fails_the_job_as_out_of_memory_and_the_worker_serves_on(runtime, monkeypatch):
    _engine_fails_once(monkeypatch, MemoryError("injected"))
    first = _submit(runtime, prompt="a photo of red circles", count=2, seed=1, budget={"max_candidates": 8})
    second = _submit(runtime, prompt="a photo of red circles", count=2, seed=2, budget={"max_candidates": 8})
    _work(runtime)
    assert records.job_record(runtime.connection, runtime.settings, first, "tester")["error"]["code"] == "out_of_memory"
    assert records.job_record(runtime.connection, runtime.settings, second, "tester")["status"] == "succeeded"


def test_a_corrupt_or_foreign_file_in_the_token_folder_is_skipped_at_start(runtime, caplog):
    folder = runtime.settings.tokens_path
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "circle-3-0123456789abcdef.safetensors").write_bytes(b"\x10" * 64)
    (folder / "notes.safetensors").write_bytes(b"{}")
    with caplog.at_level(logging.WARNING, logger="tally.tokens"):
        assert runtime.store.reseed() == 0
    assert sum("skipping" in r.message for r in caplog.records) == 2
    job = _submit(runtime, prompt="a photo of red circles", count=3, seed=1, budget={"max_candidates": 8})
    _work(runtime)
    assert records.job_record(runtime.connection, runtime.settings, job, "tester")["status"] == "succeeded"


def test_nothing_a_finished_job_leaves_in_redis_lives_for_ever(runtime):
    job = _submit(runtime, prompt="a photo of red circles", count=2, seed=1, num_images=2, budget={"max_candidates": 8},
                  idempotency_key=None)
    user_jobs.submit(runtime.connection, runtime.settings, build_request(runtime.settings, prompt="a photo of red circles",
                   count=2, idempotency_key="k1"), "tester", idempotency_key="k1")
    _work(runtime)
    prefix = runtime.settings.redis_prefix
    shared = {f"{prefix}:metrics", f"{prefix}:model:reference"}  # bounded: one per deployment / model
    left = [k.decode() for k in runtime.connection.scan_iter(f"{prefix}*")] + \
        [k.decode() for k in runtime.connection.scan_iter(f"rq:*{job}*")]
    assert any(job in k for k in left) and any("image" in k for k in left) and any("idempotency" in k for k in left)
    for key in left:
        if key not in shared:
            assert runtime.connection.ttl(key) > 0, f"{key} never expires"


def test_owners_alternate_in_the_queue_so_a_flood_does_not_starve_another_key(runtime):
    def submit(owner: str, seed: int) -> str:
        request = build_request(runtime.settings, prompt="a photo of red circles", count=2, seed=seed)
        return user_jobs.submit(runtime.connection, runtime.settings, request, owner).job_id

    flood = [submit("flooder", s) for s in range(5)]
    polite = [submit("polite", s) for s in range(2)]
    late = submit("third", 0)
    order = generation_queue(runtime.connection, runtime.settings, "reference").get_job_ids()
    assert order == [flood[0], polite[0], late, flood[1], polite[1], flood[2], flood[3], flood[4]]
