"""Kubernetes manifests of a study."""

from __future__ import annotations


class ManifestError(ValueError):
    """Manifests that cannot be rendered; the message names the value and the rule."""
