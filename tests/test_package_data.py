"""What an installed charrnn holds: a wheel built from pyproject.toml carries every module and every
data file of the package (the annotate page's page.css and page.js), byte for byte.

setuptools ships .py files by itself and anything else only where pyproject.toml's package-data lists
it, so a data file left out of that list would be missing from every installed copy while an editable
install or a source checkout (where the tests usually run) still finds it beside the module.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_files(root: Path) -> dict:
    """Every file of the package under `root` (byte contents by path, charrnn/...), without caches."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted((root / "charrnn").rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts}


def test_a_wheel_holds_every_module_and_the_pages_files(tmp_path):
    # build from a copy: setuptools writes build/ and an egg-info folder into the tree it builds
    source = tmp_path / "source"
    shutil.copytree(ROOT / "charrnn", source / "charrnn", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    code = "import sys\nfrom setuptools import build_meta\nprint(build_meta.build_wheel(sys.argv[1]))\n"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=source, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = tmp_path / "dist" / proc.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name: archive.read(name) for name in archive.namelist() if name.startswith("charrnn/")}
    expected = package_files(ROOT)
    assert {"charrnn/work/page.css", "charrnn/work/page.js"} <= set(expected)
    missing = sorted(set(expected) - set(shipped))
    assert not missing, f"the wheel lacks {missing}: list data files in pyproject.toml's package-data"
    for name, data in expected.items():
        assert shipped[name] == data, f"{name} differs in the wheel"


def test_the_page_embeds_its_files_as_they_are():
    from charrnn.work import page

    for name in ("page.css", "page.js"):
        text = (ROOT / "charrnn" / "work" / name).read_text(encoding="utf-8")
        assert page.asset(name) == "\n" + text
        assert "\r" not in text and text.endswith("\n")
