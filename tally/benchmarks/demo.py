"""``tally bench demo``: how often the demo's two requests verify, over runs with server-chosen seeds.

``./scripts/demo`` sends its two count-7 requests (``DEMO_REQUESTS``) once, with seed 0. This sends each of them
``runs`` times without a seed, so the server draws one as it does for any user, through a private service
started as ``tally up`` starts it (Redis, the API with auth off on loopback, one worker per reference model, an
empty token library). Per request it reports jobs whose every image is verified, images verified, false verified
(verified while the model's cross-check counts otherwise) and the median job's seconds; and it draws every image
with its detections into one PNG, a row a run, to look at.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from PIL import Image

from optimization.visualize import grid
from tally.client import Client
from tally.launcher import Launcher
from workers.settings import Settings

from .common import free_port

# The requests of ./scripts/demo, less their seed (a test in tests/test_cli.py holds the script to these).
DEMO_REQUESTS = (
    {"prompt": "a photo of blue triangles", "count": 7, "num_images": 2},
    {"prompt": "there are seven red circles on the table", "count": 7, "model": "reference-web", "policy": "noise"},
)
TILE = 256  # pixels a side of each image in the PNG (its boxes are drawn at 4x the image's size)


def _summary(records: list) -> dict:
    """A request's jobs: those that returned every image asked for verified, their images, and the verified
    images the cross-check counts otherwise (false verified)."""
    pairs = [(job, r) for job in records for r in job.results]
    seconds = [job.cost.seconds for job in records if job.cost is not None]
    return {"jobs": len(records),
            "jobs_verified": sum(sum(r.verified for r in job.results) >= job.num_images for job in records),
            "images": len(pairs), "images_verified": sum(r.verified for _, r in pairs),
            "false_verified": sum(r.verified and r.crosscheck_count not in (None, job.count) for job, r in pairs),
            "median_job_seconds": round(statistics.median(seconds), 3) if seconds else None,
            "seeds": [job.seed for job in records]}


def run(runs: int = 10, out_dir: Path = Path("out/bench"), progress=None) -> dict:
    step = progress or (lambda done, total: None)
    root = Path(tempfile.mkdtemp(prefix="tally-bench-demo-"))
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(redis_url=redis_url, runtime_dir=root, token_dir=root / "tokens")
    env = {"TALLY_REDIS_URL": redis_url, "TALLY_RUNTIME_DIR": str(root), "TALLY_TOKEN_DIR": str(root / "tokens"),
           "TALLY_AUTH": "off"}
    models = sorted({request.get("model", settings.default_model) for request in DEMO_REQUESTS})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    records: list[list] = [[] for _ in DEMO_REQUESTS]
    rows: list[tuple[list[Image.Image], list[str]]] = []
    with Launcher(settings, env=env, log_dir=root / "logs") as launcher:
        launcher.ensure_redis()
        launcher.start_api("127.0.0.1", port)
        for model in models:
            launcher.start_worker(model, f"demo-{model}")
        launcher.wait_ready(url, timeout=300, models=models)
        with Client(url, timeout=120) as client:
            for i in range(runs):
                tiles, labels = [], []
                for request, kept in zip(DEMO_REQUESTS, records):
                    job = client.wait(client.submit(**request).id, timeout=600)
                    kept.append(job)
                    for result, image in zip(job.results, client.images(job, boxes=True)):
                        tiles.append(image.convert("RGB").resize((TILE, TILE), Image.NEAREST))
                        labels.append(f"run {i + 1}: {result.confident} of {job.count} "
                                      f"{'verified' if result.verified else result.reason}")
                rows.append((tiles, labels))
                step(i + 1, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "demo_runs.png"
    columns = max(len(tiles) for tiles, _ in rows)
    blank = Image.new("RGB", (TILE, TILE), "white")  # pads a row whose jobs returned fewer images
    grid([t for tiles, _ in rows for t in tiles + [blank] * (columns - len(tiles))], columns,
         [label for _, labels in rows for label in labels + [""] * (columns - len(labels))]).save(png)
    requests = [{**request, "model": request.get("model", settings.default_model), **_summary(kept)}
                for request, kept in zip(DEMO_REQUESTS, records)]
    return {"runs": runs, "requests": requests, "pictures": [str(png)], "logs": str(root / "logs")}


def table(result: dict) -> str:
    lines = ["| request | jobs verified | images verified | false verified | median job s |",
             "|---|---:|---:|---:|---:|"]
    for r in result["requests"]:
        lines.append(f"| {r['model']}: \"{r['prompt']}\", {r['count']} | {r['jobs_verified']} of "
                     f"{r['jobs']} | {r['images_verified']} of {r['images']} | {r['false_verified']} | "
                     f"{r['median_job_seconds']} |")
    return "\n".join(lines)
