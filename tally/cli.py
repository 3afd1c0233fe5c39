"""The ``tally`` command: verbs mirroring the library (generate, bench, reference ...), rich progress, ``--json``."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from workers.settings import get_settings

app = typer.Typer(help="Tally: text-to-image with the exact number of objects.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
reference_app = typer.Typer(help="The offline reference world: renderer, detector and pipeline.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print a table and write JSON.", no_args_is_help=True)
app.add_typer(reference_app, name="reference")
app.add_typer(bench_app, name="bench")

console = Console(stderr=True)


class UsageError(Exception):
    """Bad input from the command line: reported as one line, exit status 2."""


@contextmanager
def progress_bar(description: str, total: int | None = None):
    """A rich progress bar; yields ``update(done, total)``."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int, total: int | None = None) -> None:
            bar.update(task, completed=done, total=total)  # rich keeps the total when given None

        yield update


def _write_json(payload: dict, path: Optional[Path]) -> None:
    if path is None:
        return
    if str(path) == "-":
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"JSON written to {path}")


def _prepare():
    settings = get_settings()
    settings.prepare_runtime()
    return settings


def _quiet_model_loading() -> None:
    """Our progress bars are the CLI's; the libraries' loading bars would bury them (and one-line errors)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.disable_progress_bar()
        lib.set_verbosity_error()


# --------------------------------------------------------------------------------------------- reference
@reference_app.command("train-detector")
def reference_train_detector(
    scenes: Annotated[int, typer.Option(min=8, help="Training scenes to render.")] = 4000,
    val_scenes: Annotated[int, typer.Option(min=4, help="Validation scenes.")] = 300,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    batch: Annotated[int, typer.Option(min=2)] = 16,
    seed: int = 0,
    device: str = "cpu",
    out: Annotated[Optional[Path], typer.Option(help="Weights file; default: the shipped reference detector.")] = None,
) -> None:
    """Render scenes and train the reference YOLO detector from its yaml (no download)."""
    from optimization.reference import DETECTOR_PATH
    from optimization.reference.detector import train_detector, write_detector_dataset

    settings = _prepare()
    out = (out or DETECTOR_PATH).resolve()
    root = (settings.runtime_dir / "datasets" / "detector").resolve()
    with progress_bar("render scenes", scenes + val_scenes) as update:
        data_yaml = write_detector_dataset(root, scenes, val_scenes, seed=seed, progress=update)
    with progress_bar("train detector (epochs)", epochs) as update:
        metrics = train_detector(data_yaml, out, (settings.runtime_dir / "runs").resolve(), epochs=epochs,
                                 batch=batch, device=device, seed=seed, on_epoch=update)
    console.print(f"detector weights: {out}")
    console.print({k: round(v, 4) for k, v in metrics.items()})


@reference_app.command("train-t2i")
def reference_train_t2i(
    scenes: Annotated[int, typer.Option(min=8, help="Captioned training scenes to render.")] = 40_000,
    vae_steps: Annotated[int, typer.Option(min=1)] = 400,
    unet_steps: Annotated[int, typer.Option(min=1)] = 3500,
    unet_batch: Annotated[int, typer.Option(min=2)] = 48,
    seed: int = 0,
    out: Annotated[Optional[Path], typer.Option(help="Pipeline folder; default: the shipped reference pipeline.")] = None,
) -> None:
    """Build and train the reference StableDiffusionPipeline (tokenizer, text encoder, VAE, UNet)."""
    from optimization.reference import PIPELINE_PATH
    from optimization.reference.t2i import T2ITrainConfig, train_t2i

    settings = _prepare()
    out = (out or PIPELINE_PATH).resolve()
    cfg = T2ITrainConfig(scenes=scenes, vae_steps=vae_steps, vae_batch=min(32, scenes), unet_steps=unet_steps,
                         unet_batch=unet_batch, seed=seed)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:

        def stage(name: str, total: int):
            task = bar.add_task(name, total=total)

            def update(done: int, _total=None) -> None:
                bar.update(task, completed=done)
                if not console.is_terminal and (done == total or done % max(1, total // 20) == 0):
                    console.print(f"{name}: {done}/{total} ({bar.tasks[task].elapsed:.0f} s)")  # logs, not a tty

            return update

        summary = train_t2i(out, (settings.runtime_dir / "runs" / "t2i").resolve(), cfg, stage=stage)
    console.print(f"pipeline: {out} ({summary['seconds']} s)")


@reference_app.command("info")
def reference_info(as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False) -> None:
    """Where the shipped reference weights are, their classes and image size."""
    from optimization.reference import CLASSES, DETECTOR_PATH, IMAGE_SIZE, PIPELINE_PATH

    info = {"pipeline": str(PIPELINE_PATH), "detector": str(DETECTOR_PATH), "classes": list(CLASSES),
            "image_size": IMAGE_SIZE}
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
    else:
        for key, value in info.items():
            console.print(f"{key:>10}: {value}")


# ------------------------------------------------------------------------------------------------- models
def _model_config(model: Optional[str], detector: Optional[str]):
    """A configured model by id, or a pipeline path / hub id with the default model's detector."""
    settings = _prepare()
    ids = {m.id for m in settings.models}
    if model is None or model in ids:
        config = settings.model(model)
    else:
        if model.startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():
            raise UsageError(f"pipeline not found: {model}")
        config = settings.model().model_copy(update={"id": "cli", "pipeline": model})
    if detector is not None:
        config = config.model_copy(update={"detector": detector})
    if not Path(config.detector).expanduser().is_file():
        raise UsageError(f"detector weights not found: {config.detector}")
    return config


