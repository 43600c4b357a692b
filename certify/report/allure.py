"""allure-pytest enrichment, active only when ``--alluredir`` is given and allure-pytest is installed: each
certification case gets labels (model, candidate, gate, framework, host, hardware markers as tags), its
verdict as the description, and its evidence record and charts as attachments."""

from __future__ import annotations

import json

import pytest

from certify.cases import Case
from certify.records import EvidenceRecord
from certify.verdict import GateResult


def enabled(config: pytest.Config) -> bool:
    return bool(config.pluginmanager.hasplugin("allure_pytest") and config.getoption("allure_report_dir", None))


def annotate(config: pytest.Config, case: Case, result: GateResult, record: EvidenceRecord) -> None:
    if not enabled(config):
        return
    import allure

    for name, value in (("model", case.model.name), ("candidate", case.candidate.name), ("gate", case.gate),
                        ("framework", case.candidate.framework), ("device", case.candidate.device),
                        ("host", str(record.get("host_fingerprint", "")))):
        allure.dynamic.label(name, value)
    allure.dynamic.tag(*case.markers())
    allure.dynamic.parent_suite(case.model.name)
    allure.dynamic.suite(case.gate)
    allure.dynamic.sub_suite(case.candidate.name)
    allure.dynamic.title(f"{case.gate}: {case.id}")
    allure.dynamic.description(result.message())
    allure.attach(json.dumps(record, indent=2, sort_keys=True, default=str), name="evidence",
                  attachment_type=allure.attachment_type.JSON)
    from certify.report.charts import gate_chart

    chart = gate_chart(record)
    if chart:
        allure.attach(chart, name=f"{case.gate} chart", attachment_type=allure.attachment_type.SVG)
