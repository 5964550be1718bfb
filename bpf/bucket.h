// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// The exact bucket of a raw srtt: the table the loader computes in Go
// (internal/bucket) for the configured scale and unit, and its lookup.
// Included once by tcprtt.bpf.c and by bench.bpf.c, whose variant counts
// the same way.

#ifndef TCPRTT_BUCKET_H
#define TCPRTT_BUCKET_H

#define BUCKET_TABLE_SIZE 512

struct bucket_entry {
	__u32 base;
	__u32 threshold;
};

// Set by the loader before load (read-only afterwards, so the verifier
// treats them as constants).
const volatile __u32 cfg_scale = 3;
const volatile struct bucket_entry cfg_buckets[BUCKET_TABLE_SIZE] = {};

static __always_inline __u32 log2_u32(__u32 v)
{
	__u32 r, shift;

	r = (v > 0xFFFF) << 4;
	v >>= r;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

// bucket_position returns the bucket of raw (> 0) relative to the bucket
// of raw == 1. Doubling raw moves it exactly 2^scale buckets up, so the
// octave gives the coarse position and one table read plus one compare on
// the normalised mantissa gives the exact bucket (see internal/bucket).
static __always_inline __u32 bucket_position(__u32 raw)
{
	__u32 k = log2_u32(raw);
	__u32 norm = raw << (31 - k);
	__u32 t = (norm >> 22) & (BUCKET_TABLE_SIZE - 1);
	__u32 pos = (k << cfg_scale) + cfg_buckets[t].base;

	if (norm > cfg_buckets[t].threshold)
		pos++;
	return pos;
}

#endif
