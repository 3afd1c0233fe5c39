"""Property-based testing of the API's own OpenAPI document with schemathesis (``schemathesis run`` in this
process): its examples, coverage (boundary values of every stated limit) and fuzzing phases, positive and
negative cases, seeded and deterministic. Used by the test suite and by ``tally bench faults``.

It drives schemathesis' engine rather than its pytest plugin, whose lazy-fixture mode fails on pytest 9.
"""

from __future__ import annotations

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
          "response_schema_conformance")


def fuzz_openapi(app, max_examples: int = 20, seed: int = 20240601) -> dict:
    """``{cases, server_errors, schema_violations, problems}``: each distinct problem once, in the order found."""
    import schemathesis
    from schemathesis.engine import Status, events, from_schema

    config = schemathesis.Config.from_dict({
        "seed": seed,
        "generation": {"mode": "all", "max-examples": max_examples, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
    })
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    problems, cases, server_errors, violations = {}, 0, 0, 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            cases += len(event.recorder.cases)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.SUCCESS:
                        continue
                    server_errors += check.name == "not_a_server_error"
                    violations += check.name != "not_a_server_error"
                    info = check.failure_info
                    what = f"{info.failure.title}: {str(info.failure.message)[:300]}" if info else check.status
                    problems.setdefault(f"{event.label} {check.name}: {what}", info and info.code_sample)
        elif isinstance(event, (events.NonFatalError, events.FatalError)):  # e.g. an exception in the app
            server_errors += 1
            problems.setdefault(f"{getattr(event, 'label', 'run')}: {type(event.value).__name__}: "
                                f"{str(event.value)[:300]}", None)
    return {"cases": cases, "server_errors": server_errors, "schema_violations": violations,
            "problems": [f"{text}" + (f"\n    {sample}" if sample else "") for text, sample in problems.items()]}
