//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// oracle: a deliberately simple reference for tcprtt's numbers, loaded only
// by tests (internal/oracle). It attaches to the same hook as tcprtt, reads
// the socket with tcprtt's own code (socket.h), keys the sample by tcprtt's
// series key (series.h's filters and mask, the cgroup id when grouped) and
// adds it with atomics to one hash map:
//
//   counts  hash  {series key, word} -> u64
//                 word WORD_SUM: the exact sum of raw srtt (1/8 µs)
//                 word WORD_ZERO: samples with srtt 0
//                 word p: samples in bucket position p (bucket.h, the
//                 position relative to raw == 1, as tcprtt's row words)
//
// No cache, no windows, no free queue, no overflow: every sample lands in
// its series' words at once, so after traffic stops the map holds, per
// series, exactly what tcprtt's exported points must add up to. A sample
// that cannot be placed (the map full, a read failed) counts in errors,
// which tests require to stay 0.

#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#include "kernel.h"

// The config bits, as tcprtt.bpf.c defines them (kmaps.Group*, kmaps.Filter*).
#define GROUP_LOCAL_ADDR (1 << 0)
#define GROUP_REMOTE_ADDR (1 << 1)
#define GROUP_LOCAL_PORT (1 << 2)
#define GROUP_REMOTE_PORT (1 << 3)
#define GROUP_CGROUP (1 << 4)

#define FILTER_LOCAL_PORT (1 << 0)
#define FILTER_REMOTE_PORT (1 << 1)
#define FILTER_LOCAL_ADDR (1 << 2)
#define FILTER_REMOTE_ADDR (1 << 3)

// Set by the test loader before load, to tcprtt's values for the same spec.
const volatile __u32 cfg_group_by = GROUP_REMOTE_ADDR;
const volatile __u32 cfg_filters = 0;
const volatile __u32 cfg_family = 0;
const volatile bool cfg_rdonly_cast = true;

#include "bucket.h" // cfg_scale, cfg_buckets, bucket_position

// tcprtt's series key (tcprtt.bpf.c), field for field.
struct series_key {
	__u8 local_addr[16];
	__u8 remote_addr[16];
	__u16 local_port;
	__u16 remote_port;
	__u8 family;
	__u8 pad[3];
	__u64 cgroup;
} __attribute__((aligned(8)));

struct addr_filter_key {
	__u32 prefixlen;
	__u8 direction;
	__u8 addr[16];
};

// Only so that socket.h (same_v6) and series.h (lookup_series) compile:
// the oracle never calls what uses them, so nothing of them is emitted.
struct cache_entry {
	__u8 v6_daddr[16];
	__u8 v6_rcv_saddr[16];
};
struct series_ref {
	__u32 slot;
};
extern int series_index, free_slots;
extern const volatile __u32 cfg_max_series;
#define SLOT_FILTERED 0xffffffff

#define WORD_ZERO 0xfffffffe
#define WORD_SUM 0xffffffff

struct oracle_key {
	struct series_key series;
	__u32 word; // a bucket position, WORD_ZERO or WORD_SUM
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); // set by the loader
	__type(key, struct oracle_key);
	__type(value, __u64);
} counts SEC(".maps");

// STAT_ERRORS: samples not counted (expected 0); STAT_FILTERED: samples
// of sockets the filters exclude; STAT_COUNTED: samples counted, so tests
// can tell a quiet moment (no sample of theirs while they read). Shared
// words, added to atomically.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

// tcprtt's filter maps, filled the same way.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2048);
	__type(key, __u32);
	__type(value, __u64);
} port_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1); // set by the loader
	__type(key, struct addr_filter_key);
	__type(value, __u8);
} addr_filter SEC(".maps");

#include "socket.h"
#include "series.h"

#define STAT_ERRORS 0
#define STAT_FILTERED 1
#define STAT_COUNTED 2

static __always_inline void count_stat(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &which);

	if (v)
		__sync_fetch_and_add(v, 1);
}

// add adds n to the word of key, creating it at 0 first. BPF_NOEXIST
// loses to another CPU creating it at the same time, which is fine: the
// add then goes to that CPU's element.
static __always_inline bool add(struct oracle_key *key, __u64 n)
{
	__u64 zero = 0, *v = bpf_map_lookup_elem(&counts, key);

	if (!v) {
		bpf_map_update_elem(&counts, key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&counts, key);
		if (!v)
			return false;
	}
	__sync_fetch_and_add(v, n); // result unused: a plain atomic add on every kernel
	return true;
}

static __always_inline int record(struct sock *sk, const bool btf)
{
	struct oracle_key key = {};
	__u32 raw;

	if (!sk || !read_srtt(sk, btf, &raw) || !read_tuple(sk, btf, &key.series)) {
		count_stat(STAT_ERRORS);
		return 0;
	}
	// As series.h's resolve, without the index.
	if (!tuple_allowed(&key.series)) {
		count_stat(STAT_FILTERED);
		return 0;
	}
	mask_tuple(&key.series);
	if (cfg_group_by & GROUP_CGROUP)
		key.series.cgroup = read_cgroup_id(sk);

	key.word = raw ? bucket_position(raw) : WORD_ZERO;
	if (!add(&key, 1)) {
		count_stat(STAT_ERRORS);
		return 0;
	}
	key.word = WORD_SUM;
	if (!add(&key, raw)) {
		count_stat(STAT_ERRORS);
		return 0;
	}
	count_stat(STAT_COUNTED);
	return 0;
}

// The hooks, with tcprtt's section names and arguments.
SEC("fentry/tcp_rcv_established")
int BPF_PROG(oracle_fentry, struct sock *sk)
{
	return record(sk, true);
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(oracle_tp_btf, struct sock *sk)
{
	return record(sk, true);
}

SEC("raw_tp/tcp_probe")
int oracle_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	return record((struct sock *)ctx->args[0], false);
}

SEC("tracepoint/tcp/tcp_probe")
int oracle_tracepoint(struct trace_event_raw_tcp_probe *ctx)
{
	if (!bpf_core_field_exists(ctx->skaddr)) {
		count_stat(STAT_ERRORS);
		return 0;
	}
	return record((struct sock *)BPF_CORE_READ(ctx, skaddr), false);
}
