"""The manifest: what a stored model version is made of and how it came to be."""

import functools
import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import encore


@dataclass(frozen=True)
class Manifest:
    """Description of one model version, stored beside its files as ``MANIFEST.json``.

    Attributes
    ----------
    version : str
        Unique id, ``{kind}-{UTC timestamp}-{random hex}``.
    kind : str
        Model family, e.g. ``"popularity"``.
    config : dict
        Hyper-parameters and settings the model was trained with.
    metrics : dict
        Evaluation results.
    files : dict
        ``{relative_path: {"sha256": hex digest, "size": bytes}}`` for every stored file.
    data_fingerprint : str
        Identifies the training data.
    preprocessing : dict
        Settings a consumer must reproduce to use the model (id pseudonymisation key id,
        feature extractor version...); checked by ``ModelStore.load``.
    code_version : str
        ``encore.__version__``, plus ``+g<commit>`` when the code ran from a git checkout.
    created_at : str
        ISO-8601 UTC time of the save.
    """

    version: str
    kind: str
    config: dict
    metrics: dict
    files: dict[str, dict]
    data_fingerprint: str
    preprocessing: dict
    code_version: str
    created_at: str

    @property
    def total_size(self) -> int:
        """Bytes stored for this version, manifest excluded."""
        return sum(entry["size"] for entry in self.files.values())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        """Build a manifest from :meth:`to_dict` output; unknown keys are ignored, missing ones raise KeyError."""
        return cls(**{field.name: data[field.name] for field in fields(cls)})


@functools.cache
def code_version() -> str:
    """The package version, with the git commit of the checkout it runs from if there is one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return encore.__version__
    return f"{encore.__version__}+g{commit}"
