import pytest

from optimization.reference import PIPELINE_PATH, scenes
from optimization.prompts import words_not_whole
from optimization.reference.tokenizer import WORDS, build_tokenizer_files, load_tokenizer

from .test_worker import _work


@pytest.fixture(scope="module", params=["shipped", "fresh"])
def tokenizer(request, tmp_path_factory):
    if request.param == "shipped":
        return load_tokenizer(PIPELINE_PATH / "tokenizer")
    return load_tokenizer(build_tokenizer_files(tmp_path_factory.mktemp("tok")))


@pytest.mark.parametrize("word", WORDS)
def test_every_caption_word_is_one_token_and_decodes_back(tokenizer, word):
    ids = tokenizer(word, add_special_tokens=False).input_ids
    assert len(ids) == 1
    assert tokenizer.decode(ids) == word


def test_a_caption_encodes_word_by_word_with_numbers_to_twenty_whole(tokenizer):
    text = scenes.caption("triangle", "blue", 12)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["a</w>", "photo</w>", "of</w>", "12", "blue</w>", "triangles</w>"]
    assert words_not_whole(text, [tokenizer]) == []


def test_numbers_past_twenty_and_numbers_inside_words_are_split_into_digits(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("120 circles", add_special_tokens=False).input_ids)
    assert tokens == ["1</w>", "2</w>", "0</w>", "circles</w>"]


def test_unknown_words_fall_back_to_characters_not_to_end_of_text(tokenizer):
    ids = tokenizer("apples", add_special_tokens=False).input_ids
    assert tokenizer.eos_token_id not in ids
    assert tokenizer.decode(ids) == "apples"


# ------------------------------------------------------------------------------- words the model may not know
def test_words_the_tokenizer_splits_are_named_and_numbers_and_punctuation_are_not(tokenizer):
    assert words_not_whole("a photo of 12 zebra circles, xqzt!", [tokenizer]) == ["zebra", "xqzt"]
    assert words_not_whole("a photo of 12 red circles, on a blue square", [tokenizer, tokenizer]) == []


def test_a_job_whose_prompt_has_a_word_the_model_cannot_encode_whole_gets_a_warning(runtime):
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(runtime.settings)) as api:
        unknown, plain = (api.post("/v1/jobs", json={"prompt": prompt, "count": 2, "seed": 1, "policy": "resample",
                                                     "budget": {"max_candidates": 1}, "queue_if_offline": True}
                                   ).json()["id"] for prompt in ("a photo of zebra circles", "a photo of red circles"))
        _work(runtime)
        warned, clean = (api.get(f"/v1/jobs/{job}").json() for job in (unknown, plain))
    assert warned["status"] == "succeeded" and len(warned["warnings"]) == 1 and "'zebra'" in warned["warnings"][0]
    assert clean["status"] == "succeeded" and clean["warnings"] == []
