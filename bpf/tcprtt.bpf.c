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

#include <stdbool.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10

// Minimal CO-RE views of the kernel structs; the loader relocates the
// offsets against the running kernel's BTF.
struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	union {
		__u64 skc_addrpair;
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		unsigned int skc_hash; // of the 4-tuple, set while the socket is hashed
	};
	union {
		__u32 skc_portpair;
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	short unsigned int skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

// The socket's cgroup v2 (sk_cgrp_data, set when the socket is created,
// inherited by accepted sockets). Since 5.15 sock_cgroup_data holds the
// cgroup pointer; before, a u64 that is the pointer unless its low bits
// are set (then net_prio/net_cls data took its place and the kernel
// treats the socket as in the root cgroup). The ___old flavour matches
// only kernels with that layout; CO-RE picks the branch at load.
struct kernfs_node {
	__u64 id; // the cgroup id, = the inode number of its directory (5.5+)
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct sock_cgroup_data {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct sock_cgroup_data___old {
	__u64 val;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	struct sock_cgroup_data sk_cgrp_data;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 srtt_us;
} __attribute__((preserve_access_index));

// The classic tracepoint's record; only skaddr is used (kernels whose
// tcp_probe event carries it), everything else is read from the socket.
struct trace_event_raw_tcp_probe {
	const void *skaddr;
} __attribute__((preserve_access_index));

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

#define BUCKET_TABLE_SIZE 512

// Entries of the socket cache per CPU (a power of two). A compile-time
// constant, not configuration: the entry's address is then known from the
// socket's hash alone, and its load starts at once instead of waiting for
// a load of the config. On a host with busy caches every line the program
// alone touches is a miss, so what costs is how many misses wait for each
// other (make bench-variants: about 0.4x the empty program for this wait).
#define CACHE_ENTRIES 1024

struct bucket_entry {
	__u32 base;
	__u32 threshold;
};

// Set by the loader before load (read-only afterwards, so the verifier
// treats them as constants). The scalars come first, in one cache line:
// the table is read at one line per sample's octave slot.
const volatile __u32 cfg_group_by = GROUP_REMOTE_ADDR;
const volatile __u32 cfg_filters = 0;
const volatile __u32 cfg_family = 0; // 4 or 6: only that family; 0: both
const volatile __u32 cfg_scale = 3;
const volatile __u32 cfg_stride = 0;
const volatile __u32 cfg_max_series = 0;
const volatile __u32 cfg_cache_entries = 0; // the loader's CACHE_ENTRIES, checked (kmaps.CacheEntriesPerCPU)
const volatile bool cfg_one_cache_entry = false; // tests: all sockets of a CPU share one entry
const volatile __u32 cfg_sum_stride = 0; // cpu_sums words per CPU (rows, rounded up to a cache line)
const volatile bool cfg_rdonly_cast = true; // direct socket reads where bpf_rdonly_cast exists
const volatile bool cfg_entry_counts = false;
const volatile struct bucket_entry cfg_buckets[BUCKET_TABLE_SIZE] = {};

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

static __always_inline void count_stat(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &which);
	if (v)
		*v += 1; // per-CPU: no atomic needed
}

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

// bpf_rdonly_cast (Linux 6.2+) turns a socket pointer into a BTF pointer
// the program may load from directly; the verifier removes the call, so
// a field read costs one load instead of a helper call. It is weak: on
// older kernels its address is 0 and the helper-based reads are used.
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;

// cfg_rdonly_cast (above) = false makes the program use the helper-based
// reads even where the kfunc exists, so tests cover both.

#define HAVE_RDONLY_CAST (cfg_rdonly_cast && &bpf_rdonly_cast != 0)

// read_srtt reads tcp_sock.srtt_us; btf says whether sk is a BTF-typed
// (trusted) pointer, as in fentry and tp_btf programs.
static __always_inline bool read_srtt(struct sock *sk, const bool btf, __u32 *raw)
{
	struct tcp_sock *tp;

	if (HAVE_RDONLY_CAST) {
		tp = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock));
	} else if (btf) {
		tp = bpf_skc_to_tcp_sock(sk);
	} else {
		return !BPF_CORE_READ_INTO(raw, (struct tcp_sock *)sk, srtt_us);
	}
	if (!tp)
		return false;
	*raw = tp->srtt_us;
	return true;
}

static __always_inline bool is_v4_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0x0000ffff);
}

static __always_inline void set_v4_mapped(__u8 *a, __be32 v4)
{
	__u32 *w = (__u32 *)a;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0x0000ffff);
	w[3] = v4;
}

