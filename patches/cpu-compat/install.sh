#!/usr/bin/env bash
# CPU-only compatibility install of SGLang 0.5.23 + sglang-router 0.3.2 into a virtual environment.
# GPU machines do not use this: `pip install sglang-fair[sglang]` brings the real CUDA stack.
# Three workarounds, all here and nowhere else (see README.md beside this file):
#   1. sglang --no-deps + its CPU-capable requirements constrained to torch 2.13.0 (CPU wheel),
#   2. torchvision 0.28.0 (a CUDA build on PyPI) made importable beside CPU torch,
#   3. a placeholder sgl_kernel module (the CPU build is not published).
# Idempotent: a finished install leaves a stamp and the next run returns at once.
set -euo pipefail
VENV=${1:?usage: install.sh VENV_DIR REPO_ROOT}
ROOT=${2:?usage: install.sh VENV_DIR REPO_ROOT}
HERE=$(cd "$(dirname "$0")" && pwd)
STAMP="$VENV/.sglang-fair-cpu-stamp"
WANT=$(cat "$HERE/install.sh" "$HERE/requirements-cpu.txt" "$HERE/constraints-cpu.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then exit 0; fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
# pip warns once per package about this machine's optional local index folders; keep the log readable.
pipq() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
PIP=(pipq "$PY" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" -U pip
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" --no-deps sglang==0.5.23
"${PIP[@]}" -r "$HERE/requirements-cpu.txt" -c "$HERE/constraints-cpu.txt"
"${PIP[@]}" --no-deps torchvision==0.28.0 sglang-router==0.3.2

# (2) torchvision: guard the two fake-op registrations that fail when its CUDA ops cannot load.
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
sed -i -E 's|^@torch.library.register_fake\("torchvision::(q?nms)"\)|@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() else (lambda f: f))|' \
  "$SITE/torchvision/_meta_registrations.py"
# (3) sgl_kernel placeholder, only where no real sgl_kernel is installed.
if ! "$PY" -c "import importlib.util,sys; s=importlib.util.find_spec('sgl_kernel'); sys.exit(0 if s and 'cpustub' not in open(s.origin).read() else 1)" 2>/dev/null; then
  rm -rf "$SITE/sgl_kernel"; cp -r "$HERE/sgl_kernel_stub/sgl_kernel" "$SITE/sgl_kernel"
fi

# The project itself, editable, with its test tools.
"${PIP[@]}" -c "$HERE/constraints-cpu.txt" -e "$ROOT[test]"
SGLANG_USE_CPU_ENGINE=1 "$PY" -c "import sglang, sglang.srt.managers.scheduler, sglang_router, sglang_fair; print('sglang', sglang.__version__, 'ready on CPU')"
echo "$WANT" > "$STAMP"
