/* Measured per-core peak of the AVX512-VNNI dot-product steps tvm_mpq's VNNI kernels use
 * (targets/x86.py), for benchmarks/peak.py -- built and run only where the CPU has VNNI:
 *   u8s8   vpdpbusd ymm  (32 exact u8 x s8 multiply-adds per instruction into 8 int32)
 *   int16  vpdpwssd ymm  (16 int16 x int16 multiply-adds per instruction into 8 int32)
 * Register-only loops with enough accumulators to cover the latency, as in peak_avx2.c; the
 * best of --repeat runs is printed as JSON.
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double cpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static volatile int sink;

static double dot_gops(long n, int words) {
  __m256i a[10], w[10];
  __m256i x = _mm256_set1_epi8(5);
  for (int i = 0; i < 10; i++) { a[i] = _mm256_setzero_si256(); w[i] = _mm256_set1_epi8((char)(i + 1)); }
  double t0 = cpu_now();
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 10
    for (int i = 0; i < 10; i++)
      a[i] = words ? _mm256_dpwssd_epi32(a[i], w[i], x) : _mm256_dpbusd_epi32(a[i], x, w[i]);
    __asm__ volatile("" : "+x"(x));
  }
  double s = cpu_now() - t0;
  int acc = 0;
  for (int i = 0; i < 10; i++) acc += _mm256_extract_epi32(a[i], 0);
  sink = acc;
  return n * 10.0 * (words ? 16 : 32) * 2 / s / 1e9;
}

int main(int argc, char** argv) {
  int repeat = argc > 1 ? atoi(argv[1]) : 5;
  long n = 20000000;
  double best[2] = {0, 0};
  for (int r = 0; r < repeat; r++) {
    double g[2] = {dot_gops(n, 0), dot_gops(n, 1)};
    for (int i = 0; i < 2; i++) best[i] = g[i] > best[i] ? g[i] : best[i];
  }
  printf("{\"u8s8_vnni\": %.1f, \"int16_vnni\": %.1f}\n", best[0], best[1]);
  return 0;
}
