#!/usr/bin/env bash
# Builds the job shim (`base-shim`) the way worker nodes need it: one static
# executable with no shared library, so it runs inside any job image — even
# `FROM scratch` or musl-based ones — once the broker bind-mounts it there.
# Size-optimized (profile `shim`). Prints the binary's path.
#
# Install it on every worker at the path BASE_SWARM_JOB_SHIM names (default
# /usr/local/lib/base/base-shim), e.g.
#   install -D -m 0755 "$(scripts/build-shim.sh)" /usr/local/lib/base/base-shim
# See docs/workers.md.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Static glibc (`crt-static`) and no PIE: the shim must not need a loader or
# libraries from the job's image. Only the final binary gets these flags.
cargo rustc --quiet -p base-shim --bin base-shim --profile shim -- \
    -C target-feature=+crt-static -C relocation-model=static >&2
bin="${CARGO_TARGET_DIR:-$root/target}/shim/base-shim"
if ldd "$bin" >/dev/null 2>&1; then
    echo "build-shim: $bin is not static" >&2
    exit 1
fi
echo "$bin"