def _load_counter(detector: Optional[str]):
    from optimization.counter import YoloCounter

    config = _model_config(None, detector)
    return YoloCounter(config.detector, device=config.device)


def _load_t2i(model: Optional[str]):
    from optimization.pipelines import TextToImage

    config = _model_config(model, None)
    _quiet_model_loading()
    return TextToImage.load(config.pipeline, device=config.device, dtype=config.dtype,
                            num_inference_steps=config.num_inference_steps, guidance_scale=config.guidance_scale)


def _load_engine(model: Optional[str], detector: Optional[str]):
    from optimization.engine import CountEngine

    c = _model_config(model, detector)
    _quiet_model_loading()
    return CountEngine.load(c.pipeline, c.detector, device=c.device, dtype=c.dtype, max_count=get_settings().max_count,
                            num_inference_steps=c.num_inference_steps, guidance_scale=c.guidance_scale)


def _check_count(count: int) -> None:
    max_count = get_settings().max_count
    if not 1 <= count <= max_count:
        raise UsageError(f"count must be between 1 and {max_count}, got {count}")


# -------------------------------------------------------------------------------------------------- bench
@bench_app.command("detector")
def bench_detector_cmd(
    scenes: Annotated[int, typer.Option(min=1, help="Fresh rendered scenes (seeds disjoint from training).")] = 1000,
    detector: Annotated[Optional[str], typer.Option(help="YOLO weights; default: the configured detector.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the result here ('-' for stdout).")] = None,
) -> None:
    """Exact-count accuracy and MAE of the detector on fresh rendered scenes."""
    from optimization.benchmarks import bench_detector, markdown_table

    counter = _load_counter(detector)
    with progress_bar("count rendered scenes", scenes) as update:
        result = bench_detector(counter, scenes, progress=update)
    console.print(markdown_table(result["per_count"], result["overall"]), highlight=False)
    console.print(f"degraded copies (blur/noise): {result['degraded']}")
    _write_json(result, json_path)


@bench_app.command("base")
def bench_base_cmd(
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per prompt (every class x counts 1..10).")] = 10,
    model: Annotated[Optional[str], typer.Option(help="Pipeline path or hub id; default: the configured one.")] = None,
    detector: Annotated[Optional[str], typer.Option(help="YOLO weights; default: the configured detector.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the PNG grid and plot.")] = Path("out/bench"),
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the result here ('-' for stdout).")] = None,
) -> None:
    """Count accuracy of the base pipeline (no count token), with a sample grid and a per-count plot."""
    from optimization.benchmarks import base_prompts, bench_base, markdown_table

    counter, t2i = _load_counter(detector), _load_t2i(model)
    with progress_bar("generate and count", len(base_prompts(range(1, 11)))) as update:
        result = bench_base(t2i, counter, seeds, out, progress=update)
    console.print(markdown_table(result["per_count"], result["overall"]), highlight=False)
    console.print({k: result[k] for k in ("class_presence", "detector_vs_crosscheck_agreement", "speed")})
    console.print(f"pictures: {', '.join(result['pictures'])}")
    _write_json(result, json_path)


def _bench_keys(quick: bool) -> tuple[list[str], list[int], int]:
    from optimization.reference import CLASSES

    return (list(CLASSES), [3, 5, 7, 9], 1) if quick else (list(CLASSES), list(range(1, 11)), 3)


