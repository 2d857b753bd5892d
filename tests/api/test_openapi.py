"""GET /openapi.json describes every route, and the live API answers as it says: schemathesis generates
requests for every operation (valid and invalid data, an admin token, a user's token, a bad token, none)
against a real `herald api`; no answer may be a 5xx, and every status, content type and body must be
documented. A caller's mistake is a 4xx in the contract's error shape."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.openapi import DOCUMENT
from herald.settings import Settings
from herald.topics import ensure_topics, register_schemas
from infra import postgres
from infra.common import REPO_ROOT
from tests.api.live import SECRET, bearer
from tests.conftest import free_port

pytestmark = pytest.mark.integration

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection, ignored_auth]


def test_every_route_is_described():
    app = create_app(Settings(jwt_secret=SECRET))
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    described = {(method, path) for path, ops in DOCUMENT["paths"].items() for method in ops}
    assert routes == described
    assert DOCUMENT["openapi"].startswith("3.1")


@pytest.fixture(scope="module")
def live_api(stack, tmp_path_factory):
    postgres.migrate()
    prefix = f"oas{os.getpid()}."
    ensure_topics(Settings.from_env(topic_prefix=prefix, partitions=1))
    register_schemas(Settings.from_env(topic_prefix=prefix))
    port = free_port()
    log = tmp_path_factory.mktemp("openapi") / "api.log"
    env = {**os.environ, "HERALD_API_PORT": str(port), "HERALD_JWT_SECRET": SECRET, "HERALD_API_WORKERS": "1",
           "HERALD_TOPIC_PREFIX": prefix}
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "api"], cwd=REPO_ROOT, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/readyz", timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    yield base
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    text = log.read_text()
    assert "Traceback" not in text, text[-5000:]  # a 5xx would have logged one


TOKENS = {"admin": bearer("ops", admin=True), "user": bearer("schemathesis-user"),
          "bad": {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.bad"}}


def test_the_live_api_answers_as_described(live_api):
    """Every operation, positive and negative data, each token; hypothesis shrinks any failure to one request.
    (Through schemathesis's Python API: its pytest plugin does not run under pytest 9.)"""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(f"{live_api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}  # schemathesis leaves out the document it was loaded from
    assert labels == {f"{m.upper()} {p}" for p, ops in DOCUMENT["paths"].items() for m in ops} - {"GET /openapi.json"}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @hsettings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                       database=None)
            def check(case) -> None:
                for headers in TOKENS.values():
                    case.call_and_validate(base_url=live_api, headers=headers, checks=CHECKS)

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body): positive data covered it
                assert mode == GenerationMode.NEGATIVE, operation.label
    metrics = urllib.request.urlopen(f"{live_api}/metrics", timeout=10).read().decode()
    seen = {m[1] for m in re.finditer(r'^herald_api_requests_total\{(route=".*",status="\d+")\} ', metrics, re.M)}
    for route, status in (("/v1/users/{user_id}/preferences", 200), ("/v1/users/{user_id}/preferences", 422),
                          ("/v1/users/{user_id}/contacts", 200), ("/v1/users/{user_id}/contacts", 422),
                          ("/v1/users/{user_id}/notifications", 200), ("/v1/users/{user_id}/notifications", 400),
                          ("/v1/users/{user_id}/stream", 426), ("/v1/users/{user_id}/unread-count", 403),
                          ("/v1/users/{user_id}/unread-count", 401)):
        assert f'route="{route}",status="{status}"' in seen, (route, status)  # the fuzzing reached it
    assert not [s for s in seen if 'status="5' in s], seen
