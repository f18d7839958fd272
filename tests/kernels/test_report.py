"""bench/report.py --doc: docs/performance.md is exactly what bench/performance.md.in and the
records in bench/results render to, and a template naming a run the records lack fails loudly."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered(report):
    return report.render_doc()


def test_committed_page_is_the_render(report, rendered):
    assert rendered.split("\n", 1)[0] == report.HEADER
    problem = report.check_doc(rendered, str(ROOT / "docs" / "performance.md"))
    assert problem is None, f"{problem}\nregenerate with `python bench/report.py --doc`"
    assert report.main(["--doc", "--check"]) == 0


def test_placeholder_is_what_the_cli_prints(report, rendered, capsys):
    # The table printed by `report.py ext --run-id 81268e6babf7` appears verbatim in the page.
    assert report.main(["ext", "--run-id", "81268e6babf7"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("ext on ") and printed.endswith("|\n")
    assert "\n" + printed in rendered


def test_check_names_the_first_differing_line(report, rendered, tmp_path):
    lines = rendered.split("\n")
    no = next(i for i, line in enumerate(lines) if line.startswith("| float32"))
    lines[no] = lines[no].replace("|", "| 0 |", 2)
    stale = tmp_path / "performance.md"
    stale.write_text("\n".join(lines))
    problem = report.check_doc(rendered, str(stale))
    assert problem is not None and f"performance.md:{no + 1} differs" in problem
    stale.write_text(rendered)
    assert report.check_doc(rendered, str(stale)) is None


@pytest.mark.parametrize("line, named", [
    ("{{report block_sparse deadbeef0000}}", "deadbeef0000"),
    ("{{report nosuch_op 85f94630ab0e}}", "nosuch_op"),
    ("{{table ext 81268e6babf7}}", "{{table ext 81268e6babf7}}"),
    ("run 0123456789ab gave 3x", "0123456789ab"),
])
def test_unknown_placeholder_or_run_id_is_named(report, tmp_path, line, named):
    template = tmp_path / "t.md.in"
    template.write_text(f"# T\n\n{{{{report ext 81268e6babf7}}}}\n\n{line}\n")
    with pytest.raises(report.ReportError, match=rf"t\.md\.in:5: .*{re.escape(named)}"):
        report.render_doc(str(template))


def test_write_is_atomic_and_leaves_no_temporary(report, tmp_path):
    out = tmp_path / "docs" / "performance.md"
    report.write_doc("a\n", str(out))
    report.write_doc("b\n", str(out))
    assert out.read_text() == "b\n"
    assert [p.name for p in out.parent.iterdir()] == ["performance.md"]
