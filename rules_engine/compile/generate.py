"""The compile stage as one pipeline: RuleSet → every generated file, as text keyed by its path under the output dir.

Building the texts is pure (no I/O), so golden tests compare them directly and `write_outputs` is the only step
that touches the disk. Paths under the output directory:

    prometheus/<pack>.rules.yml          recording + alerting rules, one group per pack
    prometheus/slo-<service>.rules.yml   SLO recording rules and burn-rate alerts (Sloth-compatible names)
    tests/<pack>.test.yml                `promtool test rules` files (with --tests), also tests/slo-<name>.test.yml
    alertmanager/rules-engine.yml        route, receiver and inhibit rules to merge into alertmanager.yml
    grafana/dashboards/*.json            one dashboard per pack, one SLO overview
    grafana/provisioning/...             datasource and dashboard provisioning for Grafana
    NOT_COMPILED.md                      what could not be compiled, and why (only when something could not)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

import pandas as pd

from rules_engine.compile import alertmanager, grafana
from rules_engine.compile.prometheus import DEFAULT_INTERVAL, HEADER, CompiledPack, compile_pack
from rules_engine.compile.promtool_tests import pack_tests
from rules_engine.compile.render import dump_json, dump_yaml
from rules_engine.promql.kinds import RuleKind
from rules_engine.spec.loader import RuleSet


@dataclass(frozen=True)
class GenerateOptions:
    interval: pd.Timedelta = DEFAULT_INTERVAL
    tests: bool = False
    webhook_url: str = alertmanager.DEFAULT_WEBHOOK_URL
    token_file: str = alertmanager.DEFAULT_TOKEN_FILE
    datasource_url: str = grafana.DEFAULT_PROMETHEUS_URL
    # For Prometheus beside `rules-engine monitor`: leave out the alerting rules (and their tests) of what the
    # monitor evaluates by default (kinds and SLI types not exact in PromQL), keeping their recording rules.
    monitor: bool = False
    # Prefixed to relative runbook URLs (`docs/runbooks/vllm.md#...`), e.g. the repository's web address.
    runbook_base_url: str = ""


@dataclass
class Generated:
    files: dict[str, str] = field(default_factory=dict)  # relative path -> text
    notes: list[str] = field(default_factory=list)  # what could not be compiled or tested, and why
    packs: list[CompiledPack] = field(default_factory=list)


def compile_ruleset(ruleset: RuleSet, kinds: Mapping[str, RuleKind], interval: pd.Timedelta = DEFAULT_INTERVAL
                    ) -> list[CompiledPack]:
    return [compile_pack(pack, kinds, interval) for pack in ruleset.packs]


def generate(ruleset: RuleSet, kinds: Mapping[str, RuleKind], options: GenerateOptions = GenerateOptions()) -> Generated:
    """Every file, as text keyed by its path; `kinds` is the rule-kind registry (rules_engine.kinds.RULE_KINDS)."""
    ruleset = with_runbook_base(ruleset, options.runbook_base_url)
    generated = Generated()
    generated.packs = compile_ruleset(ruleset, kinds, options.interval)
    if options.monitor:
        for compiled in generated.packs:
            left_to_monitor = sorted({a.rule for a in compiled.alerts if not kinds[a.kind].exact_in_promql})
            compiled.alerts = [a for a in compiled.alerts if kinds[a.kind].exact_in_promql]
            generated.notes.extend(f"{compiled.pack.name}/{rule}: alerting rules left to `rules-engine monitor` "
                                   "(--monitor)" for rule in left_to_monitor)
    for compiled in generated.packs:
        name = compiled.pack.name
        rule_path = f"prometheus/{name}.rules.yml"
        generated.files[rule_path] = dump_yaml(compiled.as_dict(), HEADER.format(pack=name))
        generated.notes.extend(compiled.notes)
        if options.tests:
            documents, notes = pack_tests(compiled, f"../{rule_path}", kinds)
            for suffix, document in documents.items():
                file_name = f"{name}.{suffix}.test.yml" if suffix else f"{name}.test.yml"
                generated.files[f"tests/{file_name}"] = dump_yaml(document, HEADER.format(pack=name))
            generated.notes.extend(notes)

    slo_files, slo_notes = _slo_files(ruleset, options)
    generated.files.update(slo_files)
    generated.notes.extend(slo_notes)

    generated.files["alertmanager/rules-engine.yml"] = dump_yaml(
        alertmanager.fragment(ruleset, options.webhook_url, options.token_file), alertmanager.HEADER)
    for path, document in grafana.dashboards(generated.packs, ruleset, options.interval).items():
        generated.files[f"grafana/dashboards/{path}"] = dump_json(document)
    for path, text in grafana.provisioning(options.datasource_url).items():
        generated.files[f"grafana/provisioning/{path}"] = text
    if generated.notes:
        generated.files["NOT_COMPILED.md"] = _notes_text(generated.notes)
    return generated


def with_runbook_base(ruleset: RuleSet, base_url: str) -> RuleSet:
    """The rule set with `base_url` prefixed to every relative `runbook_url` of a rule or an SLO (absolute ones stay
    as written)."""
    if not base_url:
        return ruleset

    def joined(url: str) -> str:
        if not url or urlsplit(url).scheme:
            return url
        return base_url.rstrip("/") + "/" + url.lstrip("/")

    def rule_with_base(rule):
        notes = rule.annotations
        return rule.model_copy(update={"annotations": notes.model_copy(update={"runbook_url": joined(notes.runbook_url)})})

    packs = [pack.model_copy(update={"rules": [rule_with_base(rule) for rule in pack.rules]}) for pack in ruleset.packs]
    slos = [slo.model_copy(update={"runbook_url": joined(slo.runbook_url)}) for slo in ruleset.slos]
    return replace(ruleset, packs=packs, slos=slos)


def _slo_files(ruleset: RuleSet, options: GenerateOptions) -> tuple[dict[str, str], list[str]]:
    if not ruleset.slos:
        return {}, []
    try:
        from rules_engine.compile import slo
    except ImportError as error:  # the SLO compiler needs the SLO model
        return {}, [f"SLO: not compiled: {error}"]
    return slo.slo_files(ruleset, options)


def _notes_text(notes: list[str]) -> str:
    lines = ["# Not compiled, partly compiled, or not tested", "",
             "What `rules-engine generate` could not turn into Prometheus rules (or promtool tests), and why.",
             "`rules-engine evaluate` still evaluates all of it.", ""]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_outputs(generated: Generated, out_dir: str | Path) -> list[Path]:
    """Write every generated file under `out_dir`; files this run did not generate are left alone."""
    root = Path(out_dir)
    written = []
    for relative, text in sorted(generated.files.items()):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
