"""Hugging Face's `kernels` distribution shares this package's import name (transformers
5.25 and later require it): importing edgechat beside it fails with a message that says so."""

import importlib.metadata

import pytest

import kernels


def test_hub_kernels_beside_edgechat_is_refused_by_name(monkeypatch):
    real_distribution = importlib.metadata.distribution

    def with_hub_kernels(name):
        if name == "kernels":
            return real_distribution("torch")  # any installed distribution stands in
        return real_distribution(name)

    monkeypatch.setattr(importlib.metadata, "distribution", with_hub_kernels)
    with pytest.raises(ImportError, match="pip uninstall kernels"):
        kernels.refuse_hub_kernels_distribution()


def test_this_environment_has_no_hub_kernels():
    kernels.refuse_hub_kernels_distribution()
