"""The ingress's bound on requests in flight (encore.serving.api.Admit): beyond it, 503 at once, never queued."""

from fastapi.testclient import TestClient

from encore.serving.api import Admission, create_app


def test_a_request_beyond_the_bound_is_answered_503_with_retry_after_and_the_bound_frees():
    admission = Admission(limit=2)
    app = create_app(admission=admission)

    @app.get("/v1/ping")
    async def ping() -> dict:
        return {"in_flight": admission.in_flight}

    client = TestClient(app)
    assert client.get("/v1/ping").json() == {"in_flight": 1}  # itself, counted while it runs
    admission.in_flight = 2  # two requests of other clients are being worked on
    refused = client.get("/v1/ping")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "overloaded" and error["request_id"] == refused.headers["X-Request-ID"]
    assert admission.in_flight == 2  # a refused request takes no slot
    admission.in_flight = 1
    assert client.get("/v1/ping").status_code == 200 and admission.in_flight == 1
