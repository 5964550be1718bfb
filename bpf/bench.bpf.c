//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Benchmark-only programs (make bench), on the same hook as tcprtt's
// tp_btf program and never attached by the receiver:
//
//   bench_empty      does nothing: the hook's own cost.
//   bench_reference  built like bcc/libbpf-tools tcprtt in its
//                    per-remote-address mode (-B): per segment read the
//                    family and remote address and srtt_us >> 3 (µs) with
//                    BPF_CORE_READ, as the tool does; a hash lookup keyed by
//                    family + 16-byte address, inserted on first sight
//                    (bpf_map_lookup_or_try_init); a log2 slot; an atomic
//                    add. cfg_ref_direct = true reads through bpf_rdonly_cast
//                    instead, as tcprtt does, for a like-for-like variant.
//   bench_variant    today's cached tcprtt path with parts switched off or
//                    moved by cfg_variant (constant at load, so the verifier
//                    drops the unused branches): what each cache line the
//                    path touches costs on this host.
//
// Kept apart from tcprtt.bpf.c so that the product object holds only what
// the receiver loads.

#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	short unsigned int skc_family;
	struct in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 srtt_us;
} __attribute__((preserve_access_index));

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

SEC("tp_btf/tcp_probe")
int BPF_PROG(bench_empty, struct sock *sk)
{
	return 0;
}

// ---- bench_reference -------------------------------------------------

#define MAX_SLOTS 27 // libbpf-tools tcprtt.h
#define MAX_ENTRIES 10240

struct hist {
	__u64 latency;
	__u64 cnt;
	__u32 slots[MAX_SLOTS];
};

struct hist_key {
	__u16 family;
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct hist_key);
	__type(value, struct hist);
} hists SEC(".maps");

static struct hist zero;

const volatile bool cfg_ref_direct = false;

// libbpf-tools bits.bpf.h
static __always_inline __u64 log2_u32(__u32 v)
{
	__u32 shift, r;

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

static __always_inline __u64 log2l(__u64 v)
{
	__u32 hi = v >> 32;

	if (hi)
		return log2_u32(hi) + 32;
	return log2_u32(v);
}

// libbpf-tools maps.bpf.h
static __always_inline void *lookup_or_try_init(void *map, const void *key, const void *init)
{
	void *val = bpf_map_lookup_elem(map, key);
	long err;

	if (val)
		return val;
	err = bpf_map_update_elem(map, key, init, BPF_NOEXIST);
	if (err && err != -17) // -EEXIST: another CPU inserted it first
		return 0;
	return bpf_map_lookup_elem(map, key);
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(bench_reference, struct sock *sk)
{
	struct hist_key key = {};
	struct hist *histp;
	__u64 slot;
	__u32 srtt;

	if (cfg_ref_direct && &bpf_rdonly_cast) {
		struct sock *s = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct sock));
		struct tcp_sock *ts = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock));

		key.family = s->__sk_common.skc_family;
		if (key.family == AF_INET6)
			__builtin_memcpy(key.addr, &s->__sk_common.skc_v6_daddr, 16);
		else
			__builtin_memcpy(key.addr, &s->__sk_common.skc_daddr, 4);
		srtt = ts->srtt_us >> 3;
	} else {
		key.family = BPF_CORE_READ(sk, __sk_common.skc_family);
		if (key.family == AF_INET6)
			BPF_CORE_READ_INTO(&key.addr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
		else
			bpf_probe_read_kernel(&key.addr, 4, &sk->__sk_common.skc_daddr);
		srtt = BPF_CORE_READ((struct tcp_sock *)sk, srtt_us) >> 3;
	}

	histp = lookup_or_try_init(&hists, &key, &zero);
	if (!histp)
		return 0;
	slot = log2l(srtt);
	if (slot >= MAX_SLOTS)
		slot = MAX_SLOTS - 1;
	__sync_fetch_and_add(&histp->slots[slot], 1);
	return 0;
}

