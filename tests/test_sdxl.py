"""A tiny, randomly initialised SDXL pipeline, built here and loaded through the same adapter."""

import pytest
import torch

from optimization.count_token import CountToken, TokenKey, place_token
from optimization.config import RefineConfig
from optimization.optimizer import optimize
from optimization.pipelines import TextToImage


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from optimization.reference import PIPELINE_PATH
    from optimization.reference.tokenizer import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(PIPELINE_PATH / "tokenizer")
    common = dict(vocab_size=len(tok), intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=tok.model_max_length, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    enc1 = CLIPTextModel(CLIPTextConfig(hidden_size=32, projection_dim=32, **common))
    enc2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=48, projection_dim=16, **common))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32 + 48, attention_head_dim=4, norm_num_groups=16, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=16)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=enc1, text_encoder_2=enc2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=EulerDiscreteScheduler(timestep_spacing="trailing"))
    path = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    pipe.save_pretrained(str(path))
    return TextToImage.load(str(path), num_inference_steps=1, guidance_scale=0.0)  # the SDXL-Turbo setting


def test_tiny_sdxl_refine_step_moves_the_token_in_both_encoders(tiny_sdxl, counter):
    t2i = tiny_sdxl
    assert t2i.family == "sdxl" and set(t2i.placeholder_ids) == {"clip_l", "clip_g"}
    token_prompt, word = place_token("a photo of 3 red circles", 3)
    init = t2i.word_vectors(word)
    assert init["clip_l"].shape == (32,) and init["clip_g"].shape == (48,)
    weights = {n: p.detach().clone() for n, p in t2i.pipe.unet.named_parameters()}
    result = optimize(t2i, counter, token_prompt, "circle", 3, init, lambda i: [0],
                      RefineConfig(max_iterations=1, lr=0.1))
    assert result.iterations == 1
    for name in ("clip_l", "clip_g"):
        assert not torch.equal(result.vectors[name], init[name])
    assert all(torch.equal(p, weights[n]) for n, p in t2i.pipe.unet.named_parameters())


def test_sdxl_token_file_holds_clip_l_and_clip_g(tiny_sdxl, tmp_path):
    from safetensors.torch import load_file

    t2i = tiny_sdxl
    token = CountToken(TokenKey(t2i.fingerprint, "circle", 3), t2i.word_vectors("of"))
    path = token.save(tmp_path / "sdxl.safetensors")
    assert set(load_file(str(path))) == {"clip_l", "clip_g"}
    t2i.set_token(CountToken.load(path, expected_model=t2i.fingerprint).vectors)
    images = t2i.generate("a photo <tally-count> 3 red circles", [0])
    assert images.shape == (1, 3, t2i.image_size, t2i.image_size)


def test_tiny_sdxl_initial_latents_reproduce_the_seeds_images_and_noise_optimization_moves_them(tiny_sdxl, counter):
    from optimization.config import NoiseConfig
    from optimization.noise import gaussian_shell, optimize_noise

    t2i = tiny_sdxl
    seeded = t2i.generate("a photo of 3 red circles", [4, 5])
    given = t2i.generate_differentiable("a photo of 3 red circles", [4, 5], latents=t2i.initial_latents([4, 5]))
    assert torch.allclose(seeded, given.detach(), atol=1e-5)  # the noise the pipeline would draw for the seeds

    seen = []
    result = optimize_noise(t2i, counter, "a photo of 3 red circles", "circle", 3, 4, NoiseConfig(max_iterations=2),
                            verifier=lambda images, dets: [type("V", (), {"verified": False})()] * len(images),
                            progress=seen.append)
    assert result.iterations == 2 and [r.iteration for r in seen] == [1, 2] and result.hit is None
    latents = t2i.initial_latents([4])
    assert gaussian_shell(latents).item() < 0.05  # drawn noise sits on the Gaussian shell


def test_tiny_sdxl_samples_with_rescaled_guidance(tiny_sdxl):
    guided = TextToImage.load(tiny_sdxl.source, num_inference_steps=1, guidance_scale=2.0, guidance_rescale=0.5)
    assert guided.generate("a photo of 3 red circles", [0]).shape == (1, 3, guided.image_size, guided.image_size)


def test_tiny_sdxl_samples_with_a_guidance_schedule(tiny_sdxl):
    """The SDXL pipeline takes the per-step scale from the same attribute (its random weights barely tell the
    prompt from the empty one, so the images cannot show it: the pipeline's own reading does)."""
    scheduled = TextToImage.load(tiny_sdxl.source, num_inference_steps=2, guidance_scale=3.0, guidance_schedule=[3.0, 1.5])
    images = scheduled.generate("a photo of 3 red circles", [0])
    assert images.shape == (1, 3, scheduled.image_size, scheduled.image_size)
    assert scheduled.pipe.guidance_scale == 1.5 and scheduled.pipe.do_classifier_free_guidance