def _library_tokens(engine, keys: list[tuple[str, int]], quick: bool) -> dict:
    """Library tokens for ``keys`` from the token dir, learning (and saving) the missing ones."""
    from optimization.count_token import CountToken, token_path
    from optimization.optimizer import OptimizeConfig

    config = OptimizeConfig(mode="library", lr=5e-3, max_iterations=8 if quick else 30,
                            seeds_per_iteration=8 if quick else 16, validation_seeds=16 if quick else 64,
                            validate_every=4 if quick else 5)
    tokens, token_dir = {}, get_settings().tokens_path
    with progress_bar("library tokens", len(keys)) as update:
        for i, (cls, n) in enumerate(keys):
            path = token_path(token_dir, engine.token_key(cls, n))
            if path.exists():
                tokens[(cls, n)] = CountToken.load(path, expected_model=engine.t2i.fingerprint)
            else:
                tokens[(cls, n)] = engine.learn_library_token(cls, n, config)
                tokens[(cls, n)].save(path)
            update(i + 1)
    return tokens


@bench_app.command("engine")
def bench_engine_cmd(
    quick: Annotated[bool, typer.Option(help="4 counts x 4 classes x 1 job, short budget (< 10 min).")] = False,
    budget_seconds: Annotated[Optional[float], typer.Option(help="Wall-clock budget per job and policy.")] = None,
    budget_candidates: Annotated[Optional[int], typer.Option(help="Candidate budget per job and policy.")] = None,
    policies: Annotated[str, typer.Option(help="Comma-separated policies to compare.")] = "resample,library,refine",
    jobs_per_key: Annotated[Optional[int], typer.Option(min=1, help="Jobs (seeds) per class and count.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the PNG strip.")] = Path("out/bench"),
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the result here ('-' for stdout).")] = None,
) -> None:
    """Each policy on the same jobs at the same budget: verified, falsely verified, clean images per second."""
    from optimization.benchmarks import bench_engine, bench_jobs

    from optimization.policy import POLICIES

    chosen = tuple(p.strip() for p in policies.split(",") if p.strip())
    if not chosen or set(chosen) - set(POLICIES):
        raise UsageError(f"--policies takes a comma-separated subset of {', '.join(POLICIES)}; got {policies!r}")
    engine = _load_engine(None, None)
    classes, counts, per_key = _bench_keys(quick)
    needs_tokens = {"library", "refine"} & set(chosen)
    tokens = _library_tokens(engine, [(c, n) for c in classes for n in counts], quick) if needs_tokens else {}
    jobs = bench_jobs(classes, counts, jobs_per_key or per_key)
    budget = (budget_seconds or (4.0 if quick else 8.0), budget_candidates or (16 if quick else 32))
    with progress_bar("jobs x policies, production verifier", len(jobs)) as update:
        result = bench_engine(engine, tokens, jobs, *budget, out, policies=chosen, progress=update)
    # The same jobs verified by the detector alone (as on real models): how often is that wrong?
    crosscheck, engine.crosscheck = engine.crosscheck, None
    with progress_bar("jobs x policies, detector-only verifier", len(jobs)) as update:
        detector_only = bench_engine(engine, tokens, jobs, *budget, out / "detector-only", policies=chosen,
                                     progress=update)
    engine.crosscheck = crosscheck
    result["detector_only"] = {k: detector_only[k] for k in ("policies", "per_count")}
    _print_policies(result)
    _write_json(result, json_path)


