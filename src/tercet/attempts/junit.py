"""Test outcomes from a pytest junit XML report (xunit1, which names each test's file).

Outcomes come from the report, never from pytest's console text: a test ID holding spaces or
brackets stays one ID. Where the report carries a `nodeid` property (the evaluation harness's
small plugin writes one), that is the ID; otherwise it is rebuilt from file + classname + name.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree

# What a test can end as. junit has no xpass (a non-strict one is a pass there); the ID plugin
# says so. A strict xpass is a failure.
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
# Which outcome wins when one ID is reported more than once (a failure then a teardown error).
_SEVERITY = {"passed": 0, "xpassed": 1, "skipped": 2, "xfailed": 3, "failed": 4, "error": 5}


def parse_junit(xml: bytes) -> dict[str, str]:
    """{node ID: outcome} from a pytest junit XML report (xunit1)."""
    return parse_junit_report(xml)[0]


def parse_junit_report(xml: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """The outcomes, and for each failed or errored test its message and traceback text."""
    root = ElementTree.fromstring(xml)
    outcomes: dict[str, str] = {}
    failures: dict[str, str] = {}
    for case in root.iter("testcase"):
        properties = {
            prop.get("name", ""): prop.get("value", "")
            for prop in case.iterfind("properties/property")
        }
        node = properties.get("nodeid") or node_id(
            case.get("file", ""), case.get("classname", ""), case.get("name", "")
        )
        outcome, detail = _outcome(case, properties)
        previous = outcomes.get(node)
        if previous is None or _SEVERITY[outcome] > _SEVERITY[previous]:
            outcomes[node] = outcome
        if detail:
            failures[node] = f"{failures[node]}\n\n{detail}" if node in failures else detail
    return outcomes, failures


def _outcome(case: ElementTree.Element, properties: dict[str, str]) -> tuple[str, str]:
    """A testcase element's outcome, and the failure text where it failed or errored."""
    found = "passed"
    details = []
    for child in case:
        if child.tag in ("failure", "error"):
            kind = "failed" if child.tag == "failure" else "error"
            if _SEVERITY[kind] > _SEVERITY[found]:
                found = kind
            message = child.get("message", "")
            text = (child.text or "").strip()
            details.append(text if message and message in text else f"{message}\n{text}".strip())
        elif child.tag == "skipped" and found == "passed":
            found = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
    if found == "passed" and properties.get("outcome") == "xpassed":
        found = "xpassed"
    return found, "\n\n".join(details)


def node_id(file: str, classname: str, name: str) -> str:
    """A pytest node ID rebuilt from an xunit1 testcase: classname is the test file's dotted
    path then its classes; `file` says where the path ends. (The file of a test inherited from
    another module names that module: then the dotted path is split before its first
    capitalised part, pytest's class naming.)"""
    if not classname:  # a collection error: `name` is the dotted module
        return file or name
    module = re.sub(r"\.py$", "", file.replace("/", "."))
    if file and (classname == module or classname.startswith(module + ".")):
        path, classes = file, classname[len(module) :].lstrip(".")
    else:
        parts = classname.split(".")
        split = next((i for i, part in enumerate(parts) if i and part[:1].isupper()), len(parts))
        path = "/".join(parts[:split]) + ".py"
        classes = ".".join(parts[split:])
    return "::".join([path, *(classes.split(".") if classes else []), name])
