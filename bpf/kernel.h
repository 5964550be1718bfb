// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// CO-RE views of the kernel structs tcprtt reads (part of tcprtt.bpf.c, its
// only user).

#ifndef TCPRTT_KERNEL_H
#define TCPRTT_KERNEL_H

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
	__u16 sk_protocol; // a field of its own since 5.6 (retrans.h)
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 srtt_us;
	__u32 total_retrans; // retrans.h
} __attribute__((preserve_access_index));

// The classic tracepoint's record; only skaddr is used (kernels whose
// tcp_probe event carries it), everything else is read from the socket.
struct trace_event_raw_tcp_probe {
	const void *skaddr;
} __attribute__((preserve_access_index));

#endif
