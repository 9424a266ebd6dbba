/* Measured per-core arithmetic peak of this x86 CPU (AVX2), for benchmarks/peak.py.
 *
 * Each loop keeps its operands in registers (no loads) and has enough independent accumulators
 * to cover the instruction latency, so it runs at the issue rate of the instruction:
 *   fp32   vfmadd231ps ymm                         (2 ops per lane: multiply + add)
 *   int16  vpmaddwd + vpaddd, int16 pairs -> int32 (tvm_mpq's exact integer path)
 *   u8s8   vpmaddubsw + vpmaddwd(ones) + vpaddd    (ONNX Runtime's AVX2 u8 x s8 path; its int16
 *          pair sums saturate, so tvm_mpq uses it only where they cannot: int4 weights)
 * Built with -mavx512vnni -mavx512vl (peak.py does so only where the CPU has them), two more:
 *   u8s8_vnni   vpdpbusd ymm (32 exact u8 x s8 multiply-adds per instruction: tvm_mpq's VNNI path)
 *   int16_vnni  vpdpwssd ymm (16 int16 multiply-adds per instruction)
 * Time is the CPU time of the calling thread; the best of --repeat runs is printed as JSON.
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

static double fp32_gops(long n) {
  __m256 f[12];
  __m256 a = _mm256_set1_ps(1.0f), b = _mm256_set1_ps(1e-9f);
  for (int i = 0; i < 12; i++) f[i] = _mm256_set1_ps((float)i);
  double t0 = cpu_now();
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) f[i] = _mm256_fmadd_ps(a, b, f[i]);
    __asm__ volatile("" : "+x"(a), "+x"(b));
  }
  double s = cpu_now() - t0;
  float acc = 0;
  for (int i = 0; i < 12; i++) acc += f[i][0];
  sink = (int)acc;
  return n * 12.0 * 8 * 2 / s / 1e9;
}

static double int16_gops(long n) {
  __m256i a[6], w[6];
  __m256i x = _mm256_set1_epi16(5);
  for (int i = 0; i < 6; i++) { a[i] = _mm256_setzero_si256(); w[i] = _mm256_set1_epi16((short)(i + 1)); }
  double t0 = cpu_now();
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 6
    for (int i = 0; i < 6; i++) a[i] = _mm256_add_epi32(a[i], _mm256_madd_epi16(w[i], x));
    __asm__ volatile("" : "+x"(x));
  }
  double s = cpu_now() - t0;
  int acc = 0;
  for (int i = 0; i < 6; i++) acc += _mm256_extract_epi32(a[i], 0);
  sink = acc;
  return n * 6.0 * 16 * 2 / s / 1e9;
}

static double u8s8_gops(long n) {
  __m256i a[5], w[5];
  __m256i x = _mm256_set1_epi8(5), ones = _mm256_set1_epi16(1);
  for (int i = 0; i < 5; i++) { a[i] = _mm256_setzero_si256(); w[i] = _mm256_set1_epi8((char)(i + 1)); }
  double t0 = cpu_now();
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 5
    for (int i = 0; i < 5; i++)
      a[i] = _mm256_add_epi32(a[i], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w[i]), ones));
    __asm__ volatile("" : "+x"(x));
  }
  double s = cpu_now() - t0;
  int acc = 0;
  for (int i = 0; i < 5; i++) acc += _mm256_extract_epi32(a[i], 0);
  sink = acc;
  return n * 5.0 * 32 * 2 / s / 1e9;
}

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
static double vnni_gops(long n, int words) {
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
#endif

int main(int argc, char** argv) {
  int repeat = argc > 1 ? atoi(argv[1]) : 5;
  long n = 20000000;
  double best[5] = {0, 0, 0, 0, 0};
  for (int r = 0; r < repeat; r++) {
    double g[5] = {fp32_gops(n), int16_gops(n), u8s8_gops(n), 0, 0};
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    g[3] = vnni_gops(n, 0);
    g[4] = vnni_gops(n, 1);
#endif
    for (int i = 0; i < 5; i++) best[i] = g[i] > best[i] ? g[i] : best[i];
  }
  printf("{\"fp32\": %.1f, \"int16_pairs\": %.1f, \"u8s8_saturating\": %.1f", best[0], best[1], best[2]);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  printf(", \"u8s8_vnni\": %.1f, \"int16_vnni\": %.1f", best[3], best[4]);
#endif
  printf("}\n");
  return 0;
}
