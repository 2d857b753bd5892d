"""The registry's HTTP calls against a local HTTP server that answers as a ccompat registry does, errors
included: retries on a retriable answer, failover to the next URL, error bodies with and without a
ccompat code, basic auth and the paths and bodies sent."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from schemas.registry import RegistryUnavailable, SchemaNotFound, classify
from schemas.rest import RegistryHTTPError, RegistryRest, RegistryTransportError, rest_config
from tests.schemas.test_registry import closed_port_url


class Answers:
    """A registry stand-in's script: each request takes the next ``(status, body)``; every request is kept."""

    def __init__(self, *answers: tuple[int, object]) -> None:
        self.answers = list(answers)
        self.seen: list[dict] = []


@pytest.fixture
def server():
    started = []

    def start(answers: Answers) -> str:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                answers.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                     "body": json.loads(self.rfile.read(length)) if length else None})
                status, body = answers.answers.pop(0)
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/apis/ccompat/v7"

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def test_a_retriable_answer_is_asked_again_and_the_schema_is_returned(server):
    answers = Answers((503, {"error_code": 50301, "message": "busy"}), (200, {"schema": '"string"'}))
    rest = RegistryRest(rest_config(server(answers), timeout_s=2, retries=1))
    assert rest.get_schema(7) == ("AVRO", '"string"')
    assert [seen["path"] for seen in answers.seen] == ["/apis/ccompat/v7/schemas/ids/7"] * 2


def test_retries_end_with_the_last_answer_which_classifies_as_unavailable(server):
    answers = Answers(*[(503, {"error_code": 50301, "message": "busy"})] * 3)
    url = server(answers)
    with pytest.raises(RegistryHTTPError) as info:
        RegistryRest(rest_config(url, retries=2)).get_schema(7)
    assert (info.value.http_status_code, info.value.error_code, len(answers.seen)) == (503, 50301, 3)
    assert isinstance(classify(info.value, url, "looking up schema id 7", 7), RegistryUnavailable)


def test_a_not_found_answer_is_not_retried_and_classifies_as_schema_not_found(server):
    answers = Answers((404, {"error_code": 40403, "message": "Schema 7 not found"}))
    url = server(answers)
    with pytest.raises(RegistryHTTPError) as info:
        RegistryRest(rest_config(url, retries=3)).get_schema(7)
    assert len(answers.seen) == 1 and info.value.error_code == 40403
    assert isinstance(classify(info.value, url, "looking up schema id 7", 7), SchemaNotFound)


def test_an_answer_without_a_ccompat_body_has_error_code_minus_one(server):
    url = server(Answers((404, b"<html>not here</html>")))
    with pytest.raises(RegistryHTTPError) as info:
        RegistryRest(rest_config(url)).register_schema("x-value", '"string"')
    assert info.value.error_code == -1 and "<html>" in info.value.error_message


def test_an_unreachable_first_url_fails_over_to_the_next(server):
    answers = Answers((200, {"id": 42}))
    rest = RegistryRest(rest_config(f"{closed_port_url()},{server(answers)}", retries=0))
    assert rest.register_schema("a/b-value", '"string"') == 42
    assert answers.seen[0]["path"] == "/apis/ccompat/v7/subjects/a%2Fb-value/versions?normalize=False"
    assert answers.seen[0]["body"] == {"schema": '"string"'}


def test_no_answer_at_all_is_a_transport_error():
    with pytest.raises(RegistryTransportError):
        RegistryRest(rest_config(closed_port_url(), retries=1)).get_schema(1)


def test_credentials_go_in_the_header_and_never_in_the_request_line(server):
    answers = Answers((200, {"compatibility": "BACKWARD"}))
    url = server(answers).replace("http://", "http://svc:p%3Aw@")
    rest = RegistryRest(rest_config(url))
    assert rest.config.auth == ("svc", "p:w") and all("p%3Aw" not in base for base in rest.config.base_urls)
    rest.set_compatibility("x-value", "backward")
    seen = answers.seen[0]
    assert (seen["method"], seen["path"], seen["body"]) == ("PUT", "/apis/ccompat/v7/config/x-value",
                                                           {"compatibility": "BACKWARD"})
    assert seen["headers"]["Authorization"] == "Basic c3ZjOnA6dw=="  # base64 of svc:p:w


def test_an_address_that_is_not_http_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="not an http:// or https:// address"):
        rest_config("127.0.0.1:8081")
