import json

import torch

from optimization.reference import IMAGE_SIZE, PIPELINE_PATH


def test_shipped_pipeline_loads_offline_through_diffusers_from_pretrained():
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(PIPELINE_PATH))
    assert isinstance(pipe, StableDiffusionPipeline)
    image = pipe("a photo of 3 red circles", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_generation_has_the_reference_size_and_depends_only_on_seed(t2i):
    a = t2i.generate("a photo of 5 blue squares", [11, 12])
    b = t2i.generate("a photo of 5 blue squares", [12])
    assert a.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.allclose(a[1], b[0], atol=1e-5)
    assert not torch.allclose(a[0], a[1])


def test_shipped_weights_are_small():
    total = sum(p.stat().st_size for p in PIPELINE_PATH.parent.rglob("*") if p.is_file())
    assert total <= 30 * 2**20


def test_the_reference_model_entry_takes_its_sampler_from_the_shipped_pipeline(reference_spec, t2i):
    sampler = json.loads((PIPELINE_PATH / "tally_reference.json").read_text())["sampler"]
    assert sampler["num_inference_steps"] >= 1
    assert (reference_spec.num_inference_steps, reference_spec.guidance_scale) == (
        sampler["num_inference_steps"], sampler["guidance_scale"])
    assert (t2i.num_inference_steps, t2i.guidance_scale) == (sampler["num_inference_steps"], sampler["guidance_scale"])