// ---- bench_variant ---------------------------------------------------
//
// The same per-segment work as tcprtt_tp_btf's cached path (socket
// storage -> row generation -> bucket word, per-CPU sum), on maps of its
// own. The miss path (first segment of a socket) finds the series by
// remote address in a hash and caches it in socket storage, like tcprtt.

#define V_NO_GEN (1 << 0)     // skip the row's generation check
#define V_NO_SUM (1 << 1)     // no sum at all
#define V_SUM_IN_ROW (1 << 2) // sum: atomic add to row word 1 (the generation's line), not per CPU
#define V_DIRECT (1 << 3)     // no socket storage: the series (slot 0) is known
#define V_NO_BUCKET (1 << 4)  // no bucket add
#define V_ONE_LINE (1 << 5)   // bucket word within the row's first line (words 2..7): cost probe only
#define V_NO_TABLE (1 << 6)   // bucket from the octave alone, no table read
#define V_PERCPU_ROW (1 << 7) // bucket counts in a per-CPU row (no line shared between CPUs)
#define V_SK_COUNTS (1 << 8)  // count in the socket's own storage (a 64-byte array), nothing else
#define V_ADDR_ROW (1 << 9)   // no socket storage: the row is found by a hash of the remote (v4)
                              // address, and its word 0 holds the address (claimed on first
                              // sight) instead of a generation: the key check is the validity check
#define V_SMALL_SK (1 << 10)  // socket storage value of 8 bytes, as tcprtt's series_ref

#define ROW_GENERATION 0
#define ROW_SUM 1 // only with V_SUM_IN_ROW
#define ROW_BUCKETS 2
#define ROW_MAX_WORDS 264
#define BUCKET_TABLE_SIZE 512

struct bucket_entry {
	__u32 base;
	__u32 threshold;
};

const volatile __u32 cfg_variant = 0;
const volatile __u32 cfg_scale = 3;
const volatile __u32 cfg_stride = ROW_MAX_WORDS; // words per row, <= ROW_MAX_WORDS
const volatile struct bucket_entry cfg_buckets[BUCKET_TABLE_SIZE] = {};

struct vref {
	__u32 slot;
	__u32 generation;
	__u64 counts[7]; // V_SK_COUNTS only; makes the value one 64-byte line
};

struct sref {
	__u32 slot;
	__u32 generation;
};

struct row {
	__u64 w[ROW_MAX_WORDS];
};

__u32 variant_next_slot = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct hist_key);
	__type(value, __u32);
} variant_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); // page-aligned rows, as tcprtt's counts
	__uint(max_entries, 1); // set by benchtool: rows * cfg_stride
	__type(key, __u32);
	__type(value, __u64);
} variant_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1); // set by benchtool: rows
	__type(key, __u32);
	__type(value, __u64);
} variant_sums SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1); // set by benchtool: rows (V_PERCPU_ROW only)
	__type(key, __u32);
	__type(value, struct row);
} variant_pcounts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct vref);
} variant_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sref);
} variant_sk8 SEC(".maps");

#define V(flag) (cfg_variant & (flag))

static __always_inline __u32 bucket_position(__u32 raw)
{
	__u32 k = log2_u32(raw);
	__u32 norm = raw << (31 - k);
	__u32 t = (norm >> 22) & (BUCKET_TABLE_SIZE - 1);
	__u32 pos;

	if (V(V_NO_TABLE))
		return k << cfg_scale;
	pos = (k << cfg_scale) + cfg_buckets[t].base;
	if (norm > cfg_buckets[t].threshold)
		pos++;
	return pos;
}

static __always_inline __u64 *row_word(__u32 slot, __u32 word)
{
	__u32 i = slot * cfg_stride + word;

	return bpf_map_lookup_elem(&variant_counts, &i);
}

