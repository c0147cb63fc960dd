"""Versions, requirements and dependency order between plugins."""

from __future__ import annotations

import pickle

import pytest
from packaging.version import InvalidVersion, Version

from cordon.protocol import CordonError
from cordon.runtime._platform._versions import (
    CORDON_VERSION,
    BlockedByDependency,
    DependencyCycle,
    DependencyError,
    IncompatibleDependency,
    InvalidRequirement,
    MissingDependency,
    compare,
    dependents,
    is_breaking,
    partition_loadable,
    plugin_table,
    resolve_load_order,
    satisfies,
)


def table(**plugins: tuple[str, dict[str, str]]) -> dict[str, tuple[str, dict[str, str]]]:
    return dict(plugins)


# -- single versions ----------------------------------------------------------------------------


def test_cordon_version_is_the_installed_distribution_version() -> None:
    from importlib.metadata import version

    assert version("cordon") == CORDON_VERSION
    Version(CORDON_VERSION)  # and it is PEP 440


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.10.0", "1.9.0", 1),  # string comparison would say -1
        ("1.0", "1.0.0", 0),
        ("2.0.0rc1", "2.0.0", -1),
        ("1.0.post1", "1.0", 1),
        ("1.0.dev1", "1.0a1", -1),
        ("1!0.1", "99.0", 1),
    ],
)
def test_compare_orders_versions_by_pep_440_not_by_text(a: str, b: str, expected: int) -> None:
    assert compare(a, b) == expected
    assert compare(b, a) == -expected


def test_compare_rejects_a_version_that_is_not_pep_440() -> None:
    with pytest.raises(InvalidVersion):
        compare("banana", "1.0")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("1.4.2", "2.0.0"),  # major bump
        ("1.9", "10.0"),
        ("0.3.1", "0.4.0"),  # 0.x: minor is the breaking part
        ("0.0.3", "0.0.4"),  # 0.0.x: every bump breaks
        ("2.0.0", "1.9.0"),  # downgrading across lines changes the API just as much
        ("1.9.0", "2.0.0rc1"),  # a pre-release of the next major belongs to that line
        ("2.0.0a1", "2.0.0a2"),  # pre-releases promise nothing...
        ("2.0.0rc1", "2.0.0"),  # ...not even to their own final release
        ("1.2.0.dev3", "1.2.0"),
        ("1.0", "1!1.0"),  # a new epoch is a new numbering
    ],
)
def test_is_breaking_flags_moves_that_may_break_callers(old: str, new: str) -> None:
    assert is_breaking(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("1.4.2", "1.5.0"),
        ("1.4.2", "1.4.3"),
        ("1.5.0", "1.4.0"),  # a downgrade inside a line
        ("0.3.1", "0.3.9"),
        ("1.0", "1.0.0"),
        ("1.0", "1.0.post1"),
        ("1.0+local.1", "1.0+local.2"),
        ("2.0.0", "2.1.0rc1"),  # stable to a pre-release within the same line
        ("2.0.0a1", "2.0.0a1"),
    ],
)
def test_is_breaking_allows_moves_within_a_compatibility_line(old: str, new: str) -> None:
    assert not is_breaking(old, new)


@pytest.mark.parametrize(
    ("version", "requirement", "expected"),
    [
        ("1.4.0", ">=1.2,<2", True),
        ("1.4.0", "^1.2", True),
        ("2.0.0", "^1.2", False),
        ("1.1.9", "^1.2", False),
        ("0.2.5", "^0.2", True),
        ("0.3.0", "^0.2", False),
        ("1.2.9", "~1.2", True),
        ("1.3.0", "~1.2", False),
        ("1.10", ">1.9", True),  # string comparison would say False
        ("7.0", "", True),
        ("7.0", "*", True),
        ("1.3.0", "~=1.2", True),  # PEP 440's compatible release is not npm's ~
    ],
)
def test_satisfies_accepts_pep_440_and_npm_style_requirements(
    version: str, requirement: str, expected: bool
) -> None:
    assert satisfies(version, requirement) is expected


def test_satisfies_counts_an_installed_pre_release_but_not_one_of_the_next_major() -> None:
    assert satisfies("1.5.0rc1", ">=1.0")
    assert not satisfies("1.5.0rc1", ">=1.0", prereleases=False)
    assert not satisfies("2.0.0rc1", "^1.0")


