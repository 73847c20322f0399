"""The policy as data: defaults, what files may say, and clear errors for what they may not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tercet.guard import Policy, PolicyError, Source
from tercet.guard.policy import POLICIES_DIR


def test_an_empty_policy_has_the_documented_defaults() -> None:
    policy = Policy.from_dict({})
    assert [k for k, v in policy.trust.items() if v] == ["user", "system", "operator"]
    assert policy.unclassed_tools == "side_effecting"
    assert (policy.data_flow.action, policy.data_flow.min_length) == ("deny", 4)
    [recipients] = policy.allow_lists
    assert recipients.name == "recipients" and not recipients.enforced
    assert recipients.arguments == ("recipient*", "to", "cc", "bcc")
    assert (policy.strict.enabled, policy.strict.action) == (False, "ask")
    assert (policy.detector.rules, policy.detector.action) == (True, "log")
    assert policy.spotlight == "off"


def test_the_shipped_default_policy_loads_by_name() -> None:
    policy = Policy.resolve("default")
    assert policy == Policy.default()
    assert policy.where == str(POLICIES_DIR / "default.toml")
    # The editor is followed for the identifiers it writes, not skipped.
    assert "str_replace_based_edit_tool" not in policy.data_flow.skip_tools
    assert {"new_str", "file_text"} <= set(policy.data_flow.identifiers_only)


def test_trust_follows_kind_source_and_trusted_files() -> None:
    policy = Policy.from_dict({"trust": {"mcp": True, "trusted_files": ["docs/*.md", "/etc/*"]}})
    assert policy.trusts(Source("user")) and policy.trusts(Source("mcp", "github"))
    assert not policy.trusts(Source("tool", "bash"))
    assert policy.trusts(Source("tool", "bash", trusted=True))  # the source's own word wins
    assert not policy.trusts(Source("user", trusted=False))
    assert policy.trusts(Source("file", "/home/me/project/docs/guide.md"))
    assert policy.trusts(Source("file", "docs/guide.md"))
    assert not policy.trusts(Source("file", "/home/me/project/README.md"))
    assert policy.trusts(Source("file", "/etc/hosts"))
    assert not policy.trusts(Source("file", "/home/me/etc/hosts"))  # absolute: anchored


def test_tool_classes_config_wins_over_hints_and_unknown_is_side_effecting() -> None:
    policy = Policy.from_dict(
        {"tools": {"read_only": ["get_*", "mcp__docs__*"], "side_effecting": ["get_and_delete"]}}
    )
    assert policy.is_read_only("get_balance")
    assert policy.is_read_only("get_balance", hint=False)  # configuration over the tool's word
    assert not policy.is_read_only("get_and_delete", hint=True)  # side_effecting wins
    assert policy.is_read_only("search", hint=True)
    assert not policy.is_read_only("search", hint=False)
    assert not policy.is_read_only("send_money")  # nobody classed it: fail safe
    assert Policy.from_dict({"tools": {"default": "read_only"}}).is_read_only("send_money")


def test_allow_lists_take_defaults_by_name_and_an_extract_kind() -> None:
    policy = Policy.from_dict(
        {
            "allow": {
                "domains": {"values": ["*.python.org"], "extract": "domain", "action": "ask"},
                "channels": {"arguments": ["channel"], "values": ["general"]},
            }
        }
    )
    domains, channels = policy.allow_lists
    assert "command" in domains.arguments and domains.extract == "domain"
    assert domains.action == "ask" and domains.permits("docs.PYTHON.org")
    assert not domains.permits("python.org.evil.com")
    assert channels.arguments == ("channel",) and channels.action == "deny"


@pytest.mark.parametrize(
    ("data", "key", "problem"),
    [
        ({"trust": {"tools": False}}, "trust.tools", "unknown key; known: user,"),
        ({"trsut": {}}, "trsut", "unknown key"),
        ({"trust": {"tool": "no"}}, "trust.tool", "must be true or false, not a string ('no')"),
        ({"trust": []}, "trust", "must be a table ([trust]), not a list"),
        ({"data_flow": {"action": "block"}}, "data_flow.action", "'deny', 'ask', 'off'"),
        ({"data_flow": {"min_length": True}}, "data_flow.min_length", "must be an integer"),
        ({"data_flow": {"min_length": 0}}, "data_flow.min_length", "at least 1"),
        ({"data_flow": {"kinds": ["email", "ip"]}}, "data_flow.kinds", "unknown kind 'ip'"),
        ({"tools": {"read_only": "get_*"}}, "tools.read_only", "must be a list of strings"),
        ({"tools": {"default": "safe"}}, "tools.default", "'side_effecting', 'read_only'"),
        ({"allow": {"channels": {"values": ["general"]}}}, "allow.channels.arguments", "required"),
        ({"allow": {"urls": ["x"]}}, "allow.urls", "must be a table"),
        ({"allow": {"urls": {"extract": "ip"}}}, "allow.urls.extract", "'domain'"),
        ({"strict": {"action": "allow"}}, "strict.action", "'ask', 'deny'"),
        ({"detector": {"action": "block"}}, "detector.action", "'log', 'redact', 'drop'"),
        ({"spotlight": {"mode": "xml"}}, "spotlight.mode", "'datamark', 'base64'"),
    ],
)
def test_a_bad_policy_names_the_key_and_the_problem(
    data: dict[str, Any], key: str, problem: str
) -> None:
    with pytest.raises(PolicyError) as raised:
        Policy.from_dict(data, "mine.toml")
    error = raised.value
    assert (error.where, error.key) == ("mine.toml", key)
    assert problem in error.problem
    assert str(error).startswith(f"mine.toml: {key}: ")


def test_a_file_that_does_not_parse_or_cannot_be_read_is_a_policy_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[data_flow]\naction = "deny\n', encoding="utf-8")
    with pytest.raises(PolicyError, match=r"bad\.toml: not valid TOML: .*line 2"):
        Policy.load(bad)
    with pytest.raises(PolicyError, match=r"missing\.toml: cannot read it: No such file"):
        Policy.load(tmp_path / "missing.toml")
    with pytest.raises(PolicyError, match="cannot read it"):
        Policy.resolve("no-such-policy")
    good = tmp_path / "good.toml"
    good.write_text('[strict]\nenabled = true\n[spotlight]\nmode = "datamark"\n', encoding="utf-8")
    policy = Policy.resolve(str(good))
    assert policy.strict.enabled and policy.spotlight == "datamark" and policy.where == str(good)


def test_the_guide_s_example_policy_is_valid(tmp_path: Path) -> None:
    guide = (Path(__file__).parents[2] / "docs" / "guard.md").read_text(encoding="utf-8")
    section = guide[guide.index("## Writing a policy") :]
    example = section[
        section.index("```toml\n") + 8 : section.index("```\n", section.index("```toml"))
    ]
    path = tmp_path / "guard.toml"
    path.write_text(example, encoding="utf-8")
    policy = Policy.load(path)  # it extends the shipped default
    assert policy.spotlight == "datamark" and policy.data_flow.unflagged == "ask"
    [domains] = [allow for allow in policy.allow_lists if allow.name == "domains"]
    assert domains.extract == "domain" and domains.enforced and domains.action == "ask"


def test_a_policy_extends_another_key_by_key(tmp_path: Path) -> None:
    base = tmp_path / "base.toml"
    base.write_text(
        '[tools]\nread_only = ["get_*"]\n[data_flow]\naction = "ask"\nmin_length = 6\n',
        encoding="utf-8",
    )
    (tmp_path / "team").mkdir()
    child = tmp_path / "team" / "child.toml"
    child.write_text(
        'extends = "../base.toml"\n[data_flow]\nunflagged_action = "allow"\n', encoding="utf-8"
    )
    policy = Policy.load(child)
    assert policy.read_only_tools == ("get_*",)
    flow = policy.data_flow
    assert (flow.action, flow.min_length, flow.unflagged) == ("ask", 6, "allow")
    assert flow.tiered and policy.where == str(child)
    # Tables given in code are merged over the file's the same way.
    overridden = Policy.load(child, {"strict": {"enabled": True}, "data_flow": {"min_length": 8}})
    assert overridden.strict.enabled and overridden.data_flow.min_length == 8
    assert overridden.data_flow.unflagged == "allow" and overridden.where.endswith("(overridden)")
    # A shipped policy by name.
    child.write_text('extends = "default"\n[spotlight]\nmode = "delimit"\n', encoding="utf-8")
    extended = Policy.load(child)
    assert extended.data_flow == Policy.default().data_flow and extended.spotlight == "delimit"


def test_the_shipped_flagged_agentdojo_policy_differs_only_in_unflagged_values() -> None:
    flagged, plain = Policy.resolve("agentdojo-flagged"), Policy.resolve("agentdojo")
    assert (flagged.data_flow.unflagged, plain.data_flow.unflagged) == ("allow", "deny")
    assert flagged.read_only_tools == plain.read_only_tools
    assert not plain.data_flow.tiered


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('extends = "loop.toml"\n', "extends this file again (a loop)"),
        ('extends = "missing.toml"\n', "cannot read it"),
        ("extends = 3\n", "extends: must be a shipped policy's name or a file's path"),
        ('[data_flow]\nunflagged_action = "off"\n', "data_flow.unflagged_action: must be one of"),
        (
            "[data_flow]\nflagged_min_length = 0\n",
            "data_flow.flagged_min_length: must be at least 1",
        ),
    ],
)
def test_bad_extends_and_flow_keys_are_clear_errors(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "loop.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        Policy.load(path)
