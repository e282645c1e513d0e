#!/usr/bin/env bash
# `make gpu-check`: install banyan next to the torch this machine already has, then run
# python -m banyan.bench.gpu_check (tests, throughput vs HF, plan --validate, comm) into $OUT or ./gpu-check.
#
# Never installs or upgrades torch: banyan goes in with `pip install --no-deps -e .`, and the few pure-Python
# packages a bare CUDA image lacks (tyro, tomli-w, torchao, bitsandbytes, ...) come from wheels in .whl/
# (`make gpu-wheels` downloads them on a machine with network), installed with --no-deps into /tmp/site.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-check}
mkdir -p "$OUT"
t0=$(date +%s)
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" || exit 2
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/banyan-site .whl/*.whl \
    && export PYTHONPATH=/tmp/banyan-site${PYTHONPATH:+:$PYTHONPATH}
fi
# editable install without dependencies or build isolation (offline); the source tree on PYTHONPATH
# does the same job if setuptools is missing there
"$PY" -m pip install -q --no-deps --no-build-isolation --no-cache-dir -e . >/dev/null 2>&1 \
  || echo "gpu-check: pip install -e . failed; using the source tree on PYTHONPATH"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
echo "gpu-check: install took $(( $(date +%s) - t0 )) s"
"$PY" -m banyan.bench.gpu_check --out "$OUT" "$@"
