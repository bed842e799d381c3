# Sourced by the scripts: settings shared by builds, tests and the demo.
#
# Older OpenBLAS builds pick wrong kernels on some recent CPUs; forcing the Haswell
# (AVX2) kernels is the known-good setting.  Respect values the environment already has.
if [ -z "${OPENBLAS_CORETYPE:-}" ] && grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
  export OPENBLAS_CORETYPE=Haswell
fi
GRAFT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GRAFT_JOBS="$(nproc 2>/dev/null || echo 2)"
