#!/usr/bin/env bash
# Lists every function of a binary that uses AVX-512 (zmm or opmask registers)
# outside the AVX-512 kernels (mf::isa_avx512::..., see src/core/isa_target.h).
# Meant for a portable build (-DMODFORMER_NATIVE=OFF, baseline x86-64-v3),
# where any such function could run on a CPU without AVX-512:
#   tools/check_isa_leaks.sh build-v3/modformer
# Exit status 0 when there is none, 1 when there are (they are printed).
set -euo pipefail
bin=${1:?usage: tools/check_isa_leaks.sh BINARY}
objdump -d -C --no-show-raw-insn "$bin" | awk '
  /^[0-9a-f]+ <.*>:$/ { fn = $0; sub(/^[0-9a-f]+ </, "", fn); sub(/>:$/, "", fn); next }
  /%zmm[0-9]|%k[1-7]/ { if (fn !~ /isa_avx512/ && !(fn in seen)) { seen[fn] = 1; print fn; bad = 1 } }
  END { exit bad ? 1 : 0 }'
