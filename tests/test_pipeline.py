import json

import numpy as np
import pytest
import torch

from optimization.reference import CLASSES, IMAGE_SIZE, PIPELINE_PATH, PIPELINE_WEB_PATH, PLURALS


@pytest.mark.parametrize("path", [PIPELINE_PATH, PIPELINE_WEB_PATH], ids=["reference", "reference-web"])
def test_shipped_pipeline_loads_offline_through_diffusers_from_pretrained(path):
    from diffusers import StableDiffusionPipeline

    from optimization.pipelines import load_pipeline
    from optimization.reference import shipped_fields

    pipe = load_pipeline(path, torch.float32, shipped_fields(path)["vae"])  # reference-web: the shared autoencoder
    assert isinstance(pipe, StableDiffusionPipeline)
    image = pipe("a photo of 3 red circles", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_reference_web_renders_its_classes_from_web_like_captions(counter):
    """Web-like phrasings of the caption model: the detector finds the class asked."""
    from optimization.counter import count
    from optimization.pipelines import TextToImage
    from optimization.reference.models import reference_web_model

    spec = reference_web_model()
    t2i = TextToImage.from_spec(spec)
    found = []
    for cls in CLASSES:
        for prompt in (f"there are two red {PLURALS[cls]} on the floor", f"a photo of three green {PLURALS[cls]}"):
            images = t2i.generate(prompt, [1, 2, 3, 4])
            found += [count(counter, d, cls) > 0 for d in counter.detect(images)]
    assert np.mean(found) >= 0.9


def test_generation_has_the_reference_size_and_depends_only_on_seed(t2i):
    a = t2i.generate("a photo of 5 blue squares", [11, 12])
    b = t2i.generate("a photo of 5 blue squares", [12])
    assert a.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert 0.0 <= a.min() and a.max() <= 1.0
    # the same seed alone or in a batch: equal up to float32 batch numerics (2e-5 measured), far below one
    # 8-bit level of the served PNG (0.0039)
    assert torch.allclose(a[1], b[0], atol=1e-4)
    assert not torch.allclose(a[0], a[1])


def test_shipped_weights_are_small():
    from optimization.reference import WEIGHTS_DIR

    assert sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file()) <= 40 * 2**20


def test_both_generators_share_the_reference_autoencoder():
    from optimization.reference import AUTOENCODER_PATH
    from optimization.reference.models import reference_model, reference_web_model

    assert not (PIPELINE_WEB_PATH / "vae").exists()  # one copy ships, in `reference`'s folder
    assert reference_model().vae is None and reference_web_model().vae == str(AUTOENCODER_PATH)


def test_the_reference_model_entry_takes_its_sampler_from_the_shipped_pipeline(reference_spec, t2i):
    sampler = json.loads((PIPELINE_PATH / "tally_reference.json").read_text())["sampler"]
    assert sampler["num_inference_steps"] >= 1
    shipped = (sampler["num_inference_steps"], sampler["guidance_scale"], sampler.get("guidance_rescale", 0.0),
               sampler.get("guidance_schedule", []))
    assert (reference_spec.num_inference_steps, reference_spec.guidance_scale, reference_spec.guidance_rescale,
            reference_spec.guidance_schedule) == shipped
    assert (t2i.num_inference_steps, t2i.guidance_scale, t2i.guidance_rescale, t2i.guidance_schedule) == shipped


def test_guidance_rescale_changes_guided_images_and_keeps_the_gradient(reference_spec):
    """The rescale reaches the pipeline (what strong guidance draws changes), and the optimizer's gradient still
    reaches the initial noise through it."""
    from optimization.pipelines import TextToImage

    spec = reference_spec.model_copy(update={"guidance_scale": 4.0, "guidance_rescale": 0.0, "guidance_schedule": []})
    plain = TextToImage.from_spec(spec)
    rescaled = TextToImage.from_spec(spec.model_copy(update={"guidance_rescale": 0.7}))
    prompt = "a photo of 9 red squares"
    assert not torch.allclose(plain.generate(prompt, [3]), rescaled.generate(prompt, [3]), atol=1e-2)
    latents = rescaled.initial_latents([3]).requires_grad_()
    rescaled.generate_differentiable(prompt, [3], latents=latents).mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_a_guidance_schedule_guides_each_step_by_its_own_scale_and_keeps_the_gradient(reference_spec):
    """Each step is guided by its entry: a constant schedule draws what the constant guidance draws, milder last
    steps draw otherwise, and which steps are milder matters; the optimizer's gradient still reaches the noise."""
    from optimization.pipelines import TextToImage

    spec = reference_spec.model_copy(update={"num_inference_steps": 4, "guidance_scale": 4.0, "guidance_rescale": 0.0,
                                             "guidance_schedule": []})
    scheduled = lambda *scales: TextToImage.from_spec(spec.model_copy(update={"guidance_schedule": list(scales)}))  # noqa: E731
    prompt, seeds = "a photo of 9 red circles", [5, 6]
    constant = TextToImage.from_spec(spec).generate(prompt, seeds)
    assert torch.allclose(scheduled(4, 4, 4, 4).generate(prompt, seeds), constant, atol=1e-5)
    late = scheduled(4, 4, 1.5, 1.5)
    milder_late = late.generate(prompt, seeds)
    assert not torch.allclose(milder_late, constant, atol=1e-2)
    assert not torch.allclose(scheduled(4, 4, 4, 1.5).generate(prompt, seeds), milder_late, atol=1e-2)
    assert torch.allclose(late.generate(prompt, seeds), milder_late, atol=1e-5)  # each call starts from the first
    latents = late.initial_latents([3]).requires_grad_()
    late.generate_differentiable(prompt, [3], latents=latents).mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


@pytest.mark.parametrize("schedule", [[4.0, 4.0, 1.5], [4.0, 4.0, 1.0, 1.0], [3.0, 4.0, 1.5, 1.5]])
def test_a_guidance_schedule_must_fit_the_sampler(reference_spec, schedule):
    from pydantic import ValidationError

    from optimization.config import ModelSpec

    fields = {**reference_spec.model_dump(), "num_inference_steps": 4, "guidance_scale": 4.0}
    assert ModelSpec(**{**fields, "guidance_schedule": [4.0, 4.0, 1.5, 1.5]}).guidance_schedule == [4.0, 4.0, 1.5, 1.5]
    with pytest.raises(ValidationError, match="guidance_schedule needs 4 scales"):
        ModelSpec(**{**fields, "guidance_schedule": schedule})