// READ_TUPLE fills key with the 4-tuple of sk through READ(field), a
// direct load or a probe read; it is false for families other than IPv4
// and IPv6. IPv4 addresses are stored v4-mapped; a v4-mapped IPv6 socket
// counts as IPv4.
#define READ_TUPLE(sk, key, READ, READ_ADDR)                                   \
	({                                                                     \
		__u16 family = READ(sk, __sk_common.skc_family);               \
		bool ok = true;                                                \
		if (family == AF_INET) {                                       \
			set_v4_mapped((key)->local_addr, READ(sk, __sk_common.skc_rcv_saddr)); \
			set_v4_mapped((key)->remote_addr, READ(sk, __sk_common.skc_daddr)); \
			(key)->family = 4;                                     \
		} else if (family == AF_INET6) {                               \
			READ_ADDR((key)->local_addr, sk, __sk_common.skc_v6_rcv_saddr); \
			READ_ADDR((key)->remote_addr, sk, __sk_common.skc_v6_daddr); \
			(key)->family = is_v4_mapped((key)->remote_addr) ? 4 : 6; \
		} else {                                                       \
			ok = false;                                            \
		}                                                              \
		(key)->local_port = READ(sk, __sk_common.skc_num);             \
		(key)->remote_port = bpf_ntohs(READ(sk, __sk_common.skc_dport)); \
		ok;                                                            \
	})

#define LOAD(sk, field) ((sk)->field)
#define LOAD_ADDR(dst, sk, field) __builtin_memcpy(dst, &(sk)->field, 16)
#define PROBE(sk, field) BPF_CORE_READ(sk, field)
#define PROBE_ADDR(dst, sk, field) BPF_CORE_READ_INTO(&(dst), sk, field.in6_u.u6_addr8)

#define CGROUP_ROOT_ID 1

// read_cgroup_id returns the id of the socket's cgroup v2, 0 if unknown.
// Probe reads in every flavour: it runs once per socket where the series
// is cached, and the verifier drops it unless cgroup is grouped.
static __always_inline __u64 read_cgroup_id(struct sock *sk)
{
	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup))
		return BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
	if (bpf_core_field_exists(struct sock_cgroup_data___old, val)) {
		struct sock_cgroup_data___old *old = (void *)&sk->sk_cgrp_data;
		__u64 val = BPF_CORE_READ(old, val);
		struct cgroup *cgrp = (struct cgroup *)val;

		// As sock_cgroup_ptr() before 5.15.
		if (!val || (val & 3))
			return CGROUP_ROOT_ID;
		return BPF_CORE_READ(cgrp, kn, id);
	}
	return 0;
}

// read_cgroup_word reads the socket's sk_cgrp_data word (the cgroup
// pointer, or before 5.15 the value holding it): one load that tells
// whether a cache entry was written for a socket of the same cgroup,
// without following the pointer to the id.
static __always_inline __u64 read_cgroup_word(struct sock *sk)
{
	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup))
		return (__u64)BPF_CORE_READ(sk, sk_cgrp_data.cgroup);
	if (bpf_core_field_exists(struct sock_cgroup_data___old, val)) {
		struct sock_cgroup_data___old *old = (void *)&sk->sk_cgrp_data;

		return BPF_CORE_READ(old, val);
	}
	return 0;
}

// read_tuple fills key with the socket's full 4-tuple (the cgroup is
// read only when the socket is resolved).
static __always_inline bool read_tuple(struct sock *sk, const bool btf, struct series_key *key)
{
	if (btf)
		return READ_TUPLE(sk, key, LOAD, LOAD_ADDR);
	if (HAVE_RDONLY_CAST) {
		struct sock *s = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct sock));

		return READ_TUPLE(s, key, LOAD, LOAD_ADDR);
	}
	return READ_TUPLE(sk, key, PROBE, PROBE_ADDR);
}

// sock_id is what tells a socket's cache entry: its address and port
// words and family as the socket holds them, so they are read with no
// conversion; with the IPv6 addresses (AF_INET6 only) the full 4-tuple,
// so a socket whose memory another connection reuses never matches the
// old one's entry.
struct sock_id {
	__u64 addrpair;
	__u32 portpair;
	__u16 family;
	__u32 hash; // skc_hash: the entry's index
};

#define READ_ID(c, id, READ)                                                   \
	({                                                                     \
		(id)->addrpair = READ(c, skc_addrpair);                        \
		(id)->portpair = READ(c, skc_portpair);                        \
		(id)->family = READ(c, skc_family);                            \
		(id)->hash = READ(c, skc_hash);                                \
	})

// read_id reads the socket's identity and the kernel's hash of its
// 4-tuple, which its established-socket lookup just used (so the line is
// hot): the index of the socket's cache entry, at no hashing cost.
static __always_inline void read_id(struct sock *sk, const bool btf, struct sock_id *id)
{
	if (btf) {
		READ_ID(&sk->__sk_common, id, LOAD);
	} else if (HAVE_RDONLY_CAST) {
		struct sock *s = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct sock));

		READ_ID(&s->__sk_common, id, LOAD);
	} else {
		READ_ID(&sk->__sk_common, id, PROBE);
	}
}

