"""``tally generate`` and ``tally optimize``: the count engine and the optimizer on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from optimization.config import Budget, Policy
from optimization.errors import InvalidRequest

from .common import DEFAULTS, DetectorOption, JsonOption, ModelOption, app, console, load_engine, model_spec, \
    progress_bar, token_store, write_json

_budget, _library = DEFAULTS.default_budget, DEFAULTS.library


def _save_images(out: Path, reports: list[dict], images, cls: str, count: int | None) -> None:
    from optimization.prompts import plural
    from optimization.visualize import draw_boxes, draw_kinds, to_pil

    out.mkdir(parents=True, exist_ok=True)
    for report, image in zip(reports, images):
        path = out / f"seed{report['seed']}.png"
        pil = to_pil(image)
        pil.save(path)
        kinds = [(d["box"], d["kind"], d["object"], d["confidence"]) for d in report.get("detections", [])]
        (draw_kinds(pil, kinds) if "detections" in report else draw_boxes(pil, report["boxes"])).save(
            out / f"seed{report['seed']}-boxes.png")  # the "-boxes" suffix, as submit and the API name it
        report["path"] = str(path)
        verdict = "" if count is None else (
            ", verified" if report["verified"] else f", not verified: {report['reason'].replace('_', ' ')}")
        asked = f" (asked {count})" if count else ""
        noun = cls if report["detected_count"] == 1 else plural(cls)
        console.print(f"{path}: {report['detected_count']} {noun} detected{asked}{verdict}", highlight=False)


@app.command()
def generate(
    prompt: Annotated[str, typer.Option(help="What to draw, e.g. 'a photo of blue triangles'.")],
    out: Annotated[Path, typer.Option(help="Folder for the PNGs.")],
    count: Annotated[Optional[int], typer.Option(help="How many objects: runs the count engine.")] = None,
    object_: Annotated[Optional[str], typer.Option("--object", help="Object to count; default: found in the prompt.")] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    num_images: Annotated[int, typer.Option(min=1, max=64)] = 1,
    policy: Annotated[Optional[Policy], typer.Option(help="Default: the model's measured default.")] = None,
    token: Annotated[Optional[Path], typer.Option(help="A count-token file; default: the library token, if any.")] = None,
    budget_seconds: Annotated[float, typer.Option(min=0.001, help="Engine budget: wall-clock seconds.")] = _budget.max_seconds,
    budget_candidates: Annotated[int, typer.Option(min=1, help="Engine budget: candidate images.")] = _budget.max_candidates,
    budget_iterations: Annotated[int, typer.Option(min=1, help="Engine budget: refinement iterations.")] = _budget.max_iterations,
    model: ModelOption = None,
    detector: DetectorOption = None,
    json_path: JsonOption = None,
) -> None:
    """Generate images; with --count, verified images of exactly that many objects (the count engine)."""
    from optimization.count_token import CountToken

    # Everything that can be checked without the models is checked before they load.
    if not prompt.strip():
        raise InvalidRequest("the prompt is empty")
    spec = model_spec(model, detector)
    if count is not None and not 1 <= count <= spec.max_count:
        raise InvalidRequest(f"count must be between 1 and {spec.max_count}, got {count}")
    if out.exists() and not out.is_dir():
        raise InvalidRequest(f"--out must be a folder, and {out} is a file")
    if token is not None and not token.is_file():
        raise InvalidRequest(f"token file not found: {token}")
    budget = Budget(max_seconds=budget_seconds, max_candidates=budget_candidates, max_iterations=budget_iterations)
    engine = load_engine(spec)
    cls = engine.resolve_object(prompt, object_)

    if count is None:  # plain generation: report what the detector sees
        seeds = [seed + i for i in range(num_images)]
        with progress_bar("generate", num_images) as update:
            images, reports = engine.sample(prompt, cls, seeds)
            update(num_images)
        _save_images(out, reports, images, cls, None)
        write_json({"prompt": prompt, "object": cls, "count": None, "images": reports}, json_path)
        return

    policy = policy or DEFAULTS.policy_for(spec)
    library_token = (CountToken.load(token, expected_model=engine.t2i.fingerprint) if token is not None
                     else token_store().token_for(engine, cls, count))
    with progress_bar(f"{policy}: verified images", num_images) as update:
        result = engine.generate(prompt, count, object_=cls, num_images=num_images, seed=seed, budget=budget,
                                 policy=policy, token=library_token,
                                 progress=lambda e: update(e.get("images_verified", 0)))
    report = result.to_dict()
    _save_images(out, report["images"], [r.image for r in result.images], cls, count)
    report["token"]["file"] = str(token) if token else None
    console.print(f"cost: {result.cost}")
    write_json(report, json_path)


@app.command()
def optimize(
    object_: Annotated[str, typer.Option("--object", help="Object class, e.g. triangle.")],
    count: Annotated[int, typer.Option(help="Target count.")],
    mode: Annotated[str, typer.Option(help="library (many fresh seeds, validated, stored in the library) | refine "
                                           "(one seed of one prompt, written to --out only).")] = "library",
    prompt: Annotated[Optional[str], typer.Option(help="refine: the prompt; default 'a photo of N objects'.")] = None,
    seed: Annotated[int, typer.Option(min=0, help="refine: the seed to refine; library: the seed stream.")] = 0,
    iterations: Annotated[int, typer.Option(min=1)] = _library.max_iterations,
    seeds_per_iteration: Annotated[int, typer.Option(min=1, help="library: fresh seeds per iteration.")] = _library.seeds_per_iteration,
    validation_seeds: Annotated[int, typer.Option(min=1, help="library: held-out seeds.")] = _library.validation_seeds,
    lr: Annotated[Optional[float], typer.Option(min=1e-9, help=f"Default: {_library.lr} (library), {DEFAULTS.refine.lr} (refine).")] = None,
    min_gain: Annotated[float, typer.Option(min=-1, max=1, help="library: held-out exact gain over the base a token "
                                                                "needs to enter the library.")] = _library.min_gain,
    max_gain_p: Annotated[float, typer.Option(min=0, max=1, help="library: the most often chance may explain that "
                                                                 "gain (paired sign test; 1: off).")] = _library.max_gain_p,
    model: ModelOption = None,
    detector: DetectorOption = None,
    out: Annotated[Optional[Path], typer.Option(help="Token file; library default: the token library.")] = None,
    json_path: JsonOption = None,
) -> None:
    """Learn a count token: a reusable library token, or a refinement on one seed of one prompt."""
    from optimization.count_token import CountToken, place_token
    from optimization.counter import resolve
    from optimization.library import learn_token
    from optimization.prompts import plural, with_count

    if mode not in ("library", "refine"):
        raise InvalidRequest(f"unknown mode {mode!r}; allowed: library, refine")
    if out is not None and out.is_dir():
        raise InvalidRequest(f"--out must be a file path, and {out} is a folder")
    spec = model_spec(model, detector)
    if not 1 <= count <= spec.max_count:
        raise InvalidRequest(f"count must be between 1 and {spec.max_count}, got {count}")
    engine = load_engine(spec)
    cls = resolve(engine.counter, object_)
    with progress_bar(f"{mode} {count} {cls}", iterations) as update:
        if mode == "library":
            config = DEFAULTS.library.model_copy(update={
                "max_iterations": iterations, "seeds_per_iteration": seeds_per_iteration,
                "validation_seeds": validation_seeds, "seed": seed, "lr": lr or DEFAULTS.library.lr,
                "min_gain": min_gain, "max_gain_p": max_gain_p})
            token = learn_token(engine, cls, count, config, progress=lambda r: update(r.iteration))
            summary = token.metadata
            if out is None:  # the library's door: only a token that beats the base enters
                stored = token_store().admit(token, config.min_gain, config.max_gain_p)
                summary = {**summary, "stored": stored}
                if not stored:
                    console.print(f"token {token.key.id} NOT stored: its held-out gain {summary['gain']} (p "
                                  f"{summary['gain_p']}) is below --min-gain {config.min_gain} or not significant at "
                                  f"--max-gain-p {config.max_gain_p} (validation: {summary['validation']})")
                    write_json({"key": token.key.id, "path": None, **summary}, json_path)
                    return
        else:
            config = DEFAULTS.refine.model_copy(update={"max_iterations": iterations, "lr": lr or DEFAULTS.refine.lr})
            token_prompt, init_word = place_token(with_count(prompt or f"a photo of {plural(cls)}", cls, count), count)
            result = engine.refine(token_prompt, cls, count, seed, engine.word_vectors(init_word), config,
                                   progress=lambda r: update(r.iteration))
            summary = {**result.summary(), "verified": result.hit is not None, "prompt": token_prompt}
            token = CountToken(engine.token_key(cls, count), result.vectors, init_word, {"mode": "refine", **summary})
            out = out or Path("out/tokens") / f"{token.key.id}-refined-seed{seed}.safetensors"
    path = token.save(out) if out is not None else token_store().files.location(token.key.id)
    console.print(f"token {token.key.id} saved to {path}")
    console.print(summary)
    write_json({"key": token.key.id, "path": str(path), **summary}, json_path)
