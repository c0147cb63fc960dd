"""The lock: real ``uv`` resolving against a wheelhouse the test builds (no network), wheels
only, each wheel pinned by the sha256 of the very file this interpreter installs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec
import pytest

from cordon.runtime._packages._errors import LockError, SdistOnly
from cordon.runtime._packages._lock import (
    LOCK_FILENAME,
    IndexOptions,
    Lock,
    LockedWheel,
    lock_requirements,
    read_lock,
    write_lock,
)
from cordon.runtime._packages._uv import DETAIL_LIMIT, redact, uv_env

from .wheelhouse import make_wheel, sdist_marker, sha256_file, standard_wheelhouse


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    return standard_wheelhouse(tmp_path / "wheelhouse")


def offline(wheelhouse: Path) -> IndexOptions:
    return IndexOptions(find_links=(str(wheelhouse),), offline=True)


def test_lock_resolves_transitive_dependencies_pinning_each_wheel_file_by_its_sha256(
    wheelhouse: Path,
) -> None:
    lock = lock_requirements(["cordonhelper"], offline(wheelhouse))

    assert [(w.name, w.version) for w in lock.wheels] == [
        ("cordonhelper", "1.0"),
        ("cordonlib", "2.0"),
    ]
    for w in lock.wheels:
        assert w.sha256 == sha256_file(wheelhouse / w.filename)
    assert lock.requirements == ("cordonhelper",)
    assert lock.python and lock.platform


def test_lock_honours_version_constraints_on_the_shared_library(wheelhouse: Path) -> None:
    lock = lock_requirements(["cordonhelper", "cordonlib<2"], offline(wheelhouse))
    assert {w.name: w.version for w in lock.wheels} == {"cordonhelper": "1.0", "cordonlib": "1.0"}


def test_lock_pins_the_wheel_this_interpreter_installs_among_several_of_one_version(
    tmp_path: Path,
) -> None:
    house = tmp_path / "wheelhouse"
    make_wheel(house, "cordonlib", "2.0")
    cp = f"cp{sys.version_info.major}{sys.version_info.minor}"  # this interpreter's (cp311)
    native = make_wheel(house, "cordonlib", "2.0", tag=f"{cp}-{cp}-manylinux_2_17_x86_64")
    make_wheel(house, "cordonlib", "2.0", tag=f"{cp}-{cp}-win_amd64")  # never for this host

    (wheel,) = lock_requirements(["cordonlib"], offline(house)).wheels

    # A platform wheel outranks the pure one in packaging.tags.sys_tags(), as in pip and uv.
    assert wheel.filename == native.name
    assert wheel.sha256 == sha256_file(native)


def test_an_sdist_only_dependency_is_refused_naming_it_and_nothing_is_built(
    wheelhouse: Path,
) -> None:
    with pytest.raises(SdistOnly) as caught:
        lock_requirements(["cordonhelper", "cordonsrc"], offline(wheelhouse))

    assert caught.value.requirement == "cordonsrc"
    assert "cordonsrc" in str(caught.value)
    assert not sdist_marker(wheelhouse, "cordonsrc").exists()


def test_an_unresolvable_set_is_refused_with_uvs_reason(wheelhouse: Path) -> None:
    with pytest.raises(LockError) as caught:
        lock_requirements(["cordonlib<2", "cordonhelper", "cordonlib>=2"], offline(wheelhouse))

    assert type(caught.value) is LockError
    assert "unsatisfiable" in str(caught.value)
    assert "cordonlib" in (caught.value.detail or "")


def test_a_missing_package_offline_is_refused_without_reaching_any_index(wheelhouse: Path) -> None:
    with pytest.raises(LockError, match="cordonmissing"):
        lock_requirements(["cordonmissing"], offline(wheelhouse))


def test_errors_carry_uvs_output_without_url_credentials_and_cut_to_a_readable_size() -> None:
    # uv masks credentials itself today; cordon's own redaction does not rely on that.
    text = "cause: Failed to fetch: https://alice:s3cret-token@pypi.example/simple/x/\n"
    text += "noise\n" * 5000

    out = redact(text)

    assert "s3cret-token" not in out and "https://***@pypi.example/simple/x/" in out
    assert len(out) <= DETAIL_LIMIT + 10


def test_uv_sees_an_allowlisted_environment_without_the_hosts_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("UV_INDEX_URL", "http://elsewhere/simple")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")

    env = uv_env(tmp_path / "cache")

    assert "AWS_SECRET_ACCESS_KEY" not in env and "UV_INDEX_URL" not in env
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert env["UV_CACHE_DIR"] == str(tmp_path / "cache") and env["UV_NO_CONFIG"] == "1"


def test_no_requirements_give_an_empty_lock_without_running_uv() -> None:
    lock = lock_requirements([], IndexOptions(offline=True))
    assert lock.wheels == () and lock.requirements == ()


# -- the file -------------------------------------------------------------------------------------


def test_a_written_lock_reads_back_equal_in_the_contract_format(
    wheelhouse: Path, tmp_path: Path
) -> None:
    lock = lock_requirements(["cordonhelper"], offline(wheelhouse))
    path = write_lock(tmp_path, lock)

    text = path.read_text(encoding="utf-8")
    assert path.name == LOCK_FILENAME
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    assert read_lock(tmp_path) == lock
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_a_plugin_without_a_lock_reads_as_none(tmp_path: Path) -> None:
    assert read_lock(tmp_path) is None


def test_the_content_hash_depends_on_the_wheels_not_on_how_requirements_were_spelled() -> None:
    wheel = LockedWheel("cordonlib", "1.0", "cordonlib-1.0-py3-none-any.whl", "a" * 64)
    one = Lock(python="3.11", platform="linux-x86_64", requirements=("cordonlib",), wheels=(wheel,))
    two = Lock(
        python="3.11", platform="linux-x86_64", requirements=("CordonLib>=1",), wheels=(wheel,)
    )
    other = Lock(
        python="3.11",
        platform="linux-x86_64",
        wheels=(msgspec.structs.replace(wheel, sha256="b" * 64),),
    )

    assert one.content_hash() == two.content_hash() != other.content_hash()


_GOOD_WHEEL = {
    "name": "cordonlib",
    "version": "1.0",
    "filename": "cordonlib-1.0-py3-none-any.whl",
    "sha256": "a" * 64,
}


def _lock_doc(**wheel: object) -> dict[str, object]:
    return {
        "format": 1,
        "python": "3.11",
        "platform": "linux-x86_64",
        "requirements": ["cordonlib"],
        "wheels": [{**_GOOD_WHEEL, **wheel}],
    }


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (_lock_doc(sha256="A" * 64), "wheels[0].sha256"),
        (_lock_doc(sha256="abc"), "wheels[0].sha256"),
        (_lock_doc(version=1), "wheels[0].version"),
        (_lock_doc(version="1.0 --index-url x"), "wheels[0].version"),
        (_lock_doc(name="Cordon_Lib"), "wheels[0].name"),
        (_lock_doc(filename="../cordonlib-1.0-py3-none-any.whl"), "wheels[0].filename"),
        (_lock_doc(filename="cordonlib-1.0.tar.gz"), "wheels[0].filename"),
        (_lock_doc(filename="cordonlib-9.0-py3-none-any.whl"), "wheels[0].filename"),
        (_lock_doc(url="http://x"), "wheels[0]"),
        ({**_lock_doc(), "format": 2}, "format"),
        ({**_lock_doc(), "wheels": "cordonlib"}, "wheels"),
        ({**_lock_doc(), "requirements": [1]}, "requirements[0]"),
    ],
)
def test_a_malformed_lock_is_refused_naming_the_field(
    tmp_path: Path, doc: dict[str, object], field: str
) -> None:
    (tmp_path / LOCK_FILENAME).write_text(json.dumps(doc), encoding="utf-8")

    with pytest.raises(LockError) as caught:
        read_lock(tmp_path)

    assert caught.value.field == field
    assert field in str(caught.value)


def test_a_lock_that_is_not_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILENAME).write_text("{not json", encoding="utf-8")
    with pytest.raises(LockError, match="not valid JSON"):
        read_lock(tmp_path)


def test_a_lock_with_a_duplicated_or_unsorted_wheel_is_refused(tmp_path: Path) -> None:
    doc = _lock_doc()
    doc["wheels"] = [_GOOD_WHEEL, _GOOD_WHEEL]
    (tmp_path / LOCK_FILENAME).write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(LockError, match="locked twice"):
        read_lock(tmp_path)