// same_v6 compares the entry's IPv6 addresses with the socket's (the
// tuple read for resolving holds them).
static __always_inline bool same_v6(const struct cache_entry *e, const struct series_key *t)
{
	const __u64 *a = (const __u64 *)e->v6_daddr, *b = (const __u64 *)e->v6_rcv_saddr;
	const __u64 *r = (const __u64 *)t->remote_addr, *l = (const __u64 *)t->local_addr;

	return a[0] == r[0] && a[1] == r[1] && b[0] == l[0] && b[1] == l[1];
}

static __always_inline bool port_allowed(__u32 direction, __u16 port)
{
	__u32 word = direction * 1024 + (port >> 6);
	__u64 *bits = bpf_map_lookup_elem(&port_filter, &word);

	return bits && (*bits & (1ULL << (port & 63)));
}

static __always_inline bool addr_allowed(__u8 direction, const __u8 *addr)
{
	struct addr_filter_key k = { .prefixlen = 8 + 128, .direction = direction };

	__builtin_memcpy(k.addr, addr, 16);
	return bpf_map_lookup_elem(&addr_filter, &k) != NULL;
}

static __always_inline bool tuple_allowed(struct series_key *t)
{
	if (cfg_family && t->family != cfg_family)
		return false;
	if ((cfg_filters & FILTER_LOCAL_PORT) && !port_allowed(0, t->local_port))
		return false;
	if ((cfg_filters & FILTER_REMOTE_PORT) && !port_allowed(1, t->remote_port))
		return false;
	if ((cfg_filters & FILTER_LOCAL_ADDR) && !addr_allowed(0, t->local_addr))
		return false;
	if ((cfg_filters & FILTER_REMOTE_ADDR) && !addr_allowed(1, t->remote_addr))
		return false;
	return true;
}

// mask_tuple keeps only the grouped fields, turning the tuple into the
// series key.
static __always_inline void mask_tuple(struct series_key *k)
{
	if (!(cfg_group_by & GROUP_LOCAL_ADDR))
		__builtin_memset(k->local_addr, 0, 16);
	if (!(cfg_group_by & GROUP_REMOTE_ADDR))
		__builtin_memset(k->remote_addr, 0, 16);
	if (!(cfg_group_by & GROUP_LOCAL_PORT))
		k->local_port = 0;
	if (!(cfg_group_by & GROUP_REMOTE_PORT))
		k->remote_port = 0;
	if (!cfg_group_by)
		k->family = 0;
}

// lookup_series returns the slot of key, giving it a free slot on first
// sight. With no slot left the sample belongs to the overflow series,
// which is not remembered in the index, so a slot freed later can still
// be taken (user space bumps the cache epoch when one is).
static __always_inline __u32 lookup_series(struct series_key *key)
{
	struct series_ref ref = {}, *found;
	__u32 slot;

	found = bpf_map_lookup_elem(&series_index, key);
	if (found)
		return found->slot;
	if (bpf_map_pop_elem(&free_slots, &slot))
		return cfg_max_series;
	ref.slot = slot;
	if (bpf_map_update_elem(&series_index, key, &ref, BPF_NOEXIST)) {
		// Another CPU inserted the same key first: use its slot. User
		// space sees the overflow grow while a slot is free and sends
		// sockets cached in the overflow row looking again.
		bpf_map_push_elem(&free_slots, &slot, 0);
		found = bpf_map_lookup_elem(&series_index, key);
		return found ? found->slot : cfg_max_series;
	}
	return slot;
}

// resolve decides the slot of socket sk with this tuple: filtered, or its
// series' row.
static __always_inline __u32 resolve(struct sock *sk, const struct series_key *tuple)
{
	struct series_key key = *tuple;

	if (!tuple_allowed(&key))
		return SLOT_FILTERED;
	mask_tuple(&key);
	if (cfg_group_by & GROUP_CGROUP)
		key.cgroup = read_cgroup_id(sk);
	return lookup_series(&key);
}

// row_word_of returns the row word of a sample of raw.
static __always_inline __u32 row_word_of(__u32 raw)
{
	return raw ? ROW_BUCKETS + bucket_position(raw) : ROW_ZERO;
}

// window_base is the first row word of a window centred on word.
static __always_inline __u32 window_base(__u32 word)
{
	return word > ROW_ZERO + ENTRY_COUNTS / 2 ? word - ENTRY_COUNTS / 2 : ROW_ZERO;
}

