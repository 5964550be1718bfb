// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Reading a socket: its srtt, its identity (what tells its cache entry),
// its full 4-tuple and its cgroup, in every flavour (part of tcprtt.bpf.c:
// included after the config and maps it uses).

#ifndef TCPRTT_SOCKET_H
#define TCPRTT_SOCKET_H

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

#endif
