//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// tcprtt: on every segment received on an established TCP connection, put
// the socket's smoothed RTT (tcp_sock.srtt_us, in 1/8 µs) into an exact
// OpenTelemetry exponential-histogram bucket of the socket's series.
//
// Layout of the kernel state (all sized by user space before load):
//   series_index  hash   series key (masked 4-tuple) -> slot
//   free_slots    queue  slots not yet given to a series
//   counts        array  one row of u64 per slot: [unused, zero count,
//                        bucket 0, bucket 1, ...]; the last row
//                        (slot == cfg_max_series) is the overflow series
//   cpu_sums      array  per CPU and slot, the sum of raw srtt of samples
//                        counted in the row: each CPU adds to its own
//                        cache line, without atomics
//   sk_cache      array  per CPU, a direct-mapped cache indexed by the
//                        kernel's own hash of a socket's 4-tuple (skc_hash):
//                        the socket it holds (its address and port words
//                        as the socket has them), its slot, and the counts
//                        and sum of its samples in a window of eight row
//                        words around its RTT. A socket's segment touches
//                        only this line: no hashing, no map helper, no
//                        shared line. Samples outside the window, and
//                        sockets that find their entry held by another,
//                        go to the row (atomic) and this CPU's sum; after
//                        a few such samples the program moves the window
//                        (see rebase). Entries are handed back by user
//                        space only: it marks an entry to drain (idle, or
//                        its row retired), and one read later, when no
//                        program can still be counting into it, moves its
//                        counts into the row and frees it
//   stats         percpu array  samples filtered out, samples not placed
// Counts are only ever added to. They move from an entry to its row only
// by the program under the entry's sequence word, or by user space
// between its reads, so a read never counts a sample twice or misses one
// it counted before. The three arrays user space reads or writes while
// the program runs are mmapped.
//
// Parts, included once here: kernel.h (CO-RE views of the kernel's
// structs), socket.h (reading a socket), series.h (resolving it to its
// series), entry.h (counting in its cache entry); this file holds the
// layout, the config, the maps, the rows and the hooks.

#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#include "kernel.h"

// group_by bits (cfg_group_by) and filter bits (cfg_filters).
#define GROUP_LOCAL_ADDR (1 << 0)
#define GROUP_REMOTE_ADDR (1 << 1)
#define GROUP_LOCAL_PORT (1 << 2)
#define GROUP_REMOTE_PORT (1 << 3)
#define GROUP_CGROUP (1 << 4)

#define FILTER_LOCAL_PORT (1 << 0)
#define FILTER_REMOTE_PORT (1 << 1)
#define FILTER_LOCAL_ADDR (1 << 2)
#define FILTER_REMOTE_ADDR (1 << 3)

// Row layout of the counts array.
#define ROW_GENERATION 0 // user space's count of the row's reuses; never touched here
#define ROW_ZERO 1
#define ROW_BUCKETS 2

// Slot values of a cache entry (kmaps.CacheSlot*): below SLOT_DRAIN a
// row; SLOT_DRAIN | row: marked by user space to hand back (its counts
// still belong to the row); SLOT_FREE: no socket; SLOT_FILTERED: a
// filtered socket (nothing counted, so free to take).
#define SLOT_DRAIN 0x80000000
#define SLOT_FREE 0xfffffffe
#define SLOT_FILTERED 0xffffffff
#define ENTRY_COUNTS 8
// After this many samples in a row outside its window, an entry moves
// its counts to the row and centres the window on the sample: a socket's
// smoothed RTT settles away from where its first samples put it.
#define REBASE_AFTER 4

#define STAT_FILTERED 0
#define STAT_ERRORS 1
#define STAT_MAX 2

// Entries of the socket cache per CPU (a power of two). A compile-time
// constant, not configuration: the entry's address is then known from the
// socket's hash alone, and its load starts at once instead of waiting for
// a load of the config. On a host with busy caches every line the program
// alone touches is a miss, so what costs is how many misses wait for each
// other (make bench-variants: about 0.4x the empty program for this wait).
#define CACHE_ENTRIES 1024

