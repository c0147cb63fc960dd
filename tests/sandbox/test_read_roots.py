"""The read roots a worker's Landlock ruleset grants, pruned to the outermost: fewer rules,
never less access (what stays readable is proven against the kernel in test_lockdown.py;
these pin the pruning itself on a real directory tree)."""

from __future__ import annotations

import os
from pathlib import Path

from cordon.worker._sandbox import _lockdown
from cordon.worker._sandbox._lockdown import outermost


def _beneath(path: str, root: str) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip("/") + "/")


def test_a_path_inside_another_granted_dir_is_dropped_and_the_outer_one_kept(
    tmp_path: Path,
) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "f").write_text("x")
    paths = [str(tmp_path / "a" / "b" / "c"), str(tmp_path / "a"), str(tmp_path / "a" / "f")]
    assert outermost(paths) == [str(tmp_path / "a")]


def test_a_sibling_sharing_a_name_prefix_is_not_taken_for_a_child(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib64").mkdir()
    (tmp_path / "lib.d").write_text("x")
    paths = [str(tmp_path / "lib"), str(tmp_path / "lib64"), str(tmp_path / "lib.d")]
    assert outermost(paths) == paths


def test_symlinks_are_judged_by_where_they_lead(tmp_path: Path) -> None:
    (tmp_path / "granted" / "pkg").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    inside = tmp_path / "link-inside"
    inside.symlink_to(tmp_path / "granted" / "pkg")
    outside = tmp_path / "granted" / "link-out"
    outside.symlink_to(tmp_path / "elsewhere")
    paths = [str(tmp_path / "granted"), str(inside), str(outside)]
    # The link into the granted dir adds nothing; the link out of it grants another tree.
    assert outermost(paths) == [str(tmp_path / "granted"), str(outside)]


def test_the_same_real_path_twice_keeps_the_first_spelling(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    paths = [str(tmp_path / "alias"), str(tmp_path / "real")]
    assert outermost(paths) == [str(tmp_path / "alias")]


def test_a_missing_path_or_a_granted_file_covers_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    paths = [str(tmp_path / "missing"), str(tmp_path / "missing" / "below"), str(tmp_path / "file")]
    assert outermost(paths) == paths


def test_the_filesystem_root_covers_everything_and_is_kept() -> None:
    assert outermost(["/usr", "/", "/etc/hostname"]) == ["/"]


def test_every_path_this_interpreter_reads_from_stays_beneath_a_granted_root() -> None:
    every = _lockdown.all_read_roots()
    kept = _lockdown.read_roots()
    assert set(kept) <= set(every)
    assert len(kept) < len(every)  # the interpreter's own roots nest (the prefix and lib/...)
    for path in every:
        if os.path.exists(path):
            assert any(_beneath(path, root) for root in kept), path
