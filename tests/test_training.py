"""The training entry points run end to end on tiny data, and resume (the shipped weights come from their
defaults)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def test_train_detector_runs_a_few_steps_on_generated_looking_examples_and_writes_loadable_weights(tally_cli, tmp_path):
    out = tmp_path / "detector.pt"
    result = tally_cli("reference", "train-detector", "--scenes", "24", "--val-scenes", "8", "--epochs", "1",
                       "--batch", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'sdedit'" in result.stdout + result.stderr and "'autoencoder'" in result.stdout + result.stderr
    from optimization.config import VerifyConfig
    from optimization.yolo import YoloCounter

    assert YoloCounter(out).names == ["circle", "square", "triangle", "cross", "unclear"]
    # hard negatives are a doubt class, never a requestable object
    assert YoloCounter(out, config=VerifyConfig(doubt_classes=["unclear"])).classes == ["circle", "square", "triangle", "cross"]

    before = out.read_bytes()
    result = tally_cli("reference", "train-detector", "--scenes", "16", "--val-scenes", "4", "--epochs", "1",
                       "--batch", "8", "--renders-only", "--train-further", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes() != before and YoloCounter(out).names[-1] == "unclear"


def test_generated_looking_examples_keep_only_what_the_judge_still_finds():
    import numpy as np

    from optimization.reference import PIPELINE_PATH
    from optimization.reference.crosscheck import judge
    from optimization.reference.detector import SOURCES_GENERATED, Generators, _examples

    rng = np.random.default_rng(0)
    examples = list(_examples(16, 8_600_000, Generators([PIPELINE_PATH]), rng, lambda: None, batch=8,
                              shares=SOURCES_GENERATED))
    assert {source for source, _, _ in examples} == {"render", "autoencoder", "sdedit", "generated"}
    for source, image, labelled in examples:
        if source != "render":  # labels are the judge's own components of the generated image
            assert sorted(b for _, b in labelled) == sorted(judge(image).boxes)
        if source == "generated":  # every shape whole and separate, all of the one class asked for
            assert judge(image).clean and len({c for c, _ in labelled}) == 1


@pytest.mark.parametrize("model", ["reference", "reference-web"])
def test_generated_examples_are_drawn_as_the_served_model_draws_them(model):
    """The detector's generated examples come from each generator at its own sampler, per-step guidance included."""
    from optimization.pipelines import TextToImage
    from optimization.reference.detector import Generators
    from optimization.reference.models import reference_models

    spec = next(m for m in reference_models() if m.id == model)
    prompt = "a photo of 7 red circles"
    drawn = Generators([spec.pipeline]).generate(0, [prompt], seed=3)[0].astype(float)
    served = TextToImage.from_spec(spec).generate(prompt, [3])[0].permute(1, 2, 0).numpy() * 255
    assert abs(drawn - served).max() <= 1


def test_as_many_examples_hold_hard_negatives_with_generated_examples_as_without():
    from optimization.reference.detector import NEGATIVE_SHARE, SOURCES, SOURCES_GENERATED, negative_share

    assert negative_share(SOURCES) == NEGATIVE_SHARE  # the shipped detector's examples, unchanged
    with_generated = negative_share(SOURCES_GENERATED) * (1 - SOURCES_GENERATED["generated"])
    assert abs(with_generated - NEGATIVE_SHARE) < 1e-9


def test_generated_shapes_that_merged_are_labelled_unclear_and_vanished_ones_drop_the_example():
    import numpy as np

    from optimization.reference.detector import DETECTOR_CLASSES, _judged_labels

    image = np.full((64, 64, 3), 240, np.uint8)
    image[10:20, 10:20] = image[10:20, 20:30] = (200, 30, 30)  # two squares drawn apart, generated touching
    image[40:50, 40:50] = (30, 30, 200)
    square, unclear = DETECTOR_CLASSES.index("square"), DETECTOR_CLASSES.index("unclear")
    drawn = [(square, (10, 10, 20, 20)), (square, (21, 10, 31, 20)), (square, (40, 40, 50, 50))]
    assert sorted(_judged_labels(image, drawn)) == [(square, (40, 40, 50, 50)), (unclear, (10, 10, 30, 20))]
    assert _judged_labels(image, drawn + [(square, (2, 50, 8, 56))]) is None  # a drawn shape vanished
    image[55:60, 2:7] = 0
    assert _judged_labels(image, drawn) is None  # a blob nobody drew


