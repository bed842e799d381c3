/* dtype_convert.h — converting the element types of checkpoint files (safetensors,
 * .pth) to and from graft's float32 and int64.
 *
 * Floating point:
 *   - F16 (IEEE binary16) and BF16 (bfloat16) widen to float32 exactly: subnormals,
 *     signed zeros, infinities and NaN payloads are kept.
 *   - F64 narrows to float32 like a C cast under the default rounding mode: round to
 *     nearest, ties to even; beyond the float range it becomes +-inf.
 *   - float32 narrows to F16 or BF16 rounding to nearest, ties to even, into subnormals
 *     where needed; magnitudes that round past the largest finite value become +-inf.
 *     A NaN stays a NaN of the same sign, quieted, with the top bits of its payload
 *     (what x86 F16C and ARM conversions do).
 * Integers widen to int64 with their value (sign-extended when signed).
 *
 * The bulk functions read and write little-endian bytes (the byte order of
 * safetensors and of PyTorch's storages) at any alignment, on any host. */
#ifndef GRAFT_IO_DTYPE_CONVERT_H
#define GRAFT_IO_DTYPE_CONVERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- one value --------------------------------------------------------------- */

float graft_f16_to_f32(uint16_t h);
float graft_bf16_to_f32(uint16_t b);
uint16_t graft_f32_to_f16(float f);
uint16_t graft_f32_to_bf16(float f);
float graft_f64_to_f32(double d);

/* ---- arrays of little-endian bytes ------------------------------------------- */

/* n elements of src (2, 2, 8 and 4 bytes each) into dst. */
void graft_f16le_to_f32(const unsigned char *src, float *dst, size_t n);
void graft_bf16le_to_f32(const unsigned char *src, float *dst, size_t n);
void graft_f64le_to_f32(const unsigned char *src, float *dst, size_t n);
void graft_f32le_to_f32(const unsigned char *src, float *dst, size_t n);

/* n floats into 2n bytes of dst. */
void graft_f32_to_f16le(const float *src, unsigned char *dst, size_t n);
void graft_f32_to_bf16le(const float *src, unsigned char *dst, size_t n);

/* n integers of elem_bytes (1, 2, 4 or 8) each, signed or not, into int64.  Returns n,
 * or the index of the first element that int64 cannot hold (an unsigned 64-bit value
 * above INT64_MAX); elements before it are converted. */
size_t graft_intle_to_i64(const unsigned char *src, size_t elem_bytes, bool is_signed,
                          int64_t *dst, size_t n);
/* n one-byte booleans into int64 0 or 1 (any non-zero byte is true). */
void graft_bool_to_i64(const unsigned char *src, int64_t *dst, size_t n);

#endif
