#!/usr/bin/env bash
# graft train / eval / predict as programs: the run folder, reports, signals, the C API
# example, and the errors of a bad run.  Uses the small tensor dataset of the training
# parity fixtures; never times anything.
set -euo pipefail
GRAFT=${GRAFT_BIN:?GRAFT_BIN must name the graft binary}
WORK=$(mktemp -d "${GRAFT_TMP:-/tmp}/test_train.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DATA=tensors:parity/fixtures/train/data.safetensors
SPEC='vgg:cfg=8-M-16-M,hidden=32,pool=2'
failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# ---- a run folder has what the documentation promises -----------------------------
RUN=$WORK/run
"$GRAFT" train --model "$SPEC" --data "$DATA" --epochs 2 --batch-size 8 --freeze features \
    --optimizer sgd --lr 0.01 --momentum 0.9 --out "$RUN" --quiet >"$WORK/train.out" 2>"$WORK/train.err" ||
    fail "train: exit status $? ($(cat "$WORK/train.err"))"
for f in metrics.jsonl last.safetensors best.safetensors last.state.safetensors per_class.csv confusion.csv; do
    [[ -s $RUN/$f ]] || fail "run folder lacks $f"
done
[[ $(wc -l <"$RUN/metrics.jsonl") -eq 2 ]] || fail "metrics.jsonl should have one line per epoch"
for key in epoch lr train_loss train_accuracy images_per_s seconds; do
    grep -q "\"$key\":" "$RUN/metrics.jsonl" || fail "metrics.jsonl lacks $key"
done
grep -q '^model: .*frozen (features)' "$WORK/train.out" || fail "no start-up summary: $(head -2 "$WORK/train.out")"
grep -q '^confusion matrix' "$WORK/train.out" || fail "no confusion matrix printed"
[[ ! -s $WORK/train.err ]] || fail "--quiet still printed: $(cat "$WORK/train.err")"
ls "$RUN" | grep -q '\.tmp\.' && fail "temporary files left in the run folder"
ls "$RUN" | grep -q '\.replaced$' && fail "replaced checkpoints left in the run folder"
ls "$RUN" | grep -q '\.spare$' && fail "spare checkpoints left in the run folder"
# best.safetensors is the best epoch's last.safetensors (no test split: by training
# accuracy), another name of that file: the same one when the last epoch was the best.
acc() { sed -n "${1}p" "$RUN/metrics.jsonl" | grep -o '"train_accuracy":[0-9.e+-]*' | cut -d: -f2; }
if awk -v a="$(acc 1)" -v b="$(acc 2)" 'BEGIN { exit !(b > a) }'; then
    [[ $RUN/best.safetensors -ef $RUN/last.safetensors ]] || fail "best.safetensors is not last.safetensors of epoch 2"
else
    [[ $RUN/best.safetensors -ef $RUN/last.safetensors ]] && fail "best.safetensors is epoch 2's, not epoch 1's"
fi
head -1 "$RUN/per_class.csv" | grep -q '^class,name,samples,correct,accuracy$' || fail "per_class.csv header"

# ---- the checkpoint describes itself: eval and predict need nothing else ----------
"$GRAFT" eval --checkpoint "$RUN/best.safetensors" --data "$DATA" >"$WORK/eval.out" 2>"$WORK/eval.err" ||
    fail "eval: $(cat "$WORK/eval.err")"
grep -q '^samples 40 ' "$WORK/eval.out" || fail "eval output: $(head -1 "$WORK/eval.out")"
IMG=parity/fixtures/transforms/images/rgb.png
[[ -f $IMG ]] || IMG=$(ls parity/fixtures/transforms/images/*.png | head -1)
"$GRAFT" predict --checkpoint "$RUN/last.safetensors" --topk 3 --json "$IMG" >"$WORK/pred.json" 2>"$WORK/pred.err" ||
    fail "predict: $(cat "$WORK/pred.err")"
grep -q '"predictions":\[{"class":[0-9],"name":"[0-9]","probability":' "$WORK/pred.json" ||
    fail "predict --json: $(cat "$WORK/pred.json")"
[[ $(grep -o '"probability"' "$WORK/pred.json" | wc -l) -eq 3 ]] || fail "predict --topk 3 gave another count"

# ---- --freeze trunk (everything but the head) is recorded so that eval understands it --
"$GRAFT" train --model "$SPEC" --data "$DATA" --epochs 1 --batch-size 8 --freeze trunk --out "$WORK/trunk" \
    --quiet >"$WORK/trunk.out" 2>"$WORK/trunk.err" || fail "train --freeze trunk: $(cat "$WORK/trunk.err")"
"$GRAFT" eval --checkpoint "$WORK/trunk/last.safetensors" --data "$DATA" >"$WORK/trunk_eval.out" 2>"$WORK/trunk_eval.err" ||
    fail "eval of a --freeze trunk checkpoint: $(cat "$WORK/trunk_eval.err")"

# ---- the C API example, built as an application would build it --------------------
if [[ -n ${GRAFT_EXAMPLE_CLASSIFY:-} ]]; then
    { printf 'P6 16 16 255\n'; head -c $((16 * 16 * 3)) /dev/urandom; } >"$WORK/image.ppm"
    "$GRAFT_EXAMPLE_CLASSIFY" "$RUN/last.safetensors" "$WORK/image.ppm" 2 >"$WORK/example.out" 2>&1 ||
        fail "example_classify: $(cat "$WORK/example.out")"
    [[ $(grep -cE '^[01]\.[0-9]{4} [0-9]$' "$WORK/example.out") -eq 2 ]] ||
        fail "example_classify output: $(cat "$WORK/example.out")"
fi

# ---- SIGINT and SIGTERM: finish the batch, save, say how to resume, 130/143 --------
for sig in INT TERM; do
    R=$WORK/sig$sig
    "$GRAFT" train --model "$SPEC" --data "$DATA" --epochs 100000 --batch-size 1 --out "$R" \
        >"$R.out" 2>"$R.err" &
    pid=$!
    for _ in $(seq 1 600); do # until the first epoch is done (at most a minute)
        grep -q '^epoch 1 ' "$R.out" 2>/dev/null && break
        sleep 0.1
    done
    kill -s "$sig" "$pid"
    rc=0
    wait "$pid" || rc=$?
    want=$([[ $sig == INT ]] && echo 130 || echo 143)
    [[ $rc -eq $want ]] || fail "SIG$sig: exit status $rc, expected $want ($(tail -1 "$R.err"))"
    grep -q "resume with: graft train --resume $R" "$R.err" || fail "SIG$sig: no resume hint: $(tail -1 "$R.err")"
    [[ -s $R/last.state.safetensors ]] || fail "SIG$sig: no saved state"
    done_epochs=$(wc -l <"$R/metrics.jsonl")
    "$GRAFT" train --resume "$R" --epochs $((done_epochs + 1)) --quiet >"$R.out2" 2>"$R.err2" ||
        fail "SIG$sig: resume failed: $(cat "$R.err2")"
    [[ $(wc -l <"$R/metrics.jsonl") -eq $((done_epochs + 1)) ]] || fail "SIG$sig: resume did not add one epoch"
done

# ---- a diverging run stops with one line naming the epoch and step ------------------
"$GRAFT" train --model "$SPEC" --data "$DATA" --epochs 2 --batch-size 8 --lr 1e30 --out "$WORK/nan" --quiet \
    >"$WORK/nan.out" 2>"$WORK/nan.err" && fail "a diverging run exited 0"
[[ $(wc -l <"$WORK/nan.err") -eq 1 ]] || fail "diverging run: $(cat "$WORK/nan.err")"
grep -q 'non-finite loss .* at epoch 1, step [0-9]' "$WORK/nan.err" || fail "diverging run: $(cat "$WORK/nan.err")"
[[ ! -e $WORK/nan/last.safetensors ]] || fail "a diverging run wrote a checkpoint"

# ---- bad arguments: one line, non-zero ------------------------------------------
check_error() { # name needle -- args
    local name=$1 needle=$2
    shift 3
    local rc=0
    "$GRAFT" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    [[ $rc -ne 0 ]] || fail "$name: exit status 0"
    [[ $(wc -l <"$WORK/$name.err") -eq 1 ]] || fail "$name: stderr is not one line: $(cat "$WORK/$name.err")"
    grep -qF -- "$needle" "$WORK/$name.err" || fail "$name: stderr lacks '$needle': $(cat "$WORK/$name.err")"
}
check_error all_frozen 'nothing to train' -- train --model "$SPEC" --data "$DATA" --freeze trunk --freeze classifier \
    --out "$WORK/x1" --quiet
check_error no_data '--data' -- train --model "$SPEC" --out "$WORK/x2"
check_error bad_optimizer '--optimizer' -- train --model "$SPEC" --data "$DATA" --optimizer rmsprop --out "$WORK/x3"
check_error bad_schedule '--schedule' -- train --model "$SPEC" --data "$DATA" --schedule cosine:t_max=0 --out "$WORK/x4"
check_error resume_nothing 'last.state.safetensors' -- train --resume "$WORK/nothing-here"
check_error eval_not_checkpoint 'not a graft checkpoint' -- eval --checkpoint parity/fixtures/train/init.safetensors \
    --data "$DATA"
check_error predict_bad_image "$WORK/train.out" -- predict --checkpoint "$RUN/last.safetensors" "$WORK/train.out"

if [[ $failures -gt 0 ]]; then
    echo "test_train: $failures failure(s)" >&2
    exit 1
fi
echo "test_train: all checks passed"