@pytest.mark.parametrize("requirement", ["^banana", "~", ">=>1", "1.0"])
def test_satisfies_rejects_a_malformed_requirement_with_value_error(requirement: str) -> None:
    with pytest.raises(ValueError, match="requirement"):
        satisfies("1.0", requirement)


# -- load order ---------------------------------------------------------------------------------


def test_load_order_puts_every_dependency_before_its_dependents() -> None:
    plugins = table(
        app=("1.0", {"db": ">=1", "log": "*"}),
        db=("1.2", {"log": "^1.0"}),
        log=("1.0.3", {}),
    )
    assert resolve_load_order(plugins) == ["log", "db", "app"]


def test_load_order_breaks_ties_by_id_so_it_never_depends_on_input_order() -> None:
    a = {"zeta": ("1", {}), "alpha": ("1", {}), "mid": ("1", {"zeta": ""}), "beta": ("1", {})}
    b = dict(reversed(list(a.items())))
    assert resolve_load_order(a) == resolve_load_order(b) == ["alpha", "beta", "zeta", "mid"]


def test_missing_dependency_names_the_plugin_the_dependency_and_the_requirement() -> None:
    with pytest.raises(MissingDependency) as info:
        resolve_load_order(table(app=("1.0", {"db": "^2.0"})))
    err = info.value
    assert (err.plugin, err.dependency, err.required) == ("app", "db", "^2.0")
    assert "'app'" in err.message and "'db'" in err.message and "not installed" in err.message


def test_incompatible_dependency_names_what_was_required_and_what_was_found() -> None:
    with pytest.raises(IncompatibleDependency) as info:
        resolve_load_order(table(app=("1.0", {"db": "^1.2"}), db=("2.0.1", {})))
    err = info.value
    assert (err.plugin, err.dependency, err.required, err.found) == ("app", "db", "^1.2", "2.0.1")
    assert "2.0.1" in err.message and "^1.2" in err.message


def test_a_cycle_is_reported_with_the_whole_chain() -> None:
    plugins = table(
        a=("1", {"b": ""}),
        b=("1", {"c": ""}),
        c=("1", {"a": ""}),
        d=("1", {}),
    )
    with pytest.raises(DependencyCycle) as info:
        resolve_load_order(plugins)
    assert info.value.cycle == ["a", "b", "c", "a"]
    assert "a -> b -> c -> a" in info.value.message


def test_a_plugin_requiring_itself_is_a_cycle_of_one() -> None:
    _, failures = partition_loadable(table(a=("1", {"a": ""})))
    err = failures["a"]
    assert isinstance(err, DependencyCycle)
    assert err.cycle == ["a", "a"]


def test_dependency_errors_are_cordon_errors_that_survive_pickling() -> None:
    err = IncompatibleDependency(plugin="a", dependency="b", required=">=2", found="1.0")
    assert isinstance(err, DependencyError) and isinstance(err, CordonError)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is IncompatibleDependency and back.fields() == err.fields()


def test_dependency_cycle_built_from_the_cycle_alone_names_its_first_plugin() -> None:
    err = DependencyCycle(cycle=["x", "y", "x"])
    assert err.plugin == "x"
    assert str(err) == "dependency cycle: x -> y -> x"


# -- partial loading ----------------------------------------------------------------------------


def test_one_broken_plugin_blocks_only_the_plugins_that_need_it() -> None:
    plugins = table(
        broken=("1.0", {"ghost": ">=1"}),
        middle=("1.0", {"broken": "*"}),
        top=("1.0", {"middle": "*", "util": "*"}),
        util=("1.0", {}),
        solo=("1.0", {}),
    )
    order, failures = partition_loadable(plugins)
    assert order == ["solo", "util"]
    assert set(failures) == {"broken", "middle", "top"}
    assert isinstance(failures["broken"], MissingDependency)
    top = failures["top"]
    assert isinstance(top, BlockedByDependency)
    assert top.dependency == "middle"
    assert top.chain == ["top", "middle", "broken"]
    assert "top -> middle -> broken" in top.message
    assert "ghost" in top.message  # the root cause travels with the chain


