"""The Serve application's arguments: validated before anything is deployed, with their defaults in one place."""

import inspect
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from encore.serving.config import ServeAppArgs
from encore.store import DEFAULT_STORE_URI

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args, field",
    [
        ({"poll_seconds": "soon"}, "poll_seconds"),
        ({"max_concurrent_uploads": 0}, "max_concurrent_uploads"),
        ({"traffic_split": {"production": 0}}, "traffic_split"),
        ({"dashboard_url": "javascript:alert(1)"}, "dashboard_url"),
        ({"pol_seconds": 1}, "pol_seconds"),  # misspelt: refused rather than ignored
    ],
)
def test_an_invalid_argument_is_refused_by_name(args, field):
    with pytest.raises(ValidationError) as refused:
        ServeAppArgs.model_validate(args)
    assert [error["loc"][0] for error in refused.value.errors()] == [field]


def test_defaults_come_from_the_model():
    args = ServeAppArgs()
    assert args.store_uri == str(Path(DEFAULT_STORE_URI).resolve())
    assert args.traffic_split == {"production": 1}
    assert args.max_upload_bytes == 20_000_000
    assert args.served_aliases == ["composer-production", "genre-production", "production", "soundalike-production"]
    assert ServeAppArgs(store_uri="s3://models/encore").store_uri == "s3://models/encore"


def test_the_deployed_configurations_are_valid():
    reference = yaml.safe_load((REPO / "serve_apps" / "config.yaml").read_text())
    kubernetes = yaml.safe_load_all((REPO / "infra" / "k8s" / "rayservice.yaml").read_text())
    service = next(doc for doc in kubernetes if doc and doc.get("kind") == "RayService")
    applications = reference["applications"] + yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    for application in applications:
        ServeAppArgs.model_validate(application.get("args", {}))


def test_serve_validates_the_builders_arguments_into_the_model():
    """Serve converts ``args`` to the pydantic model the builder's one parameter is annotated with."""
    from serve_apps.app import app_builder

    (parameter,) = inspect.signature(app_builder).parameters.values()
    assert parameter.annotation is ServeAppArgs
