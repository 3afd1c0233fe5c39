"""Library learning tries the cheap thing first: stated-number calibration, then the gradient token."""

import math

import numpy as np
import pytest
import torch

from optimization.config import Budget, LibraryConfig
from optimization.count_token import CountToken
from optimization.engine import CountEngine
from optimization.library import learn_token

SHIFT = 2  # the shifted model draws the count of the number two below the one written


@pytest.fixture(scope="module")
def undercounting_engine(reference_spec, counter):
    """The reference model made to draw fewer objects than asked, the way real models do at large counts: each
    digit d >= 3 embeds as d - 2, so "5" draws about 3 objects and only "7" draws about 5."""
    from optimization.pipelines import TextToImage

    t2i = TextToImage.from_spec(reference_spec)
    tokenizer, embeddings = t2i.pipe.tokenizer, t2i.pipe.text_encoder.get_input_embeddings().weight
    original = embeddings.detach().clone()
    with torch.no_grad():
        for d in range(1 + SHIFT, 10):
            embeddings[tokenizer.convert_tokens_to_ids(f"{d}</w>")] = original[tokenizer.convert_tokens_to_ids(f"{d - SHIFT}</w>")]
    return CountEngine(t2i, counter, reference_spec)


CALIBRATION = LibraryConfig(calibration_seeds=16, calibration_below=1, calibration_above=3, max_iterations=2,
                            seeds_per_iteration=2, validation_seeds=8, validate_every=1)


@pytest.fixture(scope="module")
def learned(undercounting_engine) -> CountToken:
    return learn_token(undercounting_engine, "circle", 5, CALIBRATION)


def test_calibration_picks_a_stated_number_that_beats_the_plain_one(learned):
    result = learned.metadata["calibration"]
    tried = result["tried"]
    assert set(tried) == {"4", "5", "6", "7", "8"} and result["seeds"] == 16
    assert result["stated"] in (6, 7, 8)
    assert tried[str(result["stated"])]["exact"] > tried["5"]["exact"]
    assert tried[str(result["stated"])]["mae"] < tried["5"]["mae"]


def test_the_library_token_states_the_calibrated_number_and_records_both_validations(undercounting_engine, learned):
    engine, token = undercounting_engine, learned
    stated = token.metadata["calibration"]["stated"]
    assert token.stated == stated != 5
    validation = token.metadata["validation"]
    assert {"base", "calibration", "gradient", "token"} <= set(validation)
    assert token.metadata["kept"] in ("calibration", "token")
    best = max((validation["calibration"], validation["gradient"]), key=lambda v: (v["exact"], -v["mae"]))
    assert validation["token"] == best  # whichever validates best is kept
    admission = validation["admission"]  # the gate's figures, on seeds that chose nothing
    assert admission["base"]["n"] == admission["token"]["n"] == CALIBRATION.validation_seeds
    if validation["best_iteration"]:  # validation chose the trained token: kept only if it beats its start there too
        assert (token.metadata["kept"] == "token") == (admission["token"]["exact"] > admission["calibration"]["exact"])
    else:
        assert token.metadata["kept"] == "calibration" and "calibration" not in admission
    assert token.metadata["gain"] == round(admission["token"]["exact"] - admission["base"]["exact"], 4)
    assert token.metadata["gain_p"] == admission["p_value"] and 0 < admission["p_value"] <= 1
    assert all(f" {stated} red " in p or f" {stated} green " in p or f" {stated} blue " in p or f" {stated} black " in p
               for p in token.metadata["prompts"])
    # the number travels in the file's header, and jobs write it while verifying the count asked
    loaded = CountToken.from_bytes(token.to_bytes(), expected_model=engine.t2i.fingerprint)
    assert loaded.stated == stated
    result = engine.generate("a photo of red circles", 5, seed=3, budget=Budget(max_candidates=8), policy="library",
                             token=loaded)
    assert result.prompt == "a photo of 5 red circles" and result.library_hit
    assert all(r.verification.target == 5 for r in result.images) and result.cost["iterations"] == 0


