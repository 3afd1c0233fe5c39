"""The web page's routes, in-process: ``/`` and its assets need no key and come from the API itself; ``/v1/me``
tells a client who its key is. The page's behaviour in a real browser: tests/test_browser.py."""

from __future__ import annotations

import re
import uuid

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from workers.auth import KeyStore
from workers.settings import Settings


@pytest.fixture
def secured(redis_url, tmp_path):
    """An API with auth required, and its key store."""
    settings = Settings(auth="required", redis_url=redis_url, redis_prefix=f"w{uuid.uuid4().hex[:8]}",
                        runtime_dir=tmp_path / "runtime", token_dir=tmp_path / "tokens")
    keys = KeyStore(redis.Redis.from_url(redis_url), settings)
    with TestClient(create_app(settings)) as client:
        yield client, keys


def test_the_page_and_its_assets_need_no_key_and_come_from_the_api_itself(secured):
    api, _ = secured
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text
    assets = re.findall(r"""(?:src|href)\s*=\s*["'](web/[^"']+)["']""", page.text)
    assert {"web/app.js", "web/style.css"} <= set(assets)
    scripts = ["web/app.js"]
    for script in scripts:  # and the modules they import
        source = api.get("/" + script).text.replace('"http://www.w3.org/2000/svg"', "")  # a name, not a URL
        assert "http://" not in source and "https://" not in source, script
        scripts += [f"web/{m}" for m in re.findall(r"""from\s+["']\./([\w.]+\.js)["']""", source) if f"web/{m}" not in scripts]
    assert {"web/api.js", "web/chart.js"} <= set(scripts)
    for asset in set(assets + scripts):
        response = api.get("/" + asset)
        assert response.status_code == 200 and response.content, asset
    script = api.get("/web/app.js")
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert script.headers["cache-control"] == "no-cache"  # revalidated: never last version's modules
    assert api.get("/v1/jobs").status_code == 401  # the page is public, the API behind it is not


def test_the_page_is_not_in_the_openapi_document(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not [p for p in paths if p.startswith("/web")]


def test_me_with_auth_off_is_an_admin_owner_named_by_the_key(api):
    me = api.get("/v1/me").json()
    assert me.pop("webhook_secret").startswith("whsec_")
    assert me == {"owner": "anonymous", "scope": "admin", "name": None, "auth": "off"}
    mine = api.get("/v1/me", headers={"X-API-Key": "mine"}).json()
    assert mine["owner"].startswith("key-") and mine["auth"] == "off"


def test_me_names_the_calling_key_and_its_scope(secured):
    api, keys = secured
    secret, key = keys.create("browser", scope="user")
    me = api.get("/v1/me", headers={"Authorization": f"Bearer {secret}"})
    assert me.status_code == 200
    assert me.json() == {"owner": key.owner, "scope": "user", "name": "browser", "auth": "required",
                         "webhook_secret": me.json()["webhook_secret"]}
    assert me.json()["webhook_secret"].startswith("whsec_")
    refused = api.get("/v1/me")
    assert refused.status_code == 401 and refused.json()["code"] == "unauthorized"
