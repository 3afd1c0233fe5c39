import pytest
import torch

from optimization.count_token import CountToken, TokenKey, place_token
from optimization.config import RefineConfig
from optimization.optimizer import optimize
from optimization.pipelines import PLACEHOLDER


def test_placeholder_takes_the_place_of_the_word_before_the_count():
    assert place_token("a photo of 7 blue triangles", 7) == (f"a photo {PLACEHOLDER} 7 blue triangles", "of")
    assert place_token("7 crosses on a table", 7) == (f"{PLACEHOLDER} 7 crosses on a table", "a")
    with pytest.raises(ValueError, match="does not state the count 7"):
        place_token("a photo of blue triangles", 7)
    assert place_token("a photo of many blue triangles", "many") == (f"a photo {PLACEHOLDER} many blue triangles", "of")


def test_untrained_token_renders_exactly_the_base_prompt(t2i):
    prompt = "a photo of 6 red squares"
    token_prompt, word = place_token(prompt, 6)
    t2i.set_token(t2i.word_vectors(word))
    assert torch.equal(t2i.generate(prompt, [5, 6]), t2i.generate(token_prompt, [5, 6]))


def test_gradient_reaches_only_the_token(t2i, counter):
    token_prompt, word = place_token("a photo of 5 green circles", 5)
    before = {n: p.detach().clone() for n, p in t2i.pipe.unet.named_parameters()}
    vae_before = {n: p.detach().clone() for n, p in t2i.pipe.vae.named_parameters()}
    rows_before = t2i.pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    init = t2i.word_vectors(word)
    result = optimize(t2i, counter, token_prompt, "circle", 5, init, lambda i: [1, 2],
                      RefineConfig(max_iterations=3, lr=5e-2))
    assert result.iterations == 3
    assert not torch.equal(result.vectors["clip_l"], init["clip_l"])  # the token moved ...
    for n, p in t2i.pipe.unet.named_parameters():  # ... and nothing else did
        assert torch.equal(p, before[n]) and p.grad is None
    for n, p in t2i.pipe.vae.named_parameters():
        assert torch.equal(p, vae_before[n])
    assert torch.equal(t2i.pipe.text_encoder.get_input_embeddings().weight, rows_before)


def test_token_file_loads_with_diffusers_load_textual_inversion(t2i, tmp_path):
    from diffusers import DiffusionPipeline

    from optimization.reference import PIPELINE_PATH

    vector = torch.randn(t2i.pipe.text_encoder.config.hidden_size)
    token = CountToken(TokenKey(t2i.fingerprint, "triangle", 7), {"clip_l": vector}, "of", {"iterations": 3})
    path = token.save(tmp_path / "t.safetensors")
    fresh = DiffusionPipeline.from_pretrained(str(PIPELINE_PATH))
    fresh.load_textual_inversion(str(path))
    token_id = fresh.tokenizer.convert_tokens_to_ids(PLACEHOLDER)
    assert torch.allclose(fresh.text_encoder.get_input_embeddings().weight[token_id], vector)
    loaded = CountToken.load(path, expected_model=t2i.fingerprint)
    assert loaded.key == token.key and loaded.metadata == {"iterations": 3}


def test_token_of_another_model_or_corrupt_file_is_refused(t2i, tmp_path):
    other = CountToken(TokenKey("0" * 16, "circle", 3), {"clip_l": torch.zeros(128)})
    path = other.save(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="learned for model 0000000000000000"):
        CountToken.load(path, expected_model=t2i.fingerprint)
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10" * 64)
    with pytest.raises(ValueError, match="corrupt"):
        CountToken.load(tmp_path / "corrupt.safetensors")
    with pytest.raises(ValueError, match="size"):
        t2i.set_token({"clip_l": torch.zeros(7)})


@pytest.mark.parametrize("stated", ["0", "13", "abc", "7; rm", "²", "Many", "a" * 21])
def test_a_stated_number_outside_the_models_counts_is_refused(stated):
    from safetensors.torch import save

    from optimization.errors import InvalidRequest
    from optimization.token_file import validate_token

    token = CountToken(TokenKey("f" * 16, "circle", 7), {"clip_l": torch.zeros(8)}, stated=9)
    assert CountToken.from_bytes(token.to_bytes()).stated == 9 and validate_token(token.to_bytes(), None, 12)["stated_count"] == 9
    header = {"tally_format": "1", "model_fingerprint": "f" * 16, "object": "circle", "count": "7", "stated_count": stated}
    data = save({PLACEHOLDER: torch.zeros(1, 8)}, metadata=header)
    with pytest.raises(InvalidRequest, match="stated_count must be an integer in 1..12"):
        validate_token(data, None, 12, crowd_words=[])  # a model with no crowd word
    if stated in ("0", "7; rm", "²", "Many", "a" * 21):  # neither a number nor a word, or zero: refused whatever the model
        with pytest.raises(InvalidRequest, match="stated_count must be an integer"):
            CountToken.from_bytes(data)


def test_a_token_may_state_the_models_crowd_word_and_no_other():
    from safetensors.torch import save

    from optimization.errors import InvalidRequest
    from optimization.token_file import validate_token

    token = CountToken(TokenKey("f" * 16, "circle", 10), {"clip_l": torch.zeros(8)}, stated="many")
    assert token.stated_count == "many" and CountToken.from_bytes(token.to_bytes()).stated == "many"
    assert validate_token(token.to_bytes(), None, 12, crowd_words=["many"])["stated_count"] == "many"
    assert validate_token(token.to_bytes(), None, 12)["stated_count"] == "many"  # the model's word not known
    header = {"tally_format": "1", "model_fingerprint": "f" * 16, "object": "circle", "count": "10", "stated_count": "few"}
    data = save({PLACEHOLDER: torch.zeros(1, 8)}, metadata=header)
    with pytest.raises(InvalidRequest, match="or this model's crowd word \\('many'\\), got 'few'"):
        validate_token(data, None, 12, crowd_words=["many"])
    with pytest.raises(InvalidRequest, match="must be an integer in 1..12, got 'many'"):  # a model with no crowd word
        validate_token(token.to_bytes(), None, 12, crowd_words=[])
