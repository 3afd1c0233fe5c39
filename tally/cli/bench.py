"""``tally bench ...``: thin shells over ``tally.benchmarks``; each prints a table and writes its JSON into
``--out`` (``out/bench/NAME.json``, ``NAME-MODEL.json`` for a model other than the default), where
``tally report`` reads it, and to ``--json`` as well."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from optimization.config import Budget, Policy
from optimization.errors import InvalidRequest

from tally.benchmarks.report import DEFAULT_FOLDER, result_path

from .common import DetectorOption, JsonOption, ModelOption, app, console, load_engine, model_spec, prepare, \
    progress_bar, quiet_model_loading, token_store, write_json

bench_app = typer.Typer(help="Benchmarks that print a table and write JSON (read by `tally report`).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
OutOption = Annotated[Path, typer.Option(help="Folder for the JSON (NAME.json; NAME-MODEL.json for a model other "
                                               "than the default) and the pictures; `tally report` reads it.")]


def save(result: dict, name: str, out: Path, json_path: Optional[Path]) -> None:
    """The result where ``tally report`` finds it, named for its model unless that is the default one, and at
    ``--json`` too."""
    model = result.get("model")
    write_json(result, result_path(out, name, model if model and model != prepare().default_model else None),
               json_path)


@bench_app.command("detector")
def detector(
    scenes: Annotated[int, typer.Option(min=1, help="Fresh rendered scenes (seeds disjoint from training).")] = 1000,
    generated: Annotated[int, typer.Option(min=0, help="Generated images per model verified by the detector "
                                                       "alone, judged by the cross-check (0: none).")] = 2000,
    model: Annotated[Optional[list[str]], typer.Option(help="Model(s) whose generations to verify; default: "
                                                            "every configured model.")] = None,
    detector: DetectorOption = None,
    out: OutOption = DEFAULT_FOLDER,
    json_path: JsonOption = None,
) -> None:
    """The detector on fresh rendered scenes (clean, degraded, with hard negatives), and false-verified rates
    on each model's generated images when it verifies alone."""
    from optimization.counter import load_counter
    from tally.benchmarks.base import base_prompts
    from tally.benchmarks.common import markdown_table
    from tally.benchmarks.detector import bench_detector, bench_generated

    ids = model or [m.id for m in prepare().models]
    spec = model_spec(ids[0], detector)
    counter = load_counter(spec)
    with progress_bar("count rendered scenes", scenes) as update:
        result = {"model": spec.id, **bench_detector(counter, scenes, progress=update)}
    console.print(markdown_table(result["per_count"], result["overall"]), highlight=False)
    console.print(f"degraded copies (blur/noise): {result['degraded']}")
    console.print(f"with hard negatives: {result['hard_negatives']}")
    result["generated"] = {}
    for model_id in ids if generated else []:
        engine = load_engine(model_spec(model_id, detector))
        with progress_bar(f"verify {model_id} generations", len(base_prompts(engine))) as update:
            result["generated"][model_id] = bench_generated(engine, generated, progress=update, out_dir=out)
        console.print(result["generated"][model_id])
    save(result, "detector", out, json_path)


@bench_app.command("autoencoder")
def autoencoder(
    scenes: Annotated[int, typer.Option(min=1, help="Fresh renders per class and count (1..12).")] = 50,
    path: Annotated[Optional[Path], typer.Option("--autoencoder", help="AutoencoderKL folder; default: the "
                                                                       "shared reference one.")] = None,
    detector: DetectorOption = None,
    out: OutOption = DEFAULT_FOLDER,
    json_path: JsonOption = None,
) -> None:
    """Rendered scenes through the autoencoder and back: verified by the detector alone, counted by the
    cross-check, per class and count (+ a grid of round trips)."""
    import torch
    from diffusers import AutoencoderKL

    from optimization.counter import load_counter
    from optimization.reference import AUTOENCODER_PATH
    from tally.benchmarks.autoencoder import COUNTS, bench_autoencoder, table

    counter = load_counter(model_spec(None, detector))
    vae = AutoencoderKL.from_pretrained(str(path or AUTOENCODER_PATH), torch_dtype=torch.float32).eval()
    out.mkdir(parents=True, exist_ok=True)
    with progress_bar("round trips", len(counter.classes) * len(COUNTS)) as update:
        result = bench_autoencoder(vae, counter, scenes, progress=update, grid_path=out / "autoencoder_samples.png")
    console.print("verified (detector alone) / cross-check exact", highlight=False)
    console.print(table(result), highlight=False, soft_wrap=True)
    console.print({k: v for k, v in result.items() if k != "per_class"})
    write_json(result, result_path(out, "autoencoder", None), json_path)


