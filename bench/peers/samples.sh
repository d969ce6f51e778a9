# Sourced by the peer comparisons: `shared_samples INPUT [SECOND] OUT` prepares INPUT with micn
# (din protocol, history 20, seed 1) into OUT/data and exports those samples into OUT/arrays
# (`micn data export`: the arrays micn's loader collates), so micn and its peer learn from the
# same samples. INPUT ending in .txt is read as time-ordered sequences (SECOND: the items'
# attributes, the category being attribute CATEGORY_ATTRIBUTE, 3), else as an Amazon 2014 review
# file (SECOND: its meta file).
shared_samples() {
  local input=$1 second=${2:-} out=${3:?shared_samples INPUT [SECOND] OUT}
  local source_args
  if [[ $input == *.txt ]]; then
    source_args=(--input-format sequences --sequences "$input")
    [[ -z $second ]] || source_args+=(--item-attributes "$second" --category-attribute "${CATEGORY_ATTRIBUTE:-3}")
  else
    source_args=(--input-format amazon2014 --reviews "$input")
    [[ -z $second ]] || source_args+=(--meta "$second")
  fi
  printf '[peers] preparing %s (din protocol, history 20)\n' "$input" >&2
  mkdir -p "$out"
  remove_earlier_samples "$out" "$input"
  target/release/micn prepare "${source_args[@]}" --protocol din --max-hist-len 20 --seed 1 --out "$out/data"
  target/release/micn data export "$out/data" --out "$out/arrays" --max-hist-len 20
}

# `remove_earlier_samples OUT INPUT` removes what an earlier comparison left in OUT: a dataset
# made from a file of INPUT's name (its dataset.json names it) and an export (export.json).
# Anything else at OUT/data or OUT/arrays (a dataset of a user's own, `OUT=.` beside `data/`) is
# left where it is, for `micn prepare` or `micn data export` to refuse.
remove_earlier_samples() {
  local out=$1 input=$2
  if [[ -f $out/data/dataset.json ]] && grep -qF "\"file\": \"$(basename "$input")\"" "$out/data/dataset.json"; then
    rm -rf "$out/data"
  fi
  if [[ -f $out/arrays/export.json ]]; then
    rm -rf "$out/arrays"
  fi
}
