"""Explain the survivors of a mutmut run (tools/mutate.sh's report), for docs/reliability.md.

    .venv/bin/python mutation/survivors.py REPORT [--docs docs/reliability.md]

Each surviving mutant (and each one no selected test calls) gets the reason
of the first rule below that matches it: either it is equivalent (nothing a
user or a caller can observe changes), or it is checked by a test outside
the mutation run (named in the rule). A survivor no rule explains is listed
as unexplained and the exit status is 1: add a test that kills it, or a rule
that says why it cannot be killed. ``--docs`` rewrites the part of the page
between the ``<!-- mutation-survivors -->`` markers with the score and every
survivor, grouped by reason.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

START, END = "<!-- mutation-survivors -->", "<!-- /mutation-survivors -->"
_STRING = re.compile(r"""[rbfu]*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


@dataclass(frozen=True)
class Mutant:
    name: str  # mutmut's name: module.xǁClassǁmethod__mutmut_N or module.x_function__mutmut_N
    removed: tuple[str, ...]
    added: tuple[str, ...]

    @property
    def function(self) -> str:
        module, _, rest = self.name.partition(".x")
        rest = rest.rsplit("__mutmut_", 1)[0].lstrip("_ǁ").replace("ǁ", ".")
        return f"{module.removeprefix('wsgi_dbsession.')}.{rest}"

    @property
    def change(self) -> str:
        """The mutated line, before → after (the first changed line of the diff)."""
        before = self.removed[0] if self.removed else ""
        after = self.added[0] if self.added else "(removed)"
        return f"`{before}` → `{after}`"


@dataclass(frozen=True)
class Rule:
    reason: str
    function: str = ""  # regex on Mutant.function; empty: any
    removed: str = ""  # regex searched in the removed line(s)
    added: str = ""  # regex searched in the added line(s)
    message_only: bool = False  # only a string literal (or a message argument) changed

    def matches(self, mutant: Mutant) -> bool:
        if self.function and not re.search(self.function, mutant.function):
            return False
        if self.removed and not any(re.search(self.removed, line) for line in mutant.removed):
            return False
        if self.added and not any(re.search(self.added, line) for line in mutant.added):
            return False
        return not self.message_only or _message_only(mutant)


def _message_only(mutant: Mutant) -> bool:
    """Whether the mutation changes only the text of a log line or an error message."""
    if len(mutant.removed) != len(mutant.added) or not mutant.removed:
        return False
    for before, after in zip(mutant.removed, mutant.added, strict=True):
        if not re.search(r"\blog\.\w+\(|raise |Error\(|warn\(|^\"|^f\"", before):
            return False
        message_replaced = re.search(r"\(None[,)]|\(\s*\)", after) or after.count(",") < before.count(",")
        if _STRING.sub('""', before) != _STRING.sub('""', after) and not message_replaced:
            return False
    return True


WORDING = (
    "Equivalent: the wording of a log line or an error message. Tests match the fragments "
    "a user or an operator relies on (the key, the option, the cause), not every word."
)
RULES: list[Rule] = [
    Rule(WORDING, message_only=True),
]


def parse(report: str) -> list[Mutant]:
    mutants = []
    for block in re.split(r"^== ", report, flags=re.MULTILINE)[1:]:
        lines = block.splitlines()
        removed = tuple(line[1:].strip() for line in lines[1:] if line.startswith("-"))
        added = tuple(line[1:].strip() for line in lines[1:] if line.startswith("+"))
        mutants.append(Mutant(lines[0].strip(), removed, added))
    return mutants


def explain(mutants: list[Mutant]) -> tuple[dict[str, list[Mutant]], list[Mutant]]:
    explained: dict[str, list[Mutant]] = defaultdict(list)
    unexplained = []
    for mutant in mutants:
        rule = next((rule for rule in RULES if rule.matches(mutant)), None)
        if rule is None:
            unexplained.append(mutant)
        else:
            explained[rule.reason].append(mutant)
    return explained, unexplained


def markdown(header: str, explained: dict[str, list[Mutant]], unexplained: list[Mutant]) -> str:
    out = [header.strip(), ""]
    groups = list(explained.items())
    if unexplained:
        groups.append(("**Unexplained: a test is missing, or a rule.**", unexplained))
    for reason, found in groups:
        out += [f"<details><summary>{len(found)}: {reason}</summary>", ""]
        out += [f"- `{mutant.name}`: {mutant.change}" for mutant in found]
        out += ["", "</details>", ""]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("report", type=Path)
    parser.add_argument("--docs", type=Path, help="rewrite the survivors part of this page")
    args = parser.parse_args()
    text = args.report.read_text()
    header = text.split("\n\n", 1)[0]
    explained, unexplained = explain(parse(text))
    page = markdown("```\n" + header + "\n```", explained, unexplained)
    if args.docs:
        doc = args.docs.read_text()
        if START not in doc or END not in doc:
            print(f"{args.docs} has no {START} … {END} part", file=sys.stderr)
            return 2
        before, rest = doc.split(START, 1)
        args.docs.write_text(f"{before}{START}\n{page}\n{END}{rest.split(END, 1)[1]}")
    else:
        print(page)
    for mutant in unexplained:
        print(f"unexplained: {mutant.name}: {mutant.change}", file=sys.stderr)
    print(
        f"{sum(map(len, explained.values()))} survivors explained, {len(unexplained)} unexplained",
        file=sys.stderr,
    )
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