@bench_app.command("base")
def base(
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per prompt (every class x counts 1..12, and each crowd "
                                                    "prompt; phrasings take at most 4). 40 holds each (class, count) "
                                                    "cell's rate within about 0.08 (one standard error).")] = 40,
    model: ModelOption = None,
    detector: DetectorOption = None,
    out: OutOption = DEFAULT_FOLDER,
    json_path: JsonOption = None,
) -> None:
    """Count accuracy of the base pipeline (no count token), with a sample grid and a per-count plot."""
    from tally.benchmarks.base import base_prompts, bench_base
    from tally.benchmarks.common import markdown_table

    engine = load_engine(model_spec(model, detector))
    with progress_bar("generate and count", len(base_prompts(engine))) as update:
        result = bench_base(engine, seeds, out, progress=update)
    console.print(markdown_table(result["per_count"], result["overall"]), highlight=False)
    console.print("verified per count: " + ", ".join(f"{n}: {s['verified']:.2f}" for n, s in result["per_count"].items()),
                  highlight=False)
    console.print({k: result[k] for k in ("targets", "class_presence", "large_counts",
                                          "detector_vs_crosscheck_agreement", "speed")})
    console.print(f"phrasings: class presence {result['phrasings']['class_presence']}", highlight=False)
    console.print("crowds (>= 8 clean shapes, best plain prompt): " + ", ".join(
        f"{cls} {d['clean_ge8_rate']:.2f} ({d['prompt']!r})" for cls, d in result["drawable"].items()), highlight=False)
    console.print(f"pictures: {', '.join(result['pictures'])}")
    save(result, "base", out, json_path)


CountsOption = Annotated[Optional[str], typer.Option(
    help="Comma-separated counts to run, e.g. 6,7,8,9,10 [default: 3,5,7,9 quick, else 1..10].")]


