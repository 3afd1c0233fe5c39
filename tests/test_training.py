"""The two training entry points run end to end on tiny data (the shipped weights come from their defaults)."""

import pytest
import torch

pytestmark = pytest.mark.slow


def test_train_detector_runs_a_few_steps_and_writes_loadable_weights(tally_cli, tmp_path):
    out = tmp_path / "detector.pt"
    result = tally_cli("reference", "train-detector", "--scenes", "16", "--val-scenes", "8", "--epochs", "1",
                       "--batch", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    from optimization.config import VerifyConfig
    from optimization.yolo import YoloCounter

    assert YoloCounter(out).names == ["circle", "square", "triangle", "cross", "unclear"]
    # hard negatives are a doubt class, never a requestable object
    assert YoloCounter(out, config=VerifyConfig(doubt_classes=["unclear"])).classes == ["circle", "square", "triangle", "cross"]


def test_train_t2i_runs_a_few_steps_and_writes_a_diffusers_folder(tally_cli, tmp_path):
    out = tmp_path / "pipeline"
    result = tally_cli("reference", "train-t2i", "--scenes", "32", "--vae-steps", "2", "--unet-steps", "2",
                       "--unet-batch", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(out))
    image = pipe("a photo of 2 red squares", num_inference_steps=2, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 64, 64)


def test_train_t2i_web_variant_reuses_the_reference_autoencoder_and_knows_number_words(tally_cli, tmp_path):
    out = tmp_path / "pipeline-web"
    result = tally_cli("reference", "train-t2i", "--variant", "web", "--scenes", "32", "--unet-steps", "2",
                       "--unet-batch", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    from optimization.reference import PIPELINE_PATH

    pipe = DiffusionPipeline.from_pretrained(str(out))
    ids = pipe.tokenizer("there are seven red circles on the table", add_special_tokens=False).input_ids
    assert len(ids) == 8  # every word whole
    shipped = load_file(str(PIPELINE_PATH / "vae" / "diffusion_pytorch_model.safetensors"))
    trained = load_file(str(out / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(shipped[k].float(), trained[k].float()) for k in shipped)


def test_train_t2i_refuses_an_unknown_variant(tally_cli):
    result = tally_cli("reference", "train-t2i", "--variant", "nope")
    assert result.returncode != 0 and "unknown variant 'nope'; known: reference, web" in result.stdout + result.stderr
