// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Retransmitted segments per series (part of tcprtt.bpf.c: included after
// the config, the maps and series.h it uses).
//
// What is counted is the socket's own tcp_sock.total_retrans
// (tcpi_total_retrans), by its growth: each run of the tcp_retransmit_skb
// event reads total_retrans and adds what it grew by since the run before
// on the same socket (retrans_seen). The segments of the event's skb are
// not the count, because the event does not fire for every segment the
// kernel counts: a retransmission tcp_transmit_skb failed to send is in
// total_retrans but fires no event up to 6.12, and fires one with err set
// later, as do attempts refused before they were counted; and the skb the
// event sees may carry fewer segments than were counted. The growth is
// exact whatever the event misses, as soon as the socket's next event runs.
//
// Who writes the entry (retrans_seen, by socket address) when:
// - the state-change program (settle_retrans, below) makes it when a
//   socket that passes the filters becomes ESTABLISHED, with a total of 0
//   (every retransmission of a socket established while the program runs
//   is counted, SYN-ACKs of a passive socket included: they fire no
//   tcp_retransmit_skb event), adds the growth at each later state change
//   (close(2) is one, synchronously) and deletes it at TCP_CLOSE;
// - the retransmit program adds the growth at each event, under the same
//   socket lock, so the two never overlap on one socket.
// Invariant: once a socket established while the program runs has left
// ESTABLISHED (it was closed), its series holds all of its
// tcpi_total_retrans up to then, whatever the retransmit event showed
// (TestRetransmitsEqualTCPInfo, TestRetransmitsSynAckCounted).
//
// A socket the retransmit program sees without an entry (established
// before the program was loaded, or evicted from the LRU map) has no
// previous reading: if its total is at most the event's segments, the
// total is all its retransmissions and counted whole; if it is more, the
// socket retransmitted before (before the receiver started), and only the
// event's own segments are counted when it was sent (err 0)
// (TestRetransmitsBeforeStartNotCounted).
//
// The socket's series is resolved as for RTT samples (filters, group_by,
// cgroup, index, free queue, overflow row), so a series that only
// retransmits exists; the count goes to its own array, by slot, never to
// the rows or the socket cache, so the RTT programs are unchanged.

#ifndef TCPRTT_RETRANS_H
#define TCPRTT_RETRANS_H

#define RSTAT_COUNTED 0 // runs that added the socket's growth to a series
#define RSTAT_FILTERED 1
#define RSTAT_ERRORS 2
#define RSTAT_MAX 3

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); // user space reads it in place, like counts
	__uint(max_entries, 1); // set by the loader: one u64 per row (overflow included)
	__type(key, __u32);
	__type(value, __u64);
} retrans SEC(".maps");

// The total_retrans each socket had at its last run, by socket address.
// ports and addr tell a socket from a later one at the same address whose
// entry outlived the first (an LRU map: nothing deletes on close).
struct retrans_seen {
	__u32 total;
	__u32 ports; // local_port << 16 | remote_port
	__u32 addr;  // the remote address's last word
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1); // set by the loader (kmaps.RetransSockets; 1 while retransmits are off)
	__type(key, __u64);
	__type(value, struct retrans_seen);
} retrans_seen SEC(".maps");

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

// Set by the loader: the event carries err (a third argument, later than
// 6.12), which tells a first sight's segments were sent.
const volatile bool cfg_rtx_err_arg = false;

static __always_inline void count_rstat(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&retrans_stats, &which);

	if (v)
		*v += 1; // per-CPU: no atomic needed
}

// reading_of is the entry of a socket with this tuple whose total_retrans
// is total.
static __always_inline struct retrans_seen reading_of(const struct series_key *tuple, __u32 total)
{
	struct retrans_seen r = {
		.total = total,
		.ports = (__u32)tuple->local_port << 16 | tuple->remote_port,
		.addr = *(const __u32 *)&tuple->remote_addr[12],
	};

	return r;
}

// grew_from reports whether now continues the reading seen: the same
// socket (not a later one at the same address) with a total not reset.
static __always_inline bool grew_from(const struct retrans_seen *seen, const struct retrans_seen *now)
{
	return seen->ports == now->ports && seen->addr == now->addr && now->total >= seen->total;
}

// retrans_growth is what sk's total_retrans (now total) grew by since
// the program's previous run on it, and records total for the next run.
// The socket's lock is held around the event, so runs on one socket never
// overlap and the entry needs no atomics.
static __always_inline __u32 retrans_growth(struct sock *sk, const struct series_key *tuple,
					    __u32 total, __u16 segs, int err)
{
	struct retrans_seen now = reading_of(tuple, total);
	__u64 key = (__u64)sk;
	struct retrans_seen *seen = bpf_map_lookup_elem(&retrans_seen, &key);

	if (seen && grew_from(seen, &now)) {
		__u32 grown = total - seen->total;

		seen->total = total;
		return grown;
	}
	bpf_map_update_elem(&retrans_seen, &key, &now, BPF_ANY); // if it fails, the next run is a first sight too
	if (total <= segs)
		return total;
	return err ? 0 : segs;
}