// variant_slot finds the series of a socket seen for the first time by
// its remote address, giving it the next slot on first sight.
static __always_inline int variant_slot(struct sock *sk, __u32 *slot)
{
	struct sock *s = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct sock));
	struct hist_key key = {};
	__u32 *found, next;

	key.family = s->__sk_common.skc_family;
	if (key.family == AF_INET6)
		__builtin_memcpy(key.addr, &s->__sk_common.skc_v6_daddr, 16);
	else
		__builtin_memcpy(key.addr, &s->__sk_common.skc_daddr, 4);
	found = bpf_map_lookup_elem(&variant_index, &key);
	if (!found) {
		next = __sync_fetch_and_add(&variant_next_slot, 1);
		bpf_map_update_elem(&variant_index, &key, &next, BPF_NOEXIST);
		found = bpf_map_lookup_elem(&variant_index, &key);
		if (!found)
			return -1;
	}
	*slot = *found;
	return 0;
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(bench_variant, struct sock *sk)
{
	struct vref *cached = 0, direct = {};
	__u64 *w;
	__u32 raw, word;

	if (!&bpf_rdonly_cast)
		return 0;
	raw = ((struct tcp_sock *)bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock)))->srtt_us;

	if (V(V_DIRECT)) {
		cached = &direct;
	} else if (V(V_ADDR_ROW)) {
		struct sock *s = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct sock));
		__u32 daddr = s->__sk_common.skc_daddr;

		direct.slot = (daddr * 0x9E3779B1u) >> 22; // 1024 rows
		w = row_word(direct.slot, 0);
		if (!w)
			return 0;
		if (*w != daddr + 1 && __sync_val_compare_and_swap(w, 0, daddr + 1) != 0 && *w != daddr + 1)
			return 0; // taken by another address: tcprtt would probe on
		cached = &direct;
	} else if (V(V_SMALL_SK)) {
		struct sref *r = bpf_sk_storage_get(&variant_sk8, sk, 0, 0);

		if (!r) {
			struct sref init = {};

			if (variant_slot(sk, &init.slot))
				return 0;
			r = bpf_sk_storage_get(&variant_sk8, sk, &init, BPF_SK_STORAGE_GET_F_CREATE);
			if (!r)
				return 0;
		}
		direct.slot = r->slot;
		direct.generation = r->generation;
		cached = &direct;
	} else {
		cached = bpf_sk_storage_get(&variant_sk, sk, 0, 0);
		if (!cached) {
			struct vref init = {};

			if (variant_slot(sk, &init.slot))
				return 0;
			cached = bpf_sk_storage_get(&variant_sk, sk, &init, BPF_SK_STORAGE_GET_F_CREATE);
		}
		if (!cached)
			return 0;
	}
	if (V(V_SK_COUNTS)) {
		__sync_fetch_and_add(&cached->counts[raw & 3], 1);
		return 0;
	}
	if (!V(V_NO_GEN)) {
		w = row_word(cached->slot, ROW_GENERATION);
		if (!w || (__u32)*w != cached->generation)
			return 0;
	}

	word = 1;
	if (raw)
		word = ROW_BUCKETS + bucket_position(raw);
	if (V(V_ONE_LINE))
		word = ROW_BUCKETS + (word & 3);
	if (!V(V_NO_BUCKET)) {
		if (V(V_PERCPU_ROW)) {
			struct row *r = bpf_map_lookup_elem(&variant_pcounts, &cached->slot);

			if (r && word < ROW_MAX_WORDS)
				r->w[word] += 1;
		} else {
			w = row_word(cached->slot, word);
			if (w)
				__sync_fetch_and_add(w, 1);
		}
	}

	if (V(V_SUM_IN_ROW)) {
		w = row_word(cached->slot, ROW_SUM);
		if (w)
			__sync_fetch_and_add(w, raw);
	} else if (!V(V_NO_SUM)) {
		w = bpf_map_lookup_elem(&variant_sums, &cached->slot);
		if (w)
			*w += raw;
	}
	return 0;
}
