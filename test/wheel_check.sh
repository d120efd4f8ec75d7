#!/usr/bin/env bash
# The base install as a user without SGLang gets it: `pip wheel .` (<= 5 MB), installed into a fresh venv, then the
# simulator's capacity search run from an unrelated folder with no data folder anywhere (the traces ship inside).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir "$W/src"  # build from a copy: an in-tree build/ folder left by an earlier build must not leak into the wheel
(cd "$ROOT" && tar --exclude=./.venv --exclude=./.git --exclude=./build -cf - .) | tar -xf - -C "$W/src"
python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$W/dist" "$W/src" 2> >(grep -v "is ignored: it is neither" >&2)
whl=$(ls "$W"/dist/sglang_fair-*.whl)
size=$(stat -c %s "$whl")
echo "wheel-check: $(basename "$whl") is $size bytes"
[ "$size" -le 5242880 ] || { echo "wheel-check: FAILED: the wheel is larger than 5 MB"; exit 1; }
python3 -m venv "$W/venv"
"$W/venv/bin/python" -m pip install -q --disable-pip-version-check "$whl" 2> >(grep -v "is ignored: it is neither" >&2)
mkdir "$W/elsewhere"
cd "$W/elsewhere"
if "$W/venv/bin/python" -c "import sglang" 2>/dev/null; then echo "wheel-check: FAILED: sglang is installed"; exit 1; fi
env -u SGLANG_FAIR_SHARED "$W/venv/bin/sglang-fair" capacity --trace azure-conv --duration-s 60 \
  --policies fair,sarathi-512 --json --no-progress > out.json
"$W/venv/bin/python" - <<'PY'
import json
d = json.load(open("out.json"))
caps = {k: v["capacity"] for k, v in d["policies"].items()}
assert d["requests"] > 0 and all(c > 0 for c in caps.values()), caps
print(f"wheel-check: capacity from the installed wheel, {d['requests']} requests of azure-conv: {caps}")
PY
