#!/usr/bin/env bash
# graft demo and its report: a tiny sweep (K = 1, 2; one short epoch per method; 60
# evaluation images) writes the run folders, results.tsv and a self-contained
# report.html, which headless Chromium renders with its charts.  Skipped without
# Debian's dataset-fashion-mnist; the Chromium part is skipped without chromium
# (scripts/setup.sh --tests installs both).  Never times anything.
set -euo pipefail
GRAFT=${GRAFT_BIN:?GRAFT_BIN must name the graft binary}
SOURCE=../models/fashion-source.safetensors
if [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
    echo "test_report: skipped: Debian's dataset-fashion-mnist is not installed"
    exit 0
fi
WORK=$(mktemp -d "${GRAFT_TMP:-/tmp}/test_report.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# ---- usage errors and a missing source model are one line -------------------------
expect_error() { # status, args...
    local want=$1 got=0
    shift
    "$GRAFT" demo --out "$WORK/err" "$@" >"$WORK/err.out" 2>"$WORK/err.txt" || got=$?
    [[ $got -eq $want ]] || fail "demo $*: exit $got, expected $want"
    [[ $(wc -l <"$WORK/err.txt") -eq 1 ]] || fail "demo $*: not one line: $(cat "$WORK/err.txt")"
    grep -q '^graft' "$WORK/err.txt" || fail "demo $*: $(cat "$WORK/err.txt")"
}
expect_error 2 --k 0
expect_error 2 --freeze classifier
expect_error 2 --sweep-k 1,x
expect_error 2 --lr-scratch -1
expect_error 1 --source "$WORK/missing.safetensors"

# ---- a tiny sweep --------------------------------------------------------------------
RUN=$WORK/run
"$GRAFT" demo --source "$SOURCE" --out "$RUN" --sweep-k 1,2 --epochs 1 --finetune-epochs 1 \
    --epoch-images 8 --batch-size 8 --eval-limit 60 --quiet >"$WORK/demo.out" 2>"$WORK/demo.err" ||
    fail "demo: exit status $? ($(cat "$WORK/demo.err"))"
[[ ! -s $WORK/demo.err ]] || fail "--quiet still printed: $(cat "$WORK/demo.err")"
for m in '(a) scratch' '(b) transfer' '(c) fine-tune'; do
    grep -qF "$m" "$WORK/demo.out" || fail "no row for $m: $(cat "$WORK/demo.out")"
done
grep -q 'accuracy against labelled images per class' "$WORK/demo.out" || fail "no sweep table"
grep -q "^report: $RUN/report.html" "$WORK/demo.out" || fail "report path not printed"
for k in k1 k2; do
    for f in train.safetensors transfer-init.safetensors scratch/last.safetensors transfer/last.safetensors \
        fine-tune/last.safetensors fine-tune/metrics.jsonl; do
        [[ -s $RUN/$k/$f ]] || fail "run folder lacks $k/$f"
    done
done
[[ $(wc -l <"$RUN/results.tsv") -eq 7 ]] || fail "results.tsv: $(cat "$RUN/results.tsv")"
head -1 "$RUN/results.tsv" | grep -q $'^k\tseed\tmethod\ttest_accuracy\ttrain_seconds$' || fail "results.tsv header"
grep -q $'^2\t0\tfine-tune\t0\\.[0-9]\\{4\\}\t' "$RUN/results.tsv" || fail "results.tsv rows: $(cat "$RUN/results.tsv")"
# the fine-tune run starts from transfer's weights: its checkpoint has no frozen prefix
"$GRAFT" eval --checkpoint "$RUN/k2/fine-tune/last.safetensors" --data "tensors:$RUN/k2/train.safetensors" \
    >"$WORK/eval.out" 2>&1 || fail "fine-tune checkpoint does not evaluate: $(cat "$WORK/eval.out")"

# ---- the report is self-contained ---------------------------------------------------
HTML=$RUN/report.html
[[ -s $HTML ]] || fail "no report.html"
for id in results curves sweep sweep-table per-class confusion grid; do
    grep -q "id=\"$id\"" "$HTML" || fail "report lacks #$id"
done
for pattern in '<script' '<link' 'src="http' 'href=' 'url(' '@import'; do
    grep -qF "$pattern" "$HTML" && fail "report refers outside itself: $pattern"
done
imgs=$(grep -o '<img ' "$HTML" | wc -l)
uris=$(grep -o 'src="data:image/png;base64,' "$HTML" | wc -l)
[[ $imgs -gt 0 && $imgs -eq $uris ]] || fail "images are not inline PNGs: $imgs img, $uris data URIs"
grep -q 'class="wrong"' "$HTML" || grep -q 'class="right"' "$HTML" || fail "grid images are not marked"

# ---- headless Chromium renders it ------------------------------------------------------
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $CHROMIUM ]]; then
    echo "test_report: chromium part skipped: chromium is not installed"
else
    flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
        --disable-sync --no-first-run --hide-scrollbars "--user-data-dir=$WORK/profile")
    timeout 120 "$CHROMIUM" "${flags[@]}" --dump-dom "file://$HTML" >"$WORK/dom.html" 2>"$WORK/chromium.err" ||
        fail "chromium --dump-dom failed: $(tail -3 "$WORK/chromium.err")"
    svgs=$(grep -o '<svg' "$WORK/dom.html" | wc -l)
    [[ $svgs -eq 3 ]] || fail "rendered page has $svgs svg charts, expected 3 (curves, sweep, confusion)"
    for id in curves sweep confusion grid; do
        grep -q "id=\"$id\"" "$WORK/dom.html" || fail "rendered page lacks #$id"
    done
    [[ $(grep -o '<polyline' "$WORK/dom.html" | wc -l) -eq 6 ]] || fail "expected 3 learning curves and 3 sweep lines"
    [[ $(grep -o 'class="cell"' "$WORK/dom.html" | wc -l) -eq 25 ]] || fail "confusion matrix is not 5x5"
    timeout 120 "$CHROMIUM" "${flags[@]}" --window-size=1100,2400 "--screenshot=$WORK/report.png" "file://$HTML" \
        >/dev/null 2>>"$WORK/chromium.err" || fail "chromium --screenshot failed: $(tail -3 "$WORK/chromium.err")"
    [[ $(head -c 8 "$WORK/report.png" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]] ||
        fail "the screenshot is not a PNG"
    [[ $(stat -c %s "$WORK/report.png") -gt 20000 ]] || fail "the screenshot is (nearly) blank"
fi

if [[ $failures -gt 0 ]]; then
    echo "test_report: $failures failure(s)" >&2
    exit 1
fi
echo "test_report: all checks passed"
