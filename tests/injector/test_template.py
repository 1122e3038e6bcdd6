"""The chart's injection is the injector's: rendered from it, committed, never stale."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from intercept_proxy.injector import template, values
from intercept_proxy.injector.settings import InjectorSettings

CHART_FILE = Path(__file__).resolve().parents[2] / template.PATH


def test_the_charts_injection_is_rendered_from_the_injector():
    text = template.chart_template()
    if os.environ.get("UPDATE_GOLDEN"):
        CHART_FILE.write_text(text)
    assert CHART_FILE.read_text() == text, (
        f"{template.PATH} is stale: regenerate it with UPDATE_GOLDEN=1 (or "
        "python -m intercept_proxy.injector.template) and review the diff"
    )


def test_every_setting_reaches_the_chart():
    fields = {f.name for f in dataclasses.fields(InjectorSettings)}
    assert set(values.HELM_PARAMETERS) == fields


def test_a_setting_the_chart_cannot_express_is_an_error(monkeypatch):
    # The CA's path written into a longer string would be lost on the way into the chart.
    original = template.DOCUMENTS

    def leaky(s):
        return {"note": f"policy from {s.policy_config_map}"}

    monkeypatch.setattr(template, "DOCUMENTS", {**original, "leaky": leaky})
    with pytest.raises(template.TemplateError, match="policy_config_map"):
        template.chart_template()
