"""The rule spec: YAML models and the loader that turns files into a RuleSet (errors carry file:line)."""
from rules_engine.spec.loader import Problem, RuleSet, SpecError, load_ruleset
from rules_engine.spec.models import RulePack, ThresholdRule, format_duration, parse_duration

__all__ = ["Problem", "RuleSet", "SpecError", "load_ruleset", "RulePack", "ThresholdRule", "format_duration", "parse_duration"]
