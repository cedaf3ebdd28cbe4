"""Hostile YAML (alias bombs, cycles, deep nesting) is refused with file:line, in bounded memory and time.

Each load runs in a child process capped by RLIMIT_AS, so a regression fails the test (MemoryError, a traceback)
instead of taking the machine's memory with it.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ADDRESS_SPACE_CAP = 1 << 30  # the loader's process needs ~240 MB of address space; the unbounded bomb needs ~11 GB
REPO = Path(__file__).resolve().parents[1]


def alias_bomb(kind: str) -> str:
    """~500 bytes whose tree has 9^9 leaves: each level lists the previous one nine times."""
    names = "abcdefghi"
    lines = [f"kind: {kind}", "name: bomb", f"x0: &a [{', '.join(['lol'] * 9)}]"]
    for level in range(1, len(names)):
        lines.append(f"x{level}: &{names[level]} [{', '.join([f'*{names[level - 1]}'] * 9)}]")
    return "\n".join(lines) + "\n"


def load_in_capped_child(loader: str, path: Path) -> dict:
    """Run `loader([path])` in a child limited to ADDRESS_SPACE_CAP; its outcome as a dict."""
    child = textwrap.dedent(f"""
        import json, resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE_CAP}, {ADDRESS_SPACE_CAP}))
        from rules_engine.spec import SpecError
        from {loader.rpartition('.')[0]} import {loader.rpartition('.')[2]} as load
        try:
            load([{str(path)!r}])
            outcome = {{"loaded": True}}
        except SpecError as error:
            outcome = {{"problems": [str(p) for p in error.problems]}}
        # VmHWM is this process image's own peak; ru_maxrss would start at the forking pytest process's size.
        with open("/proc/self/status") as status:
            outcome["peak_rss_kb"] = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
        print(json.dumps(outcome))
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("kind, loader", [("RulePack", "rules_engine.spec.load_ruleset"),
                                          ("Playbook", "rules_engine.playbooks.runtime.load_playbooks")])
def test_an_alias_bomb_is_refused_at_its_line_in_bounded_memory(tmp_path, kind, loader):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(kind))
    assert len(path.read_bytes()) < 600
    outcome = load_in_capped_child(loader, path)
    assert outcome["peak_rss_kb"] < 400_000
    [problem] = outcome["problems"]
    assert problem.startswith(f"{path}:7: ") and "aliases expand to more than" in problem


@pytest.mark.parametrize("text, line, message", [
    ("[" * 3000 + "\n", 1, "nesting deeper than 64 levels"),
    ("kind: RulePack\nname: x\nrules: &a [*a]\n", 3, "alias *a refers to a node that contains it"),
    # each alias is small, but together they nest far past the limit
    ("kind: RulePack\nname: x\n" + "".join(f"x{i}: &a{i} {'[' * 40}{f'*a{i - 1}' if i else '1'}{']' * 40}\n"
                                           for i in range(5)), 4, "alias *a0 nests deeper than 64 levels"),
])
def test_cycles_and_deep_nesting_are_errors_not_tracebacks(tmp_path, text, line, message):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    [problem] = load_in_capped_child("rules_engine.spec.load_ruleset", path)["problems"]
    assert problem.startswith(f"{path}:{line}: ") and message in problem


def test_aliases_within_the_budget_still_load(tmp_path):
    path = tmp_path / "pack.yaml"
    path.write_text(textwrap.dedent("""\
        kind: RulePack
        name: shared
        defaults: &defaults {for: 5m, severity: low}
        rules:
          - name: Waiting
            category: queue_buildup
            signal: vllm:num_requests_waiting
            above: 10
            <<: *defaults
          - name: Running
            category: batch_size_suboptimal
            signal: vllm:num_requests_running
            below: 1
            <<: *defaults
    """))
    assert load_in_capped_child("rules_engine.spec.load_ruleset", path).get("loaded")
