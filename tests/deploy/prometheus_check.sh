#!/usr/bin/env bash
# ctest deploy_prometheus_rules: promtool checks of deploy/prometheus.
#   - promtool check rules and promtool test rules (deploy/prometheus/tests/*.yml);
#   - every alert of the rules has a unit test in which it fires;
#   - promtool check config of prometheus-local.yml and prometheus.yml. Debian's promtool is
#     built without Kubernetes service discovery ("field kubernetes_sd_configs not found in
#     type config.ScrapeConfig"), so when it refuses that field the check runs on a copy whose
#     kubernetes_sd_configs blocks are file_sd_configs (relabelling and rules unchanged);
#     live_scrape_test.py exercises the relabelling itself.
#
#   prometheus_check.sh SOURCE_ROOT
set -euo pipefail
dir="$1/deploy/prometheus"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
command -v promtool >/dev/null || { echo "FAIL promtool not found: apt-get install prometheus (scripts/setup.sh)"; exit 1; }

promtool check rules "$dir"/rules/*.yml
(cd "$dir/tests" && promtool test rules ./*.yml)

# Every alert fires in at least one test: an alertname followed by expected alerts.
status=0
for alert in $(sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\).*/\1/p' "$dir"/rules/*.yml); do
  if ! awk -v a="$alert" '$0 ~ "alertname: *" a "$" {f=1; next} f && /exp_labels:/ {hit=1} /eval_time:/ {f=0} END {exit !hit}' \
      "$dir"/tests/*.yml; then
    echo "FAIL alert $alert has no promtool test in which it fires"; status=1
  else
    echo "ok   alert $alert is tested firing"
  fi
done

promtool check config "$dir/prometheus-local.yml"
if ! promtool check config "$dir/prometheus.yml" > "$tmp/out" 2>&1; then
  if grep -q 'field kubernetes_sd_configs not found' "$tmp/out"; then
    echo "note promtool $(promtool --version 2>&1 | head -1 | awk '{print $3}') lacks Kubernetes service discovery (Debian build);"
    echo "     checking prometheus.yml with kubernetes_sd_configs -> file_sd_configs"
    mkdir -p "$tmp/rules" && cp "$dir"/rules/*.yml "$tmp/rules/"
    sed 's/^    kubernetes_sd_configs:$/    file_sd_configs:/; s/^      - role: pod$/      - files: [targets.json]/' \
      "$dir/prometheus.yml" > "$tmp/prometheus.yml"
    [ "$(grep -c 'files: \[targets.json\]' "$tmp/prometheus.yml")" = 2 ] || { echo "FAIL rewrite"; exit 1; }
    echo '[]' > "$tmp/targets.json"
    promtool check config "$tmp/prometheus.yml"
  else
    cat "$tmp/out"; exit 1
  fi
else
  cat "$tmp/out"
fi
exit $status
