#!/usr/bin/env bash
# Chart and deploy/ checks: lint and render the Helm chart for several value sets, validate every
# manifest (and the kustomize base) against the Kubernetes schemas, run the rendered config.toml
# through `callbridge check-config`, and check the alert rules and the dashboard.
# Installs its Python tools into target/chart-venv, so a clean clone works. Exits non-zero on any
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# Versions checked on this project's machine (Helm v4 engine inside helm-python-sdk).
HELM_PYTHON_SDK_VERSION=0.2.2
KUBERNETES_VALIDATE_VERSION=1.37.0
PYTEST_VERSION=9.2.0
PYYAML_VERSION=6.0.4

VENV=target/chart-venv
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
fi
want="helm-python-sdk==$HELM_PYTHON_SDK_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION pytest==$PYTEST_VERSION PyYAML==$PYYAML_VERSION"
# shellcheck disable=SC2086
if ! "$PY" -m pip freeze 2>/dev/null | grep -qx "helm-python-sdk==$HELM_PYTHON_SDK_VERSION" \
   || ! "$PY" -m pip freeze 2>/dev/null | grep -qx "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
   || ! "$PY" -m pip freeze 2>/dev/null | grep -qx "pytest==$PYTEST_VERSION"; then
  echo "== installing chart test tools into $VENV"
  "$PY" -m pip install --quiet --disable-pip-version-check $want
fi

if ! command -v kubectl >/dev/null 2>&1; then
  echo "kubectl is required (kubectl kustomize deploy/kubernetes)" >&2
  exit 1
fi

# check-config needs the binary; scripts/test.sh has built it by the time it calls this script.
if [ -z "${CALLBRIDGE_BIN:-}" ] && [ ! -x target/debug/callbridge ]; then
  echo "== building target/debug/callbridge"
  cargo build --locked --bin callbridge
fi

export PYTHONDONTWRITEBYTECODE=1
echo "== chart tests"
exec "$PY" -m pytest -p no:cacheprovider -q tests/chart "$@"
