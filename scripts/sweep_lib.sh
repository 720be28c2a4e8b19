# Sourced by the make-target scripts (study.sh, cache_study.sh, law.sh): the embedded corpus, and a
# local sweep two runs at a time, its log in OUT.log.txt with the per-run ": training" lines left off the screen.
# run_sweep SWEEP OUT TARGET: TARGET is the make target that resumes it (named on failure).
run_sweep() {
  local sweep=$1 out=$2 target=$3 rc
  mkdir -p "$out"
  set +e
  $MKD sweep "$sweep" --local --jobs 2 2>&1 | tee "$out.log.txt" | grep --line-buffered -v -E ": training$"
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" = 0 ] || { echo "the sweep failed (log: $out.log.txt); run make $target again to resume"; exit 1; }
}

# ensure_corpus: build data/corpus unless it is there with every set (a corpus of an older
# version lacks the OOD dev/test halves: it is rebuilt, its other sets byte-identical).
ensure_corpus() {
  if [ -f data/corpus/corpus.json ] && [ -f data/corpus/shakespeare_test.idx ]; then
    echo "(already built: data/corpus)"
  else
    $MKD data corpus --out data/corpus
  fi
}
