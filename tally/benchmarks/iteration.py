"""``tally bench iteration``: seconds per optimization iteration against its floor, one forward and
backward of the same generation."""

from __future__ import annotations

import resource
import statistics
import time

from optimization.count_token import place_token
from optimization.engine import CountEngine
from optimization.optimizer import optimize


def bench_iteration(engine: CountEngine, repeats: int = 7, seeds_per_iteration: int = 1) -> dict:
    cls, n = engine.counter.classes[0], 5
    token_prompt, init_word = place_token(engine.library_prompts(cls, n)[0], n)
    init = engine.word_vectors(init_word)
    seeds = list(range(seeds_per_iteration))

    floor = []
    for r in range(repeats + 1):
        params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
        t = time.perf_counter()
        engine.t2i.generate_differentiable(token_prompt, seeds, params).mean().backward()
        floor.append(time.perf_counter() - t)
    config = engine.refine_config.model_copy(update={"max_iterations": repeats + 1})
    # No verifier: every iteration runs in full, whatever the images show.
    result = optimize(engine.t2i, engine.counter, token_prompt, cls, n, init, lambda _i: seeds, config)
    elapsed = [h.elapsed for h in result.history]
    per_iteration = [b - a for a, b in zip([0.0] + elapsed[:-1], elapsed)]
    it_s, floor_s = statistics.median(per_iteration[1:]), statistics.median(floor[1:])  # first ones warm up
    return {"model": engine.spec.id, "iteration_s": round(it_s, 4), "floor_s": round(floor_s, 4),
            "ratio": round(it_s / floor_s, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "seeds_per_iteration": seeds_per_iteration, "num_inference_steps": engine.t2i.num_inference_steps}
