"""The reference world as model entries: the same ``ModelSpec`` a deployment writes for SDXL-Turbo.

What is particular to this world is configuration, not code paths: the sampler shipped beside the
weights, its four classes, the connected-components cross-check (it only understands these plain
backgrounds), and one library prompt per colour so a token learns the count rather than one phrasing.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ModelSpec, Policy, VerifyConfig
from . import COLOURS, MAX_COUNT, PIPELINE_PATH, PIPELINE_WEB_PATH, DETECTOR_PATH, CLASSES, shipped_fields
from .scenes import UNCLEAR

# Each model's default policy: the winner of `tally bench engine --model M` by the rule in
# ``optimization.policy.choose_default`` (detector-only verification; docs/measured.md, 2026-11-29).
MEASURED_DEFAULT: dict[str, Policy] = {"reference": Policy.resample, "reference-web": Policy.resample}
# Candidates per stated number before sampling restates it (``ModelSpec.restate_after``), by `tally bench engine`.
MEASURED_RESTATE: dict[str, int | None] = {"reference": 16, "reference-web": 16}
# The word restating states where a model draws too few even of the count (``ModelSpec.crowd_word``): asked for
# 9 to 12, `reference-web` draws five or six, asked for "many" crowds of 6 to 15 (docs/measured.md, "The engine").
MEASURED_CROWD_WORD: dict[str, str | None] = {"reference": None, "reference-web": "many"}
# The reference detector's confidence at which a shape counts as surely there (``VerifyConfig.verify_confidence``):
# at 0.5 rather than the default 0.7 it verifies more of the images the cross-check counts exactly, without
# verifying more falsely, on both models (`tally bench detector`, `tally bench engine`; docs/measured.md, "Detector").
MEASURED_VERIFY_CONFIDENCE = 0.5
# Whether the reference detector also reads the mirrored image (``VerifyConfig.mirrored_view``): it then agrees with
# the cross-check more often, verifies more of what it counts exactly and falsely less often, on both models
# (`tally bench detector`, `tally bench engine`; docs/measured.md, "Detector").
MEASURED_MIRRORED_VIEW = True
# Whether the reference detector refuses shapes it barely sees (``VerifyConfig.presence_floor``): at 0.1 (its NMS
# floor already) it refused 2 of 894 images it verified on `reference`, one of them its only false verification,
# and none the judge counts exactly; 1 of 355 on `reference-web` (`tally bench detector`, "presence_floors";
# docs/measured.md, "Shapes the detector barely sees").
MEASURED_PRESENCE_FLOOR = 0.1


def _spec(id_: str, pipeline: Path, default_policy: Policy | None, library_prompts: list[str]) -> ModelSpec:
    return ModelSpec(
        id=id_, pipeline=str(pipeline), detector=str(DETECTOR_PATH), classes=list(CLASSES), **shipped_fields(pipeline),
        max_count=MAX_COUNT, crosscheck="components",
        # every shape is confusable with every other: 2 of 3 images verified falsely at the default budget held
        # a shape of the class asked that the detector named another (false_verified-reference.png)
        verify=VerifyConfig(verify_confidence=MEASURED_VERIFY_CONFIDENCE, mirrored_view=MEASURED_MIRRORED_VIEW,
                            presence_floor=MEASURED_PRESENCE_FLOOR, doubt_classes=[UNCLEAR], confusable=[list(CLASSES)]),
        library_prompts=library_prompts, attribute_words=list(COLOURS),
        default_policy=default_policy, restate_after=MEASURED_RESTATE[id_],
        crowd_word=MEASURED_CROWD_WORD[id_])


def reference_model() -> ModelSpec:
    """The shipped reference pipeline and detector, verified by detector and cross-check."""
    return _spec("reference", PIPELINE_PATH, MEASURED_DEFAULT["reference"], ["a photo of {count} {attribute} {objects}"])


def reference_web_model() -> ModelSpec:
    """``reference-web``: trained on web-like captions (``captions``), so it miscounts large numbers the way
    real models do; same detector, classes and cross-check as ``reference``."""
    # Two of its caption shapes, each with "of" before the number: the token starts as that word everywhere.
    return _spec("reference-web", PIPELINE_WEB_PATH, MEASURED_DEFAULT["reference-web"], ["a photo of {count} {attribute} {objects}",
                                                            "a picture of {count} {attribute} {objects} on the table"])


def reference_models() -> list[ModelSpec]:
    return [reference_model(), reference_web_model()]