// cfg_entry_counts (above): the adds to seq order the entry's writes:
// BPF atomics that return the old value (5.12+) are full barriers on
// every architecture, and x86's locked add is one too (the loader turns
// the fetching adds into plain ones for kernels without them). Otherwise
// samples are counted in the row only, and the entries only name it.

// bump_seq adds one to e->seq with a full barrier (a fetching add: its
// old value is kept only so that the add is one).
static __always_inline void bump_seq(struct cache_entry *e)
{
	e->seq_prev = __sync_fetch_and_add(&e->seq, 1);
}

// rebase moves the counts and sum of e, which holds slot, to the row and
// this CPU's sum, and centres its window on word. seq is odd meanwhile,
// so that user space never reads a count both in the entry and in the
// row, or in neither: it reads the entry and the row again.
static __always_inline void rebase(struct cache_entry *e, __u32 slot, __u32 word, __u32 cpu)
{
	__u32 base = e->base, sum_word = cpu * cfg_sum_stride + slot;
	__u64 *w;

	bump_seq(e);
	for (__u32 i = 0; i < ENTRY_COUNTS; i++) {
		__u32 c = e->counts[i];

		if (!c)
			continue;
		w = row_word(slot, base + i);
		if (w)
			__sync_fetch_and_add(w, c);
		e->counts[i] = 0;
	}
	w = bpf_map_lookup_elem(&cpu_sums, &sum_word);
	if (w)
		*w += e->sum; // this CPU's line: no atomic needed
	e->sum = 0;
	e->base = window_base(word);
	e->misses = 0;
	bump_seq(e);
}

// count_held counts the sample of raw of a socket whose entry e holds
// slot: in the window when it falls there, else in the row (moving the
// window after REBASE_AFTER such samples).
static __always_inline void count_held(struct cache_entry *e, __u32 slot, __u32 raw, __u32 cpu)
{
	__u32 word = row_word_of(raw), i = word - e->base;

	if (!cfg_entry_counts)
		i = ENTRY_COUNTS; // the row only
	if (i < ENTRY_COUNTS && e->counts[i] != 0xffffffff) {
		e->counts[i] += 1; // this CPU's line: no atomic needed
		e->sum += raw;
		e->misses = 0;
		return;
	}
	if (cfg_entry_counts && i >= ENTRY_COUNTS && ++e->misses >= REBASE_AFTER) {
		rebase(e, slot, word, cpu);
		i = word - e->base;
		if (i < ENTRY_COUNTS) {
			e->counts[i] = 1;
			e->sum = raw;
			return;
		}
	}
	if (!count_in_row(slot, raw, cpu))
		count_stat(STAT_ERRORS);
}

// take writes entry for the socket sk (identity id, tuple t) with slot,
// counting the sample of raw in it when slot is a row. The slot is
// written last: until then user space sees the entry free.
static __always_inline void take(struct cache_entry *e, const struct sock_id *id, const struct series_key *t,
				 __u64 cgroup_word, __u32 slot, __u32 raw, __u32 cpu)
{
	__u32 word = row_word_of(raw);
	__u32 base = window_base(word);

	e->addrpair = id->addrpair;
	e->portpair = id->portpair;
	e->family = id->family;
	if (id->family == AF_INET6) {
		__builtin_memcpy(e->v6_daddr, t->remote_addr, 16);
		__builtin_memcpy(e->v6_rcv_saddr, t->local_addr, 16);
	}
	e->cgroup_word = cgroup_word;
	e->base = base;
	e->misses = 0;
	__builtin_memset(e->counts, 0, sizeof(e->counts));
	e->sum = 0;
	e->slot = slot;
	if (slot < SLOT_DRAIN)
		count_held(e, slot, raw, cpu);
}

// holds reports whether entry e holds the socket of identity id (its
// IPv6 addresses aside) and, when cgroup is grouped, of that cgroup. The
// entry's second line is read only for the cgroup.
static __always_inline bool holds(const struct cache_entry *e, const struct sock_id *id, __u64 cgroup_word)
{
	if (e->slot == SLOT_FREE || e->addrpair != id->addrpair || e->portpair != id->portpair ||
	    e->family != id->family)
		return false;
	return !(cfg_group_by & GROUP_CGROUP) || e->cgroup_word == cgroup_word;
}

// count_in_entry handles a segment of the socket entry e holds with
// slot; it is false for an entry marked to drain, whose socket is
// resolved and counted in the row until user space frees the entry.
static __always_inline bool count_in_entry(struct cache_entry *e, __u32 slot, __u32 raw, __u32 cpu)
{
	if (slot < SLOT_DRAIN) {
		count_held(e, slot, raw, cpu);
		return true;
	}
	if (slot == SLOT_FILTERED) {
		count_stat(STAT_FILTERED);
		return true;
	}
	return false;
}

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
