import pytest

from optimization.reference import PIPELINE_PATH, scenes
from optimization.reference.tokenizer import WORDS, build_tokenizer_files, load_tokenizer


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


def test_a_caption_encodes_word_by_word_and_numbers_digit_by_digit(tokenizer):
    text = scenes.caption("triangle", "blue", 10)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["a</w>", "photo</w>", "of</w>", "1</w>", "0</w>", "blue</w>", "triangles</w>"]
    assert tokenizer.decode(ids) == "a photo of 1 0 blue triangles"  # CLIP splits numbers into digits


def test_unknown_words_fall_back_to_characters_not_to_end_of_text(tokenizer):
    ids = tokenizer("apples", add_special_tokens=False).input_ids
    assert tokenizer.eos_token_id not in ids
    assert tokenizer.decode(ids) == "apples"