// Set by the loader before load (read-only afterwards, so the verifier
// treats them as constants). The scalars come first, in one cache line:
// the table is read at one line per sample's octave slot.
const volatile __u32 cfg_group_by = GROUP_REMOTE_ADDR;
const volatile __u32 cfg_filters = 0;
const volatile __u32 cfg_family = 0; // 4 or 6: only that family; 0: both
const volatile __u32 cfg_stride = 0;
const volatile __u32 cfg_max_series = 0;
const volatile __u32 cfg_cache_entries = 0; // the loader's CACHE_ENTRIES, checked (kmaps.CacheEntriesPerCPU)
const volatile bool cfg_one_cache_entry = false; // tests: all sockets of a CPU share one entry
const volatile __u32 cfg_sum_stride = 0; // cpu_sums words per CPU (rows, rounded up to a cache line)
const volatile bool cfg_rdonly_cast = true; // direct socket reads where bpf_rdonly_cast exists
const volatile bool cfg_entry_counts = false;

#include "bucket.h" // cfg_scale and the table, after the other scalars

struct series_key {
	__u8 local_addr[16];  // IPv4 as ::ffff:a.b.c.d
	__u8 remote_addr[16];
	__u16 local_port;     // host byte order
	__u16 remote_port;
	__u8 family;          // 4, 6, or 0 when nothing is grouped
	__u8 pad[3];
	__u64 cgroup;         // cgroup v2 id, 0 unless GROUP_CGROUP
} __attribute__((aligned(8))); // its 4-tuple part compared as five u64 words

struct series_ref {
	__u32 slot;
	__u32 unused; // was a generation; kept so the index value stays 8 bytes
};

// One entry of the per-CPU socket cache. Its first cache line is all
// that the segment of an IPv4 socket touches; the second holds what only
// IPv6 sockets and cgroup grouping compare. The program writes an entry
// only when it takes a free (or filtered) one, and its counts and sum
// when it counts; user space writes only the slot of an entry it marks to
// drain and, one read later, the whole entry it frees (kmaps.CacheEntry*).
struct cache_entry {
	__u64 addrpair;  // skc_addrpair: the socket's remote and local IPv4 address
	__u32 portpair;  // skc_portpair: its remote and local port
	__u16 family;    // skc_family
	__u16 misses;    // samples in a row outside the window
	__u32 slot;      // see SLOT_*
	__u32 base;      // the row word counted by counts[0]
	__u64 sum;       // raw srtt of the samples counted here
	__u32 counts[ENTRY_COUNTS]; // row words base..base+7
	__u8 v6_daddr[16];     // AF_INET6 only
	__u8 v6_rcv_saddr[16]; // AF_INET6 only
	__u64 cgroup_word;     // sk_cgrp_data as read, when cgroup is grouped
	__u32 seq;             // odd while the program moves counts to the row
	__u32 seq_prev;        // seq's value before the last add (see bump_seq)
	__u32 unused[4];
};

// Address filter key: one trie for both directions, the direction byte
// first so a prefix never matches across them.
struct addr_filter_key {
	__u32 prefixlen;
	__u8 direction; // 0 local, 1 remote
	__u8 addr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); // set by the loader
	__type(key, struct series_key);
	__type(value, struct series_ref);
} series_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, 1); // set by the loader
	__type(value, __u32);
} free_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); // user space reads rows in place
	__uint(max_entries, 1); // set by the loader
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); // user space sums the CPUs in place
	__uint(max_entries, 1); // set by the loader: CPUs x cfg_sum_stride
	__type(key, __u32);
	__type(value, __u64);
} cpu_sums SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); // page-aligned: one entry, one cache line
	__uint(max_entries, 1); // set by the loader: CPUs x CACHE_ENTRIES
	__type(key, __u32);
	__type(value, struct cache_entry);
} sk_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

// Port filters: 65536 bits per direction (local words 0..1023, remote
// words 1024..2047).
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

static __always_inline void count_stats(__u32 which, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &which);
	if (v)
		*v += n; // per-CPU: no atomic needed
}

static __always_inline void count_stat(__u32 which)
{
	count_stats(which, 1);
}

static __always_inline __u64 *row_word(__u32 slot, __u32 word)
{
	__u32 i = slot * cfg_stride + word;

	return bpf_map_lookup_elem(&counts, &i);
}

// count_in_row adds one sample of raw to the row of slot, counted by cpu.
static __always_inline bool count_in_row(__u32 slot, __u32 raw, __u32 cpu)
{
	__u32 word = ROW_ZERO, sum_word = cpu * cfg_sum_stride + slot;
	__u64 *bucket, *sum;

	if (raw)
		word = ROW_BUCKETS + bucket_position(raw);
	bucket = row_word(slot, word);
	sum = bpf_map_lookup_elem(&cpu_sums, &sum_word);
	if (!bucket || !sum)
		return false;
	__sync_fetch_and_add(bucket, 1);
	*sum += raw; // this CPU's line: no atomic needed
	return true;
}

