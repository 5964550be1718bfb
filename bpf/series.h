// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Resolving a socket to its series row: filters, grouping, the series
// index (part of tcprtt.bpf.c: included after the config and maps it
// uses).

#ifndef TCPRTT_SERIES_H
#define TCPRTT_SERIES_H

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
// be taken (user space sends the overflow row's sockets looking again
// when one is).
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

#endif
