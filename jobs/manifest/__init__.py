"""Job manifests: the YAML a user submits, validated whole before any work starts.

`load_manifest` / `parse_manifest` give an InferenceManifest or a TrainingManifest by `kind`,
or raise ManifestError listing every problem with its field path. Modules: `common` (shared
bases, output, hash), `tasks` + `inference`, `training` (composes workers.training.config),
`load`, `errors`, `secrets`.
"""

from jobs.manifest.errors import FieldError, ManifestError
from jobs.manifest.inference import InferenceManifest
from jobs.manifest.load import Manifest, load_manifest, parse_manifest, parse_manifest_text
from jobs.manifest.training import TrainingManifest

__all__ = [
    "FieldError", "InferenceManifest", "Manifest", "ManifestError", "TrainingManifest",
    "load_manifest", "parse_manifest", "parse_manifest_text",
]
