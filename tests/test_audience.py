"""Audience resolution: includes, de-duplication, suppression, provenance."""

from __future__ import annotations

from notifier.audience import expand, resolve
from notifier.config import Member, StakeholderList, find_cycle


def lists(**spec: tuple[list[dict[str, object]], list[str]]) -> dict[str, StakeholderList]:
    return {
        name: StakeholderList(id=name, members=tuple(Member(**m) for m in members), include=tuple(include))
        for name, (members, include) in spec.items()
    }


def test_a_person_in_two_lists_is_told_once_and_remembers_both_lists() -> None:
    found = resolve(
        lists(
            csp=([{"email": "Jane.Smith@csp.example", "name": "Jane Smith"}], []),
            socjag=([{"email": "jane.smith@CSP.example", "name": "Jane Smith"}], []),
            partners=([], ["csp", "socjag"]),
        ),
        ["partners"],
    )
    assert [r.key for r in found.recipients] == ["jane.smith@csp.example"]
    assert found.recipients[0].lists == ("csp", "socjag")
    assert found.warnings == ()


def test_conflicting_names_are_a_warning_and_the_first_name_wins() -> None:
    found = resolve(
        lists(
            a=([{"email": "x@a.example", "name": "Ann Lee"}], []),
            b=([{"email": "X@a.example", "name": "Anne Lee"}], []),
        ),
        ["a", "b"],
    )
    assert found.recipients[0].name == "Ann Lee"
    assert len(found.warnings) == 1 and "Anne Lee" in found.warnings[0]


def test_subscribed_false_in_any_list_suppresses_the_person() -> None:
    found = resolve(
        lists(
            a=([{"email": "p@a.example"}, {"email": "q@a.example"}], []),
            b=([{"email": "P@a.example", "subscribed": False}], []),
        ),
        ["a", "b"],
    )
    assert [r.key for r in found.recipients] == ["q@a.example"]
    assert [(s.recipient.key, s.reason) for s in found.suppressed] == [("p@a.example", "subscribed: false in b")]


def test_unsubscribed_and_bounced_addresses_are_left_out_with_their_reason() -> None:
    found = resolve(
        lists(a=([{"email": "p@a.example"}, {"email": "q@a.example"}], [])),
        ["a"],
        suppressed={"q@a.example": "unsubscribed"},
    )
    assert [r.key for r in found.recipients] == ["p@a.example"]
    assert found.suppressed[0].reason == "unsubscribed"


def test_nested_includes_are_expanded_once_each() -> None:
    spec = lists(
        a=([{"email": "a@x.example"}], ["b", "c"]),
        b=([{"email": "b@x.example"}], ["c"]),
        c=([{"email": "c@x.example"}], []),
    )
    assert expand(spec, ["a"]) == ["a", "b", "c"]
    assert len(resolve(spec, ["a", "c"])) == 3


def test_extra_member_keys_reach_the_template_context() -> None:
    found = resolve(lists(a=([{"email": "p@a.example", "role": "Chair"}], [])), ["a"])
    assert found.recipients[0].context()["role"] == "Chair"


def test_cycles_are_found_with_their_path() -> None:
    spec = {"a": ["b"], "b": ["c"], "c": ["a"], "d": []}
    assert find_cycle(spec, "a") == ["a", "b", "c", "a"]
    assert find_cycle(spec, "d") is None
