"""The documentation: README as a front door, result pages generated from the committed
benchmark results (never edited by hand), every page in the MkDocs navigation, the README's
quickstart runnable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import report  # noqa: E402

README = ROOT / "README.md"
SETUP_COMMANDS = ("bash scripts/install.sh && .venv/bin/slem demo", "bash scripts/test.sh")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """MkDocs' (Python-Markdown toc) anchor of a heading."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text).strip("-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)}


@pytest.mark.parametrize("page", list(report.PAGES))
def test_result_page_is_what_its_generator_writes(page: str) -> None:
    stale = report.stale(report.render(page))
    assert not stale, (
        f"{[str(p.relative_to(ROOT)) for p in stale]} differ from what "
        f"`python benchmarks/report.py {page}` writes from benchmarks/results/: "
        "regenerate them, never edit them by hand"
    )


def test_report_check_fails_on_a_hand_edit(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(report, "OUT", tmp_path)
    assert report.main(["hpo"]) == 0
    assert report.main(["hpo", "--check"]) == 0
    page = tmp_path / "hpo.md"
    page.write_text(page.read_text().replace("0.0053 ± 0.0056", "0.0050 ± 0.0056"))
    assert report.main(["hpo", "--check"]) == 1
    (tmp_path / "img" / "hpo_regret.png").unlink()
    page.unlink()
    assert report.main(["--check", "hpo"]) == 1


def test_templates_and_values_must_match() -> None:
    with pytest.raises(ValueError, match="markers"):
        report.fill("cnn_speed", {"table": "x"})  # {{threads}} left without a value
    with pytest.raises(ValueError, match="markers"):
        report.fill("cnn_speed", {"table": "x", "threads": "1", "extra": "y"})


def test_pages_carry_the_measured_numbers() -> None:
    """The renderers compute the tables the README used to carry by hand."""
    noisy = report.noisy_labels()
    assert "| mnist1d | pair40 | MW-Net | 3 | 96.92 ± 1.03 | 96.73 ± 0.24 | 0.997 | 4.4x |" in noisy
    assert "| fashion-mnist | sym40 | monotone CMW-Net transferred | 3 | 83.90 ± 0.42 |" in noisy
    assert "**Pair-flip noise is where meta-learning pays off**" in noisy  # the findings
    loss = report.loss_setting()
    assert "| L1 | **3271 ± 390** | **19.77 ± 0.21** |" in loss
    assert "| GCE (q tuned: 0.5 / 0.7) | 96.87 ± 0.49 | 97.23 ± 0.08 |" in loss
    assert "transition net (meta-learned T(x); T error 0.14 / 0.15)" in loss
    hpo = report.hpo()
    assert "| BOHB (TPE + Hyperband) | 0.0138 ± 0.0130 | **0.0077 ± 0.0071** |" in hpo
    assert "**0.698 ± 0.002 (+0.136; 37/3/5)**" in hpo  # paired wins / ties / losses
    assert "0.713 ± 0.006 (-0.006; 17/12/16)" in hpo
    hyper = report.hypergrad()
    assert "| `unrolled` | 5 ms / 3 MiB | 23 ms / 19 MiB | 116 ms / 47 MiB |" in hyper
    assert "the fast path costs **3.212x**" in hyper and "instead of 143-184 MiB" in hyper
    assert "| branin | Optuna GP | 10 | **0.0225 ± 0.0291** |" in report.learned_optimizers()
    assert "| digits / mlp / 30 ep | Adam | 3 | **97.50 ± 1.27** | 0.003 | 4 |" in (
        report.schedules()
    )


def test_readme_is_a_front_door() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"
    first_screen = "\n".join(lines[:40])
    assert "noisy or imbalanced" in first_screen
    for command in SETUP_COMMANDS:
        assert f"```bash\n{command}\n```" in first_screen, f"set-up command missing: {command}"
    headings = [line for line in lines if line.startswith("## ")]
    for heading in (
        "## Quickstart: your own CSV",
        "## Quickstart: your own tensors",
        "## Concepts",
    ):
        assert any(h.startswith(heading) for h in headings), heading


def test_readme_and_docs_links_resolve() -> None:
    pages = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists() or (
                anchor and file.suffix == ".md" and anchor not in _anchors(file)
            ):
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken


def _nav_pages(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_pages(item)]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_pages(value)]
    return []


