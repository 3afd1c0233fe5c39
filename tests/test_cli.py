"""The ``tally`` command, run in-process: results, one-line errors, and defaults shared with Settings."""

import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

from optimization.prompts import plural
from optimization.reference import CLASSES, MAX_COUNT


def _one_line_error(result, *fragments, status=2):
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_reference_info_json_names_the_shipped_weights(tally_cli):
    result = tally_cli("reference", "info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["classes"] == list(CLASSES) and info["image_size"] == 64
    assert info["pipeline"].endswith("pipeline") and info["detector"].endswith(".pt")


def test_generate_writes_images_with_detected_counts(tally_cli, tmp_path):
    result = tally_cli("generate", "--prompt", "a photo of green crosses", "--count", "4", "--num-images", "2",
                       "--seed", "3", "--out", str(tmp_path / "o"), "--json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["prompt"] == "a photo of 4 green crosses" and report["object"] == "cross"
    assert len(report["images"]) == 2 and report["policy"] == "resample"
    for image in report["images"]:
        assert isinstance(image["verified"], bool) and image["policy"] == "resample"
        assert (tmp_path / "o" / f"seed{image['seed']}.png").exists()
        assert (tmp_path / "o" / f"seed{image['seed']}-boxes.png").exists()
        assert image["detected_count"] == len(image["boxes"])


@pytest.mark.parametrize("args, fragments", [
    (["--prompt", "a photo of hexagons", "--count", "3"], ["no known object", "circle"]),
    (["--prompt", "a photo of things", "--object", "hexagon"], ["unknown object 'hexagon'", "triangle"]),
    (["--prompt", "a photo of circles", "--count", "0"], [f"between 1 and {MAX_COUNT}", "got 0"]),
    (["--prompt", "a photo of circles", "--count", str(MAX_COUNT + 1)], [f"between 1 and {MAX_COUNT}"]),
    (["--prompt", "a photo of circles", "--model", "./no-such-pipeline"], ["no configured model", "reference"]),
    (["--prompt", "a photo of circles", "--detector", "missing.pt"], ["detector weights not found"]),
    (["--prompt", "   "], ["prompt is empty"]),
    (["--prompt", "a photo of circles", "--budget-seconds", "0"], ["--budget-seconds"]),
])
def test_generate_rejects_bad_input_with_one_line(tally_cli, tmp_path, args, fragments):
    _one_line_error(tally_cli("generate", "--out", str(tmp_path / "o"), *args), *fragments)
    assert not (tmp_path / "o").exists()


def test_generate_without_count_reports_what_the_detector_sees(tally_cli, tmp_path):
    result = tally_cli("generate", "--prompt", "a photo of 3 red squares", "--num-images", "2", "--seed", "3",
                       "--out", str(tmp_path / "o"), "--json", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert [i["seed"] for i in report["images"]] == [3, 4] and report["object"] == "square"
    assert all(i["detected_count"] == len(i["boxes"]) for i in report["images"])


def test_generate_refuses_a_corrupt_token_file_and_writes_nothing(tally_cli, tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10" * 64)
    result = tally_cli("generate", "--prompt", "a photo of circles", "--count", "3", "--token",
                       str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "o"))
    _one_line_error(result, "corrupt")
    assert not (tmp_path / "o").exists()


def test_a_bug_is_one_line_with_exit_status_1_and_the_traceback_in_a_file(tally_cli, tmp_path, monkeypatch):
    from optimization.engine import CountEngine

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom inside the engine")

    monkeypatch.setattr(CountEngine, "generate", broken)
    result = tally_cli("generate", "--prompt", "a photo of circles", "--count", "3", "--out", str(tmp_path / "o"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]  # after the progress bar, one line says what broke
    assert line.startswith("internal error: RuntimeError: boom inside the engine")
    path = re.search(r"traceback in (\S+)\)", line)[1]
    assert "Traceback" in open(path).read() and "boom inside the engine" in open(path).read()


def test_optimize_refine_writes_a_token_file_and_not_the_library(tally_cli, tmp_path):
    out = tmp_path / "t.safetensors"
    result = tally_cli("optimize", "--object", "square", "--count", "6", "--mode", "refine", "--iterations", "2",
                       "--out", str(out), "--json", str(tmp_path / "o.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "o.json").read_text())
    assert report["key"].startswith("square-6-") and out.exists() and report["iterations"] <= 2
    assert not list((tmp_path / "runtime").glob("tokens/*.safetensors"))


def test_generate_rejects_a_file_as_output_folder(tally_cli, tmp_path):
    (tmp_path / "f").write_text("x")
    _one_line_error(tally_cli("generate", "--prompt", "circles", "--out", str(tmp_path / "f")), "is a file")


def _shown_default(help_text: str, option: str) -> str:
    """The ``[default: ...]`` of one option in typer's help table."""
    start = help_text.index(option + " ")
    following = re.search(r"│\s+(\*\s+)?--[a-z]", help_text[start + len(option):])
    block = help_text[start:start + len(option) + (following.start() if following else len(help_text))]
    return re.search(r"\[default: ([^\]]+)\]", block)[1]


def test_help_shows_the_defaults_settings_hold(tally_cli):
    from workers.settings import Settings

    settings = Settings()
    generate = tally_cli("generate", "--help").stdout
    for option, value in (("--budget-seconds", settings.default_budget.max_seconds),
                          ("--budget-candidates", settings.default_budget.max_candidates),
                          ("--budget-iterations", settings.default_budget.max_iterations)):
        assert _shown_default(generate, option) == str(value), option
    optimize = tally_cli("optimize", "--help").stdout
    for option, value in (("--iterations", settings.library.max_iterations),
                          ("--seeds-per-iteration", settings.library.seeds_per_iteration),
                          ("--validation-seeds", settings.library.validation_seeds)):
        assert _shown_default(optimize, option) == str(value), option


@pytest.mark.slow
def test_bench_detector_reports_json(tally_cli, tmp_path):
    from tally.benchmarks.detector import SIDES

    result = tally_cli("bench", "detector", "--scenes", "24", "--generated", "48", "--model", "reference",
                       "--out", str(tmp_path), "--json", str(tmp_path / "d.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["overall"]["n"] == 24 and set(report["overall"]) >= {"exact", "mae", "n"}
    assert set(report["per_count"]) <= {str(n) for n in range(1, MAX_COUNT + 1)}
    generated = report["generated"]["reference"]
    assert generated["images"] == len(CLASSES) * MAX_COUNT  # every class x counts 1..12
    for key in ("judge_clean_agreement", "other_class_rate", "verified_given_judge_exact"):
        assert 0 <= generated[key] <= 1
    assert 0 <= generated["detector_only"]["false_verified_rate"] <= 1
    priced = generated["presence_floors"]  # the same images' verdicts under each presence floor: lower refuses more
    assert list(priced) == ["none", "0.02", "0.05", "0.1"]
    assert priced["none"]["verified"] >= priced["0.1"]["verified"] >= priced["0.05"]["verified"] >= priced["0.02"]["verified"]
    split = generated["disagreements"]  # judge-clean images it counts otherwise, and how
    clean = round(generated["judge_clean_agreement"] * generated["judge_clean_images"])
    assert split["images"] == generated["judge_clean_images"] - clean
    assert split["under_made_up_by_ambiguous"] <= split["under"] <= 1 and 0 <= split["dots_only"] <= 1
    assert set(split["missed_shapes"]) <= {"ambiguous", "unclear", "other_class", "nothing"}  # never "confident"
    assert all(set(by_size) <= set(SIDES) for by_size in split["missed_shapes"].values())
    if split["images"]:
        assert Image.open(split["png"]).size[0] == 8 * 128  # a grid to look at, 8 wide


def test_the_detector_bench_says_what_became_of_each_shape_it_did_not_count():
    from optimization.reference.crosscheck import Judgement
    from tally.benchmarks.detector import missed_shapes

    seen = Judgement(count=4, clean=True, boxes=[(0, 0, 10, 10), (20, 20, 25, 25), (40, 40, 52, 51), (2, 40, 9, 47)],
                     whole=[True] * 4, areas=[100, 25, 132, 49])
    kinds = [((0.5, 0.2, 10.0, 10.4), "confident", "circle", 0.9),  # covers the first shape
             ((19.5, 20.0, 25.5, 25.0), "unclear", "unclear", 0.8),  # a 5 px dot called a fragment
             ((2.0, 40.0, 6.0, 47.0), "ambiguous", "circle", 0.3),  # most of the 7 px shape
             ((40.0, 40.0, 43.0, 43.0), "unclear", "unclear", 0.9)]  # too little of the 12 px one to be its
    assert missed_shapes(seen, kinds) == [("unclear", "5-6 px"), ("nothing", "9+ px"), ("ambiguous", "7-8 px")]


@pytest.mark.slow
def test_bench_engine_without_the_library_runs_token_policies_from_the_base_prompt(tally_cli, tmp_path):
    result = tally_cli("bench", "engine", "--no-library", "--policies", "resample,noise", "--counts", "9",
                       "--jobs-per-key", "1", "--budget-seconds", "2", "--budget-candidates", "2", "--no-configured",
                       "--model", "reference", "--out", str(tmp_path), "--json", str(tmp_path / "e.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["library"] is False and report["tokens"] == []  # nothing learned, nothing taken from a library
    assert set(report["detector_only"]["policies"]) == {"resample", "noise"} and report["verifier"] == "detector-only"
    assert report["default_policy"] in ("resample", "noise")


@pytest.mark.slow
def test_an_ad_hoc_reference_folder_samples_as_its_model_does(tally_cli):
    """A bench of ``--model FOLDER`` measures the weights as they are served: reference-web's folder samples at its
    own guidance, not the default model's (its figures were once measured at the other one's)."""
    from optimization.reference import PIPELINE_PATH, PIPELINE_WEB_PATH
    from optimization.reference.models import reference_model, reference_web_model
    from tally.cli.common import model_spec

    assert tally_cli("reference", "info").returncode == 0  # this test's runtime dir and Redis
    web, ref = model_spec(str(PIPELINE_WEB_PATH)), model_spec(str(PIPELINE_PATH))
    assert web.id == ref.id == "adhoc"
    sampler = lambda spec: (spec.guidance_scale, spec.guidance_rescale, spec.guidance_schedule)  # noqa: E731
    assert sampler(web) == sampler(reference_web_model()) and sampler(ref) == sampler(reference_model())
    assert web.guidance_scale != ref.guidance_scale
    assert web.crosscheck == ref.crosscheck == reference_model().crosscheck  # its shapes can be judged


@pytest.mark.slow
def test_an_ad_hoc_folder_with_a_sampler_no_model_could_have_is_refused(tally_cli, tmp_path):
    import shutil

    from optimization.errors import InvalidRequest
    from optimization.reference import PIPELINE_WEB_PATH, REFERENCE_CONFIG
    from tally.cli.common import model_spec

    assert tally_cli("reference", "info").returncode == 0  # this test's runtime dir and Redis
    folder = tmp_path / "pipeline"
    shutil.copytree(PIPELINE_WEB_PATH, folder)
    config = json.loads((folder / REFERENCE_CONFIG).read_text())
    config["sampler"]["guidance_schedule"] = [4.0, 1.0]  # too short, and 1 would unguide a guided batch
    (folder / REFERENCE_CONFIG).write_text(json.dumps(config))
    with pytest.raises(InvalidRequest, match="guidance_schedule needs 4 scales"):
        model_spec(str(folder))


@pytest.mark.slow
def test_bench_base_reports_json_and_pictures(tally_cli, tmp_path):
    result = tally_cli("bench", "base", "--seeds", "1", "--out", str(tmp_path / "b"), "--json", str(tmp_path / "b.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["overall"]["n"] == len(CLASSES) * MAX_COUNT
    assert sorted(report["per_count"], key=int) == [str(n) for n in range(1, MAX_COUNT + 1)]
    assert all(0 <= s["verified"] <= s["exact"] for s in report["per_count"].values())  # verified implies exact
    assert set(report["per_class"]) == set(CLASSES) and "verified" in report["per_class"]["circle"]["per_count"]["3"]
    cells = {f"{n} {plural(c)}": report["per_class"][c]["per_count"][str(n)]["verified"]
             for c in CLASSES for n in range(1, 11)}
    targets = report["targets"]  # how they are computed: test_the_base_targets_pool_images_and_name_the_worst_cell
    assert cells[targets["min_verified_cell"]] == targets["min_verified_cell_1_10"] == min(cells.values())
    assert targets["images_per_cell"] == 1 and 0 <= targets["crosscheck_exact_6_10"] <= 1
    assert 0 <= report["class_presence"] <= 1 and 0 <= report["detector_vs_crosscheck_agreement"] <= 1
    assert len(report["phrasings"]["prompts"]) == 20 and 0 <= report["phrasings"]["class_presence"] <= 1
    assert all(p["prompt"] != p["typed"] or p["typed"].count(" ") > 1 for p in report["phrasings"]["prompts"])
    assert set(report["drawable"]) == set(CLASSES) and all(0 <= d["clean_ge8_rate"] <= 1 for d in report["drawable"].values())
    assert Path(report["grid_png"]).name == "base_samples-reference.png" and Path(report["grid_png"]).exists()
    assert (tmp_path / "b" / "base_accuracy_per_count-reference.png").exists()


def test_the_base_targets_pool_images_and_name_the_worst_cell():
    from tally.benchmarks.base import targets

    verified = {"circle": {n: [True, n < 8] for n in range(1, 13)}, "cross": {n: [n != 9, False] for n in range(1, 13)}}
    drawn = {n: [True, True, n < 9, False] for n in range(1, 13)}
    result = targets(verified, drawn)
    assert result["verified_6_10"] == 0.55  # 11 of 20 images at 6..10 (7 circles, 4 crosses)
    assert result["verified_6_10_standard_error"] == round(math.sqrt(0.55 * 0.45 / 20), 4)
    assert (result["min_verified_cell_1_10"], result["min_verified_cell"], result["images_per_cell"]) == (0, "9 crosses", 2)
    assert result["crosscheck_exact_6_10"] == 0.65  # 13 of 20
    assert targets(verified, {})["crosscheck_exact_6_10"] is None  # a model with no cross-check


@pytest.mark.slow
def test_bench_autoencoder_reports_every_class_and_count(tally_cli, tmp_path):
    result = tally_cli("bench", "autoencoder", "--scenes", "1", "--out", str(tmp_path / "a"),
                       "--json", str(tmp_path / "a.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "a.json").read_text())
    assert set(report["per_class"]) == set(CLASSES)
    cells = [c for p in report["per_class"].values() for c in p["per_count"].values()]
    assert len(cells) == len(CLASSES) * MAX_COUNT and all(set(c) == {"verified", "crosscheck_exact"} for c in cells)
    assert Path(report["grid_png"]).exists()


@pytest.mark.slow
def test_bench_count_loss_reports_the_detectors_and_the_judges_error_per_iteration(tally_cli, tmp_path):
    result = tally_cli("bench", "count-loss", "--iterations", "1", "--eot", "0,2", "--out", str(tmp_path),
                       "--json", str(tmp_path / "c.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["cases"] == len(CLASSES) * 3 and set(report["settings"]) == {"plain", "eot2"}
    for setting in report["settings"].values():
        assert len(setting["detector_error"]) == len(setting["judge_error"]) == 2  # before and after one step
        # each figure is rounded to 3 decimals on its own: up to 0.0015 apart
        assert setting["judge_fall"] == pytest.approx(setting["judge_error"][0] - setting["judge_error"][-1], abs=2e-3)


def test_an_invalid_environment_is_one_line_naming_the_setting(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "TALLY_STORE": "ftp://nowhere", "TALLY_RUNTIME_DIR": str(tmp_path)}
    tally = str(Path(sys.executable).with_name("tally"))
    done = subprocess.run([tally, "tokens", "list"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: invalid configuration: TALLY_STORE:"), lines


@pytest.mark.slow
def test_bench_demo_sends_the_demos_requests_with_server_chosen_seeds(tally_cli, tmp_path):
    from tally.benchmarks.demo import DEMO_REQUESTS

    script = " ".join(Path("scripts/demo").read_text().replace("\\\n", " ").split())  # what the demo sends
    for request in DEMO_REQUESTS:
        assert f'--prompt "{request["prompt"]}" --count {request["count"]}' in script
        for option in ("model", "policy", "num_images"):
            if option in request:
                assert f"--{option.replace('_', '-')} {request[option]}" in script
    result = tally_cli("bench", "demo", "--runs", "2", "--out", str(tmp_path), "--json", str(tmp_path / "d.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "d.json").read_text())
    assert [r["model"] for r in report["requests"]] == ["reference", "reference-web"]
    for request in report["requests"]:
        assert request["jobs"] == 2 and len(set(request["seeds"])) == 2  # the server drew each job's seed
        assert request["images"] >= request.get("num_images", 1) * request["jobs_verified"]
        assert 0 <= request["false_verified"] <= request["images_verified"] <= request["images"]
    tiles = max(r.get("num_images", 1) for r in DEMO_REQUESTS) + 1  # a row a run: each request's images
    assert Image.open(report["pictures"][0]).width == tiles * 256


def test_the_cli_loads_torch_only_when_a_command_needs_it():
    """``tally worker`` sets OpenMP's wait policy before torch loads; importing the CLI must not load it first."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import sys, tally.cli; print('torch' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
