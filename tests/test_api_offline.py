"""Offline docs and no leaks: /docs and /redoc load every asset from the API itself, /v1/models shows no
server paths, and images come as PNG, JPEG or WEBP. In this process (TestClient) with a private Redis."""

from __future__ import annotations

import io
import re
import uuid

import pytest
from PIL import Image

from service.images import FORMATS, MEDIA_TYPES, convert
from service.routes.models import public_source






@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_pages_load_every_asset_from_the_api_itself(api, page):
    response = api.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "cdn" not in html.lower() and "https://" not in html and "http://" not in html
    assert "img-src 'self' data:;" in response.headers["content-security-policy"]  # their scripts fetch no logo
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    assert any(a.endswith(".js") for a in assets), assets
    for asset in assets:
        assert asset.startswith("/"), asset
        got = api.get(asset)
        assert got.status_code == 200 and got.content, asset
    spec = re.search(r"""(?:url:|spec-url=)\s*["']([^"']+)["']""", html).group(1)
    assert api.get(spec).json()["info"]["title"] == "Tally"


def test_swagger_ui_reads_openapi_3_1(api):
    """FastAPI writes OpenAPI 3.1; Swagger UI before 5 refuses it ("Unable to render this definition")."""
    assert api.get("/openapi.json").json()["openapi"].startswith("3.1")
    js = re.search(r"""src\s*=\s*["']([^"']*swagger-ui-bundle\.js)["']""", api.get("/docs").text).group(1)
    assert re.search(r'"5\.\d+\.\d+"', api.get(js).text), "Swagger UI 5 or later is needed for OpenAPI 3.1"


def test_doc_pages_are_not_in_the_schema(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc", "/static"))]


def test_models_show_no_server_paths(api, settings):
    for model, shown in zip(settings.models, api.get("/v1/models").json(), strict=True):
        assert model.pipeline.startswith("/") and model.detector.startswith("/")  # the reference models' own paths
        assert shown["pipeline"] == model.pipeline.rsplit("/", 1)[-1] in ("pipeline", "pipeline-web")
        assert shown["detector"] == model.detector.rsplit("/", 1)[-1]
        strings = [v for v in shown.values() if isinstance(v, str)] + [
            s for v in shown.values() if isinstance(v, list) for s in v if isinstance(s, str)]
        assert not [s for s in strings if "/" in s], shown
    assert "/" not in api.get("/v1/models").text.replace("\\/", "")


@pytest.mark.parametrize("configured, shown", [
    ("stabilityai/sdxl-turbo", "stabilityai/sdxl-turbo"),
    ("yolo11n.pt", "yolo11n.pt"),
    ("/srv/models/sdxl/", "sdxl"),
    ("/models/yolo11x.pt", "yolo11x.pt"),
    ("./weights/detector.pt", "detector.pt"),
    ("~/models/pipeline", "pipeline"),
    ("../models/pipeline", "pipeline"),
    ("C:\\models\\detector.pt", "detector.pt"),
    ("https://example.com/private/detector.pt", "detector.pt"),
])
def test_public_source_keeps_hub_ids_and_only_the_name_of_paths(configured, shown):
    assert public_source(configured) == shown


def _png(size=(40, 24), mode="RGB") -> bytes:
    color = {"RGB": (200, 30, 30), "RGBA": (200, 30, 30, 128), "L": 200}[mode]
    image = Image.new(mode, size, color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_convert_reencodes_the_png_at_the_same_size(fmt, mode):
    png = _png(mode=mode)
    out = convert(png, fmt)
    image = Image.open(io.BytesIO(out))
    image.load()
    assert image.format == fmt.upper() and image.size == (40, 24)
    assert MEDIA_TYPES[fmt] == Image.MIME[image.format]
    if fmt == "png":
        assert out == png
    before = Image.open(io.BytesIO(png)).convert("RGB").getpixel((5, 5))
    after = image.convert("RGB").getpixel((5, 5))
    assert max(abs(a - b) for a, b in zip(before, after)) < 12, (before, after)


def test_convert_refuses_an_unknown_format():
    with pytest.raises(ValueError, match="png, jpeg, webp"):
        convert(_png(), "gif")


def test_unknown_image_format_is_422_naming_the_allowed_ones(api):
    response = api.get("/v1/jobs/whatever/images/0", params={"format": "gif"})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid_request"
    assert "format" in body["message"] and all(f"'{f}'" in body["message"] for f in FORMATS), body
    for fmt in FORMATS:  # a known format gets past validation to the 404
        assert api.get("/v1/jobs/whatever/images/0", params={"format": fmt, "boxes": True}).status_code == 404


def test_the_schema_lists_the_image_formats(api):
    operation = api.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/images/{n}"]["get"]
    [param] = [p for p in operation["parameters"] if p["name"] == "format"]
    assert param["schema"]["enum"] == list(FORMATS) and param["schema"]["default"] == "png"
    assert set(operation["responses"]["200"]["content"]) == set(MEDIA_TYPES.values())


@pytest.mark.parametrize("boxes", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_the_image_route_serves_each_format_with_its_media_type(api, monkeypatch, fmt, boxes):
    """The stored image comes from a stand-in for ``user_jobs.image_png`` (no worker, nothing written to Redis)."""
    from workers import records, user_jobs

    png = _png()
    monkeypatch.setattr(user_jobs, "image_png", lambda connection, settings, job_id, n, owner: png)
    monkeypatch.setattr(records, "job_record",
                        lambda connection, settings, job_id, owner: {"results": [{"boxes": [[2, 2, 10, 10]]}]})
    params = {"boxes": boxes} | ({} if fmt == "png" else {"format": fmt})
    response = api.get(f"/v1/jobs/{uuid.uuid4().hex}/images/0", params=params)  # ids out of format are 404
    assert response.status_code == 200 and response.headers["content-type"] == MEDIA_TYPES[fmt]
    image = Image.open(io.BytesIO(response.content))
    assert image.format == fmt.upper() and image.size == ((160, 96) if boxes else (40, 24))
    if fmt == "png" and not boxes:
        assert response.content == png