#include "socket.h"
#include "series.h"
#include "entry.h"

// record handles one segment. The socket's entry in this CPU's cache,
// when it holds the socket, counts the sample in its window; a free entry
// is taken after the socket's series is resolved (filters, then the
// series index); an entry held by another socket, or marked to drain,
// leaves the sample to the row.
static __always_inline int record(struct sock *sk, const bool btf)
{
	struct series_key tuple = {};
	struct cache_entry *e;
	struct sock_id id = {};
	__u32 raw, slot, index, cpu;
	__u64 cgroup_word = 0;

	// A loader built for another cache size counts every segment as an
	// error (the verifier drops this test when the sizes agree).
	if (cfg_cache_entries != CACHE_ENTRIES || !sk || !read_srtt(sk, btf, &raw)) {
		count_stat(STAT_ERRORS);
		return 0;
	}
	read_id(sk, btf, &id);
	cpu = bpf_get_smp_processor_id();
	index = cpu * CACHE_ENTRIES;
	if (!cfg_one_cache_entry)
		index += id.hash & (CACHE_ENTRIES - 1);
	e = bpf_map_lookup_elem(&sk_cache, &index);
	if (!e) {
		count_stat(STAT_ERRORS);
		return 0;
	}
	if (cfg_group_by & GROUP_CGROUP)
		cgroup_word = read_cgroup_word(sk);
	slot = e->slot;
	// An IPv4 socket's entry: the common path.
	if (holds(e, &id, cgroup_word) && id.family != AF_INET6 && count_in_entry(e, slot, raw, cpu))
		return 0;
	// Everything else needs the socket's full tuple.
	if (!read_tuple(sk, btf, &tuple)) {
		count_stat(STAT_ERRORS);
		return 0;
	}
	if (holds(e, &id, cgroup_word) && id.family == AF_INET6 && same_v6(e, &tuple) &&
	    count_in_entry(e, slot, raw, cpu))
		return 0;
	if (slot == SLOT_FREE || slot == SLOT_FILTERED) {
		slot = resolve(sk, &tuple);
		take(e, &id, &tuple, cgroup_word, slot, raw, cpu);
		if (slot == SLOT_FILTERED)
			count_stat(STAT_FILTERED);
		return 0;
	}
	// Held by another socket, or this socket's entry being drained.
	slot = resolve(sk, &tuple);
	if (slot == SLOT_FILTERED) {
		count_stat(STAT_FILTERED);
		return 0;
	}
	if (!count_in_row(slot, raw, cpu))
		count_stat(STAT_ERRORS);
	return 0;
}

SEC("fentry/tcp_rcv_established")
int BPF_PROG(tcprtt_fentry, struct sock *sk)
{
	return record(sk, true);
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(tcprtt_tp_btf, struct sock *sk)
{
	return record(sk, true);
}

SEC("raw_tp/tcp_probe")
int tcprtt_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	return record((struct sock *)ctx->args[0], false);
}

SEC("tracepoint/tcp/tcp_probe")
int tcprtt_tracepoint(struct trace_event_raw_tcp_probe *ctx)
{
	if (!bpf_core_field_exists(ctx->skaddr)) {
		count_stat(STAT_ERRORS);
		return 0;
	}
	return record((struct sock *)BPF_CORE_READ(ctx, skaddr), false);
}

#include "retrans.h"

// bucket_selftest maps the raw values of selftest[0] to bucket positions
// in selftest[1] with the same code the hooks use, so tests can check the kernel's bucket choice
// against the Go reference for any value (it is run with BPF_PROG_RUN and
// never attached).
#define SELFTEST_BATCH 1024

struct selftest_values {
	__u32 v[SELFTEST_BATCH];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2); // 0: raw values in, 1: positions out
	__type(key, __u32);
	__type(value, struct selftest_values);
} selftest SEC(".maps");

SEC("raw_tp")
int bucket_selftest(void *ctx)
{
	__u32 in = 0, out = 1;
	struct selftest_values *raw = bpf_map_lookup_elem(&selftest, &in);
	struct selftest_values *pos = bpf_map_lookup_elem(&selftest, &out);

	if (!raw || !pos)
		return 1;
	for (__u32 i = 0; i < SELFTEST_BATCH; i++)
		pos->v[i] = raw->v[i] ? bucket_position(raw->v[i]) : 0xffffffff;
	return 0;
}