def _counts(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        counts = sorted({int(c) for c in text.split(",") if c.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise InvalidRequest(f"--counts takes comma-separated counts from 1 on, e.g. 6,7,8; got {text!r}")
    return counts


def _policies(text: str) -> tuple[Policy, ...]:
    chosen = tuple(p.strip() for p in text.split(",") if p.strip())
    if not chosen or set(chosen) - set(Policy):
        raise InvalidRequest(f"--policies takes a comma-separated subset of {', '.join(Policy)}; got {text!r}")
    return tuple(Policy(p) for p in chosen)


@bench_app.command("engine")
def engine(
    quick: Annotated[bool, typer.Option(help="4 counts x 4 classes x 1 job, short budget (< 10 min).")] = False,
    budget_seconds: Annotated[Optional[float], typer.Option(min=0.001, help="Wall-clock budget per job and policy [default: 4 quick, else a job's default, 60].")] = None,
    budget_candidates: Annotated[Optional[int], typer.Option(min=1, help="Candidate budget per job and policy [default: 16 quick, else a job's default, 64].")] = None,
    budget_iterations: Annotated[Optional[int], typer.Option(min=1, help="Refinement iterations per job [default: a "
                                                                   "job's default, 20].")] = None,
    policies: Annotated[str, typer.Option(help="Comma-separated policies to compare.")] = ",".join(Policy),
    jobs_per_key: Annotated[Optional[int], typer.Option(min=1, help="Jobs (seeds) per class and count.")] = None,
    counts: CountsOption = None,
    configured: Annotated[bool, typer.Option(
        help="Also verify as the model is configured (with its cross-check); the detector-only pass, as in "
             "production, always runs and decides the default policy.")] = True,
    library: Annotated[bool, typer.Option(
        help="Learn (or take from the library) a token per key for the token policies; --no-library runs them "
             "from the base prompt, as on a fresh deployment (minutes instead of hours).")] = True,
    learn: Annotated[bool, typer.Option(
        help="Learn the tokens the library lacks; --no-learn takes only those it holds (the others sample the base "
             "prompt), as a deployment serves now.")] = True,
    model: ModelOption = None,
    out: OutOption = DEFAULT_FOLDER,
    json_path: JsonOption = None,
) -> None:
    """Each policy on the same jobs at the same budget: verified, falsely verified, clean images per second."""
    from tally.benchmarks import engine as bench

    chosen = _policies(policies)
    # by default a user's job budget (``Budget()``): the targets are stated at it
    default = Budget(max_seconds=4.0, max_candidates=16) if quick else Budget()
    budget = Budget(max_seconds=budget_seconds or default.max_seconds,
                    max_candidates=budget_candidates or default.max_candidates,
                    max_iterations=budget_iterations or default.max_iterations)
    result = bench.run(load_engine(model_spec(model)), token_store(), quick, budget, chosen, jobs_per_key, out,
                       progress_bar, counts=_counts(counts), configured=configured, library=library, learn=learn)
    console.print(bench.policies_table(result), highlight=False)
    console.print(f"default policy by this run: {result['default_policy']}")
    save(result, "engine", out, json_path)


@bench_app.command("optimize")
def optimize(
    quick: Annotated[bool, typer.Option(help="Fewer keys and seeds (< 10 min).")] = False,
    counts: CountsOption = None,
    model: ModelOption = None,
    out: OutOption = DEFAULT_FOLDER,
    json_path: JsonOption = None,
) -> None:
    """Refinement on near-miss seeds; per count, the base prompt, stated-number calibration and the library
    token (the better of calibration and gradient token) on the same held-out seeds."""
    from tally.benchmarks import optimize as bench

    result = bench.run(load_engine(model_spec(model)), token_store(), quick, progress_bar, counts=_counts(counts),
                       out_dir=out)
    console.print(result["refine"])
    console.print(result["library"])
    console.print(bench.per_count_table(result), highlight=False)
    save(result, "optimize", out, json_path)


@bench_app.command("count-loss")
def count_loss(
    model: ModelOption = None,
    iterations: Annotated[int, typer.Option(min=1, help="Noise-optimization steps per case (no early stop).")] = 10,
    eot: Annotated[str, typer.Option(help="Comma-separated eot_samples settings to compare (0: plain).")] = "0,4",
    out: OutOption = DEFAULT_FOLDER,
    json_path: JsonOption = None,
) -> None:
    """Whether the count loss moves the true count: the detector's error and the independent judge's error per
    iteration of noise optimization, with and without expectation over transformation."""
    from tally.benchmarks.count_loss import COUNTS, bench_count_loss, table

    engine = load_engine(model_spec(model, None))
    if engine.crosscheck is None:
        raise InvalidRequest(f"model {engine.spec.id!r} has no independent cross-check to judge with")
    try:
        settings = tuple(int(v) for v in eot.split(",") if v.strip())
    except ValueError:
        raise InvalidRequest(f"--eot takes comma-separated integers, got {eot!r}") from None
    with progress_bar("cases x settings", len(engine.counter.classes) * len(COUNTS) * len(settings)) as update:
        result = bench_count_loss(engine, iterations, settings, progress=update)
    console.print(table(result), highlight=False)
    save(result, "count-loss", out, json_path)


@bench_app.command("iteration")
def iteration(model: ModelOption = None, out: OutOption = DEFAULT_FOLDER, json_path: JsonOption = None) -> None:
    """Seconds per optimization iteration against one forward + backward of the same generation."""
    from tally.benchmarks.iteration import bench_iteration

    result = bench_iteration(load_engine(model_spec(model)))
    console.print(result)
    save(result, "iteration", out, json_path)


@bench_app.command("faults")
def faults(out: OutOption = DEFAULT_FOLDER, json_path: JsonOption = None) -> None:
    """Worker kills, SIGTERM, a Redis restart, cross-key access and a flooding key, on private processes."""
    from tally.benchmarks import faults as bench

    prepare()
    with console.status("fault scenarios") as status:
        result = bench.run(progress=lambda name: status.update(f"bench faults: {name}"))
    console.print(result)
    save(result, "faults", out, json_path)


@bench_app.command("service")
def service(
    repeats: Annotated[int, typer.Option(min=1, help="Library-hit jobs timed (after one warm-up).")] = 15,
    load_seconds: Annotated[float, typer.Option(min=1, help="Seconds of each wrk load run (submit, status; "
                                                           "again with the worker busy).")] = 5.0,
    out: OutOption = DEFAULT_FOLDER,
    json_path: JsonOption = None,
) -> None:
    """Service overhead and throughput; starts a private Redis, API and worker, and cleans up."""
    from tally.benchmarks import service as bench

    prepare()
    quiet_model_loading()
    with console.status("benchmarking the service") as status:
        result = bench.run(repeats=repeats, load_seconds=load_seconds,
                           progress=lambda name: status.update(f"bench service: {name}"))
    console.print(result)
    save(result, "service", out, json_path)


@bench_app.command("demo")
def demo(
    runs: Annotated[int, typer.Option(min=1, help="Times each of the demo's two requests is sent.")] = 10,
    out: OutOption = DEFAULT_FOLDER,
    json_path: JsonOption = None,
) -> None:
    """The demo's two count-7 requests, each sent RUNS times with server-chosen seeds, through a private service
    (Redis, the API, a worker per reference model): jobs and images verified, false verified by the cross-check,
    and every image drawn with its detections (demo_runs.png)."""
    from tally.benchmarks import demo as bench

    prepare()
    quiet_model_loading()
    with progress_bar("demo runs", runs) as update:
        result = bench.run(runs, out, update)
    console.print(bench.table(result), highlight=False)
    save(result, "demo", out, json_path)
