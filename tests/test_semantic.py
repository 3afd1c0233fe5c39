"""The CLIP semantic guard, with a tiny randomly initialised CLIP built here (no download)."""

import pytest
import torch

from optimization.config import RefineConfig, SemanticGuard
from optimization.errors import InvalidRequest
from optimization.optimizer import optimize
from optimization.reference import PIPELINE_PATH
from optimization.semantic import ClipGuard


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A CLIPModel of a few hundred thousand random weights, saved with the reference tokenizer."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip")
    tokenizer = CLIPTokenizer.from_pretrained(str(PIPELINE_PATH / "tokenizer"))
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": tokenizer.model_max_length,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    CLIPModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def test_the_penalty_is_weighted_dissimilarity_and_lowers_as_images_match_the_text(tiny_clip):
    guard = ClipGuard(tiny_clip, weight=2.0)
    images = torch.rand(3, 3, 64, 64, requires_grad=True)
    prompt = "a photo of 3 red circles"
    penalty = guard.penalty(images, prompt)
    cosine = guard.image_features(images) @ guard.text_features(prompt)
    assert penalty.shape == (3,) and torch.allclose(penalty, 2.0 * (1 - cosine))
    assert guard.text_features("a photo <tally-count> 3 red circles").equal(guard.text_features("a photo 3 red circles"))
    # descending the penalty makes the images more like the text to CLIP: it pulls the way it is meant to
    opt = torch.optim.SGD([images], lr=5.0)
    for _ in range(10):
        opt.zero_grad()
        guard.penalty(images, prompt).sum().backward()
        opt.step()
    assert guard.penalty(images, prompt).mean() < penalty.mean().detach() - 1e-3


def test_the_gradient_reaches_the_count_token_through_the_generation(tiny_clip, t2i):
    guard = ClipGuard(tiny_clip, weight=1.0)
    vectors = {k: v.clone().requires_grad_(True) for k, v in t2i.word_vectors("of").items()}
    images = t2i.generate_differentiable("a photo <tally-count> 3 red circles", [11], vectors)
    guard.penalty(images, "a photo of 3 red circles").sum().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in vectors.values())


def test_optimize_adds_the_penalty_to_the_loss(tiny_clip, t2i, counter):
    guard = ClipGuard(tiny_clip, weight=3.0)
    seen = []

    def semantic(images, prompt):
        penalty = guard.penalty(images, prompt)
        seen.append((prompt, float(penalty.mean())))
        return penalty

    common = dict(t2i=t2i, counter=counter, prompt="a photo <tally-count> 4 red circles", cls="circle", target=4,
                  init=t2i.word_vectors("of"), seeds_for=lambda _it: [5], config=RefineConfig(max_iterations=2, lr=0.05))
    with_guard = optimize(**common, semantic=semantic)
    assert [p for p, _ in seen] == ["a photo <tally-count> 4 red circles"] * 2 and all(v > 0 for _, v in seen)
    plain = optimize(**common)
    # the first iteration starts from the same token: only the added penalty tells the tokens apart afterwards
    assert not torch.equal(with_guard.vectors["clip_l"], plain.vectors["clip_l"])


def test_a_model_entry_configures_the_guard_and_a_missing_clip_is_a_clear_error(tiny_clip, reference_spec):
    from optimization.engine import CountEngine

    spec = reference_spec.model_copy(update={"semantic_guard": SemanticGuard(clip=tiny_clip, weight=0.5)})
    engine = CountEngine.from_spec(spec)
    assert engine.semantic is not None and engine.semantic.weight == 0.5
    assert CountEngine.from_spec(reference_spec).semantic is None  # off by default
    with pytest.raises(InvalidRequest, match="semantic guard: cannot load CLIP model"):
        ClipGuard("/nonexistent/clip", 1.0)
