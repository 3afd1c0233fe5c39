"""The two training entry points run end to end on tiny data (the shipped weights come from their defaults)."""

import pytest
import torch

pytestmark = pytest.mark.slow


def test_train_detector_runs_a_few_steps_and_writes_loadable_weights(tally_cli, tmp_path):
    out = tmp_path / "detector.pt"
    result = tally_cli("reference", "train-detector", "--scenes", "16", "--val-scenes", "8", "--epochs", "1",
                       "--batch", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    from optimization.yolo import YoloCounter

    assert YoloCounter(out).classes == ["circle", "square", "triangle", "cross"]


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
