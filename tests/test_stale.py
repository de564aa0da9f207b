"""lib.runs.stale (issue 25, item 5): after `make demo`, the tables it wrote are compared with git HEAD's."""
import subprocess

import pytest

from lib.runs import stale

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]


@pytest.fixture
def repo(tmp_path):
    """A checkout whose figures/ holds two committed tables and a subfolder (another target's)."""
    fig = tmp_path / "figures"
    (fig / "study").mkdir(parents=True)
    (fig / "06_matrix.csv").write_text("method,auroc\nrandom,0.61\n")
    (fig / "06_comparisons.csv").write_text("comparison,p\ngate,0.025\n")
    (fig / "study" / "06_matrix.csv").write_text("x\n1\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(GIT + ["add", "."], cwd=tmp_path, check=True)
    subprocess.run(GIT + ["commit", "-q", "-m", "tables"], cwd=tmp_path, check=True)
    return tmp_path


def test_tables_equal_to_head_pass(repo, capsys):
    assert stale.main(["--figures", str(repo / "figures"), "--root", str(repo)]) == 0
    assert "all 2 tables" in capsys.readouterr().out


def test_a_changed_or_new_table_is_named_with_its_first_difference_and_fails(repo, capsys):
    (repo / "figures" / "06_comparisons.csv").write_text("comparison,p\ngate,0.005\n")
    (repo / "figures" / "07_new.csv").write_text("a\n1\n")
    (repo / "figures" / "study" / "06_matrix.csv").write_text("x\n2\n")      # a subfolder: not this target's
    assert stale.main(["--figures", str(repo / "figures"), "--root", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "2 of 3 tables" in err
    assert "figures/06_comparisons.csv: line 2: committed 'gate,0.025', now 'gate,0.005'" in err
    assert "figures/07_new.csv: not in git HEAD" in err
    assert "06_matrix.csv" not in err


def test_a_folder_outside_the_checkout_or_missing_is_refused_by_name(repo, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(ValueError, match="outside the checkout"):
        stale.stale(elsewhere, repo)
    with pytest.raises(FileNotFoundError, match="figures_dir"):
        stale.stale(repo / "nope", repo)


def test_an_export_without_git_is_skipped_with_a_note(tmp_path, capsys):
    (tmp_path / "figures").mkdir()
    assert stale.main(["--figures", str(tmp_path / "figures"), "--root", str(tmp_path)]) == 0
    assert "not a git checkout" in capsys.readouterr().err


def test_timing_columns_are_not_compared_but_every_other_column_is(repo, capsys):
    # A fresh demo on another machine takes other seconds: the gate-cost column of 06_comparisons.csv moved every
    # time, so `make demo` failed its own check wherever it ran.
    (repo / "figures" / "06_comparisons.csv").write_text("comparison,p,gate cost (stage 03)\ngate,0.025,40 of 130 s\n")
    subprocess.run(GIT + ["commit", "-qam", "with cost"], cwd=repo, check=True)
    (repo / "figures" / "06_comparisons.csv").write_text("comparison,p,gate cost (stage 03)\ngate,0.025,55 of 170 s\n")
    assert stale.main(["--figures", str(repo / "figures"), "--root", str(repo)]) == 0
    (repo / "figures" / "06_comparisons.csv").write_text("comparison,p,gate cost (stage 03)\ngate,0.026,40 of 130 s\n")
    assert stale.main(["--figures", str(repo / "figures"), "--root", str(repo)]) == 1
    assert "committed 'gate,0.025', now 'gate,0.026'" in capsys.readouterr().err