def _print_policies(result: dict) -> None:
    lines = ["| policy | verified | false verified | clean | clean / s | s / verified | candidates | iterations |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [(name, s) for name, s in result["policies"].items()]
    rows += [(f"{name} (detector only)", s) for name, s in result.get("detector_only", {}).get("policies", {}).items()]
    for name, s in rows:
        lines.append(f"| {name} | {s['verified_rate']:.3f} | {s['false_verified_rate']:.3f} | {s['clean_rate']:.3f} | "
                     f"{s['clean_per_s']:.3f} | {s['seconds_per_verified']} | {s['candidates']} | {s['iterations']} |")
    console.print("\n".join(lines), highlight=False)
    console.print(f"default policy by this run: {result['default_policy']}")


@bench_app.command("optimize")
def bench_optimize_cmd(
    quick: Annotated[bool, typer.Option(help="Fewer keys and seeds (< 10 min).")] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the result here ('-' for stdout).")] = None,
) -> None:
    """Refinement success on near-miss seeds; library tokens vs the base prompt on held-out seeds."""
    from optimization.benchmarks import bench_jobs, bench_library, bench_refine, near_misses

    engine = _load_engine(None, None)
    classes, counts, per_key = _bench_keys(quick)
    tokens = _library_tokens(engine, [(c, n) for c in classes for n in counts], quick)
    cases = near_misses(engine, bench_jobs(classes, counts, per_key))
    with progress_bar("refine near misses", len(cases)) as update:
        refine = bench_refine(engine, cases, max_iterations=10 if quick else 20, progress=update)
    with progress_bar("library vs base", len(tokens)) as update:
        library = bench_library(engine, tokens, validation_seeds=16 if quick else 64, progress=update)
    per_count = {str(n): {"refine_success": refine["per_count"].get(str(n)),
                          "library_token_exact": round(float(sum(library["per_key"][f"{c}-{n}"]["token"]["exact"] for c in classes) / len(classes)), 4),
                          "library_base_exact": round(float(sum(library["per_key"][f"{c}-{n}"]["base"]["exact"] for c in classes) / len(classes)), 4)}
                 for n in counts}
    result = {"refine": {k: refine[k] for k in ("success_rate", "iterations_median", "n")},
              "library": {k: v for k, v in library.items() if k != "per_key"}, "per_count": per_count,
              "per_key": library["per_key"]}
    console.print(result["refine"])
    console.print(result["library"])
    _write_json(result, json_path)


@bench_app.command("iteration")
def bench_iteration_cmd(
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the result here ('-' for stdout).")] = None,
) -> None:
    """Seconds per optimization iteration against one forward + backward of the same generation."""
    from optimization.benchmarks import bench_iteration

    result = bench_iteration(_load_engine(None, None))
    console.print(result)
    _write_json(result, json_path)


# ----------------------------------------------------------------------------------------------- generate
def _find_token(engine, token_file: Optional[Path], cls: str, count: int):
    """The token given on the command line, else the library token in the token dir, else None."""
    from optimization.count_token import CountToken, token_path

    if token_file is not None:
        return CountToken.load(token_file, expected_model=engine.t2i.fingerprint)
    path = token_path(get_settings().tokens_path, engine.token_key(cls, count))
    return CountToken.load(path, expected_model=engine.t2i.fingerprint) if path.exists() else None


def _save_images(out: Path, results: list[dict], images, cls: str, count: Optional[int]) -> None:
    from optimization.visualize import draw_boxes, to_pil

    out.mkdir(parents=True, exist_ok=True)
    for result, image in zip(results, images):
        path = out / f"seed{result['seed']}.png"
        pil = to_pil(image)
        pil.save(path)
        draw_boxes(pil, result["boxes"]).save(out / f"seed{result['seed']}_boxes.png")
        result["path"] = str(path)
        verdict = "" if "verified" not in result else (" verified" if result["verified"] else " NOT verified")
        asked = f" (asked {count})" if count else ""
        console.print(f"{path}: {result['detected_count']} {cls}(s) detected{asked}{verdict}")


@app.command()
def generate(
    prompt: Annotated[str, typer.Option(help="What to draw, e.g. 'a photo of blue triangles'.")],
    out: Annotated[Path, typer.Option(help="Folder for the PNGs.")],
    count: Annotated[Optional[int], typer.Option(help="How many objects: runs the count engine.")] = None,
    object_: Annotated[Optional[str], typer.Option("--object", help="Object to count; default: found in the prompt.")] = None,
    seed: int = 0,
    num_images: Annotated[int, typer.Option(min=1, max=64)] = 4,
    policy: Annotated[Optional[str], typer.Option(help="resample | library | refine; default: the measured default.")] = None,
    token: Annotated[Optional[Path], typer.Option(help="A count-token file; default: the library token, if any.")] = None,
    budget_seconds: Annotated[float, typer.Option(help="Engine budget: wall-clock seconds.")] = 60.0,
    budget_candidates: Annotated[int, typer.Option(help="Engine budget: candidate images.")] = 64,
    budget_iterations: Annotated[int, typer.Option(help="Engine budget: refinement iterations.")] = 20,
    model: Annotated[Optional[str], typer.Option(help="Pipeline path or hub id; default: the configured one.")] = None,
    detector: Annotated[Optional[str], typer.Option(help="YOLO weights; default: the configured detector.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the result here ('-' for stdout).")] = None,
) -> None:
    """Generate images; with --count, verified images of exactly that many objects (the count engine)."""
    from optimization.engine import Budget
    from optimization.policy import POLICIES

    if not prompt.strip():
        raise UsageError("the prompt is empty")
    if count is not None:
        _check_count(count)
    policy = policy or get_settings().default_policy
    if policy not in POLICIES:
        raise UsageError(f"unknown policy {policy!r}; allowed: {', '.join(POLICIES)}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out must be a folder, and {out} is a file")
    if token is not None and not token.is_file():
        raise UsageError(f"token file not found: {token}")
    budget = Budget(budget_seconds, budget_candidates, budget_iterations)
    budget.check()
    engine = _load_engine(model, detector)
    cls = engine.resolve_object(prompt, object_)

    if count is None:  # plain generation: report what the detector sees
        seeds = [seed + i for i in range(num_images)]
        with progress_bar("generate", num_images) as update:
            images = engine.t2i.generate(prompt, seeds)
            update(num_images)
        results = [{"seed": s, "detected_count": d.count(cls), "boxes": [[round(v, 1) for v in b] for b in d.of(cls).boxes],
                    "confidences": [round(c, 3) for c in d.of(cls).confidences]}
                   for s, d in zip(seeds, engine.counter.detect(images))]
        _save_images(out, results, images, cls, None)
        _write_json({"prompt": prompt, "object": cls, "count": None, "images": results}, json_path)
        return

    library_token = _find_token(engine, token, cls, count)
    with progress_bar(f"{policy}: verified images", num_images) as update:
        result = engine.generate(prompt, count, object_=cls, num_images=num_images, seed=seed, budget=budget,
                                 policy=policy, token=library_token,
                                 progress=lambda e: update(e.get("images_verified", 0)))
    report = result.to_dict()
    _save_images(out, report["images"], [r.image for r in result.images], cls, count)
    report["token"]["file"] = str(token) if token else None
    console.print(f"cost: {result.cost}")
    _write_json(report, json_path)


@app.command()
def optimize(
    object_: Annotated[str, typer.Option("--object", help="Object class, e.g. triangle.")],
    count: Annotated[int, typer.Option(help="Target count.")],
    mode: Annotated[str, typer.Option(help="library (many fresh seeds, validated) | refine (one prompt's seeds).")] = "library",
    prompt: Annotated[Optional[str], typer.Option(help="refine: the prompt; default 'a photo of N objects'.")] = None,
    seed: Annotated[int, typer.Option(help="refine: the seed to refine; library: the seed stream.")] = 0,
    iterations: Annotated[int, typer.Option(min=1)] = 30,
    seeds_per_iteration: Annotated[int, typer.Option(min=1, help="library: fresh seeds per iteration.")] = 16,
    validation_seeds: Annotated[int, typer.Option(min=1, help="library: held-out seeds.")] = 64,
    lr: Optional[float] = None,
    model: Annotated[Optional[str], typer.Option(help="Pipeline path or hub id; default: the configured one.")] = None,
    detector: Annotated[Optional[str], typer.Option(help="YOLO weights; default: the configured detector.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Token file; default: the token dir (library) .")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the result here ('-' for stdout).")] = None,
) -> None:
    """Learn a count token: a reusable library token, or a refinement on one seed of one prompt."""
    from optimization.count_token import CountToken, place_token, token_path
    from optimization.optimizer import OptimizeConfig
    from optimization.prompts import plural, with_count

    _check_count(count)
    if mode not in ("library", "refine"):
        raise UsageError(f"unknown mode {mode!r}; allowed: library, refine")
    if out is not None and out.is_dir():
        raise UsageError(f"--out must be a file path, and {out} is a folder")
    engine = _load_engine(model, detector)
    cls = engine.counter.resolve(object_)
    config = OptimizeConfig(mode=mode, lr=lr or (5e-3 if mode == "library" else 2e-2), max_iterations=iterations,
                            seeds_per_iteration=seeds_per_iteration, validation_seeds=validation_seeds, seed=seed)
    with progress_bar(f"{mode} {count} {cls}", iterations) as update:
        if mode == "library":
            token = engine.learn_library_token(cls, count, config, progress=lambda r: update(r.iteration))
            summary = token.metadata
        else:
            token_prompt, init_word = place_token(with_count(prompt or f"a photo of {plural(cls)}", cls, count), count)
            result = engine.refine(token_prompt, cls, count, seed, engine.word_vectors(init_word), config,
                                   progress=lambda r: update(r.iteration))
            summary = {**result.summary(), "verified": result.hit is not None, "prompt": token_prompt}
            token = CountToken(engine.token_key(cls, count), result.vectors, init_word, {"mode": "refine", **summary})
    path = token.save(out or token_path(get_settings().tokens_path, token.key))
    console.print(f"token {token.key.id} saved to {path}")
    console.print(summary)
    _write_json({"key": token.key.id, "path": str(path), **summary}, json_path)


@bench_app.command("service")
def bench_service_cmd(
    repeats: Annotated[int, typer.Option(min=1, help="Library-hit jobs timed (after one warm-up).")] = 7,
    requests: Annotated[int, typer.Option(min=10, help="Requests per load phase (bounded).")] = 2000,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the result here ('-' for stdout).")] = None,
) -> None:
    """Service overhead and throughput; starts a private Redis, API and worker, and cleans up."""
    from tally import bench_service

    _prepare()
    _quiet_model_loading()
    with console.status("benchmarking the service") as status:
        result = bench_service.run(repeats=repeats, load_requests=requests,
                                   progress=lambda name: status.update(f"bench service: {name}"))
    console.print(result)
    _write_json(result, json_path)


# ---------------------------------------------------------------------------------------------- service
@app.command()
def worker(
    model: Annotated[Optional[str], typer.Option(help="Configured model id; default: the default model.")] = None,
    burst: Annotated[bool, typer.Option(help="Exit when the queues are empty.")] = False,
    name: Annotated[Optional[str], typer.Option(help="Worker name (unique per host).")] = None,
) -> None:
    """Load one model's pipeline and detector once and serve its queues (user jobs before library tasks)."""
    from workers.worker import run_worker

    settings = _prepare()
    try:
        settings.model(model)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None

    def ready(runtime, reseeded: int) -> None:
        console.print(f"worker ready: model {runtime.model.id} ({runtime.engine.t2i.fingerprint}), "
                      f"{reseeded} tokens re-seeded from {settings.tokens_path}")

    run_worker(settings, model, burst=burst, name=name, on_ready=ready)


@app.command()
def up(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers_per_model: Annotated[int, typer.Option(min=0)] = 1,
) -> None:
    """Start Redis (if none answers), the API and a worker per model; Ctrl-C stops what was started."""
    import signal

    from tally.launcher import Launcher

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill` stops what was started, like Ctrl-C
    settings = _prepare()
    with Launcher(settings) as launcher:
        launcher.ensure_redis()
        launcher.start_api(host, port)
        for m in settings.models:
            for i in range(workers_per_model):
                launcher.start_worker(m.id, f"{m.id}-{i}")
        launcher.wait_ready(f"http://{host}:{port}", timeout=300)
        console.print(f"Tally is up: http://{host}:{port}/docs  (Ctrl-C stops it)")
        launcher.wait()


@app.command()
def submit(
    prompt: Annotated[str, typer.Option(help="What to draw.")],
    count: Annotated[int, typer.Option(help="How many objects.")],
    url: Annotated[str, typer.Option(help="The API.")] = "http://127.0.0.1:8000",
    object_: Annotated[Optional[str], typer.Option("--object")] = None,
    num_images: int = 1,
    seed: Optional[int] = None,
    policy: Optional[str] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder to download the images into.")] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the final job here ('-' for stdout).")] = None,
) -> None:
    """Submit a job to a running service and follow its progress (Server-Sent Events) until it ends."""
    from tally.client import follow_job

    body = {"prompt": prompt, "count": count, "object": object_, "num_images": num_images, "seed": seed, "policy": policy}
    with progress_bar("job", num_images) as update:
        final = follow_job(url, {k: v for k, v in body.items() if v is not None},
                           on_event=lambda e: update(e.get("progress", {}).get("images_verified", 0)))
    if final.get("code"):
        raise UsageError(f"{final['code']}: {final['message']}")
    for r in final.get("results", []):
        console.print(f"image {r['index']}: seed {r['seed']}, detected {r['detected_count']} "
                      f"{final.get('object')}(s), {'verified' if r['verified'] else 'NOT verified'}  {r['url']}")
        if out is not None:
            import httpx

            out.mkdir(parents=True, exist_ok=True)
            (out / f"{final['id']}-{r['index']}.png").write_bytes(httpx.get(r["url"] + "?boxes=true").content)
    console.print(f"status: {final.get('status')}; cost: {final.get('cost')}")
    _write_json(final, json_path)


def main() -> None:
    """Console entry point: bad input becomes one line on stderr and exit status 2, never a traceback."""
    try:
        app()
    except (UsageError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(2)
