// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Retransmitted segments per series (part of tcprtt.bpf.c: included after
// the config, the maps and series.h it uses). The kernel's
// tcp_retransmit_skb event fires once per retransmission that left TCP
// (__tcp_retransmit_skb, when tcp_transmit_skb succeeded), with the skb
// that went out: it counts tcp_skb_pcount(skb) segments, as the kernel
// adds them to tcp_sock.total_retrans (tcpi_total_retrans) just before
// (tail loss probes and SYN retransmissions go through the same function
// and are counted the same way). A retransmission the local stack failed
// to send (a qdisc that refused it) is in total_retrans and in the
// TCPRetransFail counter but fires no event: it never left the host.
//
// The socket's series is resolved as for RTT samples (filters, group_by,
// cgroup, index, free queue, overflow row), so a series that only
// retransmits exists; the count goes to its own array, by slot, never to
// the rows or the socket cache, so the RTT programs are unchanged.

#ifndef TCPRTT_RETRANS_H
#define TCPRTT_RETRANS_H

#define RSTAT_COUNTED 0 // runs that added to a series
#define RSTAT_FILTERED 1
#define RSTAT_ERRORS 2
#define RSTAT_UNSENT 3 // the event reported a retransmission that failed (err)
#define RSTAT_MAX 4

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); // user space reads it in place, like counts
	__uint(max_entries, 1); // set by the loader: one u64 per row (overflow included)
	__type(key, __u32);
	__type(value, __u64);
} retrans SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RSTAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} retrans_stats SEC(".maps");

// The part of the skb the program reads: tcp_skb_cb lives in cb, and its
// tcp_gso_segs (tcp_skb_pcount) is the u16 at byte 8 (after seq and
// end_seq) in every kernel from 4.x to 6.12 (include/net/tcp.h).
struct sk_buff {
	char cb[48];
} __attribute__((preserve_access_index));

#define TCP_SKB_CB_GSO_SEGS 8

// The classic tracepoint's record of tcp_retransmit_skb: up to 6.12 that
// of the tcp_event_sk_skb class; later kernels give the event its own
// record, with err (the event then fires on every return of
// __tcp_retransmit_skb, err set on failure).
struct trace_event_raw_tcp_event_sk_skb {
	const void *skbaddr;
	const void *skaddr;
} __attribute__((preserve_access_index));

struct trace_event_raw_tcp_retransmit_skb {
	const void *skbaddr;
	const void *skaddr;
	int err;
} __attribute__((preserve_access_index));

// Set by the loader: the event carries err (a third argument), so that
// the BTF flavours count only retransmissions that went out, as the event
// meant before it had err.
const volatile bool cfg_rtx_err_arg = false;

static __always_inline void count_rstat(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&retrans_stats, &which);

	if (v)
		*v += 1; // per-CPU: no atomic needed
}

// record_retrans adds the segments of one retransmission of skb by sk to
// the socket's series.
static __always_inline int record_retrans(struct sock *sk, struct sk_buff *skb, int err, const bool btf)
{
	struct series_key tuple = {};
	__u16 segs = 0;
	__u32 slot;
	__u64 *n;

	if (err) {
		// Not sent: the kernel counts it in total_retrans only if it
		// failed in tcp_transmit_skb (and in TCPRetransFail then), and
		// the event cannot tell which.
		count_rstat(RSTAT_UNSENT);
		return 0;
	}
	if (!sk || !skb || !read_tuple(sk, btf, &tuple) ||
	    bpf_probe_read_kernel(&segs, sizeof(segs), &skb->cb[TCP_SKB_CB_GSO_SEGS])) {
		count_rstat(RSTAT_ERRORS);
		return 0;
	}
	slot = resolve(sk, &tuple);
	if (slot == SLOT_FILTERED) {
		count_rstat(RSTAT_FILTERED);
		return 0;
	}
	n = bpf_map_lookup_elem(&retrans, &slot);
	if (!n) {
		count_rstat(RSTAT_ERRORS);
		return 0;
	}
	__sync_fetch_and_add(n, segs ? segs : 1); // pcount is at least 1 for a sent skb
	count_rstat(RSTAT_COUNTED);
	return 0;
}

// No fentry flavour: at the entry of tcp_retransmit_skb the segment is not
// yet sent (nor counted by the kernel, which may still refuse it), and
// tp_btf exists wherever fentry does.
// The BTF flavours read err only where the event has it: the verifier
// drops the read elsewhere (cfg_rtx_err_arg is a constant).
SEC("tp_btf/tcp_retransmit_skb")
int retrans_tp_btf(__u64 *ctx)
{
	int err = cfg_rtx_err_arg ? (int)ctx[2] : 0;

	return record_retrans((struct sock *)ctx[0], (struct sk_buff *)ctx[1], err, true);
}

SEC("raw_tp/tcp_retransmit_skb")
int retrans_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	int err = cfg_rtx_err_arg ? (int)ctx->args[2] : 0;

	return record_retrans((struct sock *)ctx->args[0], (struct sk_buff *)ctx->args[1], err, false);
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int retrans_tracepoint(void *ctx)
{
	struct trace_event_raw_tcp_retransmit_skb *own = ctx;
	struct trace_event_raw_tcp_event_sk_skb *class = ctx;
	int err = 0;

	if (bpf_core_type_exists(struct trace_event_raw_tcp_retransmit_skb)) {
		if (bpf_core_field_exists(own->err))
			err = BPF_CORE_READ(own, err);
		return record_retrans((struct sock *)BPF_CORE_READ(own, skaddr),
				      (struct sk_buff *)BPF_CORE_READ(own, skbaddr), err, false);
	}
	if (bpf_core_type_exists(struct trace_event_raw_tcp_event_sk_skb))
		return record_retrans((struct sock *)BPF_CORE_READ(class, skaddr),
				      (struct sk_buff *)BPF_CORE_READ(class, skbaddr), 0, false);
	count_rstat(RSTAT_ERRORS);
	return 0;
}

#endif