// record_retrans adds sk's retransmitted segments since its previous run
// to the socket's series.
static __always_inline int record_retrans(struct sock *sk, struct sk_buff *skb, int err, const bool btf)
{
	struct series_key tuple = {};
	__u32 total = 0, slot, grown;
	__u16 segs = 0;
	__u64 *n;

	if (!sk || !skb || !read_tuple(sk, btf, &tuple) ||
	    BPF_CORE_READ_INTO(&total, (struct tcp_sock *)sk, total_retrans) ||
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
	grown = retrans_growth(sk, &tuple, total, segs, err);
	if (grown)
		__sync_fetch_and_add(n, grown);
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

// Settling at state changes (see the top of this file). Most transitions,
// of sockets without an entry, cost one hash lookup. On the 2-CPU 6.18
// host the kernel was seen, about once in 4,500 retransmissions, to count
// one in total_retrans with no run of the retransmit program after it;
// without this program those before a socket's first event and after its
// last were lost.
#define TCP_ESTABLISHED 1
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define IPPROTO_TCP 6

// settles reports whether a change to newstate is one the program acts
// on: the entry is made at ESTABLISHED, settled when either end closes
// (FIN_WAIT1, CLOSE_WAIT, LAST_ACK: close(2) and a peer's FIN) and at
// TCP_CLOSE, which every socket reaches last (SYN_SENT -> CLOSE too).
// The others (SYN_SENT, SYN_RECV, FIN_WAIT2, TIME_WAIT, CLOSING, LISTEN)
// return at once: TCP_CLOSE settles what they would.
static __always_inline bool settles(int newstate)
{
	return newstate == TCP_ESTABLISHED || newstate == TCP_FIN_WAIT1 || newstate == TCP_CLOSE_WAIT ||
	       newstate == TCP_LAST_ACK || newstate == TCP_CLOSE;
}

// settle_retrans acts on a change of TCP socket sk to newstate (one that
// settles: the callers check).
static __always_inline int settle_retrans(struct sock *sk, int newstate, const bool btf)
{
	struct series_key tuple = {};
	struct retrans_seen *seen, now;
	__u64 key = (__u64)sk;
	__u32 total = 0, slot, grown;
	__u64 *n;

	seen = bpf_map_lookup_elem(&retrans_seen, &key);
	if (!seen && newstate != TCP_ESTABLISHED)
		return 0;
	if (!read_tuple(sk, btf, &tuple) || BPF_CORE_READ_INTO(&total, (struct tcp_sock *)sk, total_retrans))
		return 0; // the next retransmit event settles it
	now = reading_of(&tuple, total);
	if (!seen || !grew_from(seen, &now)) {
		// A new connection (or another socket's stale entry at this
		// address): counted from 0 if it passes the filters.
		now.total = 0;
		if (newstate == TCP_ESTABLISHED && tuple_allowed(&tuple))
			bpf_map_update_elem(&retrans_seen, &key, &now, BPF_ANY);
		else if (seen)
			bpf_map_delete_elem(&retrans_seen, &key);
		return 0;
	}
	grown = total - seen->total;
	seen->total = total;
	if (newstate == TCP_CLOSE)
		bpf_map_delete_elem(&retrans_seen, &key);
	if (!grown)
		return 0;
	slot = resolve(sk, &tuple);
	if (slot == SLOT_FILTERED)
		return 0;
	n = bpf_map_lookup_elem(&retrans, &slot);
	if (n)
		__sync_fetch_and_add(n, grown);
	return 0;
}

struct trace_event_raw_inet_sock_set_state {
	const void *skaddr;
	int newstate;
	__u16 protocol;
} __attribute__((preserve_access_index));

SEC("tp_btf/inet_sock_set_state")
int settle_tp_btf(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];

	if (!settles((int)ctx[2]) || !sk || sk->sk_protocol != IPPROTO_TCP)
		return 0;
	return settle_retrans(sk, (int)ctx[2], true);
}

SEC("raw_tp/inet_sock_set_state")
int settle_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[0];

	if (!settles((int)ctx->args[2]) || !sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	return settle_retrans(sk, (int)ctx->args[2], false);
}

SEC("tracepoint/sock/inet_sock_set_state")
int settle_tracepoint(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (!settles(BPF_CORE_READ(ctx, newstate)) || BPF_CORE_READ(ctx, protocol) != IPPROTO_TCP)
		return 0;
	return settle_retrans((struct sock *)BPF_CORE_READ(ctx, skaddr), BPF_CORE_READ(ctx, newstate), false);
}

#endif
