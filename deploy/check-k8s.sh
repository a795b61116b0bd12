#!/usr/bin/env bash
# Offline checks of deploy/k8s (CI runs this from .ci/run):
#   1. `kubectl kustomize` renders the dev and prod overlays, and prod with every optional
#      component (api-keys, tls, external-redis);
#   2. the terminating pod's budget: terminationGracePeriodSeconds > preStop sleep +
#      RECURD_DRAIN_GRACE_MS (the drain must finish before the kubelet's SIGKILL);
#   3. every rendered object validates against the Kubernetes schemas (kubernetes-validate,
#      bundled schemas, --strict: unknown fields fail). The ServiceMonitor is a CRD that the
#      bundled schemas lack: it is skipped (listed in the output);
#   4. checkov's static scan (kubernetes framework) passes with the skips documented in
#      deploy/README.md "Static scan exceptions" (SKIPS below, same list).
# Tools: kubectl (with its built-in kustomize), python3-venv; the pinned pip packages of
# deploy/requirements-check.txt go into build/deploy-venv (created on first run; needs PyPI
# once, nothing after). No cluster is contacted.
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION=${K8S_VERSION:-1.30.0}
venv=build/deploy-venv
# Same list, with reasons, in deploy/README.md "Static scan exceptions".
SKIPS=CKV_K8S_43,CKV2_K8S_6

if ! "$venv/bin/python" -c 'import kubernetes_validate, checkov' 2>/dev/null \
   || ! cmp -s deploy/requirements-check.txt "$venv/.requirements"; then
  echo "== venv $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r deploy/requirements-check.txt
  cp deploy/requirements-check.txt "$venv/.requirements"
fi

out=build/deploy-check
rm -rf "$out" && mkdir -p "$out/prod-all"
# prod + every component (render check only: an operator picks among them).
cat >"$out/prod-all/kustomization.yaml" <<'KUST'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../deploy/k8s/overlays/prod
components:
  - ../../../deploy/k8s/components/api-keys
  - ../../../deploy/k8s/components/tls
  - ../../../deploy/k8s/components/external-redis
KUST

variants=(dev prod prod-all)
for v in "${variants[@]}"; do
  dir=deploy/k8s/overlays/$v
  [ "$v" = prod-all ] && dir=$out/prod-all
  echo "== kustomize $v"
  kubectl kustomize "$dir" >"$out/$v.yaml"
done

echo "== grace periods, schemas (kubernetes-validate, Kubernetes $K8S_VERSION)"
"$venv/bin/python" - "$K8S_VERSION" "$out" "${variants[@]}" <<'PY'
import sys, yaml, kubernetes_validate
version, out, variants = sys.argv[1], sys.argv[2], sys.argv[3:]
failed = False
for v in variants:
    docs = [d for d in yaml.safe_load_all(open(f"{out}/{v}.yaml")) if d]
    kinds = {}
    env = {}
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("recurd-config"):
            env = d["data"]
    checked = skipped = 0
    for d in docs:
        name = f'{d["kind"]}/{d["metadata"]["name"]}'
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            print(f"  {v}: {name}: CRD, no bundled schema: skipped")
            skipped += 1
            continue
        try:
            kubernetes_validate.validate(d, version, strict=True)
            checked += 1
        except kubernetes_validate.ValidationError as e:
            print(f"  {v}: {name}: {e.message} at {'/'.join(map(str, e.path))}")
            failed = True
        except Exception as e:  # e.g. no schema for a kind
            print(f"  {v}: {name}: {e}")
            failed = True
        if d["kind"] in ("StatefulSet", "Deployment"):
            spec = d["spec"]["template"]["spec"]
            grace = spec.get("terminationGracePeriodSeconds", 30)
            for c in spec["containers"]:
                pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
                pre_s = float(pre[1]) if len(pre) == 2 and pre[0].endswith("sleep") else 0.0
                drain_s = int(env.get("RECURD_DRAIN_GRACE_MS", "10000")) / 1000 if c["name"] == "recurd" else 0
                if grace <= pre_s + drain_s:
                    print(f"  {v}: {name}: terminationGracePeriodSeconds {grace} <= preStop {pre_s} s + drain {drain_s} s")
                    failed = True
                elif c["name"] == "recurd":
                    print(f"  {v}: {name}: grace {grace} s > preStop {pre_s:g} s + drain {drain_s:g} s")
    print(f"  {v}: {checked} objects valid, {skipped} skipped")
sys.exit(1 if failed else 0)
PY

echo "== checkov (skips: $SKIPS)"
for v in "${variants[@]}"; do
  "$venv/bin/checkov" --quiet --compact --framework kubernetes --skip-check "$SKIPS" \
    --skip-download --output cli -f "$out/$v.yaml" | sed "s/^/  $v: /"
done
echo "deploy/k8s checks passed"