def test_every_docs_page_is_in_the_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["strict"] is True and config["theme"]["name"] in ("mkdocs", "readthedocs")
    nav = _nav_pages(config["nav"])
    assert len(nav) == len(set(nav))
    docs = ROOT / "docs"
    assert sorted(nav) == sorted(str(p.relative_to(docs)) for p in docs.rglob("*.md"))


def test_mkdocs_strict_build(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "architecture.html").is_file()


def test_readme_tensor_quickstart_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's own-tensors example, as printed, trains and prints a test accuracy."""
    text = README.read_text()
    block = re.search(r"## Quickstart: your own tensors.*?```python\n(.*?)```", text, re.S)
    assert block is not None
    exec(compile(block.group(1), "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.strip().splitlines()
    assert 0.5 < float(printed[-1]) <= 1.0


def test_architecture_names_at_most_four_files_for_one_meta_step() -> None:
    """The MW-Net meta step section names the files a reader needs: at most four, all real."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## One MW-Net meta step", 1)[1].split("\n## ", 1)[0]
    files = set(re.findall(r"`(src/slem/[\w/]+\.py)`", section))
    assert 1 <= len(files) <= 4, files
    assert all((ROOT / f).is_file() for f in files)


def _readme_block(section: str, lang: str, index: int = 0) -> str:
    part = README.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{lang}\n(.*?)```", part, re.S)
    return str(blocks[index])


def test_readme_csv_quickstart_trains_and_predicts_string_labels(
    tmp_path: Path, monkeypatch: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's own-CSV quickstart as printed: its config, its train and predict command
    lines (CLI), then its estimator example, on string labels."""
    import numpy as np
    import pandas as pd
    from typer.testing import CliRunner

    from slem.cli.app import app

    rng = np.random.default_rng(0)
    names = np.array(["apple", "banana", "cherry"])

    def table(n: int) -> pd.DataFrame:
        x = rng.normal(size=(n, 4))
        label = names[np.digitize(x[:, 0] + 0.5 * x[:, 1], [-0.5, 0.5])]
        flip = rng.random(n) < 0.2
        label = np.where(flip, rng.choice(names, size=n), label)
        return pd.DataFrame(
            {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "d": x[:, 3], "label": label}
        )

    monkeypatch.chdir(tmp_path)
    table(400).to_csv("my.csv", index=False)
    table(60).to_csv("trusted.csv", index=False)
    table(200).to_csv("test.csv", index=False)
    table(30).drop(columns="label").to_csv("new.csv", index=False)
    config = yaml.safe_load(_readme_block("Quickstart: your own CSV", "yaml"))
    config["optim"]["epochs"] = 5  # the README's 30, shortened
    Path("my.yaml").write_text(yaml.safe_dump(config))
    lines = _readme_block("Quickstart: your own CSV", "bash").splitlines()
    runner = CliRunner()
    for line in lines[:2]:  # train, then predict
        args = line.split("#")[0].split()
        assert args[0] == ".venv/bin/slem"
        result = runner.invoke(app, [*args[1:], "--quiet"] if args[1] == "train" else args[1:])
        assert result.exit_code == 0, (line, result.stderr)
    predicted = pd.read_csv("predictions.csv")
    assert len(predicted) == 30 and set(predicted["prediction"]) <= set(names)
    assert {f"proba_{n}" for n in names} <= set(predicted.columns)

    code = _readme_block("Quickstart: your own CSV", "python").replace("epochs=30", "epochs=5")
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert all(n in names for n in re.findall(r"'(\w+)'", printed)) and "'" in printed
