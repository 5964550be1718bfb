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
//   bench_variant    tcprtt's per-segment path (per-CPU socket cache, row,
//                    per-CPU sum) with parts switched off or moved by
//                    cfg_variant (constant at load, so the verifier drops
//                    the unused branches): what each cache line the path
//                    touches costs on this host, and what waits for what.
//
// Kept apart from tcprtt.bpf.c so that the product object holds only what
// the receiver loads.

#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "bucket.h"

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

// libbpf-tools bits.bpf.h (its log2_u32 is bucket.h's)
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
// A per-segment path like tcprtt_tp_btf's for one socket, grouped by
// remote address, on maps of its own: a per-CPU cache entry indexed by
// skc_hash holding the socket's address and port words and its slot
// (found, on a miss, by remote address in a hash, the next slot on first
// sight), then, with no flags, an atomic add to the bucket word of the
// slot's shared row and an add to this CPU's sum (tcprtt's path for a
// sample outside its entry's window, and its whole path before it counted
// in the entry; V_IN_ENTRY is the way it counts now). cfg_variant switches
// parts off or moves them (constant at load, so the verifier drops the
// unused branches): what each cache line the path touches costs, and what
// waits for what.

#define V_READS_ONLY (1 << 0)   // read srtt and the socket's identity, nothing else
#define V_CONFIG_INDEX (1 << 1) // entry index from a config load (the cache size in .rodata)
#define V_EPOCH (1 << 2)        // entry also checked against an epoch word (its own line)
#define V_NO_COUNT (1 << 3)     // stop once the slot is known
#define V_NO_SUM (1 << 4)       // bucket add only
#define V_IN_ENTRY (1 << 5)     // count and sum in the entry's own line, no row
#define V_NO_TABLE (1 << 6)     // bucket from the octave alone, no table read

#define ROW_BUCKETS 2
#define V_CACHE_ENTRIES 1024 // per CPU, as tcprtt's CACHE_ENTRIES

const volatile __u32 cfg_variant = 0;
const volatile __u32 cfg_stride = 0; // words per row
const volatile __u32 cfg_sum_stride = 0; // sums per CPU
const volatile __u32 cfg_cache_entries = V_CACHE_ENTRIES;

struct sock_common___v {
	union {
		__u64 skc_addrpair;
	};
	unsigned int skc_hash;
	__u32 skc_portpair;
	short unsigned int skc_family;
} __attribute__((preserve_access_index));

struct sock___v {
	struct sock_common___v __sk_common;
} __attribute__((preserve_access_index));

struct ventry {
	__u64 addrpair;
	__u32 portpair;
	__u32 family;
	__u32 slot;
	__u32 epoch;
	__u64 sum;         // V_IN_ENTRY only
	__u64 counts[4];   // V_IN_ENTRY only
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
	__uint(map_flags, BPF_F_MMAPABLE); // as tcprtt's counts
	__uint(max_entries, 1); // set by benchtool: rows * cfg_stride
	__type(key, __u32);
	__type(value, __u64);
} variant_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); // as tcprtt's cpu_sums
	__uint(max_entries, 1); // set by benchtool: CPUs * cfg_sum_stride
	__type(key, __u32);
	__type(value, __u64);
} variant_sums SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); // as tcprtt's sk_cache
	__uint(max_entries, 1); // set by benchtool: CPUs * V_CACHE_ENTRIES
	__type(key, __u32);
	__type(value, struct ventry);
} variant_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); // as tcprtt's epoch word was
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} variant_epoch SEC(".maps");

#define V(flag) (cfg_variant & (flag))

// variant_slot finds the series of a socket by its remote address, giving
// it the next slot on first sight.
static __always_inline __u32 variant_slot(struct sock *sk)
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
	if (found)
		return *found;
	next = __sync_fetch_and_add(&variant_next_slot, 1);
	bpf_map_update_elem(&variant_index, &key, &next, BPF_NOEXIST);
	found = bpf_map_lookup_elem(&variant_index, &key);
	return found ? *found : 0;
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(bench_variant, struct sock *sk)
{
	struct sock___v *s;
	struct ventry *e;
	__u64 addrpair, *w;
	__u32 raw, portpair, family, hash, cpu, index, slot, now = 0, zero = 0, word;

	if (!&bpf_rdonly_cast)
		return 0;
	raw = ((struct tcp_sock *)bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock)))->srtt_us;
	s = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct sock___v));
	addrpair = s->__sk_common.skc_addrpair;
	portpair = s->__sk_common.skc_portpair;
	family = s->__sk_common.skc_family;
	hash = s->__sk_common.skc_hash;
	if (V(V_READS_ONLY))
		return raw ^ addrpair ^ portpair ^ family ^ hash;

	if (V(V_EPOCH)) {
		w = bpf_map_lookup_elem(&variant_epoch, &zero);
		if (!w)
			return 0;
		now = *w;
	}
	cpu = bpf_get_smp_processor_id();
	if (V(V_CONFIG_INDEX))
		index = cpu * cfg_cache_entries + (hash & (cfg_cache_entries - 1));
	else
		index = cpu * V_CACHE_ENTRIES + (hash & (V_CACHE_ENTRIES - 1));
	e = bpf_map_lookup_elem(&variant_cache, &index);
	if (!e)
		return 0;
	if (e->addrpair == addrpair && e->portpair == portpair && e->family == family && e->epoch == now) {
		slot = e->slot;
	} else {
		slot = variant_slot(sk);
		e->addrpair = addrpair;
		e->portpair = portpair;
		e->family = family;
		e->epoch = now;
		e->slot = slot;
	}
	if (V(V_NO_COUNT))
		return slot ^ raw;

	word = 1;
	if (raw)
		word = ROW_BUCKETS + (V(V_NO_TABLE) ? log2_u32(raw) << cfg_scale : bucket_position(raw));
	if (V(V_IN_ENTRY)) {
		e->counts[word & 3] += 1; // per-CPU line: no atomic
		e->sum += raw;
		return 0;
	}
	index = slot * cfg_stride + word;
	w = bpf_map_lookup_elem(&variant_counts, &index);
	if (w)
		__sync_fetch_and_add(w, 1);
	if (!V(V_NO_SUM)) {
		index = cpu * cfg_sum_stride + slot;
		w = bpf_map_lookup_elem(&variant_sums, &index);
		if (w)
			*w += raw;
	}
	return 0;
}