def test_a_generated_image_is_an_example_only_where_the_judge_counts_what_was_asked_in_whole_shapes():
    import numpy as np

    from optimization.reference.detector import DETECTOR_CLASSES, _generated_labels

    image = np.full((64, 64, 3), 240, np.uint8)
    for x in (5, 25, 45):
        image[10:20, x:x + 10] = (200, 30, 30)
    square = DETECTOR_CLASSES.index("square")
    assert sorted(_generated_labels(image, "square", 3)) == [(square, (x, 10, x + 10, 20)) for x in (5, 25, 45)]
    assert _generated_labels(image, "square", 4) is None  # the judge's count is not the count asked
    assert _generated_labels(image, "circle", 3) is None  # squares drawn for "circles" are not circles
    image[40:50, 10:20] = image[40:50, 20:30] = (200, 30, 30)  # a touching pair: one blob, not a whole shape
    assert _generated_labels(image, "square", 4) is None and _generated_labels(image, "square", 5) is None


def test_train_autoencoder_and_t2i_run_a_few_steps_and_write_diffusers_folders(tally_cli, tmp_path):
    vae = tmp_path / "vae"
    result = tally_cli("reference", "train-autoencoder", "--scenes", "16", "--steps", "2", "--batch", "4",
                       "--out", str(vae))
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "pipeline"
    result = tally_cli("reference", "train-t2i", "--scenes", "32", "--unet-steps", "2", "--unet-batch", "4",
                       "--autoencoder", str(vae), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    pipe = DiffusionPipeline.from_pretrained(str(out))
    image = pipe("a photo of 12 red squares", num_inference_steps=2, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 64, 64)
    stored = load_file(str(out / "text_encoder" / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}  # stored small ...
    assert {p.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()} == {torch.float32}
    trained, shipped = (load_file(str(p / "diffusion_pytorch_model.safetensors")) for p in (vae, out / "vae"))
    assert all(torch.equal(trained[k], shipped[k]) for k in trained)  # the autoencoder is shared, frozen

    result = tally_cli("reference", "train-t2i", "--scenes", "32", "--unet-steps", "1", "--unet-batch", "4",
                       "--autoencoder", str(vae), "--out", str(out), "--train-further", "--gap", "4",
                       "--weight-floor", "0.25", "--transformer-layers", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((out / "tally_reference.json").read_text())["training"]["config"]
    assert config["unet_from"] == config["text_encoder_from"] == "pipeline"  # it went on from the saved model
    assert config["gap"] == 4 and config["weight_floor"] == 0.25  # what it learned from, and how, is recorded
    assert config["transformer_layers"] == 2
    assert json.loads((out / "unet" / "config.json").read_text())["transformer_layers_per_block"] == 2
    assert DiffusionPipeline.from_pretrained(str(out))("a photo of 3 red squares", num_inference_steps=2,
                                                       output_type="pt").images.shape == (1, 3, 64, 64)
    result = tally_cli("reference", "train-t2i", "--out", str(out), "--train-further", "--transformer-layers", "1")
    assert result.returncode == 2 and "added, not removed" in " ".join((result.stdout + result.stderr).split())
    log = [json.loads(line) for line in (tmp_path / "runtime" / "runs" / "t2i-reference" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == log[-1]["total"] == 1 and log[-1]["loss"] > 0  # the written log of the run


def test_a_deepened_unet_draws_what_it_drew_until_it_is_trained():
    from diffusers import UNet2DConditionModel

    from optimization.reference import PIPELINE_PATH
    from optimization.reference.t2i import deepen

    unet = UNet2DConditionModel.from_pretrained(str(PIPELINE_PATH), subfolder="unet", torch_dtype=torch.float32).eval()
    layers = unet.config.transformer_layers_per_block
    deeper = deepen(unet, layers + 1).eval()
    assert deeper.config.transformer_layers_per_block == layers + 1
    assert sum(p.numel() for p in deeper.parameters()) > (1 + 0.3 / layers) * sum(p.numel() for p in unet.parameters())
    latents = torch.randn(2, unet.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before, after = (m(latents, torch.tensor([999, 249]), text).sample for m in (unet, deeper))
    assert torch.equal(before, after)  # the added layers start as the identity
    assert any(p.abs().sum() > 0 for n, p in deeper.named_parameters() if f".transformer_blocks.{layers}.attn1.to_q" in n)
    with pytest.raises(ValueError, match=f"more than {layers} transformer layers"):
        deepen(deeper, layers)


def test_train_t2i_web_variant_starts_from_the_reference_unet_and_knows_number_words(tally_cli, tmp_path):
    out = tmp_path / "pipeline-web"
    result = tally_cli("reference", "train-t2i", "--variant", "web", "--scenes", "32", "--unet-steps", "2",
                       "--unet-batch", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    from optimization.pipelines import load_pipeline
    from optimization.reference import AUTOENCODER_PATH, shipped_fields

    assert shipped_fields(out)["vae"] == str(AUTOENCODER_PATH)  # the shared autoencoder, not a copy
    pipe = load_pipeline(out, torch.float32, shipped_fields(out)["vae"])
    ids = pipe.tokenizer("there are seventeen red circles on the table", add_special_tokens=False).input_ids
    assert len(ids) == 8  # every word whole
    assert len(pipe.tokenizer("I need exactly 12 blue squares please", add_special_tokens=False).input_ids) == 7

    from optimization.reference import PIPELINE_PATH

    result = tally_cli("reference", "train-t2i", "--variant", "web", "--scenes", "32", "--unet-steps", "1",
                       "--unet-batch", "4", "--out", str(out), "--train-further", "--unet-from", str(PIPELINE_PATH))
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((out / "tally_reference.json").read_text())["training"]["config"]
    # its own text encoder, re-based on the (newer) reference UNet
    assert (config["unet_from"], config["text_encoder_from"]) == ("pipeline", "pipeline-web")


def test_an_interrupted_training_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(tmp_path):
    from safetensors.torch import load_file

    from optimization.reference.autoencoder import AutoencoderTrainConfig, train_autoencoder

    cfg = AutoencoderTrainConfig(scenes=16, steps=4, batch=2, checkpoint_every=2)
    train_autoencoder(tmp_path / "whole", tmp_path / "run-whole", cfg)

    class Interrupted(Exception):
        pass

    def stop_after_step_3(done, total):
        if done == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_autoencoder(tmp_path / "cut", tmp_path / "run-cut", cfg,
                          stage=lambda name, total: stop_after_step_3 if name == "train autoencoder" else None)
    summary = train_autoencoder(tmp_path / "cut", tmp_path / "run-cut", cfg, resume=True)
    assert summary["resumed_at"] == 2  # the last checkpoint before the interruption
    whole, cut = (load_file(str(tmp_path / p / "diffusion_pytorch_model.safetensors")) for p in ("whole", "cut"))
    assert all(torch.allclose(whole[k].float(), cut[k].float(), atol=1e-3) for k in whole)


def test_a_resume_with_other_options_is_refused(tally_cli, tmp_path):
    run = ("reference", "train-autoencoder", "--scenes", "16", "--batch", "2", "--out", str(tmp_path / "vae"))
    assert tally_cli(*run, "--steps", "2").returncode == 0
    result = tally_cli(*run, "--steps", "3", "--resume")
    assert result.returncode == 2 and "resume with the options of the interrupted run" in result.stderr


def test_train_t2i_builds_a_fresh_unet_of_the_widths_asked(tally_cli, tmp_path):
    out = tmp_path / "pipeline-wide"
    result = tally_cli("reference", "train-t2i", "--scenes", "16", "--unet-steps", "1", "--unet-batch", "2",
                       "--unet-channels", "16,32,48", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((out / "unet" / "config.json").read_text())["block_out_channels"] == [16, 32, 48]
    assert json.loads((out / "tally_reference.json").read_text())["training"]["config"]["unet_channels"] == [16, 32, 48]


@pytest.mark.parametrize("args, message", [(("--unet-channels", "48,96"), "three comma-separated widths"),
                                           (("--unet-channels", "40,80,160"), "multiple of 16"),
                                           (("--unet-channels", "48,96,192", "--train-further"), "keeps its widths")])
def test_train_t2i_refuses_unet_widths_it_cannot_build(tally_cli, args, message):
    result = tally_cli("reference", "train-t2i", *args)
    assert result.returncode == 2 and message in " ".join((result.stdout + result.stderr).split())


def test_training_a_generator_needs_no_service_configuration():
    """A bare GPU machine needs diffusers, not pydantic-settings or redis, to run ``train_t2i``."""
    code = ("import sys; sys.modules['pydantic'] = sys.modules['pydantic_settings'] = sys.modules['redis'] = None; "
            "from optimization.reference.t2i import train_t2i")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-2000:]


def test_train_t2i_refuses_an_unknown_variant(tally_cli):
    result = tally_cli("reference", "train-t2i", "--variant", "nope")
    assert result.returncode != 0 and "unknown variant 'nope'; known: reference, web" in result.stdout + result.stderr


def test_train_t2i_refuses_a_gap_at_which_twelve_shapes_would_not_fit(tally_cli):
    result = tally_cli("reference", "train-t2i", "--gap", "7")
    assert result.returncode == 2 and "--gap" in result.stdout + result.stderr


def test_a_crowd_weight_makes_scenes_of_six_and_more_that_much_likelier_and_one_keeps_the_uniform_draw():
    import numpy as np

    from optimization.reference.autoencoder import faithful_count

    rng = np.random.default_rng(1)
    counts = np.bincount([faithful_count(rng, 3.0) for _ in range(12_000)], minlength=13)[1:]  # counts 1-12
    assert counts[5:].mean() / counts[:5].mean() == pytest.approx(3.0, rel=0.1)
    rng = np.random.default_rng(2)
    assert [faithful_count(rng) for _ in range(50)] == list(np.random.default_rng(2).integers(1, 13, 50))


def test_crowd_from_moves_where_the_crowd_weight_starts():
    import numpy as np

    from optimization.reference.autoencoder import faithful_count

    rng = np.random.default_rng(3)
    counts = np.bincount([faithful_count(rng, 2.0, crowd_from=9) for _ in range(12_000)], minlength=13)[1:]
    assert counts[8:].mean() / counts[:8].mean() == pytest.approx(2.0, rel=0.1)
    assert counts[5:8].mean() / counts[:5].mean() == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize("options", [("--crowd-weight", "2"), ("--crowd-weight", "2", "--crowd-from", "9")])
def test_train_t2i_refuses_crowd_options_for_the_web_variant(tally_cli, options):
    result = tally_cli("reference", "train-t2i", "--variant", "web", *options)
    assert result.returncode == 2 and "web scenes keep their habitual counts" in result.stdout + result.stderr


def test_train_t2i_refuses_a_crowd_from_without_a_crowd_weight(tally_cli):
    result = tally_cli("reference", "train-t2i", "--crowd-from", "9")
    assert result.returncode == 2 and "give both" in result.stdout + result.stderr


@pytest.mark.parametrize("device, message", [("gpu", "expected cpu, cuda or cuda:N"),
                                             ("cuda:99", "cuda:99: this machine has")])
def test_train_t2i_refuses_a_device_torch_cannot_use_before_training(tally_cli, device, message):
    result = tally_cli("reference", "train-t2i", "--device", device)
    assert result.returncode == 2 and message in result.stdout + result.stderr


def test_self_samples_keep_only_images_the_detector_verifies_and_the_judge_counts_as_stated(t2i, counter):
    from optimization.counter import verify
    from optimization.prompts import object_in_prompt
    from optimization.reference.captions import NUMBER_NAMES
    from optimization.reference.crosscheck import judge
    from optimization.reference.self_samples import selected_samples

    images, captions, stats = selected_samples(t2i, counter, 32, seed=0)
    assert stats["drawn"] == 32 and stats["kept"] == len(images) == len(captions)
    assert 0 < len(images) < 32  # the generator is neither perfect nor hopeless: the filter chose
    for image, caption, detections in zip(images, captions, counter.detect(images.float() / 255)):
        judged = judge(image.permute(1, 2, 0).numpy())
        cls = object_in_prompt(caption, counter.classes)
        stated = {str(judged.count), NUMBER_NAMES[judged.count], *(("a", "an") if judged.count == 1 else ())}
        assert judged.clean and stated & set(caption.split()), caption  # exactly the number its caption states
        assert verify(detections, cls, judged.count, counter.config, judged.count).verified


def test_train_t2i_trains_further_on_its_own_selected_images(tally_cli, tmp_path):
    import shutil

    from optimization.reference import PIPELINE_PATH

    out = tmp_path / "pipeline"
    shutil.copytree(PIPELINE_PATH, out)
    result = tally_cli("reference", "train-t2i", "--train-further", "--self-samples", "16", "--scenes", "16",
                       "--unet-steps", "1", "--unet-batch", "4", "--lr", "1e-4", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    training = json.loads((out / "tally_reference.json").read_text())["training"]
    assert (training["config"]["unet_lr"], training["config"]["text_lr"]) == (1e-4, 5e-5)
    selected = training["self_samples"]
    assert selected["drawn"] == 16 and f"self-samples: {selected['kept']} of 16 kept" in result.stdout + result.stderr
    assert set(selected["kept_rate_per_count"]) <= {str(c) for c in range(1, 13)}

    result = tally_cli("reference", "train-t2i", "--self-samples", "16", "--out", str(tmp_path / "fresh"))
    assert result.returncode == 2 and "--train-further" in result.stderr
