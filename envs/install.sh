#!/usr/bin/env bash
# Create .venv with the pinned modern environment (envs/modern.lock.txt) and audiopetl itself.
# uv rather than pip: the same resolution, several times faster on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.5"

# A local wheel folder (a CPU build of torch) takes precedence where the machine has one.
extra=()
if [ -d /opt/wheels ]; then extra+=(--find-links /opt/wheels); fi
uv=(.venv/bin/uv pip install --python .venv/bin/python --compile-bytecode --quiet)
"${uv[@]}" "${extra[@]}" -r envs/modern.lock.txt
"${uv[@]}" --no-deps -e .

# torchaudio must be importable or absent: an installed but broken one (a CUDA build beside a
# CPU torch) makes transformers' audio models and peft fail to import.
.venv/bin/python -c "import transformers, peft, audiopetl.train" \
  || { echo "envs/install.sh: the environment does not import; see above" >&2; exit 1; }
echo "environment ready: source .venv/bin/activate"
