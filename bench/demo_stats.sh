#!/usr/bin/env bash
# Honest statistics for graft demo: the demo once per seed (default 0 1 2 3 4) for
# every K (default 1,5,20,100), then per K and method the mean ± sample standard
# deviation of the accuracy and of the training seconds, and the paired difference
# transfer − scratch.  A Markdown table goes to stdout and OUT/summary.md.
#
#   bash bench/demo_stats.sh [OUT [graft demo options...]]
#   SEEDS="0 1 2" KS=5 bash bench/demo_stats.sh runs/stats --validate --lr-transfer 3e-3
#
# Extra options go to every graft demo run (bench/demo_tune.sh passes --validate and a
# recipe this way).  Nothing here looks at one run's test accuracy to decide another's.
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
GRAFT=${GRAFT_BIN:-$GRAFT_ROOT/build/graft}
OUT=${1:-$GRAFT_ROOT/runs/demo-stats}
shift || true
SEEDS=${SEEDS:-"0 1 2 3 4"}
KS=${KS:-1,5,20,100}
mkdir -p "$OUT"
cd "$GRAFT_ROOT"
start=$(date +%s)
for seed in $SEEDS; do
    if [[ -s $OUT/seed$seed/results.tsv && $(grep -c . "$OUT/seed$seed/results.tsv") -eq $((1 + 3 * $(tr , '\n' <<<"$KS" | wc -l))) ]]; then
        echo "seed $seed: done before" >&2  # rerun by deleting OUT/seed$seed
        continue
    fi
    echo "seed $seed: graft demo --sweep-k $KS --seed $seed $*" >&2
    "$GRAFT" demo --sweep-k "$KS" --seed "$seed" --out "$OUT/seed$seed" --quiet "$@" >"$OUT/seed$seed.txt"
done
echo "$(($(date +%s) - start)) s for seeds $SEEDS" >&2

# results.tsv: k seed method accuracy train_seconds (after a header line)
for seed in $SEEDS; do tail -n +2 "$OUT/seed$seed/results.tsv"; done | awk -F'\t' -v seeds="$SEEDS" -v args="$*" '
function mean(s, n) { return s / n }
function sd(s, q, n) { return n > 1 ? sqrt((q - s * s / n) / (n - 1)) : 0 }
{
    k = $1; m = $3; a = 100 * $4; t = $5
    if (!(k in seen_k)) { seen_k[k] = 1; order[nk++] = k }
    n[k, m]++; s[k, m] += a; q[k, m] += a * a; ts[k, m] += t
    acc[k, m, $2] = a
}
END {
    split(seeds, sd_list, " ")
    split("scratch transfer fine-tune", methods, " ")
    printf "| K | (a) scratch | (b) transfer | (c) fine-tune | (b) − (a), paired | seconds (a) / (b) / (c) |\n"
    printf "|---|---|---|---|---|---|\n"
    for (i = 0; i < nk; i++) {
        k = order[i]
        printf "| %s ", k
        for (j = 1; j <= 3; j++) { m = methods[j]; printf "| %.1f ± %.1f ", mean(s[k, m], n[k, m]), sd(s[k, m], q[k, m], n[k, m]) }
        ds = 0; dq = 0; dn = 0
        for (e in sd_list) { sv = sd_list[e]; d = acc[k, "transfer", sv] - acc[k, "scratch", sv]; ds += d; dq += d * d; dn++ }
        printf "| %+.1f ± %.1f ", mean(ds, dn), sd(ds, dq, dn)
        printf "| %.1f / %.1f / %.1f |\n", ts[k, "scratch"] / n[k, "scratch"], ts[k, "transfer"] / n[k, "transfer"], ts[k, "fine-tune"] / n[k, "fine-tune"]
    }
    printf "\naccuracy in %%, mean ± sample std over seeds %s (n = %d)%s\n", seeds, dn, args ? "; options: " args : ""
}' | tee "$OUT/summary.md"
