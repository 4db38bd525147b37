"""Packaging promises: the kernel folder's import name leaves transformers' `kernels` probe alone."""
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = (
    "from transformers.utils.import_utils import is_kernels_available; "
    "import importlib.util; print(is_kernels_available(), importlib.util.find_spec('kernels') is not None)"
)


def _probe(extra_code: str, cwd):
    return subprocess.run(
        [sys.executable, "-c", extra_code + PROBE], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_is_kernels_available_unchanged_by_the_toolkit(tmp_path):
    # Without the toolkit on the path: hide both of our packages behind a meta path blocker.
    hide = (
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('rla_kernels', 'rla_convert'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    without = _probe(hide, tmp_path)
    with_toolkit = _probe("import rla_convert, rla_kernels\n", tmp_path)
    # From the repository root too, where a folder named `kernels/` sits in the working directory.
    from_root = _probe("import rla_convert, rla_kernels\n", ROOT)
    assert without.returncode == 0, without.stderr
    assert with_toolkit.returncode == 0, with_toolkit.stderr
    assert from_root.returncode == 0, from_root.stderr
    assert with_toolkit.stdout.strip().splitlines()[-1] == without.stdout.strip().splitlines()[-1]
    assert from_root.stdout.strip().splitlines()[-1].split()[0] == without.stdout.strip().split()[0]


def test_the_source_folder_found_as_kernels_registers_nothing():
    # `python -c` / `python -m` from the checkout put it on sys.path; transformers' probe then imports our
    # folder as `kernels`. That copy must stay empty: a second registration of the torch.library ops would
    # bind them to a second copy of every module (seen: the ops stopped reaching rla_kernels.library).
    code = (
        "import sys, torch, rla_kernels; import rla_kernels.library as lib; import transformers.modeling_utils\n"
        "import kernels\n"
        "asked = []; real = lib.triton_function\n"
        "lib.triton_function = lambda *a: asked.append(a[2]) or real(*a)\n"
        "x = torch.randn(1, 1, 1, 16)\n"
        "state = (torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16))\n"
        "g, b = torch.full((1, 1, 1), -0.1), torch.full((1, 1, 1), 0.5)\n"
        "rla_kernels.rla(x, x, x, g, b, b, initial_state=state, output_final_state=True, backend='triton')\n"
        "print(sorted(vars(kernels)).count('rla'), asked)\n"
    )
    env = {**__import__("os").environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0", "['fused_recurrent_rla_fwd']"], run.stdout


def test_from_the_checkout_kernels_is_hugging_faces_package_where_installed():
    # transformers 5.25 requires Hugging Face's `kernels` and imports names from it: run from the checkout, our
    # folder (first on sys.path) hands its place to that package where it is installed (else it stays empty).
    code = (
        "import importlib.metadata, kernels, rla_kernels\n"
        "try:\n    importlib.metadata.version('kernels'); hub = True\nexcept importlib.metadata.PackageNotFoundError:\n"
        "    hub = False\n"
        "print(hub, kernels.__file__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    hub, where = run.stdout.split()
    ours = Path(where).resolve() == (ROOT / "kernels" / "__init__.py").resolve()
    assert ours == (hub == "False"), run.stdout


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top, import_name in (("rla_convert", "rla_convert"), ("kernels", "rla_kernels")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((import_name, *rel)))
    assert found <= listed, f"add to pyproject.toml packages: {sorted(found - listed)}"