def test_calibration_tries_the_crowd_word_where_the_count_itself_draws_too_few(web_engine):
    """reference-web asked for 10 circles draws five or six; told "many", ten more often. Calibration asks for the
    crowd word only after the count drew too few (as jobs restate), and jobs with a token stating it write it."""
    from optimization.library import calibrate

    only_the_count = LibraryConfig(calibration_seeds=16, calibration_below=0, calibration_above=0)
    result, _ = calibrate(web_engine, "circle", 10, only_the_count)
    assert list(result["tried"]) == ["10", "many"] and result["tried"]["10"]["exact"] < 0.1
    assert result["stated"] == "many" and result["tried"]["many"]["exact"] > result["tried"]["10"]["exact"]
    assert list(calibrate(web_engine, "circle", 3, only_the_count)[0]["tried"]) == ["3"]  # three draws three

    token = CountToken(web_engine.token_key("circle", 10), web_engine.word_vectors("of"), "of", {"mode": "library"},
                       stated="many")
    loaded = CountToken.from_bytes(token.to_bytes(), expected_model=web_engine.t2i.fingerprint)
    seen = []
    result = web_engine.generate("a photo of 10 red circles", 10, seed=4, budget=Budget(max_candidates=8),
                                 policy="library", token=loaded, progress=seen.append)
    assert result.library_hit and all(r.stated == "many" and r.verification.target == 10 for r in result.images)
    assert sum(len(e.get("detected_counts", [])) for e in seen) == 8


def test_the_admission_gate_judges_on_seeds_neither_learning_nor_validation_nor_the_bench_used():
    from optimization.optimizer import admission_seeds, calibration_seeds, library_seeds
    from optimization.seeds import LIBRARY_JUDGE

    config = LibraryConfig()
    seeds_for, validation = library_seeds(config)
    seen = set(validation) | set(calibration_seeds(config)) | {s for i in range(config.max_iterations) for s in seeds_for(i)}
    judged = set(range(LIBRARY_JUDGE, LIBRARY_JUDGE + 1000))
    gate = set(admission_seeds(config))
    assert len(gate) == config.validation_seeds and not gate & seen and not gate & judged


def test_a_budget_in_seconds_covers_calibration_and_every_slice(undercounting_engine):
    token = learn_token(
        undercounting_engine, "circle", 5, CALIBRATION.model_copy(update={"max_iterations": 50, "max_seconds": 0.5}))
    assert token.metadata["iterations"] <= 1  # calibration alone spent the budget: one iteration at most follows


def test_a_bench_learns_what_the_library_lacks_and_says_why_the_gate_refused_a_token(undercounting_engine, settings):
    from tally.benchmarks.engine import library_tokens
    from workers.queue import connect
    from workers.tokens import TokenStore

    store = TokenStore.for_settings(settings, connect(settings))
    assert library_tokens(undercounting_engine, store, [("circle", 5)], CALIBRATION, learn=False) == (
        {("circle", 5): None}, {})  # only what the library holds: nothing learned
    never = CALIBRATION.model_copy(update={"min_gain": 1.0})  # a gain of 1.0 would need every admission seed exact
    tokens, refused = library_tokens(undercounting_engine, store, [("circle", 5)], never)
    assert tokens == {("circle", 5): None} and store.list() == []
    assert refused["circle-5"]["gain"] < 1.0 and "admission" in refused["circle-5"]["validation"]
    # any gain at all, but one chance could not explain on 8 paired seeds (at best p = 2^-8)
    never_by_chance = CALIBRATION.model_copy(update={"min_gain": -1.0, "max_gain_p": 2.0 ** -9})
    tokens, refused = library_tokens(undercounting_engine, store, [("circle", 5)], never_by_chance)
    assert tokens == {("circle", 5): None} and store.list() == []
    always = CALIBRATION.model_copy(update={"min_gain": -1.0, "max_gain_p": 1.0})
    tokens, refused = library_tokens(undercounting_engine, store, [("circle", 5)], always)
    assert refused == {} and tokens[("circle", 5)] is not None and len(store.list()) == 1
    again, _ = library_tokens(undercounting_engine, store, [("circle", 5)], never)  # taken from the library
    assert again[("circle", 5)].key == tokens[("circle", 5)].key


@pytest.mark.unit
def test_the_gain_test_counts_only_the_seeds_where_the_two_prompts_differ():
    from optimization.optimizer import gain_p_value

    base = np.array([True] * 10 + [False] * 54)
    assert gain_p_value(base, base) == 1.0  # no seed tells them apart
    # 10 seeds exact for both, 6 more for the token alone: 6 of 6 discordant pairs go its way, p = 2^-6
    token = base.copy()
    token[10:16] = True
    assert gain_p_value(base, token) == 2.0 ** -6
    # the same net gain of 6 out of 14 discordant seeds (10 token-only, 4 base-only) could be chance
    mixed = base.copy()
    mixed[:4], mixed[10:20] = False, True
    assert gain_p_value(base, mixed) == sum(math.comb(14, k) for k in range(10, 15)) / 2 ** 14 > 0.05
    assert gain_p_value(token, base) == 1.0  # a loss is never significant
