#!/usr/bin/env bash
# Fit table for the README: every config on every target, compiled ahead of time on this machine.
#
#   launch/aot_table.sh [OUT_DIR] [README.md]
#   CONFIGS="gpt1 gpt2_medium" TOPOLOGIES="v5e-8" launch/aot_table.sh   # a smaller grid
#   RENDER_ONLY=1 launch/aot_table.sh OUT_DIR   # only rewrite the table from the reports there
#   TOPOLOGIES="h200" PYTHONPATH=/path/to/cuda_plugin launch/aot_table.sh   # 8 GPUs, one host
#
# Per (config, target): the largest power-of-2 global batch that fits with remat=none, and the
# cheapest remat (none < dots < block) that fits the config's own batch, each with its per-chip
# memory and collectives. Each config compiles as it is (its dtype, mesh, model.scan_layers: GPT-1
# unrolled, the GPT-2 widths scanned) with --effort=auto (EFFORT=full for the
# job's exact plans everywhere): a fit is judged on the fast compile's plan, an upper estimate,
# and every "does not fit" on the full compile. The eval step is not compiled. Reports land in
# OUT_DIR as JSON; a rerun reuses them, so an interrupted table resumes where it stopped.
set -euo pipefail
OUT=${1:-aot_runs}
DOC=${2:-README.md}
CONFIGS=${CONFIGS:-"gpt1 gpt2_medium gpt2_large"}
TOPOLOGIES=${TOPOLOGIES:-"v5e-8 v5p-8 v6e-8 v4-32"}
PYTHON=${PYTHON:-python}
EFFORT=${EFFORT:-auto}
mkdir -p "$OUT"

compile() {  # compile NAME CONFIG TOPOLOGY ARGS...: OUT/NAME.json; status 0 fits, 1 does not
  local name=$1 config=$2 topology=$3; shift 3
  local gpus=()
  [[ $topology == h* || $topology == a100* ]] && gpus=(--num_gpus=8)
  if [[ ! -s "$OUT/$name.json" ]]; then
    local effort error
    for effort in "$EFFORT" full; do
      "$PYTHON" -m gpt1_jax.cli.aot --config="configs/$config.py" --topology="$topology" "${gpus[@]}" \
        --effort="$effort" --eval_step=False "$@" \
        --out="$OUT/$name.json.tmp" >"$OUT/$name.log" 2>&1 || true
      error=$(grep -m1 '^error: ' "$OUT/$name.log" || true)
      # Retried at full effort only after a crash (no report, no error line): libtpu 0.0.42.1
      # has crashed (SIGSEGV) in a fast compile that compiles at full effort (gpt2_large,
      # remat=block, v5e-8). An error line would only repeat itself.
      [[ -s "$OUT/$name.json.tmp" || -n $error || $effort == full ]] && break
      mv "$OUT/$name.log" "$OUT/$name.fast.log"
    done
    [[ -s "$OUT/$name.json.tmp" ]] && mv "$OUT/$name.json.tmp" "$OUT/$name.json"
    # A config the target cannot run at all (e.g. a mesh larger than the slice) is a finding
    # too: its one error line is kept as the report, so the table shows it.
    if [[ ! -s "$OUT/$name.json" && -n $error ]]; then
      "$PYTHON" -c 'import json,sys; json.dump({"fits": False, "error": sys.argv[1][7:]}, open(sys.argv[2], "w"))' \
        "$error" "$OUT/$name.json"
    fi
  fi
  [[ -s "$OUT/$name.json" ]] && "$PYTHON" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["fits"] else 1)' "$OUT/$name.json"
}

