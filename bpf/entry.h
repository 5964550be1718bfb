// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Counting in a socket cache entry: its window of row words, moving the
// window, taking a free entry (part of tcprtt.bpf.c: included after the
// config and maps it uses).

#ifndef TCPRTT_ENTRY_H
#define TCPRTT_ENTRY_H

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
		else
			count_stats(STAT_ERRORS, c); // never: a window lies in its row
		e->counts[i] = 0;
	}
	w = bpf_map_lookup_elem(&cpu_sums, &sum_word);
	if (w)
		*w += e->sum; // this CPU's line: no atomic needed
	else if (e->sum)
		count_stat(STAT_ERRORS); // never: the sums cover every CPU and row
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

	if (!cfg_entry_counts) {
		// The row only. misses counts the samples instead (wrapping),
		// so that user space sees the entry in use.
		e->misses += 1;
		i = ENTRY_COUNTS;
	} else if (i < ENTRY_COUNTS && e->counts[i] != 0xffffffff) {
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
// published last: until then user space sees the entry free, and once it
// sees the slot it sees the rest. The compiler keeps the stores in order
// across the barrier, x86 keeps stores in order, and where the entry
// counts (fetching atomics: full barriers on every architecture) a
// fetching add orders them for weakly ordered CPUs too. Without entry
// counts there is nothing to order: user space drained the counts and sum
// of a free entry to zero, the values take writes.
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
	if (cfg_entry_counts)
		e->seq_prev = __sync_fetch_and_add(&e->seq, 2); // a full barrier; seq stays even (LLVM drops an add of 0)
	barrier();
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

#endif