def test_every_member_of_a_cycle_fails_with_a_cycle_through_itself() -> None:
    plugins = table(
        a=("1", {"b": ""}),
        b=("1", {"a": "", "c": ""}),
        c=("1", {"b": ""}),
        user=("1", {"c": ""}),
        free=("1", {}),
    )
    order, failures = partition_loadable(plugins)
    assert order == ["free"]
    cycles = {pid: e.cycle for pid, e in failures.items() if isinstance(e, DependencyCycle)}
    assert cycles == {"a": ["a", "b", "a"], "b": ["b", "a", "b"], "c": ["c", "b", "c"]}
    assert isinstance(failures["user"], BlockedByDependency)


def test_a_cycle_member_with_its_own_problem_reports_that_problem_first() -> None:
    plugins = table(a=("1", {"b": "", "z": ""}), b=("1", {"a": ""}))
    _, failures = partition_loadable(plugins)
    assert isinstance(failures["a"], MissingDependency)
    assert isinstance(failures["b"], DependencyCycle)


def test_resolve_raises_a_root_cause_rather_than_a_blocked_plugin() -> None:
    plugins = table(aaa=("1", {"zzz": ""}), zzz=("1", {"nope": ""}))
    with pytest.raises(MissingDependency) as info:
        resolve_load_order(plugins)
    assert info.value.plugin == "zzz"


def test_an_unreadable_version_fails_its_plugin_and_blocks_its_users() -> None:
    plugins = table(bad=("not-a-version", {}), user=("1.0", {"bad": ">=1"}), ok=("1", {}))
    order, failures = partition_loadable(plugins)
    assert order == ["ok"]
    bad = failures["bad"]
    assert isinstance(bad, InvalidRequirement) and bad.dependency is None
    assert isinstance(failures["user"], BlockedByDependency)


def test_an_unreadable_requirement_fails_only_the_plugin_that_wrote_it() -> None:
    plugins = table(a=("1", {"b": "^^1"}), b=("1", {}))
    order, failures = partition_loadable(plugins)
    assert order == ["b"]
    err = failures["a"]
    assert isinstance(err, InvalidRequirement)
    assert (err.dependency, err.required) == ("b", "^^1")


def test_pre_release_dependencies_are_judged_by_pep_440_not_text() -> None:
    plugins = table(
        a=("1", {"lib": "^1.0"}),
        b=("1", {"lib2": "^1.0"}),
        lib=("1.5.0rc1", {}),
        lib2=("2.0.0rc1", {}),
    )
    order, failures = partition_loadable(plugins)
    assert "a" in order
    assert isinstance(failures["b"], IncompatibleDependency)


def test_a_long_dependency_chain_resolves_without_hitting_the_recursion_limit() -> None:
    n = 3000
    plugins = {f"p{i:05d}": ("1", {f"p{i + 1:05d}": ""} if i < n else {}) for i in range(n + 1)}
    order = resolve_load_order(plugins)
    assert order[0] == f"p{n:05d}" and order[-1] == "p00000"


def test_plugin_table_reads_anything_with_id_version_and_requires() -> None:
    class M:
        def __init__(self, id: str, version: str, requires: dict[str, str]) -> None:
            self.id, self.version, self.requires = id, version, requires

    t = plugin_table([M("a", "1.0", {"b": ">=1"}), M("b", "1.1", {})])
    assert resolve_load_order(t) == ["b", "a"]


# -- unloading ----------------------------------------------------------------------------------


def test_dependents_lists_transitive_users_in_a_safe_unload_order() -> None:
    graph = {
        "log": {},
        "db": {"log": ">=1"},
        "cache": {"log": ""},
        "app": {"db": "", "cache": ""},
        "other": {},
    }
    assert dependents("log", graph) == ["app", "cache", "db"]
    assert dependents("db", graph) == ["app"]
    assert dependents("app", graph) == []
    assert dependents("other", graph) == []


def test_dependents_accepts_plain_lists_of_ids_and_terminates_on_cycles() -> None:
    graph = {"a": ["b"], "b": ["a"], "c": ["a"]}
    assert sorted(dependents("a", graph)) == ["b", "c"]