for config in $CONFIGS; do
  [[ -n ${RENDER_ONLY:-} ]] && break
  batch=$("$PYTHON" -c "from gpt1_jax import config_files; print(config_files.load('configs/$config.py').train.batch_size)")
  for topology in $TOPOLOGIES; do
    # The cheapest remat that fits the config's batch.
    for remat in none dots block; do
      if compile "$config.$topology.remat_$remat.b$batch" "$config" "$topology" \
          --config.model.remat=$remat --config.train.batch_size="$batch"; then break; fi
    done
    # The largest power-of-2 batch without remat: from the config's batch (already compiled
    # above), doubling while it fits, else halving until it does.
    b=$batch
    if compile "$config.$topology.remat_none.b$b" "$config" "$topology" \
        --config.model.remat=none --config.train.batch_size=$b; then
      while (( b < 8192 )) && compile "$config.$topology.remat_none.b$((b * 2))" "$config" "$topology" \
          --config.model.remat=none --config.train.batch_size=$((b * 2)); do
        b=$((b * 2))
      done
    else
      while (( b > 1 )); do
        b=$((b / 2))
        compile "$config.$topology.remat_none.b$b" "$config" "$topology" \
          --config.model.remat=none --config.train.batch_size=$b && break
      done
    fi
  done
done

"$PYTHON" - "$OUT" "$DOC" <<'PY'
import collections, glob, json, os, re, sys
from gpt1_jax import config_files
out, doc = sys.argv[1:]
runs = collections.defaultdict(list)
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    config, topology, remat, batch = re.match(r"(.+)\.(.+)\.remat_(\w+)\.b(\d+)\.json", os.path.basename(path)).groups()
    runs[config, topology].append((remat, int(batch), json.load(open(path))))
gib = lambda n: f"{n / 2**30:.1f}"
def coll(r):
    return ", ".join(f"{k} {v['count']}x / {v['bytes'] / 2**20:,.0f} MiB" for k, v in sorted(r["collectives"].items())) or "none"
def mesh(m):
    return " x ".join(f"{axis} {size}" for axis, size in m.items() if size > 1) or "1 device"
rows = ["| config | target | mesh | largest batch, remat=none (GiB/chip) | config batch: cheapest remat (GiB/chip of HBM) | collectives per step and chip | compile CPU s, plan |",
        "|---|---|---|---:|---|---|---:|"]
for (config, topology), rs in sorted(runs.items()):
    errors = [r["error"] for m, b, r in rs if "error" in r]
    if errors and all("error" in r for m, b, r in rs):
        rows.append(f"| {config} | {topology} | | does not run: {errors[0]} | | | |")
        continue
    rs = [(m, b, r) for m, b, r in rs if "error" not in r]
    fits_none = [(b, r) for m, b, r in rs if m == "none" and r["fits"]]
    largest = max(fits_none, key=lambda x: x[0], default=None)
    order = {"none": 0, "dots": 1, "block": 2}
    default = config_files.load(f"configs/{config}.py").train.batch_size
    config_batch = [(m, r) for m, b, r in rs if b == default]
    own = sorted([x for x in config_batch if x[1]["fits"]], key=lambda x: order[x[0]])
    cheapest = own[0] if own else None
    # A search the run did not finish: the next batch up / the costlier remats not compiled yet.
    tried = {(m, b): r for m, b, r in rs}
    open_top = largest is not None and ("none", 2 * largest[0]) not in tried and largest[0] < 8192
    remats_done = all((m, default) in tried for m in order)
    if cheapest is None and not remats_done:
        own_text = f"{default}: not finished"
    elif cheapest is None:
        own_text = f"{default}: does not fit"
    else:
        own_text = f"{default}: {cheapest[0]} ({gib(cheapest[1]['per_chip_bytes']['total'])} of {gib(cheapest[1]['hbm_bytes'])})"
    if largest:
        largest_text = ("≥ " if open_top else "") + f"{largest[0]} ({gib(largest[1]['per_chip_bytes']['total'])})"
    else:
        largest_text = "none fits" if ("none", 1) in tried else "not finished"
    ref = cheapest[1] if cheapest else (largest[1] if largest else rs[0][2])
    rows.append(f"| {config} | {topology} | {mesh(ref['mesh'])} | {largest_text} | {own_text}"
                + f" | {coll(ref)} | {ref['compile_cpu_seconds']:.0f}, {ref.get('effort', 'full')} |")
table = "\n".join(rows) + "\n"
text = open(doc).read() if os.path.exists(doc) else ""
begin, end = "<!-- aot_table begin -->", "<!-- aot_table end -->"
if begin in text:
    text = text[:text.index(begin) + len(begin)] + "\n" + table + text[text.index(end):]
else:
    text += f"\n{begin}\n{table}{end}\n"
open(doc, "w").write(text)
print(table)
PY
