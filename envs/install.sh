#!/usr/bin/env bash
# Create a virtual environment with a pinned stack and audiopetl itself:
#   bash envs/install.sh          # modern: .venv        from envs/modern.lock.txt
#   bash envs/install.sh legacy   # legacy: .venv-legacy from envs/legacy.lock.txt
# uv rather than pip: the same resolution, several times faster on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

env_name=${1:-modern}
case "$env_name" in
  modern) venv=.venv ;;
  legacy) venv=.venv-legacy ;;
  *) echo "envs/install.sh: unknown environment '$env_name' (modern or legacy)" >&2; exit 2 ;;
esac

python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv>=0.5"

# A local wheel folder (a CPU build of torch) takes precedence where the machine has one.
extra=()
if [ -d /opt/wheels ]; then extra+=(--find-links /opt/wheels); fi
uv=("$venv/bin/uv" pip install --python "$venv/bin/python" --compile-bytecode --quiet)
"${uv[@]}" "${extra[@]}" -r "envs/$env_name.lock.txt"
"${uv[@]}" --no-deps -e .

# Record which environment this is: provenance (run.json) and `audiopetl doctor` read it.
grep -q AUDIOPETL_ENV "$venv/bin/activate" \
  || echo "export AUDIOPETL_ENV=$env_name" >> "$venv/bin/activate"

# torchaudio must be importable or absent: an installed but broken one (a CUDA build beside a
# CPU torch) makes transformers' audio models and peft fail to import.
"$venv/bin/python" -c "import transformers, peft, audiopetl.training.trainer, audiopetl.cli" \
  || { echo "envs/install.sh: the $env_name environment does not import; see above" >&2; exit 1; }
echo "$env_name environment ready: source $venv/bin/activate"
